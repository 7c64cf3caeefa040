// Header mapping between client and upstream (docs/http.md). Pure.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "proxy/http_types.h"

namespace wfp {

// RFC 9110 §7.6.1 hop-by-hop fields, plus those a message's Connection header
// names. Compared case-insensitively.
bool isHopByHop(std::string_view name);

struct UpstreamHeaderOptions {
  // "Bearer <key>" to send, or nullopt to forward the client's own header.
  std::optional<std::string> authorization;
  std::string_view request_id;  // X-Request-Id to send (the client's or a new one); outlives the call
  bool identity_encoding = false;  // run/stream: Accept-Encoding: identity
};

// What the proxy sends upstream: the client's end-to-end headers in order,
// minus Host, Content-Length, Transfer-Encoding, Expect, hop-by-hop fields;
// Authorization replaced (or dropped when the client had none and none is
// given); X-Request-Id set. Built in `client`'s own memory: a caller done
// with the client's headers moves them in.
HttpHeaders upstreamRequestHeaders(HttpHeaders client, const UpstreamHeaderOptions& options);

// What the client receives from an upstream response: every end-to-end field
// in order, minus hop-by-hop, Content-Length and Transfer-Encoding (the
// server frames the body itself).
HttpHeaders clientResponseHeaders(const HttpHeaders& upstream);
// The same, filtering `upstream` in place (its strings are moved, not copied).
HttpHeaders clientResponseHeaders(HttpHeaders&& upstream);
// Does the client receive `h`, one of `all` (clientResponseHeaders' rule)?
bool keptForClient(const HttpHeaders& all, const HttpHeader& h);

// Drops every field named `name` (case-insensitive).
void removeHeader(HttpHeaders& headers, std::string_view name);
// Gives the field `name` the one value `value`: the first such field keeps its
// place, any others go; appended when there is none.
void setHeader(HttpHeaders& headers, std::string_view name, std::string value);

// A new request id: 32 lowercase hex characters from the OS CSPRNG.
std::string newRequestId();

// A value a client may send on: printable, no CR/LF/NUL (header injection).
bool isSafeHeaderValue(std::string_view value);

}  // namespace wfp

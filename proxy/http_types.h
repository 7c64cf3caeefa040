// The HTTP header types the modules that speak HTTP share (the server, the
// parser, the upstream client, the cache, header mapping), without the
// server: a module that only handles headers need not include sockets.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "proxy/text.h"  // equalsIgnoreCase, the token and whitespace rules

namespace wfp {

struct HttpHeader {
  std::string name;
  std::string value;
};
using HttpHeaders = std::vector<HttpHeader>;

// First header with that name (case-insensitive), or nullptr.
const std::string* findHeader(const HttpHeaders& headers, std::string_view name);
// Appends "name: value\r\n" to a response head being built. Returns false
// (and appends nothing) for a framing header (Connection, Content-Length,
// Transfer-Encoding: the server writes those), a name that is not a token or
// a value with CR, LF or NUL.
bool appendHeaderLine(std::string& out, std::string_view name, std::string_view value);

}  // namespace wfp

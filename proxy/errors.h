// The proxy's own error responses (docs/http.md), byte for byte.
#pragma once

#include <string>
#include <string_view>

namespace wfp {

// Byte-identical to the upstream's 401 (no "code").
inline constexpr std::string_view kUnauthorizedBody =
    R"({"error":"Unauthorized. Please provide a valid secret key.","success":false})";

struct ProxyError {
  int status;
  std::string_view reason;
  std::string_view code;
  std::string message;
};

ProxyError invalidJson(std::string_view parse_error);
ProxyError notFound();
// The upstream's sentence for a workflow it does not know (a malformed id).
ProxyError workflowNotFound();
ProxyError methodNotAllowed();
ProxyError payloadTooLarge();
ProxyError rateLimited();
ProxyError quotaExceeded();  // a client over its clients[].quota (docs/rate-limits.md)
ProxyError upstreamUnavailable();
ProxyError upstreamTimeout();
ProxyError shuttingDown();
ProxyError notCached();
// The admin listener's actions without the bearer token of admin.token_file.
ProxyError adminUnauthorized();

// {"error":"<message>","success":false,"code":"<code>"}
std::string errorJson(const ProxyError& error);

}  // namespace wfp

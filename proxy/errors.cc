#include "proxy/errors.h"

#include "proxy/http_server.h"

namespace wfp {

ProxyError invalidJson(std::string_view parse_error) {
  return {400, "Bad Request", "invalid_json", "Request body is not a JSON object: " + std::string(parse_error)};
}
ProxyError notFound() { return {404, "Not Found", "not_found", "Not found"}; }
ProxyError workflowNotFound() { return {404, "Not Found", "not_found", "Workflow not found"}; }
ProxyError methodNotAllowed() { return {405, "Method Not Allowed", "method_not_allowed", "Method not allowed"}; }
ProxyError payloadTooLarge() { return {413, "Payload Too Large", "payload_too_large", "Request body too large"}; }
// Verbatim upstream sentence, so clients matching on the text keep working.
ProxyError rateLimited() { return {429, "Too Many Requests", "rate_limited", "Rate limit exceeded"}; }
ProxyError quotaExceeded() { return {429, "Too Many Requests", "quota_exceeded", "Quota exceeded"}; }
ProxyError upstreamUnavailable() {
  return {502, "Bad Gateway", "upstream_unavailable", "The upstream API could not be reached"};
}
ProxyError upstreamTimeout() {
  return {504, "Gateway Timeout", "upstream_timeout", "The upstream API did not answer in time"};
}
ProxyError shuttingDown() { return {503, "Service Unavailable", "shutting_down", "The proxy is shutting down"}; }
ProxyError notCached() { return {504, "Gateway Timeout", "not_cached", "Not in cache"}; }
ProxyError adminUnauthorized() { return {401, "Unauthorized", "unauthorized", "Unauthorized"}; }

std::string errorJson(const ProxyError& error) { return HttpServer::errorBody(error.message, error.code); }

}  // namespace wfp

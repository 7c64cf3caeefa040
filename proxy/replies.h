// What a client gets back: the proxy's own answers (errors, JSON), an
// upstream answer with our headers, a stored answer. One home for each
// rule of docs/http.md about response headers (X-Request-Id, Server-Timing,
// X-Cache, Cache-Status, Age, x-ratelimit-*).
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "proxy/client_request.h"
#include "proxy/errors.h"
#include "proxy/metrics.h"

namespace wfp {

// An upstream answer's headers as the client gets them: hop-by-hop fields
// out, X-Request-Id and Server-Timing ours.
HttpHeaders responseHeaders(const ClientRequest& r, const HttpHeaders& upstream_headers);
// The same fields as head lines (appendHeaderLine), appended to `head`.
void appendResponseHead(std::string& head, const ClientRequest& r, const HttpHeaders& upstream_headers);
// The Cache-Status of a run or stream the cache did not answer: how it went
// forward (fwd=bypass, fwd=request under no-cache, else fwd=miss), whether it
// shared another request's run (collapsed), whether the answer was stored,
// and for the proxy's own error its code (detail=).
std::string forwardCacheStatus(const ClientRequest& r, bool stored, std::string_view detail);
void appendForwardCacheStatus(std::string& out, const ClientRequest& r, bool stored, std::string_view detail);

void replyJson(ClientRequest& r, int status, std::string_view reason, std::string_view body, HttpHeaders extra = {});
void replyError(ClientRequest& r, const ProxyError& error, HttpHeaders extra = {});
// The queue refused it: 503 shutting_down, or 429 with Retry-After.
void replyRejected(ClientRequest& r, RejectReason why, int retry_after_s);
// 429 quota_exceeded with Retry-After: the client's quota is spent.
void replyQuotaExceeded(ClientRequest& r, int retry_after_s);
// The upstream failed before an answer: 504 on a timeout, else 502.
void replyFailure(ClientRequest& r, UpstreamFailure failure);
// The upstream's 401 body, as it answers a key it does not know (docs/http.md).
void replyUnauthorized(ClientRequest& r);
// An upstream answer, whole.
void replyUpstream(ClientRequest& r, const UpstreamHead& head, std::string body);

// The latest x-ratelimit-* values the upstream announced per configured
// organisation, replayed on cache hits (a hit spends no quota).
class RateLimitMemory {
 public:
  explicit RateLimitMemory(Metrics& metrics) : metrics_(metrics) {}
  void remember(const std::string& org, const HttpHeaders& headers);  // org "": pass_through, nothing
  void forgetRemoved(const Config& config);                            // organisations a reload removed
  const std::pair<std::string, std::string>* find(const std::string& org) const;
  size_t size() const { return seen_.size(); }

 private:
  Metrics& metrics_;
  std::unordered_map<std::string, std::pair<std::string, std::string>> seen_;
};

// A stored answer (a hit, a stale answer, a replayed stream) with X-Cache,
// Cache-Status and Age.
void replyCached(ClientRequest& r, const CachedResponsePtr& entry, std::string_view x_cache,
                 std::string_view cache_status, const RateLimitMemory& ratelimits, int64_t now_ms);

}  // namespace wfp

// Prometheus metrics (docs/operations.md): one table of families → text format 0.0.4.
// Label values are org names, route names, status codes and cache states:
// never a key.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "proxy/client_usage.h"

namespace wfp {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  void render(std::string& out, const std::string& name) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // one per bound, plus +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();

  // Called once per request (upstream request): no allocation once a label
  // set has been seen.
  void countRequest(std::string_view org, std::string_view route, int code, std::string_view cache);
  void countUpstream(const std::string& org, int code);  // code 0: no response (502/504)
  void countUpstream429(const std::string& org);
  void countCoalesced(const std::string& org);
  void observeUpstreamSeconds(double seconds) { upstream_duration_.observe(seconds); }
  void observeQueueWaitSeconds(double seconds) { queue_wait_.observe(seconds); }
  void observeOverheadSeconds(double seconds) { overhead_.observe(seconds); }
  void setQueueDepth(const std::string& org, int64_t depth) { queue_depth_[org] = depth; }
  void setRatelimitRemaining(const std::string& org, int64_t remaining) { ratelimit_remaining_[org] = remaining; }
  void setCacheEntries(int64_t entries) { cache_entries_ = entries; }
  void setRedisUp(bool up) { redis_up_ = up ? 1 : 0; }
  // workflow_proxy_redis_up is rendered only when Redis is configured: an
  // instance without Redis has nothing to be down (and no alert to raise).
  void setRedisConfigured(bool configured) { redis_configured_ = configured; }
  void setConnections(int64_t open) { connections_ = open; }
  // A TLS handshake on the client listener that did not complete, by
  // reason (tlsFailureLabel(): a fixed set, never from input).
  void countTlsHandshakeFailure(std::string_view reason);
  // The outcome of the last configuration load (the start, or a SIGHUP):
  // workflow_proxy_config_last_reload_successful, and the unix time of the
  // last one that succeeded.
  void recordReload(bool ok, double unix_seconds);
  // Entries held in one per-key map (docs/security.md: each is bounded or evicted
  // when idle), e.g. "budgets", "generations", "flights", "prepared_runs",
  // "waiters", "ratelimit_seen": workflow_proxy_tracked_entries{map}. The
  // names are fixed in code, never from input; a name seen before costs a
  // lookup, no allocation.
  void setTracked(std::string_view map, int64_t entries);

  // Per client: GET /admin/usage and workflow_proxy_client_requests_total.
  ClientUsage& clientUsage() { return client_usage_; }
  const ClientUsage& clientUsage() const { return client_usage_; }

  std::string render() const;

 private:
  struct ViewHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  std::map<std::string, uint64_t> requests_;  // rendered label set → count
  // Raw label values (joined by \x1f) → the count in requests_ (map nodes are stable).
  std::unordered_map<std::string, uint64_t*, ViewHash, std::equal_to<>> request_index_;
  std::map<std::string, uint64_t> upstream_requests_;
  std::unordered_map<std::string, uint64_t*, ViewHash, std::equal_to<>> upstream_index_;  // as request_index_
  std::map<std::string, uint64_t> upstream_429_;
  std::map<std::string, uint64_t> coalesced_;
  std::map<std::string, int64_t> queue_depth_;
  std::map<std::string, int64_t> ratelimit_remaining_;
  std::map<std::string, int64_t, std::less<>> tracked_;  // map name → entries
  std::map<std::string, uint64_t, std::less<>> tls_failures_;  // reason → count
  Histogram upstream_duration_;
  Histogram queue_wait_;
  Histogram overhead_;
  ClientUsage client_usage_;
  int64_t cache_entries_ = 0;
  int redis_up_ = 0;
  bool redis_configured_ = false;
  int64_t connections_ = 0;
  int reload_ok_ = 1;
  double reload_success_time_ = 0;
};

// Escapes a label value per the text format (\\, \", \n).
std::string escapeLabel(const std::string& value);

}  // namespace wfp

#include "proxy/metrics.h"

#include <charconv>
#include <cstdio>

#include "build_info.h"  // generated: WFP_COMMIT
#include "proxy/process_metrics.h"
#include "proxy/prometheus_text.h"

namespace wfp {

namespace {

const std::vector<double> kLatencyBounds = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                            0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,
                                            10,      30,     60,      120,    300};


std::string labels(std::initializer_list<std::pair<const char*, std::string>> pairs) {
  std::string out;
  for (const auto& [name, value] : pairs) {
    if (!out.empty()) out += ',';
    out += name;
    out += "=\"";
    out += escapeLabel(value);
    out += '"';
  }
  return out;
}

template <typename Map>
void family(std::string& out, const char* name, const char* type, const char* help, const Map& series) {
  appendFamilyHead(out, name, type, help);
  for (const auto& [label_set, value] : series) {
    out += name;
    if (!label_set.empty()) {
      out += '{';
      out += label_set;
      out += '}';
    }
    out += ' ';
    out += std::to_string(value);
    out += '\n';
  }
}

void scalar(std::string& out, const char* name, const char* type, const char* help, int64_t value) {
  std::map<std::string, int64_t> one{{"", value}};
  family(out, name, type, help, one);
}

}  // namespace

std::string escapeLabel(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket{le=\"" + formatNumber(bounds_[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  cumulative += counts_.back();
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
  out += name + "_sum " + formatNumber(sum_) + "\n";
  out += name + "_count " + std::to_string(count_) + "\n";
}

Metrics::Metrics() : upstream_duration_(kLatencyBounds), queue_wait_(kLatencyBounds), overhead_(kLatencyBounds) {}

void Metrics::countRequest(std::string_view org, std::string_view route, int code, std::string_view cache) {
  thread_local std::string raw;
  raw.assign(org);
  raw += '\x1f';
  raw.append(route);
  raw += '\x1f';
  char digits[16];
  raw.append(digits, std::to_chars(digits, digits + sizeof digits, code).ptr);
  raw += '\x1f';
  raw.append(cache);
  auto it = request_index_.find(std::string_view(raw));
  if (it == request_index_.end()) {
    uint64_t& count = requests_[labels({{"org", std::string(org)},
                                        {"route", std::string(route)},
                                        {"code", std::to_string(code)},
                                        {"cache", std::string(cache)}})];
    it = request_index_.emplace(raw, &count).first;
  }
  ++*it->second;
}

void Metrics::countUpstream(const std::string& org, int code) {
  thread_local std::string raw;
  raw.assign(org);
  raw += '\x1f';
  char digits[16];
  raw.append(digits, std::to_chars(digits, digits + sizeof digits, code).ptr);
  auto it = upstream_index_.find(std::string_view(raw));
  if (it == upstream_index_.end()) {
    uint64_t& count =
        upstream_requests_[labels({{"org", org}, {"code", code == 0 ? std::string("error") : std::to_string(code)}})];
    it = upstream_index_.emplace(raw, &count).first;
  }
  ++*it->second;
}

void Metrics::countUpstream429(const std::string& org) { ++upstream_429_[labels({{"org", org}})]; }
void Metrics::countCoalesced(const std::string& org) { ++coalesced_[labels({{"org", org}})]; }

void Metrics::recordReload(bool ok, double unix_seconds) {
  reload_ok_ = ok ? 1 : 0;
  if (ok) reload_success_time_ = unix_seconds;
}

void Metrics::countTlsHandshakeFailure(std::string_view reason) {
  if (auto it = tls_failures_.find(reason); it != tls_failures_.end()) {
    ++it->second;
    return;
  }
  tls_failures_.emplace(std::string(reason), 1);
}

void Metrics::setTracked(std::string_view map, int64_t entries) {
  if (auto it = tracked_.find(map); it != tracked_.end()) {
    it->second = entries;
    return;
  }
  tracked_.emplace(std::string(map), entries);
}

std::string Metrics::render() const {
  std::string out;
  out.reserve(4096);
  appendFamilyHead(out, "workflow_proxy_build_info", "gauge", "The version and the commit this binary was built from; always 1.");
  out += "workflow_proxy_build_info{" + labels({{"version", WFP_VERSION}, {"commit", WFP_COMMIT}}) + "} 1\n";
  family(out, "workflow_proxy_requests_total", "counter", "Client requests answered, by organisation, route, status and cache state.", requests_);
  client_usage_.render(out);
  family(out, "workflow_proxy_upstream_requests_total", "counter", "Requests sent to the upstream, by organisation and status (error: no response).", upstream_requests_);
  appendFamilyHead(out, "workflow_proxy_upstream_duration_seconds", "histogram", "Time from sending a request upstream to its complete response.");
  upstream_duration_.render(out, "workflow_proxy_upstream_duration_seconds");
  std::map<std::string, int64_t> depth;
  for (const auto& [org, d] : queue_depth_) depth[labels({{"org", org}})] = d;
  family(out, "workflow_proxy_queue_depth", "gauge", "Requests waiting in the organisation's queue.", depth);
  appendFamilyHead(out, "workflow_proxy_queue_wait_seconds", "histogram", "Time requests waited in the queue before starting upstream.");
  queue_wait_.render(out, "workflow_proxy_queue_wait_seconds");
  scalar(out, "workflow_proxy_cache_entries", "gauge", "Entries in the in-process cache.", cache_entries_);
  family(out, "workflow_proxy_coalesced_total", "counter", "Requests answered by attaching to an identical run in flight.", coalesced_);
  family(out, "workflow_proxy_upstream_429_total", "counter", "429 responses received from the upstream.", upstream_429_);
  if (redis_configured_) {
    scalar(out, "workflow_proxy_redis_up", "gauge", "1 when Redis is connected and answering.", redis_up_);
  } else {
    // The family is always there (docs/operations.md), with no sample: an instance
    // without Redis has nothing to be down, and raises no `== 0` alert.
    appendFamilyHead(out, "workflow_proxy_redis_up", "gauge", "1 when Redis is connected and answering (no sample: Redis not configured).");
  }
  std::map<std::string, int64_t> remaining;
  for (const auto& [org, r] : ratelimit_remaining_) remaining[labels({{"org", org}})] = r;
  family(out, "workflow_proxy_ratelimit_remaining", "gauge", "Starts the organisation may still make in the current window: the latest of the upstream's x-ratelimit-remaining and the proxy's own (or, with shared budgets, the fleet's) count.", remaining);
  appendFamilyHead(out, "workflow_proxy_overhead_seconds", "histogram", "Total time minus queue wait minus upstream time.");
  overhead_.render(out, "workflow_proxy_overhead_seconds");
  scalar(out, "workflow_proxy_client_connections", "gauge", "Open client connections.", connections_);
  std::map<std::string, uint64_t> tls_failures;
  for (const auto& [reason, n] : tls_failures_) tls_failures[labels({{"reason", reason}})] = n;
  family(out, "workflow_proxy_tls_handshake_failures_total", "counter",
         "TLS handshakes on the client listener that did not complete, by reason (plain_http, client_certificate, "
         "protocol, closed, timeout).",
         tls_failures);
  std::map<std::string, int64_t> tracked;
  for (const auto& [map, n] : tracked_) tracked[labels({{"map", map}})] = n;
  family(out, "workflow_proxy_tracked_entries", "gauge",
         "Entries held in a per-key map (budgets, flights, ...), each bounded or evicted when idle.", tracked);
  scalar(out, "workflow_proxy_config_last_reload_successful", "gauge",
         "1 when the last configuration load (start or SIGHUP) succeeded, 0 when it was rejected.", reload_ok_);
  appendFamilyHead(out, "workflow_proxy_config_last_reload_success_timestamp_seconds", "gauge", "Unix time of the last successful configuration load.");
  out += "workflow_proxy_config_last_reload_success_timestamp_seconds " + formatNumber(reload_success_time_) + "\n";
  renderProcessMetrics(out);
  return out;
}

}  // namespace wfp

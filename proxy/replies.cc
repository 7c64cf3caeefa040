#include "proxy/replies.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include "proxy/headers.h"

namespace wfp {

namespace {

// Milliseconds with three decimals ("12.345"), as "%.3f" would print them,
// without printf's floating-point path (a tenth of a cache hit's time).
void appendMs(std::string& out, double ms) {
  if (!(ms > 0)) ms = 0;  // negative clock skew, NaN
  if (ms > 1e12) ms = 1e12;
  auto us = static_cast<uint64_t>(std::llround(ms * 1000.0));
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, us / 1000);
  (void)ec;  // 32 bytes always hold a uint64_t
  *end++ = '.';
  uint64_t frac = us % 1000;
  *end++ = static_cast<char>('0' + frac / 100);
  *end++ = static_cast<char>('0' + frac / 10 % 10);
  *end++ = static_cast<char>('0' + frac % 10);
  out.append(buf, end);
}

// The Server-Timing value: "queue;dur=Q, upstream;dur=U".
void appendServerTiming(std::string& out, double queue_ms, double upstream_ms) {
  out.append("queue;dur=");
  appendMs(out, queue_ms);
  out.append(", upstream;dur=");
  appendMs(out, upstream_ms);
}

// X-Request-Id and Server-Timing: the proxy writes its own on every answer;
// the upstream's never reach the client.
bool perRequestField(std::string_view name) {
  return equalsIgnoreCase(name, "x-request-id") || equalsIgnoreCase(name, "server-timing");
}

// X-Cache and Cache-Status on a run or stream answered without a stored or
// fresh run to show (the proxy's own error, the token route's refusal): every
// run response says how the cache was involved. `detail`: the proxy's error
// code, "" for an upstream answer. Nothing before the cache was consulted
// (cache "-": a 400, a 401).
void appendCacheHeaders(HttpHeaders& headers, const ClientRequest& r, std::string_view detail) {
  if ((r.route.kind != RouteKind::Run && r.route.kind != RouteKind::Stream) || r.cache == "-") return;
  headers.push_back({"X-Cache", r.cache});
  headers.push_back({"Cache-Status", forwardCacheStatus(r, false, detail)});
}

}  // namespace

std::string forwardCacheStatus(const ClientRequest& r, bool stored, std::string_view detail) {
  std::string status;
  appendForwardCacheStatus(status, r, stored, detail);
  return status;
}

void appendForwardCacheStatus(std::string& out, const ClientRequest& r, bool stored, std::string_view detail) {
  out.append("workflow-proxy; fwd=");
  if (r.cache == "COALESCED") {
    out.append("miss; collapsed");
  } else if (r.bypass || r.cache == "BYPASS") {
    out.append("bypass");
  } else {
    out.append(r.cc.no_cache ? "request" : "miss");
    if (stored) out.append("; stored");
  }
  if (!detail.empty()) {
    out.append("; detail=");
    out.append(detail);
  }
}

HttpHeaders responseHeaders(const ClientRequest& r, const HttpHeaders& upstream_headers) {
  HttpHeaders headers = clientResponseHeaders(upstream_headers);
  std::erase_if(headers, [](const HttpHeader& h) { return perRequestField(h.name); });
  headers.push_back({"X-Request-Id", r.request_id});
  std::string timing;
  appendServerTiming(timing, r.queue_ms, r.upstream_ms);
  headers.push_back({"Server-Timing", std::move(timing)});
  return headers;
}

void appendResponseHead(std::string& head, const ClientRequest& r, const HttpHeaders& upstream_headers) {
  // Without a Connection header no field is named in one: the rule is then
  // asked against no list, not a walk of the list per field.
  static const HttpHeaders kNoConnection;
  const HttpHeaders& all = findHeader(upstream_headers, "connection") ? upstream_headers : kNoConnection;
  for (const HttpHeader& h : upstream_headers) {
    if (keptForClient(all, h) && !perRequestField(h.name)) appendHeaderLine(head, h.name, h.value);
  }
  appendHeaderLine(head, "X-Request-Id", r.request_id);
  head.append("Server-Timing: ");
  appendServerTiming(head, r.queue_ms, r.upstream_ms);
  head.append("\r\n");
}

void replyJson(ClientRequest& r, int status, std::string_view reason, std::string_view body, HttpHeaders extra) {
  HttpHeaders headers{{"Content-Type", "application/json"}};
  for (auto& h : extra) headers.push_back(std::move(h));
  headers.push_back({"X-Request-Id", r.request_id});
  r.exchange->respond(status, reason, headers, body);
}

void replyError(ClientRequest& r, const ProxyError& error, HttpHeaders extra) {
  replyJson(r, error.status, error.reason, errorJson(error), std::move(extra));
}

void replyRejected(ClientRequest& r, RejectReason why, int retry_after_s) {
  HttpHeaders extra;
  ProxyError error = why == RejectReason::ShuttingDown ? shuttingDown() : rateLimited();
  if (why != RejectReason::ShuttingDown) extra.push_back({"Retry-After", std::to_string(retry_after_s)});
  appendCacheHeaders(extra, r, error.code);
  replyError(r, error, std::move(extra));
}

void replyQuotaExceeded(ClientRequest& r, int retry_after_s) {
  ProxyError error = quotaExceeded();
  HttpHeaders extra{{"Retry-After", std::to_string(retry_after_s)}};
  appendCacheHeaders(extra, r, error.code);
  replyError(r, error, std::move(extra));
}

void replyFailure(ClientRequest& r, UpstreamFailure failure) {
  ProxyError error = failure == UpstreamFailure::Timeout ? upstreamTimeout() : upstreamUnavailable();
  HttpHeaders extra;
  appendCacheHeaders(extra, r, error.code);
  replyError(r, error, std::move(extra));
}

void replyUnauthorized(ClientRequest& r) {
  HttpHeaders headers{{"Content-Type", "application/json"}, {"X-Request-Id", r.request_id}};
  r.exchange->respond(401, "Unauthorized", headers, kUnauthorizedBody);
}

void replyUpstream(ClientRequest& r, const UpstreamHead& head, std::string body) {
  HttpHeaders headers = responseHeaders(r, head.headers);
  appendCacheHeaders(headers, r, "");
  r.exchange->respond(head.status, head.reason, headers, body);
}

void RateLimitMemory::remember(const std::string& org, const HttpHeaders& headers) {
  if (org.empty()) return;  // pass_through: nothing shared to remember
  const std::string* limit = findHeader(headers, "x-ratelimit-limit");
  const std::string* remaining = findHeader(headers, "x-ratelimit-remaining");
  if (!limit || !remaining) return;
  auto& seen = seen_[org];  // assigned in place: the strings keep their capacity
  seen.first = *limit;
  seen.second = *remaining;
  metrics_.setRatelimitRemaining(org, std::strtoll(remaining->c_str(), nullptr, 10));
}

void RateLimitMemory::forgetRemoved(const Config& config) {
  std::erase_if(seen_, [&](const auto& kv) { return !config.findOrganisation(kv.first); });
}

const std::pair<std::string, std::string>* RateLimitMemory::find(const std::string& org) const {
  auto it = seen_.find(org);
  return it == seen_.end() ? nullptr : &it->second;
}

void replyCached(ClientRequest& r, const CachedResponsePtr& shared, std::string_view x_cache,
                 std::string_view cache_status, const RateLimitMemory& ratelimits, int64_t now_ms) {
  const CachedResponse& entry = *shared;
  // The entry's headers were checked and formatted once (clientHead); a hit
  // only adds its own lines.
  const CachedResponse::ClientHead& stored = entry.clientHead();
  thread_local std::string head;
  head.assign(stored.lines);
  // A hit spends no quota: report the latest budget the upstream announced.
  const std::string* limit = stored.ratelimit_limit ? &*stored.ratelimit_limit : nullptr;
  const std::string* remaining = stored.ratelimit_remaining ? &*stored.ratelimit_remaining : nullptr;
  // (Per configured organisation: a pass_through key's budget is its own,
  // and one key's figures are not another's.)
  if (const auto* seen = r.principal.pass_through ? nullptr : ratelimits.find(r.principal.org_label)) {
    if (limit) limit = &seen->first;
    if (remaining) remaining = &seen->second;
  }
  if (limit) appendHeaderLine(head, "x-ratelimit-limit", *limit);
  if (remaining) appendHeaderLine(head, "x-ratelimit-remaining", *remaining);
  appendHeaderLine(head, "X-Request-Id", r.request_id);
  head.append("Server-Timing: ");
  appendServerTiming(head, r.queue_ms, r.upstream_ms);
  head.append("\r\nX-Cache: ");
  head.append(x_cache);
  head.append("\r\nCache-Status: ");
  head.append(cache_status);
  head.append("\r\nAge: ");
  int64_t age = std::max<int64_t>(0, (now_ms - entry.stored_at_ms) / 1000);
  char digits[24];
  head.append(digits, std::to_chars(digits, digits + sizeof digits, age).ptr);
  head.append("\r\n");
  if (entry.stream) {
    // Replayed as a stream: chunked, the same bytes and headers.
    HttpExchange* ex = r.exchange;
    ex->begin(entry.status, entry.reason, head, {});
    ex->write(entry.body);  // never dropped; the server flushes it as the client reads
    ex->end();
    return;
  }
  r.exchange->respond(entry.status, entry.reason, head, {}, entry.body, shared);
}

}  // namespace wfp

// Upstream admission (SPEC §5): every request that spends upstream quota —
// run flights, token fetches, the token route, pass-through paths — asks the
// scheduler for a start. Per organisation (per key digest in pass_through) a
// RateLimiter decides when, and a FairQueue decides who; libevent timers wake
// the queue exactly when the budget frees up (no polling).
//
// Tickets: submit() returns an id. start() runs once when the request may go
// upstream (possibly inside submit()); reject() runs instead when the queue
// is full or the request waited max_wait_s. cancel() before the start leaves
// the queue and spends nothing; after the start it only frees the
// concurrency slot. Every started ticket ends with finish() or retry().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "proxy/clock.h"
#include "proxy/config.h"
#include "proxy/event_loop.h"
#include "proxy/fair_queue.h"
#include "proxy/http_server.h"
#include "proxy/metrics.h"
#include "proxy/rate_limiter.h"

namespace wfp {

class SharedBudget;

struct Admission {
  std::string budget;      // org name, or "pt:<sha256>" in pass_through
  std::string org_label;   // for metrics
  std::string client;      // fairness key within the organisation
  int weight = 1;
};

enum class RejectReason { QueueFull, MaxWait, ShuttingDown };

struct AdmissionCallbacks {
  std::function<void()> start;
  std::function<void(RejectReason, int retry_after_s)> reject;
};

class Scheduler {
 public:
  // `shared` (may be null): rate_limit.shared — decisions in Redis.
  Scheduler(EventLoop& loop, const Clock& clock, Metrics& metrics, SharedBudget* shared = nullptr);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  void configure(const ConfigPtr& config);

  uint64_t submit(const Admission& admission, AdmissionCallbacks callbacks);
  void cancel(uint64_t ticket);
  // A started ticket's request is being written upstream now (the upstream
  // client's on_sending): its start counts from now. Safe inside libcurl
  // callbacks: it starts nothing (a later start only ever gets later).
  void sending(uint64_t ticket);
  void finish(uint64_t ticket, const UpstreamSignals& signals);
  // The upstream answered 429: the organisation pauses, and the request goes
  // back to the head of its queue — unless it has used its retry_429
  // retries, then false (the ticket is finished; forward the 429).
  bool retry(uint64_t ticket, const UpstreamSignals& signals);

  // Rejects everything queued (drain grace over).
  void rejectAll(RejectReason reason);
  size_t queued() const;
  std::unordered_map<std::string, size_t> depths() const;  // org label → queued

 private:
  struct Budget;
  struct Ticket;
  Budget& budget(const Admission& a);
  RateLimiter& limiterOf(Budget& b, const Ticket& t);
  bool sharedUsable(const Budget& b) const;
  void startNext(Budget& b, int via, std::string shared_member = {});
  void askShared(Budget& b);
  void sharePause(Budget& b, const UpstreamSignals& signals);
  void pump(Budget& b);
  void expire(Budget& b);
  void arm(Budget& b);
  int retryAfter(const Budget& b) const;
  void report(const Budget& b);

  EventLoop& loop_;
  const Clock& clock_;
  Metrics& metrics_;
  SharedBudget* shared_;
  ConfigPtr config_;
  uint64_t next_id_ = 1;
  std::unordered_map<std::string, std::unique_ptr<Budget>> budgets_;
  std::unordered_map<uint64_t, std::unique_ptr<Ticket>> tickets_;
};

// x-ratelimit-* and Retry-After of an upstream response.
UpstreamSignals signalsFrom(int status, const HttpHeaders& headers);

}  // namespace wfp

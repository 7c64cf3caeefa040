// Upstream admission (docs/rate-limits.md): every request that spends upstream quota —
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
//
// Bounded (docs/security.md): a budget that is not a configured organisation's (a
// pass_through key, or an organisation a reload removed) is dropped once it
// is idle — no ticket, no shared decision outstanding, and nothing left in
// its limiters (no start within the window, no pause; RateLimiter::idle()),
// so a budget made afresh for the same key admits exactly what the old one
// would have. A timer sweeps them every kSweepInterval while there are any,
// oldest activity first. At most kMaxTransientBudgets exist at once; a new
// key beyond that is refused like a full queue (429 with Retry-After).
// Their count is the metric workflow_proxy_tracked_entries{map="budgets"}.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "proxy/clock.h"
#include "proxy/config.h"
#include "proxy/runtime.h"
#include "proxy/fair_queue.h"
#include "proxy/http_types.h"
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
  Scheduler(Runtime& runtime, const Clock& clock, Metrics& metrics, SharedBudget* shared = nullptr);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  void configure(const ConfigPtr& config);

  uint64_t submit(const Admission& admission, AdmissionCallbacks callbacks);
  void cancel(uint64_t ticket);
  // A started ticket's request is being written upstream now (the upstream
  // client's on_sending): its start counts from now. Safe inside the
  // transport's callbacks: it starts nothing (a later start only ever gets later).
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

  // Drops the transient budgets that are idle now; returns how many. Run by
  // a timer every kSweepInterval; public for tests (with a fake clock).
  size_t sweep();
  size_t budgets() const { return budgets_.size(); }

  // A budget costs ~0.5 KiB while it lives (504 bytes measured for a key
  // that never had to wait; one that queued adds its FairQueue), and lives
  // about a window (1 s for pass_through) + kSweepInterval after its key's
  // last start: the cap is ~5 MiB, reached only by 10 000 keys within a
  // second or so.
  static constexpr size_t kMaxTransientBudgets = 10'000;
  static constexpr std::chrono::milliseconds kSweepInterval{100};

 private:
  struct Budget;
  struct Ticket;
  using TicketMap = std::unordered_map<uint64_t, std::unique_ptr<Ticket>>;
  // Finds or makes the admission's budget; null when a new transient budget
  // would pass kMaxTransientBudgets.
  Budget* budget(const Admission& a);
  void dropTicket(TicketMap::iterator it);
  bool idle(const Budget& b) const;
  void touch(Budget& b);
  void evict(Budget& b);
  void reportTracked();
  RateLimiter& limiterOf(Budget& b, const Ticket& t);
  bool sharedUsable(const Budget& b) const;
  static int64_t windowMs(const Budget& b);
  void startNext(Budget& b, int via, std::string shared_member = {});
  // The ticket goes upstream now: counted, then its start() runs.
  void begin(Budget& b, Ticket& t, int via, std::string shared_member);
  void askShared(Budget& b);
  void sharePause(Budget& b, const UpstreamSignals& signals);
  void pump(Budget& b);
  void expire(Budget& b);
  void arm(Budget& b);
  int retryAfter(const Budget& b) const;
  void report(Budget& b);

  Runtime& runtime_;
  const Clock& clock_;
  Metrics& metrics_;
  SharedBudget* shared_;
  ConfigPtr config_;
  uint64_t next_id_ = 1;
  // Keyed by a view of Budget::name (the budget is on the heap: the view
  // stays valid while the entry exists).
  std::unordered_map<std::string_view, std::unique_ptr<Budget>> budgets_;
  TicketMap tickets_;
  // The transient budgets, least recently active first (touch() moves one
  // to the back), so a sweep looks only at those that may be idle.
  std::list<Budget*> transient_;
  std::unordered_map<std::string, int64_t> depth_by_label_;  // org label → queued, all its budgets
  std::unique_ptr<Timer> sweep_timer_;
  bool sweep_armed_ = false;
  Clock::time_point last_full_warning_{};
};

// x-ratelimit-* and Retry-After of an upstream response.
UpstreamSignals signalsFrom(int status, const HttpHeaders& headers);

}  // namespace wfp

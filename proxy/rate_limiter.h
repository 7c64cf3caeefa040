// One organisation's upstream budget (docs/rate-limits.md). Pure: no I/O, no
// timers; the caller asks when the next start may happen and arms a timer.
//
// * At most `requests` starts in any sliding window of `window_s` (plus a
//   small safety margin, so that the upstream — which counts arrivals, a
//   little later than our starts — never sees more), and at most
//   `max_concurrent` in flight. A start is dated when it is decided, then
//   moved to when the request is actually written (onSent), so the margin
//   covers only the way from our socket to the upstream's clock.
// * `requests: auto` adopts the upstream's x-ratelimit-limit.
// * x-ratelimit-remaining: 0 → no start until window_s after that response
//   (after the request's arrival, bounded by its start + margin, when the
//   caller passes `started`).
// * An upstream 429 pauses every start of the organisation for Retry-After,
//   else one window plus jitter.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

#include "proxy/clock.h"

namespace wfp {

struct BudgetConfig {
  int requests = 10;
  bool requests_auto = false;
  double window_s = 1;
  int max_concurrent = 16;
};

// What an upstream response tells the budget.
struct UpstreamSignals {
  std::optional<int64_t> ratelimit_limit;      // x-ratelimit-limit
  std::optional<int64_t> ratelimit_remaining;  // x-ratelimit-remaining
  bool status_429 = false;
  std::optional<double> retry_after_s;         // Retry-After, seconds
  // When this request was started (the clock at its onStart()). Optional;
  // with it a remaining: 0 pauses until window_s after the request reached
  // the upstream rather than after the response came back, which under
  // saturation is the difference between ~100 % and window/(window +
  // latency) of the budget.
  std::optional<Clock::time_point> started;
};

class RateLimiter {
 public:
  RateLimiter(BudgetConfig config, const Clock& clock, uint64_t jitter_seed = 0);

  // Reload: keeps the start history and pauses.
  void configure(const BudgetConfig& config);

  // True when a start is allowed now.
  bool canStart() const;
  // The earliest time a start may happen, ignoring max_concurrent (which
  // frees up only when a request finishes). now() when canStart().
  Clock::time_point nextStartTime() const;
  bool concurrencyFull() const;

  // Spends one unit; in flight + 1. Returns the start's date, the handle
  // onSent() and UpstreamSignals::started take.
  Clock::time_point onStart();
  // The start dated `started` (by onStart() or onSent()) is only now being sent
  // upstream: it counts from now. The delay between deciding a start and
  // writing it (the loop's own work, a connection to make, a busy CPU) would
  // otherwise eat into kSafetyMargin and let the upstream see more than the
  // limit in one window. Never allows a start sooner. Returns the new date.
  Clock::time_point onSent(Clock::time_point started);
  void onFinish(const UpstreamSignals& signals);   // in flight − 1; learns
  // A request that counted as started but was given up before it reached
  // the upstream (e.g. cancelled): in flight − 1, the unit stays spent.
  void onAbandon();

  int effectiveLimit() const;  // requests, or the learned limit under auto
  int inFlight() const { return in_flight_; }
  int startsInWindow() const;  // starts within the current window
  // Budget left in the window now, as the proxy sees it (for Retry-After and metrics).
  int remaining() const;
  std::optional<Clock::time_point> pausedUntil() const;
  // Nothing in it that still decides anything: no request in flight, no
  // start within the window (+ margin), no pause in force. A fresh limiter
  // with the same configuration then admits exactly what this one would
  // (only a learned x-ratelimit-limit is not carried over), so an idle
  // limiter may be dropped without ever letting a window see more starts.
  bool idle() const;

  // An upstream Retry-After as a pause: nullopt when absent or outside
  // (0, kMaxRetryAfterS] (network input; out of range counts as absent).
  static std::optional<Clock::duration> retryAfter(const UpstreamSignals& signals);
  static constexpr double kMaxRetryAfterS = 3600;

  static constexpr std::chrono::milliseconds kSafetyMargin{10};

  Clock::duration window() const;  // window_s
  // The window the budget is enforced over: window_s + kSafetyMargin. We
  // count our starts; the upstream counts arrivals, a little later. Spacing
  // the limit-th previous start by span() rather than window() keeps every
  // upstream window within the limit as long as the start→arrival delay
  // varies by less than the margin.
  Clock::duration span() const;

 private:
  // Drops starts that no longer count (older than span()). Lazy: called by
  // every query, so starts_ never outgrows one span of starts.
  void prune() const;
  // Keeps the newest effectiveLimit() starts, the only ones that decide.
  void trim();
  bool paused(Clock::time_point now) const { return now < paused_until_; }
  Clock::duration jitter();  // uniform in [0, window/10)

  // Times in order, oldest first: a vector read from a moving head. Unlike a
  // std::deque (which allocates ~600 bytes even empty) it costs nothing
  // until the first start, and a budget is kept per pass_through key.
  class Starts {
   public:
    size_t size() const { return times_.size() - head_; }
    bool empty() const { return size() == 0; }
    Clock::time_point front() const { return times_[head_]; }
    Clock::time_point back() const { return times_.back(); }
    Clock::time_point operator[](size_t i) const { return times_[head_ + i]; }
    void pushBack(Clock::time_point t) { times_.push_back(t); }
    void popFront();
    // Inserts `t` after every time ≤ t.
    void insertSorted(Clock::time_point t);
    // Removes one entry equal to `t`, looking from the back; false if none.
    bool eraseFromBack(Clock::time_point t);

   private:
    std::vector<Clock::time_point> times_;
    size_t head_ = 0;  // entries before it are gone
  };

  BudgetConfig config_;
  const Clock& clock_;
  uint64_t rng_;                      // splitmix64 state
  std::optional<int> learned_limit_;  // last x-ratelimit-limit, clamped to ≥ 1
  // Our starts, oldest first, within span() of now once pruned. Trimmed to
  // the newest effectiveLimit() on each start: only those decide canStart()
  // and nextStartTime(), so an older one is never needed.
  mutable Starts starts_;
  int in_flight_ = 0;
  Clock::time_point paused_until_{};  // no start before this (remaining: 0, 429)
};

}  // namespace wfp

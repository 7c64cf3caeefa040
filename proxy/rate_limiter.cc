#include "proxy/rate_limiter.h"

#include <algorithm>

namespace wfp {

namespace {

using Seconds = std::chrono::duration<double>;

// window_s comes validated (> 0) from the config; the bounds only keep a bad
// value from overflowing the conversion to Clock::duration.
constexpr double kMaxWindowS = 86400.0 * 365;
// x-ratelimit-limit is network input: keep it in int range.
constexpr int64_t kMaxLearnedLimit = 1'000'000;

Clock::duration toDuration(double seconds) {
  if (!(seconds > 0)) return Clock::duration::zero();  // also NaN
  return std::chrono::round<Clock::duration>(Seconds(std::min(seconds, kMaxWindowS)));
}

// A timer armed at the returned time (libevent counts in µs) must not fire
// before the start is allowed, so round up, never down.
Clock::time_point ceilMicros(Clock::time_point t) {
  return std::chrono::ceil<std::chrono::microseconds>(t);
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

void RateLimiter::Starts::popFront() {
  if (++head_ == times_.size()) {
    times_.clear();  // keeps the capacity: the next window needs it again
    head_ = 0;
  } else if (head_ >= 32 && head_ * 2 >= times_.size()) {
    // Amortised O(1): moves at most as many as were popped since the last time.
    times_.erase(times_.begin(), times_.begin() + static_cast<std::ptrdiff_t>(head_));
    head_ = 0;
  }
}

void RateLimiter::Starts::insertSorted(Clock::time_point t) {
  if (empty() || back() <= t) {
    times_.push_back(t);
    return;
  }
  times_.insert(std::upper_bound(times_.begin() + static_cast<std::ptrdiff_t>(head_), times_.end(), t), t);
}

bool RateLimiter::Starts::eraseFromBack(Clock::time_point t) {
  for (size_t i = times_.size(); i > head_; --i) {
    if (times_[i - 1] == t) {
      times_.erase(times_.begin() + static_cast<std::ptrdiff_t>(i - 1));
      return true;
    }
  }
  return false;
}

RateLimiter::RateLimiter(BudgetConfig config, const Clock& clock, uint64_t jitter_seed)
    : config_(config), clock_(clock), rng_(jitter_seed) {}

void RateLimiter::configure(const BudgetConfig& config) {
  // Starts already made still count against the upstream's window, and a
  // pause reflects what the upstream told us: both survive a reload.
  config_ = config;
}

Clock::duration RateLimiter::window() const { return toDuration(config_.window_s); }

Clock::duration RateLimiter::span() const { return window() + kSafetyMargin; }

void RateLimiter::prune() const {
  const Clock::time_point now = clock_.now();
  const Clock::duration s = span();
  // A start at t counts during [t, t + span).
  while (!starts_.empty() && starts_.front() + s <= now) starts_.popFront();
}

int RateLimiter::effectiveLimit() const {
  if (config_.requests_auto && learned_limit_) return *learned_limit_;
  // The upstream is authoritative: a configured budget above what it
  // announces would only buy 429s.
  if (learned_limit_) return std::max(1, std::min(config_.requests, *learned_limit_));
  return std::max(1, config_.requests);
}

int RateLimiter::startsInWindow() const {
  prune();
  return static_cast<int>(starts_.size());
}

bool RateLimiter::concurrencyFull() const { return in_flight_ >= std::max(1, config_.max_concurrent); }

bool RateLimiter::canStart() const {
  return !paused(clock_.now()) && startsInWindow() < effectiveLimit() && !concurrencyFull();
}

Clock::time_point RateLimiter::nextStartTime() const {
  const Clock::time_point now = clock_.now();
  const auto limit = static_cast<size_t>(effectiveLimit());
  prune();
  const bool window_full = starts_.size() >= limit;
  if (!paused(now) && !window_full) return now;  // max_concurrent is not ours to predict

  Clock::time_point t = std::max(now, paused_until_);
  if (window_full) {
    // The window admits a start once at most limit − 1 starts remain in it,
    // i.e. once the limit-th newest start has aged out.
    t = std::max(t, starts_[starts_.size() - limit] + span());
  }
  return ceilMicros(t);
}

void RateLimiter::trim() {
  const auto limit = static_cast<size_t>(effectiveLimit());
  while (starts_.size() > limit) starts_.popFront();
}

Clock::time_point RateLimiter::onStart() {
  prune();
  const Clock::time_point now = clock_.now();
  starts_.pushBack(now);
  trim();
  ++in_flight_;
  return now;
}

Clock::time_point RateLimiter::onSent(Clock::time_point started) {
  const Clock::time_point now = clock_.now();
  if (now <= started) return started;
  prune();
  // Starts are indistinguishable apart from their time: drop one made at
  // `started` (pruned or trimmed already when the send came that late) and
  // count the start from now, keeping starts_ in time order. A send follows
  // its start closely, so both ends of the work are near the back (a large
  // budget keeps thousands of starts here).
  starts_.eraseFromBack(started);
  starts_.insertSorted(now);
  trim();
  return now;
}

void RateLimiter::onFinish(const UpstreamSignals& signals) {
  in_flight_ = std::max(0, in_flight_ - 1);
  const Clock::time_point now = clock_.now();

  if (signals.ratelimit_limit) {
    learned_limit_ = static_cast<int>(std::clamp<int64_t>(*signals.ratelimit_limit, 1, kMaxLearnedLimit));
  }
  // The upstream's window was full when this request arrived, so it frees
  // up by arrival + window_s at the latest (docs/rate-limits.md). The arrival is
  // before the response, and within the margin after our start. Under
  // saturation every window-filling request reads 0; pausing from the
  // response would idle the budget for one latency per window.
  if (signals.ratelimit_remaining && *signals.ratelimit_remaining <= 0) {
    Clock::time_point arrival_bound = now;
    if (signals.started) arrival_bound = std::min(now, *signals.started + kSafetyMargin);
    paused_until_ = std::max(paused_until_, arrival_bound + window());
  }
  if (signals.status_429) {
    // The upstream's 429 carries no Retry-After (docs/upstream-api.md): wait
    // out one window, jittered so instances sharing a key spread out.
    const Clock::duration pause = retryAfter(signals).value_or(window() + jitter());
    paused_until_ = std::max(paused_until_, now + pause);
  }
}

void RateLimiter::onAbandon() { in_flight_ = std::max(0, in_flight_ - 1); }

int RateLimiter::remaining() const {
  if (paused(clock_.now())) return 0;
  return std::max(0, effectiveLimit() - startsInWindow());
}

std::optional<Clock::time_point> RateLimiter::pausedUntil() const {
  if (!paused(clock_.now())) return std::nullopt;
  return paused_until_;
}

bool RateLimiter::idle() const { return in_flight_ == 0 && !paused(clock_.now()) && startsInWindow() == 0; }

std::optional<Clock::duration> RateLimiter::retryAfter(const UpstreamSignals& signals) {
  if (!signals.retry_after_s) return std::nullopt;
  const double s = *signals.retry_after_s;
  if (!(s > 0) || s > kMaxRetryAfterS) return std::nullopt;  // also NaN
  return toDuration(s);
}

Clock::duration RateLimiter::jitter() {
  const Clock::duration::rep range = window().count() / 10;
  if (range <= 0) return Clock::duration::zero();
  // 53 random bits → [0, 1); the product stays below range.
  const double unit = static_cast<double>(splitmix64(rng_) >> 11) * 0x1.0p-53;
  const auto j = static_cast<Clock::duration::rep>(unit * static_cast<double>(range));
  return Clock::duration(std::min(j, range - 1));
}

}  // namespace wfp

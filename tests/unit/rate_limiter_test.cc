#include "proxy/rate_limiter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <vector>

namespace wfp {
namespace {

using namespace std::chrono_literals;
using TimePoint = Clock::time_point;

class FakeClock final : public Clock {
 public:
  TimePoint now() const override { return now_; }
  void advance(Clock::duration d) { now_ += d; }
  void set(TimePoint t) { now_ = t; }

 private:
  TimePoint now_ = TimePoint(1000s);  // away from the epoch, like a real steady clock
};

constexpr auto kMargin = RateLimiter::kSafetyMargin;

BudgetConfig budget(int requests, double window_s = 1, int max_concurrent = 1000) {
  BudgetConfig c;
  c.requests = requests;
  c.window_s = window_s;
  c.max_concurrent = max_concurrent;
  return c;
}

UpstreamSignals ok() { return {}; }

UpstreamSignals status429(std::optional<double> retry_after = std::nullopt) {
  UpstreamSignals s;
  s.status_429 = true;
  s.retry_after_s = retry_after;
  return s;
}

// Starts and immediately finishes one request; the unit stays spent.
void startOne(RateLimiter& rl) {
  ASSERT_TRUE(rl.canStart());
  rl.onStart();
  rl.onFinish(ok());
}

// True when no half-open interval [x, x + window) holds more than `limit`
// of the sorted times.
bool withinLimit(const std::vector<TimePoint>& sorted, size_t limit, Clock::duration window) {
  for (size_t i = 0; i + limit < sorted.size(); ++i) {
    if (sorted[i + limit] - sorted[i] < window) return false;
  }
  return true;
}

// The upstream's exact sliding 1 s window over arrivals (which need not come
// in order). Returns the remaining budget after an admitted arrival, or
// nullopt for a 429 (which does not count).
class UpstreamWindow {
 public:
  explicit UpstreamWindow(int limit) : limit_(limit) {}
  std::optional<int> arrive(TimePoint arrival) {
    while (!arrivals_.empty() && arrivals_.front() <= arrival - 1s) arrivals_.pop_front();
    if (static_cast<int>(arrivals_.size()) >= limit_) return std::nullopt;
    arrivals_.insert(std::upper_bound(arrivals_.begin(), arrivals_.end(), arrival), arrival);
    return limit_ - static_cast<int>(arrivals_.size());
  }

 private:
  int limit_;
  std::deque<TimePoint> arrivals_;
};

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

TEST(RateLimiter, ExactlyRequestsPerWindowThenBlocked) {
  FakeClock clock;
  const TimePoint t0 = clock.now();
  RateLimiter rl(budget(10), clock);
  EXPECT_EQ(rl.remaining(), 10);
  EXPECT_EQ(rl.nextStartTime(), t0);
  for (int i = 0; i < 10; ++i) startOne(rl);
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.startsInWindow(), 10);
  EXPECT_EQ(rl.remaining(), 0);
  EXPECT_FALSE(rl.pausedUntil());  // blocked by the window, not paused
  EXPECT_EQ(rl.nextStartTime(), t0 + 1s + kMargin);

  clock.set(t0 + 1s + kMargin - 1ns);
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.nextStartTime(), t0 + 1s + kMargin);
  clock.set(t0 + 1s + kMargin);
  EXPECT_TRUE(rl.canStart());
  EXPECT_EQ(rl.nextStartTime(), clock.now());
  EXPECT_EQ(rl.startsInWindow(), 0);  // all ten were at t0
  EXPECT_EQ(rl.remaining(), 10);
}

TEST(RateLimiter, SlidesWithStartsSpreadOverTheWindow) {
  FakeClock clock;
  const TimePoint t0 = clock.now();
  RateLimiter rl(budget(4), clock);
  for (int i = 0; i < 4; ++i) {
    clock.set(t0 + i * 200ms);
    startOne(rl);
  }
  // Starts at 0, 200, 400, 600 ms: the window frees one unit as each ages out.
  clock.set(t0 + 700ms);
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.nextStartTime(), t0 + 1s + kMargin);
  clock.set(t0 + 1s + kMargin);
  EXPECT_EQ(rl.startsInWindow(), 3);
  startOne(rl);
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.nextStartTime(), t0 + 200ms + 1s + kMargin);
  clock.set(t0 + 200ms + 1s + kMargin);
  startOne(rl);
  EXPECT_EQ(rl.nextStartTime(), t0 + 400ms + 1s + kMargin);
}

TEST(RateLimiter, NextStartTimeIsRoundedUpToTheMicrosecond) {
  FakeClock clock;
  clock.advance(1ns);  // a start off the µs grid
  const TimePoint t0 = clock.now();
  RateLimiter rl(budget(1), clock);
  startOne(rl);
  const TimePoint next = rl.nextStartTime();
  EXPECT_GE(next, t0 + 1s + kMargin);
  EXPECT_LT(next, t0 + 1s + kMargin + 1us);
  EXPECT_EQ(next.time_since_epoch() % 1us, 0ns);  // a µs timer armed at it fires in time
  clock.set(next);
  EXPECT_TRUE(rl.canStart());
}

// 5× overload for 60 s, every start as early as the limiter allows: no window
// of window_s (exact) ever sees more than `requests` starts, nor more than
// `requests` arrivals when each start reaches the upstream up to the margin
// later, and at least 98 % of the budget is used.
TEST(RateLimiter, SustainedOverloadStaysWithinAndUsesTheBudget) {
  FakeClock clock;
  const TimePoint t0 = clock.now();
  const TimePoint end = t0 + 60s;
  const int requests = 10;
  RateLimiter rl(budget(requests, 1, 16), clock);

  const auto arrival_interval = std::chrono::microseconds(1s) / (5 * requests);  // 5× the budget
  TimePoint next_arrival = t0;
  size_t backlog = 0;
  std::multiset<TimePoint> finishes;
  std::vector<TimePoint> starts;
  std::vector<TimePoint> arrivals;
  uint64_t rng = 42;

  for (int guard = 0;; ++guard) {
    ASSERT_LT(guard, 100'000) << "the simulation does not advance";
    TimePoint t = next_arrival;
    if (!finishes.empty()) t = std::min(t, *finishes.begin());
    if (backlog > 0 && !rl.concurrencyFull()) t = std::min(t, rl.nextStartTime());
    if (t >= end) break;
    ASSERT_GE(t, clock.now());
    clock.set(t);
    while (next_arrival <= t) {
      ++backlog;
      next_arrival += arrival_interval;
    }
    while (!finishes.empty() && *finishes.begin() <= t) {
      finishes.erase(finishes.begin());
      rl.onFinish(ok());
    }
    while (backlog > 0 && rl.canStart()) {
      rl.onStart();
      --backlog;
      starts.push_back(t);
      arrivals.push_back(t + std::chrono::microseconds(splitmix(rng) % 10'001));  // 0..10 ms
      finishes.insert(t + 50ms + std::chrono::milliseconds(splitmix(rng) % 400));
    }
  }

  std::sort(arrivals.begin(), arrivals.end());
  EXPECT_TRUE(withinLimit(starts, requests, 1s));
  EXPECT_TRUE(withinLimit(starts, requests, 1s + kMargin));
  EXPECT_TRUE(withinLimit(arrivals, requests, 1s));
  EXPECT_GE(starts.size(), static_cast<size_t>(std::ceil(0.98 * 60 * requests))) << starts.size();
  EXPECT_LE(starts.size(), static_cast<size_t>(60 * requests));
}

// The same overload against a model of the upstream (an exact sliding 1 s
// window over arrivals, sending x-ratelimit-* like tests/upstream_sim): the
// remaining: 0 that every window-filling request reads must not idle the
// budget, and no request may be refused.
TEST(RateLimiter, SaturatedAgainstAnUpstreamModelGetsNo429) {
  FakeClock clock;
  const TimePoint t0 = clock.now();
  const TimePoint end = t0 + 60s;
  const int requests = 10;
  RateLimiter rl(budget(requests, 1, 16), clock);

  struct Pending {
    TimePoint started;
    int remaining;  // what the upstream answered
    bool refused;
  };
  std::multimap<TimePoint, Pending> responses;
  UpstreamWindow upstream(requests);
  size_t starts = 0;
  size_t refused = 0;
  uint64_t rng = 7;

  for (int guard = 0;; ++guard) {
    ASSERT_LT(guard, 100'000) << "the simulation does not advance";
    TimePoint t = rl.concurrencyFull() ? end : rl.nextStartTime();
    if (!responses.empty()) t = std::min(t, responses.begin()->first);
    if (t >= end) break;
    clock.set(t);
    while (!responses.empty() && responses.begin()->first <= t) {
      const Pending p = responses.begin()->second;
      responses.erase(responses.begin());
      UpstreamSignals s;
      s.started = p.started;
      if (p.refused) {
        s.status_429 = true;
      } else {
        s.ratelimit_limit = requests;
        s.ratelimit_remaining = p.remaining;
      }
      rl.onFinish(s);
    }
    while (rl.canStart()) {  // always backlogged
      rl.onStart();
      ++starts;
      // The upstream counts the arrival, 2..10 ms after our start.
      const TimePoint arrival = t + 2ms + std::chrono::microseconds(splitmix(rng) % 8'001);
      Pending p{t, 0, false};
      if (std::optional<int> remaining = upstream.arrive(arrival)) {
        p.remaining = *remaining;
      } else {
        p.refused = true;
        ++refused;
      }
      responses.emplace(arrival + 300ms, p);
    }
  }
  EXPECT_EQ(refused, 0u);
  EXPECT_GE(starts, static_cast<size_t>(std::ceil(0.98 * 60 * requests))) << starts;
}

// A start is dated again when its request is written: the time between the
// decision and the send (a busy loop, a connection to make) must not eat the
// margin.
TEST(RateLimiter, AStartCountsFromWhenItIsSent) {
  FakeClock clock;
  const TimePoint t0 = clock.now();
  RateLimiter rl(budget(2), clock);
  rl.onStart();
  rl.onStart();
  EXPECT_EQ(rl.nextStartTime(), t0 + 1s + kMargin);
  clock.set(t0 + 30ms);
  EXPECT_EQ(rl.onSent(t0), t0 + 30ms);
  clock.set(t0 + 50ms);
  EXPECT_EQ(rl.onSent(t0), t0 + 50ms);
  EXPECT_EQ(rl.nextStartTime(), t0 + 30ms + 1s + kMargin);
  clock.set(t0 + 30ms + 1s + kMargin - 1ns);
  EXPECT_FALSE(rl.canStart());
  clock.set(t0 + 30ms + 1s + kMargin);
  ASSERT_TRUE(rl.canStart());
  rl.onStart();
  EXPECT_EQ(rl.nextStartTime(), t0 + 50ms + 1s + kMargin);
  // Sent at once: nothing moves.
  EXPECT_EQ(rl.onSent(clock.now()), clock.now());
  EXPECT_EQ(rl.nextStartTime(), t0 + 50ms + 1s + kMargin);

  // Sent after its start had aged out of the window: it counts again, from the send.
  FakeClock clock2;
  const TimePoint t1 = clock2.now();
  RateLimiter rl2(budget(1), clock2);
  rl2.onStart();
  clock2.set(t1 + 2s);
  EXPECT_TRUE(rl2.canStart());
  EXPECT_EQ(rl2.onSent(t1), t1 + 2s);
  EXPECT_FALSE(rl2.canStart());
  EXPECT_EQ(rl2.nextStartTime(), t1 + 3s + kMargin);
}

// With a clock that moves on every reading, as the real one does, the date
// onStart() returns is the handle onSent() needs: a start re-dated by it is
// counted once, never twice.
TEST(RateLimiter, OnSentFindsTheStartByTheDateOnStartReturned) {
  class TickingClock final : public Clock {
   public:
    TimePoint now() const override { return now_ += 1us; }

   private:
    mutable TimePoint now_ = TimePoint(1000s);
  } clock;
  RateLimiter rl(budget(3), clock);
  for (int i = 0; i < 2; ++i) {
    const TimePoint started = rl.onStart();
    EXPECT_GT(rl.onSent(started), started);
  }
  EXPECT_EQ(rl.startsInWindow(), 2);
  EXPECT_TRUE(rl.canStart());
  rl.onSent(rl.onStart());
  EXPECT_EQ(rl.startsInWindow(), 3);
  EXPECT_FALSE(rl.canStart());
}

// Saturated, with sends that leave up to 200 ms after their start was decided
// (far beyond the margin) in a random order: dated by their sends, the starts
// never give the upstream more than its limit in any window.
TEST(RateLimiter, LateSendsAgainstAnUpstreamModelGetNo429) {
  FakeClock clock;
  const TimePoint t0 = clock.now();
  const TimePoint end = t0 + 30s;
  const int requests = 10;
  RateLimiter rl(budget(requests, 1, 16), clock);

  enum class Kind { Send, Response };
  struct Event {
    Kind kind;
    TimePoint started;  // the limiter's date of this start
    bool refused = false;
  };
  std::multimap<TimePoint, Event> events;
  UpstreamWindow upstream(requests);
  size_t starts = 0;
  size_t refused = 0;
  uint64_t rng = 11;

  for (int guard = 0;; ++guard) {
    ASSERT_LT(guard, 100'000) << "the simulation does not advance";
    TimePoint t = rl.concurrencyFull() ? end : rl.nextStartTime();
    if (!events.empty()) t = std::min(t, events.begin()->first);
    if (t >= end) break;
    clock.set(t);
    while (!events.empty() && events.begin()->first <= t) {
      const Event e = events.begin()->second;
      events.erase(events.begin());
      if (e.kind == Kind::Response) {
        UpstreamSignals s;
        s.started = e.started;
        s.status_429 = e.refused;
        rl.onFinish(s);
        continue;
      }
      const TimePoint sent = rl.onSent(e.started);
      const TimePoint arrival = sent + std::chrono::microseconds(splitmix(rng) % (kMargin / 1us));
      Event response{Kind::Response, sent};
      if (!upstream.arrive(arrival)) {
        response.refused = true;
        ++refused;
      }
      events.emplace(arrival + 100ms, response);
    }
    while (rl.canStart()) {  // always backlogged
      const TimePoint started = rl.onStart();
      ++starts;
      const auto delay = std::chrono::microseconds(splitmix(rng) % 200'001);
      events.emplace(t + delay, Event{Kind::Send, started});
    }
  }
  EXPECT_EQ(refused, 0u);
  EXPECT_GE(starts, 30u * requests * 8 / 10) << starts;
}

TEST(RateLimiter, MaxConcurrentBlocksUntilAFinish) {
  FakeClock clock;
  RateLimiter rl(budget(10, 1, 2), clock);
  rl.onStart();
  rl.onStart();
  EXPECT_EQ(rl.inFlight(), 2);
  EXPECT_TRUE(rl.concurrencyFull());
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.nextStartTime(), clock.now());  // the window would admit one
  EXPECT_EQ(rl.remaining(), 8);

  rl.onFinish(ok());
  EXPECT_FALSE(rl.concurrencyFull());
  EXPECT_TRUE(rl.canStart());
  rl.onStart();
  EXPECT_FALSE(rl.canStart());

  rl.onAbandon();  // gives the slot back, not the unit
  EXPECT_EQ(rl.inFlight(), 1);
  EXPECT_TRUE(rl.canStart());
  EXPECT_EQ(rl.startsInWindow(), 3);

  rl.onFinish(ok());
  rl.onFinish(ok());  // more finishes than starts: never below zero
  rl.onAbandon();
  EXPECT_EQ(rl.inFlight(), 0);
}

TEST(RateLimiter, RemainingZeroPausesForAWindowAfterTheResponse) {
  FakeClock clock;
  RateLimiter rl(budget(10), clock);
  rl.onStart();
  clock.advance(300ms);
  UpstreamSignals s;
  s.ratelimit_remaining = 3;  // informative only
  rl.onFinish(s);
  EXPECT_TRUE(rl.canStart());

  rl.onStart();
  clock.advance(250ms);
  const TimePoint response = clock.now();
  s.ratelimit_remaining = 0;
  rl.onFinish(s);
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.remaining(), 0);
  ASSERT_TRUE(rl.pausedUntil());
  EXPECT_EQ(*rl.pausedUntil(), response + 1s);
  EXPECT_EQ(rl.nextStartTime(), response + 1s);

  clock.set(response + 1s - 1us);
  EXPECT_FALSE(rl.canStart());
  clock.set(response + 1s);
  EXPECT_TRUE(rl.canStart());
  EXPECT_FALSE(rl.pausedUntil());
  EXPECT_EQ(rl.remaining(), 10);  // both starts have aged out
}

TEST(RateLimiter, RemainingZeroWithTheStartTimePausesFromTheArrival) {
  FakeClock clock;
  RateLimiter rl(budget(10), clock);
  const TimePoint started = clock.now();
  rl.onStart();
  clock.advance(400ms);
  UpstreamSignals s;
  s.ratelimit_remaining = 0;
  s.started = started;
  rl.onFinish(s);
  // The request reached the upstream by started + margin at the latest.
  EXPECT_EQ(rl.nextStartTime(), started + kMargin + 1s);

  // A start time later than the response (a caller bug) is not trusted.
  FakeClock clock2;
  RateLimiter rl2(budget(10), clock2);
  rl2.onStart();
  s.started = clock2.now() + 5s;
  rl2.onFinish(s);
  EXPECT_EQ(rl2.nextStartTime(), clock2.now() + 1s);
}

TEST(RateLimiter, Upstream429PausesForRetryAfter) {
  FakeClock clock;
  RateLimiter rl(budget(10), clock);
  rl.onStart();
  const TimePoint now = clock.now();
  rl.onFinish(status429(2.5));
  EXPECT_EQ(rl.inFlight(), 0);
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.remaining(), 0);
  EXPECT_EQ(rl.nextStartTime(), now + 2500ms);

  // A shorter pause never shortens a longer one.
  rl.onStart();
  rl.onFinish(status429(1));
  UpstreamSignals zero;
  zero.ratelimit_remaining = 0;
  rl.onFinish(zero);
  EXPECT_EQ(*rl.pausedUntil(), now + 2500ms);

  clock.set(now + 2500ms);
  EXPECT_TRUE(rl.canStart());
}

TEST(RateLimiter, Upstream429WithoutRetryAfterPausesAWindowPlusJitter) {
  const double insane[] = {0, -1, 3600.5, 1e12, std::numeric_limits<double>::quiet_NaN(),
                           std::numeric_limits<double>::infinity()};
  FakeClock clock;
  RateLimiter rl(budget(10, 2), clock, 1234);
  std::vector<Clock::duration> jitters;
  for (int i = 0; i < 200; ++i) {
    rl.onStart();
    UpstreamSignals s = status429();
    if (i % 2) s.retry_after_s = insane[(i / 2) % std::size(insane)];
    rl.onFinish(s);
    ASSERT_TRUE(rl.pausedUntil());
    const Clock::duration pause = *rl.pausedUntil() - clock.now();
    EXPECT_GE(pause, 2s);
    EXPECT_LT(pause, 2s + 200ms);  // jitter in [0, window/10)
    jitters.push_back(pause - 2s);
    clock.set(*rl.pausedUntil());
  }
  // Spread over the range, not stuck at one end.
  EXPECT_LT(*std::min_element(jitters.begin(), jitters.end()), 20ms);
  EXPECT_GT(*std::max_element(jitters.begin(), jitters.end()), 180ms);
  EXPECT_GT(std::set<Clock::duration>(jitters.begin(), jitters.end()).size(), 150u);
}

TEST(RateLimiter, JitterIsDeterministicPerSeed) {
  auto pauses = [](uint64_t seed) {
    FakeClock clock;
    RateLimiter rl(budget(10), clock, seed);
    std::vector<Clock::duration> out;
    for (int i = 0; i < 8; ++i) {
      rl.onStart();
      rl.onFinish(status429());
      out.push_back(*rl.pausedUntil() - clock.now());
      clock.set(*rl.pausedUntil());
    }
    return out;
  };
  EXPECT_EQ(pauses(1), pauses(1));
  EXPECT_EQ(pauses(0), pauses(0));
  EXPECT_NE(pauses(1), pauses(2));
}

TEST(RateLimiter, RequestsAutoLearnsTheUpstreamLimit) {
  FakeClock clock;
  BudgetConfig c = budget(10);
  c.requests_auto = true;
  RateLimiter rl(c, clock);
  EXPECT_EQ(rl.effectiveLimit(), 10);  // until a header is seen

  rl.onStart();
  UpstreamSignals s;
  s.ratelimit_limit = 5;
  s.ratelimit_remaining = 4;
  rl.onFinish(s);
  EXPECT_EQ(rl.effectiveLimit(), 5);
  EXPECT_EQ(rl.remaining(), 4);

  // Five per window from now on.
  clock.advance(2s);
  const TimePoint t = clock.now();
  for (int i = 0; i < 5; ++i) startOne(rl);
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.nextStartTime(), t + 1s + kMargin);

  // Nonsense from the network is clamped.
  s = {};
  s.ratelimit_limit = 0;
  rl.onFinish(s);
  EXPECT_EQ(rl.effectiveLimit(), 1);
  s.ratelimit_limit = -7;
  rl.onFinish(s);
  EXPECT_EQ(rl.effectiveLimit(), 1);
  s.ratelimit_limit = std::numeric_limits<int64_t>::max();
  rl.onFinish(s);
  EXPECT_GE(rl.effectiveLimit(), 1);
  EXPECT_LE(rl.effectiveLimit(), std::numeric_limits<int>::max());
}

TEST(RateLimiter, AFixedBudgetNeverExceedsWhatTheUpstreamAnnounces) {
  FakeClock clock;
  RateLimiter rl(budget(10), clock);
  rl.onStart();
  UpstreamSignals s;
  s.ratelimit_limit = 3;
  rl.onFinish(s);
  EXPECT_EQ(rl.effectiveLimit(), 3);  // min(configured, announced): more would only buy 429s
  s.ratelimit_limit = 50;
  rl.onStart();
  rl.onFinish(s);
  EXPECT_EQ(rl.effectiveLimit(), 10);  // but never more than configured
  BudgetConfig c = budget(10);
  c.requests_auto = true;
  rl.configure(c);
  EXPECT_EQ(rl.effectiveLimit(), 50);  // auto: what was learned
}

TEST(RateLimiter, ConfigureAppliesAtOnceAndKeepsHistoryAndPauses) {
  FakeClock clock;
  const TimePoint t0 = clock.now();
  RateLimiter rl(budget(10), clock);
  for (int i = 0; i < 10; ++i) {
    clock.set(t0 + i * 50ms);
    startOne(rl);
  }
  EXPECT_FALSE(rl.canStart());

  rl.configure(budget(20));
  EXPECT_EQ(rl.startsInWindow(), 10);
  EXPECT_EQ(rl.remaining(), 10);
  EXPECT_TRUE(rl.canStart());

  rl.configure(budget(4));
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.remaining(), 0);
  // Down to 3 in the window: the 7th start (at 300 ms) must age out.
  EXPECT_EQ(rl.nextStartTime(), t0 + 300ms + 1s + kMargin);

  rl.configure(budget(10, 2));  // a longer window holds starts longer
  EXPECT_FALSE(rl.canStart());
  EXPECT_EQ(rl.nextStartTime(), t0 + 2s + kMargin);

  rl.configure(budget(10, 1, 1));
  rl.onStart();
  EXPECT_TRUE(rl.concurrencyFull());
  rl.configure(budget(10, 1, 2));
  EXPECT_FALSE(rl.concurrencyFull());
  rl.onFinish(status429(30));
  rl.configure(budget(50));
  EXPECT_EQ(rl.nextStartTime(), clock.now() + 30s);  // the pause survives a reload
}

// idle(): the scheduler drops a pass_through budget on its word, so it must
// hold while anything could still change a decision (docs/security.md).
TEST(RateLimiter, IdleOnlyOnceNothingInItMattersAnyMore) {
  FakeClock clock;
  RateLimiter rl(budget(2), clock);
  EXPECT_TRUE(rl.idle());
  const TimePoint t0 = clock.now();
  rl.onStart();
  EXPECT_FALSE(rl.idle()) << "in flight";
  rl.onFinish(ok());
  EXPECT_FALSE(rl.idle()) << "its start is in the window";
  clock.set(t0 + 1s + kMargin - 1us);
  EXPECT_FALSE(rl.idle()) << "its start still counts (window + margin)";
  clock.set(t0 + 1s + kMargin);
  EXPECT_TRUE(rl.idle());

  rl.onStart();
  rl.onFinish(status429(30));
  const TimePoint paused_at = clock.now();
  clock.set(paused_at + 29s);
  EXPECT_FALSE(rl.idle()) << "a pause is in force";
  clock.set(paused_at + 30s);
  EXPECT_TRUE(rl.idle());

  // A started request given up still holds its slot until onAbandon.
  rl.onStart();
  clock.set(paused_at + 60s);
  EXPECT_FALSE(rl.idle());
  rl.onAbandon();
  EXPECT_TRUE(rl.idle());
}

// Retry-After is network input: only (0, 1 h] is believed, the rest is absent.
TEST(RateLimiter, RetryAfterOutOfRangeIsIgnored) {
  auto pause = [](std::optional<double> s) { return RateLimiter::retryAfter(status429(s)); };
  EXPECT_EQ(pause(std::nullopt), std::nullopt);
  EXPECT_EQ(pause(2.5), std::optional<Clock::duration>(2500ms));
  EXPECT_EQ(pause(3600), std::optional<Clock::duration>(3600s));
  for (double bad : {0.0, -1.0, 3600.001, 1e18, std::numeric_limits<double>::infinity(),
                     std::numeric_limits<double>::quiet_NaN()}) {
    EXPECT_EQ(pause(bad), std::nullopt) << bad;
  }
  // With an absurd one the limiter pauses a window plus jitter.
  FakeClock clock;
  RateLimiter rl(budget(10), clock);
  rl.onStart();
  rl.onFinish(status429(1e18));
  ASSERT_TRUE(rl.pausedUntil());
  EXPECT_LE(*rl.pausedUntil(), clock.now() + 1100ms);
}

// The start log is a vector read from a moving head: a large budget that
// runs for many windows keeps exactly the starts of the last one.
TEST(RateLimiter, ALargeBudgetKeepsItsWindowAcrossManyWindows) {
  FakeClock clock;
  const TimePoint t0 = clock.now();
  RateLimiter rl(budget(1000, 1, 1'000'000), clock);
  std::deque<TimePoint> model;
  for (int i = 0; i < 20'000; ++i) {
    clock.set(t0 + i * 333us);
    while (!model.empty() && model.front() + 1s + kMargin <= clock.now()) model.pop_front();
    ASSERT_EQ(rl.canStart(), model.size() < 1000) << i;
    if (rl.canStart()) {
      TimePoint at = rl.onStart();
      model.push_back(at);
      if (i % 7 == 0) {  // sent a little later: moves to the back
        clock.set(clock.now() + 100us);
        model.erase(std::find(model.begin(), model.end(), at));
        model.push_back(rl.onSent(at));
      }
      rl.onFinish(ok());
    }
    while (!model.empty() && model.front() + 1s + kMargin <= clock.now()) model.pop_front();
    ASSERT_EQ(rl.startsInWindow(), static_cast<int>(model.size())) << i;
  }
}

}  // namespace
}  // namespace wfp

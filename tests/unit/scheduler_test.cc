// The scheduler's bookkeeping around the rate limiter, with a clock that
// moves on every reading as the real one does (a clock that stands still
// hides a start dated twice).
#include "proxy/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "proxy/event_loop.h"

namespace wfp {
namespace {

using namespace std::chrono_literals;

class TickingClock final : public Clock {
 public:
  Clock::time_point now() const override { return now_ += 1us; }

 private:
  mutable Clock::time_point now_ = Clock::time_point(1000s);
};

ConfigPtr budgetOf(int requests) {
  ConfigResult r = loadConfigString("organisations:\n"
                                    "  - name: acme\n"
                                    "    api_key: sk_test_acme\n"
                                    "    rate_limit:\n"
                                    "      requests: " +
                                        std::to_string(requests) +
                                        "\n"
                                        "      window_s: 1\n",
                                    "test.yaml", [](const std::string&) { return std::nullopt; });
  EXPECT_TRUE(r.config) << (r.errors.empty() ? "" : r.errors[0]);
  return r.config;
}

Admission acme() { return Admission{"acme", "acme", "client", 1}; }

// A clock the test moves.
class FakeClock final : public Clock {
 public:
  Clock::time_point now() const override { return now_; }
  void advance(Clock::duration d) { now_ += d; }

 private:
  Clock::time_point now_ = Clock::time_point(1000s);
};

// A pass_through key's budget, as the run handler names it (the digest does
// not matter to the scheduler).
Admission passThrough(int n) { return Admission{"pt:" + std::to_string(n), "pass_through", "-", 1}; }

// The value of one series in the metrics text, or -1.
double metricOf(const Metrics& metrics, const std::string& series) {
  const std::string text = metrics.render();
  const std::string line = "\n" + series + " ";
  auto at = text.find(line);
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + line.size()));
}

// Start/finish bookkeeping for one test: which tickets started (and when),
// and which were refused.
struct Recorder {
  explicit Recorder(const Clock& clock) : clock(clock) {}
  AdmissionCallbacks callbacks(const std::string& key) {
    return {[this, key] { starts[key].push_back(clock.now()); ++started; },
            [this](RejectReason reason, int retry_after) {
              rejects.push_back(reason);
              last_retry_after = retry_after;
            }};
  }
  const Clock& clock;
  std::map<std::string, std::vector<Clock::time_point>> starts;
  int started = 0;
  std::vector<RejectReason> rejects;
  int last_retry_after = 0;
};

// A started request sent upstream is one start, not two: the next one of a
// budget of two still goes at once.
TEST(Scheduler, ASentStartCountsOnce) {
  EventLoop loop;
  TickingClock clock;
  Metrics metrics;
  Scheduler scheduler(loop, clock, metrics);
  scheduler.configure(budgetOf(2));
  std::vector<int> started;
  auto submit = [&](int n) {
    return scheduler.submit(acme(), {[&started, n] { started.push_back(n); }, [](RejectReason, int) {}});
  };
  uint64_t first = submit(1);
  ASSERT_EQ(started, std::vector<int>{1});
  scheduler.sending(first);
  uint64_t second = submit(2);
  EXPECT_EQ(started, (std::vector<int>{1, 2}));
  scheduler.sending(second);
  submit(3);
  EXPECT_EQ(started.size(), 2u) << "the third waits for the window";
  EXPECT_EQ(scheduler.queued(), 1u);
  scheduler.rejectAll(RejectReason::ShuttingDown);
}

// docs/security.md: a pass_through key's budget is dropped once idle, so 10 000
// keys that each ran once leave nothing behind a window later.
TEST(Scheduler, PassThroughBudgetsAreDroppedOnceTheirWindowHasPassed) {
  EventLoop loop;
  FakeClock clock;
  Metrics metrics;
  Scheduler scheduler(loop, clock, metrics);
  scheduler.configure(budgetOf(2));
  Recorder rec(clock);
  constexpr int kKeys = 10'000;
  for (int i = 0; i < kKeys; ++i) {
    uint64_t t = scheduler.submit(passThrough(i), rec.callbacks("k"));
    scheduler.sending(t);
    scheduler.finish(t, UpstreamSignals{});
  }
  EXPECT_EQ(rec.started, kKeys);
  EXPECT_EQ(scheduler.budgets(), static_cast<size_t>(kKeys));
  EXPECT_EQ(metricOf(metrics, "workflow_proxy_tracked_entries{map=\"budgets\"}"), kKeys);

  // Within the window their starts still count: nothing goes.
  clock.advance(500ms);
  EXPECT_EQ(scheduler.sweep(), 0u);
  EXPECT_EQ(scheduler.budgets(), static_cast<size_t>(kKeys));
  // Once it has passed (window 1 s + the limiter's margin), they all go.
  clock.advance(500ms + RateLimiter::kSafetyMargin + 1ms);
  EXPECT_EQ(scheduler.sweep(), static_cast<size_t>(kKeys));
  EXPECT_EQ(scheduler.budgets(), 0u);
  EXPECT_EQ(metricOf(metrics, "workflow_proxy_tracked_entries{map=\"budgets\"}"), 0);

  // A configured organisation's budget stays (bounded by the configuration).
  uint64_t t = scheduler.submit(acme(), rec.callbacks("acme"));
  scheduler.finish(t, UpstreamSignals{});
  clock.advance(10s);
  EXPECT_EQ(scheduler.sweep(), 0u);
  EXPECT_EQ(scheduler.budgets(), 1u);
  EXPECT_EQ(metricOf(metrics, "workflow_proxy_tracked_entries{map=\"budgets\"}"), 1);
}

// A budget with a queued or running request, or a pause in force, is kept.
TEST(Scheduler, ABudgetInUseOrPausedIsKept) {
  EventLoop loop;
  FakeClock clock;
  Metrics metrics;
  Scheduler scheduler(loop, clock, metrics);
  scheduler.configure(budgetOf(2));
  Recorder rec(clock);
  // The default pass_through allowance: 10 per second.
  std::vector<uint64_t> tickets;
  for (int i = 0; i < 11; ++i) tickets.push_back(scheduler.submit(passThrough(1), rec.callbacks("k")));
  ASSERT_EQ(rec.started, 10);
  ASSERT_EQ(scheduler.queued(), 1u);
  clock.advance(60s);  // far past the window, well within max_wait_s
  EXPECT_EQ(scheduler.sweep(), 0u);
  EXPECT_EQ(scheduler.budgets(), 1u);

  // All but one finish; the queued one starts (the window has passed) and runs.
  for (int i = 0; i < 10; ++i) scheduler.finish(tickets[static_cast<size_t>(i)], UpstreamSignals{});
  ASSERT_EQ(rec.started, 11);
  clock.advance(60s);
  EXPECT_EQ(scheduler.sweep(), 0u) << "a request still runs";
  // It ends with a 429 and Retry-After: 120 (no retry left to use here: finish).
  UpstreamSignals s;
  s.status_429 = true;
  s.retry_after_s = 120;
  scheduler.finish(tickets[10], s);
  clock.advance(119s);
  EXPECT_EQ(scheduler.sweep(), 0u) << "the pause is in force";
  EXPECT_EQ(scheduler.budgets(), 1u);
  clock.advance(2s);
  EXPECT_EQ(scheduler.sweep(), 1u);
  EXPECT_EQ(scheduler.budgets(), 0u);

  // A queued request that leaves (client gone) frees its budget too.
  rec.started = 0;
  for (int i = 0; i < 11; ++i) tickets[static_cast<size_t>(i)] = scheduler.submit(passThrough(2), rec.callbacks("k"));
  ASSERT_EQ(scheduler.queued(), 1u);
  scheduler.cancel(tickets[10]);
  for (int i = 0; i < 10; ++i) scheduler.cancel(tickets[static_cast<size_t>(i)]);  // after their start
  EXPECT_EQ(scheduler.queued(), 0u);
  clock.advance(1s);
  EXPECT_EQ(scheduler.sweep(), 0u) << "its starts are still in the window (+ margin)";
  clock.advance(RateLimiter::kSafetyMargin);
  EXPECT_EQ(scheduler.sweep(), 1u);
}

// Dropping a budget never lets a key start more than its limit in a window:
// random traffic over a few keys, swept at random, against the rule.
TEST(Scheduler, DroppingNeverLetsAWindowSeeMoreThanTheLimit) {
  EventLoop loop;
  FakeClock clock;
  Metrics metrics;
  Scheduler scheduler(loop, clock, metrics);
  scheduler.configure(budgetOf(2));
  Recorder rec(clock);
  std::mt19937 rng(20240601);
  std::vector<std::pair<uint64_t, Clock::time_point>> running;  // ticket, ends at
  size_t evicted = 0;
  for (int step = 0; step < 20'000; ++step) {
    // Bursts on 8 keys, about their allowance on average: some queue, and
    // now and then a key rests for longer than a window.
    const int key = std::uniform_int_distribution<int>(0, 7)(rng);
    const std::string name = "pt:" + std::to_string(key);
    for (int n = std::uniform_int_distribution<int>(1, 12)(rng); n > 0; --n) {
      const uint64_t t = scheduler.submit(passThrough(key), rec.callbacks(name));
      running.emplace_back(t, clock.now() + std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 300)(rng)));
    }
    clock.advance(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 150'000)(rng)));
    for (auto it = running.begin(); it != running.end();) {
      if (it->second <= clock.now()) {
        scheduler.finish(it->first, UpstreamSignals{});  // a queued one leaves; a started one ends
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    if (std::uniform_int_distribution<int>(0, 3)(rng) == 0) evicted += scheduler.sweep();
  }
  EXPECT_GT(evicted, 100u) << "the budgets came and went";
  // The default allowance: at most 10 starts in any window of 1 s.
  for (auto& [name, starts] : rec.starts) {
    std::sort(starts.begin(), starts.end());
    for (size_t i = 0; i + 10 < starts.size(); ++i) {
      ASSERT_GE(starts[i + 10] - starts[i], 1s) << name << ": 11 starts within one window from start " << i;
    }
  }
  scheduler.rejectAll(RejectReason::ShuttingDown);
}

// No more than kMaxTransientBudgets at once: a new key beyond that is refused
// like a full queue, with a Retry-After, until one is idle again.
TEST(Scheduler, TooManyKeysAtOnceAreRefusedNotKept) {
  EventLoop loop;
  FakeClock clock;
  Metrics metrics;
  Scheduler scheduler(loop, clock, metrics);
  scheduler.configure(budgetOf(2));
  Recorder rec(clock);
  std::vector<uint64_t> running;
  for (size_t i = 0; i < Scheduler::kMaxTransientBudgets; ++i) {
    running.push_back(scheduler.submit(passThrough(static_cast<int>(i)), rec.callbacks("k")));
  }
  ASSERT_EQ(rec.started, static_cast<int>(Scheduler::kMaxTransientBudgets));
  scheduler.submit(passThrough(-1), rec.callbacks("k"));
  ASSERT_EQ(rec.rejects, std::vector<RejectReason>{RejectReason::QueueFull});
  EXPECT_GE(rec.last_retry_after, 1);
  EXPECT_EQ(scheduler.budgets(), Scheduler::kMaxTransientBudgets);
  // A key that has its budget already, and an organisation, still go.
  scheduler.finish(scheduler.submit(passThrough(0), rec.callbacks("k")), UpstreamSignals{});
  scheduler.finish(scheduler.submit(acme(), rec.callbacks("acme")), UpstreamSignals{});
  EXPECT_EQ(rec.started, static_cast<int>(Scheduler::kMaxTransientBudgets) + 2);

  // Once they are idle a new key gets a budget (swept on demand).
  for (uint64_t t : running) scheduler.finish(t, UpstreamSignals{});
  clock.advance(2s);
  scheduler.submit(passThrough(-1), rec.callbacks("k"));
  EXPECT_EQ(rec.rejects.size(), 1u);
  EXPECT_EQ(rec.started, static_cast<int>(Scheduler::kMaxTransientBudgets) + 3);
  EXPECT_LE(scheduler.budgets(), 3u);
}

// Every pass_through key has its own budget and all share the label
// "pass_through": the queue-depth gauge is their sum, not the last one's.
TEST(Scheduler, QueueDepthOfALabelSumsItsBudgets) {
  EventLoop loop;
  FakeClock clock;
  Metrics metrics;
  Scheduler scheduler(loop, clock, metrics);
  scheduler.configure(budgetOf(2));
  Recorder rec(clock);
  std::vector<uint64_t> tickets;
  for (int key : {1, 2}) {
    for (int i = 0; i < 12; ++i) tickets.push_back(scheduler.submit(passThrough(key), rec.callbacks("k")));
  }
  EXPECT_EQ(scheduler.queued(), 4u);
  EXPECT_EQ(metricOf(metrics, "workflow_proxy_queue_depth{org=\"pass_through\"}"), 4);
  EXPECT_EQ(scheduler.depths()["pass_through"], 4u);
  scheduler.cancel(tickets.back());
  EXPECT_EQ(metricOf(metrics, "workflow_proxy_queue_depth{org=\"pass_through\"}"), 3);
  scheduler.rejectAll(RejectReason::ShuttingDown);
  EXPECT_EQ(metricOf(metrics, "workflow_proxy_queue_depth{org=\"pass_through\"}"), 0);
  EXPECT_EQ(scheduler.queued(), 0u);
}

}  // namespace
}  // namespace wfp

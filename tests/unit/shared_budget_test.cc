// SharedBudget against a real redis-server: each test starts its own on a
// free loopback port in a temp dir (killed by PID at the end) and runs two
// "instances" — a RedisClient + SharedBudget pair each — on one EventLoop.
#include "proxy/shared_budget.h"

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "proxy/config.h"
#include "proxy/event_loop.h"
#include "tests/unit/run_loop.h"
#include "proxy/metrics.h"
#include "proxy/redis_client.h"
#include "proxy/scheduler.h"
#include "tests/unit/redis_server.h"

extern char** environ;

namespace wfp {
namespace {

using SteadyClock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using std::chrono::duration_cast;
using std::chrono::milliseconds;

using test_redis::RedisServer;
using test_redis::redisServerInstalled;

using test_loop::runUntil;

void runFor(EventLoop& loop, milliseconds duration) {
  runUntil(loop, [] { return false; }, duration);
}

int64_t msSince(SteadyClock::time_point t) {
  return duration_cast<milliseconds>(SteadyClock::now() - t).count();
}

constexpr const char* kPrefix = "wfp-test:";
constexpr const char* kOrg = "acme";

class SharedBudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!redisServerInstalled()) GTEST_SKIP() << "redis-server is not installed";
    server_ = std::make_unique<RedisServer>();
    ASSERT_TRUE(server_->start());
    for (int i = 0; i < 2; ++i) {
      RedisOptions options;
      options.url.host = "127.0.0.1";
      options.url.port = server_->port();
      clients_[i] = std::make_unique<RedisClient>(loop_, options);
    }
    ASSERT_TRUE(runUntil(loop_, [&] { return clients_[0]->up() && clients_[1]->up(); }, 3000ms));
    a_ = std::make_unique<SharedBudget>(loop_, *clients_[0], kPrefix);
    b_ = std::make_unique<SharedBudget>(loop_, *clients_[1], kPrefix);
  }

  void TearDown() override {
    // Budgets before their clients, clients before the loop.
    a_.reset();
    b_.reset();
    if (clients_[0] || clients_[1]) runFor(loop_, 20ms);  // let the farewells go out
    clients_[0].reset();
    clients_[1].reset();
  }

  // One decision, waited for; checks that the callback runs once, later.
  SharedDecision ask(SharedBudget& budget, int limit, int64_t window_ms, int max_concurrent,
                     const std::string& org = kOrg) {
    bool returned = false;
    int calls = 0;
    SharedDecision decision;
    budget.tryStart(org, limit, window_ms, max_concurrent, [&](SharedDecision d) {
      EXPECT_TRUE(returned) << "callback ran inside tryStart()";
      ++calls;
      decision = d;
    });
    returned = true;
    EXPECT_TRUE(runUntil(loop_, [&] { return calls > 0; }, 2000ms));
    runFor(loop_, 0ms);
    EXPECT_EQ(calls, 1);
    return decision;
  }

  std::optional<RedisReply> raw(std::vector<std::string> argv) {
    bool got = false;
    std::optional<RedisReply> reply;
    clients_[0]->command(std::move(argv), [&](std::optional<RedisReply> r) {
      got = true;
      reply = std::move(r);
    });
    EXPECT_TRUE(runUntil(loop_, [&] { return got; }, 2000ms));
    return reply;
  }

  long long zcard(const std::string& key) {
    auto r = raw({"ZCARD", key});
    return r && r->type == RedisReply::Type::Integer ? r->integer : -1;
  }

  EventLoop loop_;
  std::unique_ptr<RedisServer> server_;
  std::unique_ptr<RedisClient> clients_[2];
  std::unique_ptr<SharedBudget> a_;
  std::unique_ptr<SharedBudget> b_;
};

TEST_F(SharedBudgetTest, WindowIsSharedByBothInstances) {
  std::vector<SteadyClock::time_point> starts;
  for (int i = 0; i < 5; ++i) {
    SharedBudget& who = i % 2 == 0 ? *a_ : *b_;
    SharedDecision d = ask(who, 5, 1000, 100);
    starts.push_back(SteadyClock::now());
    ASSERT_TRUE(d.reachable);
    ASSERT_TRUE(d.admitted) << "start " << i;
    EXPECT_EQ(d.remaining, 4 - i);
    EXPECT_EQ(d.wait_ms, 0);
    if (i < 4) runFor(loop_, 40ms);  // spread out, so they leave the window one by one
  }
  for (SharedBudget* who : {b_.get(), a_.get()}) {
    SharedDecision d = ask(*who, 5, 1000, 100);
    ASSERT_TRUE(d.reachable);
    EXPECT_FALSE(d.admitted);
    // The oldest start leaves the window 1000 ms + 10 ms margin after it was made.
    int64_t expected = 1010 - msSince(starts[0]);
    ASSERT_GT(expected, 700);
    EXPECT_NEAR(static_cast<double>(d.wait_ms), static_cast<double>(expected), 25.0);
    EXPECT_GE(d.wait_ms, 1);
  }
  // Another budget is untouched.
  SharedDecision other = ask(*a_, 5, 1000, 100, "other-org");
  EXPECT_TRUE(other.admitted);
  EXPECT_EQ(other.remaining, 4);

  SharedDecision refused = ask(*b_, 5, 1000, 100);
  ASSERT_FALSE(refused.admitted);
  runFor(loop_, milliseconds(refused.wait_ms + 2));
  SharedDecision again = ask(*b_, 5, 1000, 100);
  ASSERT_TRUE(again.reachable);
  EXPECT_TRUE(again.admitted);
  EXPECT_EQ(again.remaining, 0);  // only the oldest has left
  EXPECT_FALSE(ask(*a_, 5, 1000, 100).admitted);

  // A lowered limit (e.g. learned from the upstream) counts the starts made
  // under the old one: wait until all but one have left, i.e. for the
  // fourth of the five in the window (starts[1..4], then `again`).
  SharedDecision lowered = ask(*a_, 2, 1000, 100);
  EXPECT_FALSE(lowered.admitted);
  EXPECT_NEAR(static_cast<double>(lowered.wait_ms), static_cast<double>(1010 - msSince(starts[4])), 25.0);

  // The keys expire by themselves: starts after two windows, leases later.
  auto ttl = raw({"PTTL", std::string(kPrefix) + "rl:{" + kOrg + "}:starts"});
  ASSERT_TRUE(ttl && ttl->type == RedisReply::Type::Integer);
  EXPECT_GT(ttl->integer, 1000);
  EXPECT_LE(ttl->integer, 2020);
  ttl = raw({"PTTL", std::string(kPrefix) + "rl:{" + kOrg + "}:inflight"});
  ASSERT_TRUE(ttl && ttl->type == RedisReply::Type::Integer);
  EXPECT_GT(ttl->integer, 0);
}

// A start counts from when its request is written (sent()), not from the
// decision: the next one waits a whole window after the send.
TEST_F(SharedBudgetTest, AStartCountsFromItsSend) {
  SharedDecision d = ask(*a_, 1, 1000, 100);
  ASSERT_TRUE(d.admitted);
  ASSERT_FALSE(d.member.empty());
  runFor(loop_, 150ms);
  const auto sent_at = SteadyClock::now();
  a_->sent(kOrg, d.member, 1000);
  runFor(loop_, 20ms);  // on a's connection; the next question goes on b's
  SharedDecision refused = ask(*b_, 1, 1000, 100);
  ASSERT_TRUE(refused.reachable);
  ASSERT_FALSE(refused.admitted);
  // Dated at the decision, it would leave the window ~150 ms sooner. Redis
  // dates the send at or after sent_at (whole ms, rounded down: 2 ms slack).
  EXPECT_GE(refused.wait_ms, 1010 - 2 - msSince(sent_at));

  // A send for a start already pruned (sent later than the window) counts again.
  SharedDecision other = ask(*a_, 1, 1000, 100, "other-org");
  ASSERT_TRUE(other.admitted);
  raw({"ZREM", std::string(kPrefix) + "rl:{other-org}:starts", other.member});
  EXPECT_TRUE(ask(*b_, 1, 1000, 100, "other-org").admitted);
  a_->sent("other-org", other.member, 1000);
  runFor(loop_, 20ms);
  EXPECT_EQ(zcard(std::string(kPrefix) + "rl:{other-org}:starts"), 2);
}

TEST_F(SharedBudgetTest, SurvivesAScriptFlush) {
  EXPECT_TRUE(ask(*a_, 10, 1000, 10).admitted);  // digests known by now
  EXPECT_TRUE(ask(*a_, 10, 1000, 10).admitted);
  auto stats = raw({"INFO", "commandstats"});
  ASSERT_TRUE(stats && stats->type == RedisReply::Type::String);
  EXPECT_NE(stats->str.find("cmdstat_evalsha:calls="), std::string::npos) << "EVALSHA is used once loaded";
  auto flushed = raw({"SCRIPT", "FLUSH"});
  ASSERT_TRUE(flushed && !flushed->isError());
  SharedDecision d = ask(*a_, 10, 1000, 10);
  EXPECT_TRUE(d.reachable);
  EXPECT_TRUE(d.admitted);
  EXPECT_EQ(d.remaining, 7);
  d = ask(*b_, 10, 1000, 10);
  EXPECT_TRUE(d.admitted);
  EXPECT_EQ(d.remaining, 6);
}

TEST_F(SharedBudgetTest, MaxConcurrentRefusesUntilFinish) {
  const std::string inflight = std::string(kPrefix) + "rl:{" + kOrg + "}:inflight";
  EXPECT_TRUE(ask(*a_, 100, 1000, 2).admitted);
  EXPECT_TRUE(ask(*b_, 100, 1000, 2).admitted);
  EXPECT_EQ(zcard(inflight), 2);
  for (SharedBudget* who : {a_.get(), b_.get()}) {
    SharedDecision d = ask(*who, 100, 1000, 2);
    EXPECT_TRUE(d.reachable);
    EXPECT_FALSE(d.admitted);
    EXPECT_EQ(d.wait_ms, 0);  // wait for a release
  }
  a_->finish(kOrg);
  runFor(loop_, 20ms);  // on a's connection; the next question goes on b's
  SharedDecision d = ask(*b_, 100, 1000, 2);
  EXPECT_TRUE(d.admitted);
  EXPECT_EQ(d.remaining, 100 - 3);  // three starts in the window now
  EXPECT_FALSE(ask(*a_, 100, 1000, 2).admitted);

  // finish() without a start of ours, or for another budget: never below 0,
  // never someone else's slot.
  a_->finish(kOrg);
  a_->finish("other-org");
  EXPECT_EQ(zcard(inflight), 2);
  b_->finish(kOrg);
  b_->finish(kOrg);
  b_->finish(kOrg);
  runFor(loop_, 20ms);
  EXPECT_EQ(zcard(inflight), 0);
  EXPECT_TRUE(ask(*a_, 100, 1000, 2).admitted);
}

TEST_F(SharedBudgetTest, DestroyingAnInstanceDropsItsCallbacksAndReleasesItsLeases) {
  EXPECT_TRUE(ask(*b_, 100, 1000, 2).admitted);
  bool called = false;
  b_->tryStart(kOrg, 100, 1000, 2, [&](SharedDecision) { called = true; });
  b_.reset();  // with a tryStart in flight
  runFor(loop_, 50ms);
  EXPECT_FALSE(called);
  // Both of b's possible slots are free again.
  EXPECT_TRUE(ask(*a_, 100, 1000, 2).admitted);
  EXPECT_TRUE(ask(*a_, 100, 1000, 2).admitted);
  EXPECT_FALSE(ask(*a_, 100, 1000, 2).admitted);

  // Destroyed from inside its own callback.
  a_->finish(kOrg);
  bool inside = false;
  a_->tryStart(kOrg, 100, 1000, 2, [&](SharedDecision d) {
    EXPECT_TRUE(d.admitted);
    inside = true;
    a_.reset();
  });
  EXPECT_TRUE(runUntil(loop_, [&] { return inside; }, 2000ms));
  runFor(loop_, 20ms);
  EXPECT_EQ(zcard(std::string(kPrefix) + "rl:{" + kOrg + "}:inflight"), 0);
}

TEST_F(SharedBudgetTest, PauseBlocksEveryInstance) {
  a_->pause(kOrg, 300);
  auto paused_at = SteadyClock::now();
  b_->pause(kOrg, 100);  // shorter: does not shorten the pause
  runFor(loop_, 20ms);   // two connections: let both pauses land first
  for (SharedBudget* who : {b_.get(), a_.get()}) {
    SharedDecision d = ask(*who, 100, 1000, 100);
    EXPECT_TRUE(d.reachable);
    EXPECT_FALSE(d.admitted);
    EXPECT_LE(d.wait_ms, 300);
    EXPECT_GE(d.wait_ms, 300 - msSince(paused_at) - 20);
  }
  runFor(loop_, 150ms);
  EXPECT_FALSE(ask(*b_, 100, 1000, 100).admitted);
  runUntil(loop_, [&] { return msSince(paused_at) >= 305; }, 1000ms);
  EXPECT_TRUE(ask(*a_, 100, 1000, 100).admitted);
  EXPECT_TRUE(ask(*b_, 100, 1000, 100).admitted);

  // A longer pause replaces a shorter one.
  a_->pause(kOrg, 100);
  b_->pause(kOrg, 2000);
  runFor(loop_, 20ms);
  SharedDecision d = ask(*a_, 100, 1000, 100);
  EXPECT_FALSE(d.admitted);
  EXPECT_GT(d.wait_ms, 1900);
}

TEST_F(SharedBudgetTest, CountsLiveInstances) {
  EXPECT_EQ(a_->instancesAlive(), 1);
  ASSERT_TRUE(runUntil(loop_, [&] { return a_->instancesAlive() == 2 && b_->instancesAlive() == 2; }, 3000ms));
  EXPECT_EQ(zcard(std::string(kPrefix) + "instances"), 2);

  // A graceful exit leaves at once.
  b_.reset();
  auto gone = SteadyClock::now();
  ASSERT_TRUE(runUntil(loop_, [&] { return a_->instancesAlive() == 1; }, 4000ms));
  EXPECT_LT(msSince(gone), 2000);

  // One that died without a word leaves once its heartbeat is 3 s old.
  auto time = raw({"TIME"});
  ASSERT_TRUE(time && time->elements.size() == 2);
  long long now_ms = std::stoll(time->elements[0].str) * 1000 + std::stoll(time->elements[1].str) / 1000;
  raw({"ZADD", std::string(kPrefix) + "instances", std::to_string(now_ms), "deadbeefdeadbeef"});
  ASSERT_TRUE(runUntil(loop_, [&] { return a_->instancesAlive() == 2; }, 2000ms));
  auto died = SteadyClock::now();
  ASSERT_TRUE(runUntil(loop_, [&] { return a_->instancesAlive() == 1; }, 5000ms));
  EXPECT_LT(msSince(died), 4500);
}

TEST_F(SharedBudgetTest, RedisKilledIsUnreachableAtOnce) {
  ASSERT_TRUE(runUntil(loop_, [&] { return a_->instancesAlive() == 2; }, 3000ms));
  EXPECT_TRUE(ask(*a_, 10, 1000, 10).admitted);

  // Killed with a decision on the wire.
  bool called = false;
  SharedDecision mid;
  auto asked = SteadyClock::now();
  a_->tryStart(kOrg, 10, 1000, 10, [&](SharedDecision d) {
    called = true;
    mid = d;
  });
  server_->kill9();
  ASSERT_TRUE(runUntil(loop_, [&] { return called; }, 2000ms));
  EXPECT_FALSE(mid.reachable);
  EXPECT_FALSE(mid.admitted);
  EXPECT_LT(msSince(asked), 400);

  // While down: every decision fails fast; pause/finish are harmless.
  for (SharedBudget* who : {a_.get(), b_.get()}) {
    auto t = SteadyClock::now();
    SharedDecision d = ask(*who, 10, 1000, 10);
    EXPECT_FALSE(d.reachable);
    EXPECT_FALSE(d.admitted);
    EXPECT_LT(msSince(t), 100);
  }
  a_->pause(kOrg, 1000);
  a_->finish(kOrg);
  // The last count of live instances stays in force (the 1/N fallback).
  runFor(loop_, 1200ms);
  EXPECT_EQ(a_->instancesAlive(), 2);
  EXPECT_EQ(b_->instancesAlive(), 2);
}

TEST_F(SharedBudgetTest, TwoHammeringInstancesNeverExceedTheWindow) {
  constexpr int kLimit = 10;
  constexpr int64_t kWindowMs = 1000;
  std::mt19937 rng(12345);
  // Redis decided each admission between our question and its answer.
  struct Admitted {
    SteadyClock::time_point asked, answered;
  };
  std::vector<Admitted> admitted;
  int refused = 0;
  int unreachable = 0;
  const auto end = SteadyClock::now() + 2000ms;

  struct Worker {
    SharedBudget* budget;
    std::unique_ptr<Timer> next;
    std::vector<std::unique_ptr<Timer>> finishes;
  };
  Worker workers[2] = {{a_.get(), nullptr, {}}, {b_.get(), nullptr, {}}};
  for (auto& w : workers) {
    w.next = std::make_unique<Timer>(loop_, [&, wp = &w] {
      if (SteadyClock::now() >= end) return;
      const auto asked = SteadyClock::now();
      wp->budget->tryStart(kOrg, kLimit, kWindowMs, 4, [&, wp, asked](SharedDecision d) {
        if (!d.reachable) {
          ++unreachable;
        } else if (d.admitted) {
          admitted.push_back({asked, SteadyClock::now()});
          // Finish after a random while, so max_concurrent is exercised too.
          auto t = std::make_unique<Timer>(loop_, [wp] { wp->budget->finish(kOrg); });
          t->start(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 60'000)(rng)));
          wp->finishes.push_back(std::move(t));
        } else {
          ++refused;
        }
        wp->next->start(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 3000)(rng)));
      });
    });
    w.next->start(0us);
  }
  runUntil(loop_, [&] { return SteadyClock::now() >= end + 100ms; }, 3000ms);

  EXPECT_EQ(unreachable, 0);
  EXPECT_GT(refused, 0);
  // The budget is used: about two windows' worth in 2 s.
  EXPECT_GE(admitted.size(), static_cast<size_t>(2 * kLimit));
  EXPECT_LE(admitted.size(), static_cast<size_t>(3 * kLimit));
  // Proven too many: kLimit + 1 admissions all decided within one window,
  // i.e. the last answer came less than a window after the first question.
  // (The answers alone would not do: one answer delayed by a busy machine
  // brings it closer to the later ones than its decision was.)
  for (size_t i = 0; i < admitted.size(); ++i) {
    std::vector<SteadyClock::time_point> answers;
    for (const Admitted& a : admitted) {
      if (a.asked >= admitted[i].asked) answers.push_back(a.answered);
    }
    if (answers.size() <= static_cast<size_t>(kLimit)) continue;
    std::nth_element(answers.begin(), answers.begin() + kLimit, answers.end());
    EXPECT_GE(answers[kLimit] - admitted[i].asked, milliseconds(kWindowMs))
        << kLimit + 1 << " admissions decided within one window, from admission " << i;
  }
  for (auto& w : workers) {
    w.next.reset();
    w.finishes.clear();
  }
}

// docs/security.md at fleet scale: with shared budgets, a pass_through key leaves
// nothing behind — neither its budget in the scheduler nor a key in Redis
// (each has a time to live) — and an absurd Retry-After pauses the fleet for
// a window, not for ever (nor, as a cast overflowing, not at all).
TEST_F(SharedBudgetTest, PassThroughKeysLeaveNothingBehindInTheSchedulerOrInRedis) {
  ConfigResult config = loadConfigString("organisations:\n  - name: acme\n    api_key: sk_test_acme\n",
                                         "test.yaml", [](const std::string&) { return std::nullopt; });
  ASSERT_TRUE(config.config);
  SystemClock clock;
  Metrics metrics;
  Scheduler scheduler(loop_, clock, metrics, a_.get());
  scheduler.configure(config.config);
  constexpr int kKeys = 50;
  std::vector<uint64_t> tickets;
  int started = 0;
  for (int i = 0; i < kKeys; ++i) {
    Admission a{"pt:" + std::to_string(i), "pass_through", "-", 1};
    tickets.push_back(scheduler.submit(a, {[&started] { ++started; }, [](RejectReason, int) {}}));
  }
  ASSERT_TRUE(runUntil(loop_, [&] { return started == kKeys; }, 3000ms)) << started;
  for (int i = 0; i < kKeys; ++i) {
    scheduler.sending(tickets[static_cast<size_t>(i)]);
    UpstreamSignals s;
    if (i == 0) {
      s.status_429 = true;
      s.retry_after_s = 1e18;
    }
    scheduler.finish(tickets[static_cast<size_t>(i)], s);
  }
  EXPECT_EQ(scheduler.budgets(), static_cast<size_t>(kKeys));
  runFor(loop_, 50ms);  // the finishes and the pause land

  auto keys = raw({"KEYS", std::string(kPrefix) + "rl:*"});
  ASSERT_TRUE(keys && keys->type == RedisReply::Type::Array);
  EXPECT_GE(keys->elements.size(), static_cast<size_t>(kKeys));  // a start log each (leases are gone)
  for (const RedisReply& key : keys->elements) {
    auto ttl = raw({"PTTL", key.str});
    ASSERT_TRUE(ttl && ttl->type == RedisReply::Type::Integer);
    EXPECT_GT(ttl->integer, 0) << key.str << " never expires";
    EXPECT_LE(ttl->integer, 2 * 1010) << key.str;
  }
  auto pause = raw({"PTTL", std::string(kPrefix) + "rl:{pt:0}:pause"});
  ASSERT_TRUE(pause && pause->type == RedisReply::Type::Integer);
  EXPECT_GT(pause->integer, 0) << "Retry-After out of range: one window's pause";
  EXPECT_LE(pause->integer, 1000);

  // The sweep timer drops the budgets about a window after their starts
  // (the paused one once its pause is over), and Redis forgets them.
  EXPECT_TRUE(runUntil(loop_, [&] { return scheduler.budgets() == 0; }, 3000ms)) << scheduler.budgets();
  size_t left = 0;
  for (auto deadline = SteadyClock::now() + 3000ms; SteadyClock::now() < deadline; runFor(loop_, 100ms)) {
    auto k = raw({"KEYS", std::string(kPrefix) + "rl:*"});
    ASSERT_TRUE(k && k->type == RedisReply::Type::Array);
    left = k->elements.size();
    if (left == 0) break;
  }
  EXPECT_EQ(left, 0u) << "keys of the pass_through budgets left in Redis";
}

// --- replies from Redis are untrusted (docs/security.md) --------------------------

RedisReply integer(long long n) {
  RedisReply r;
  r.type = RedisReply::Type::Integer;
  r.integer = n;
  return r;
}

RedisReply array(std::vector<RedisReply> elements) {
  RedisReply r;
  r.type = RedisReply::Type::Array;
  r.elements = std::move(elements);
  return r;
}

RedisReply triple(long long a, long long b, long long c) { return array({integer(a), integer(b), integer(c)}); }

TEST(SharedBudgetReplies, DecisionsTheScriptSendsAreRead) {
  auto d = SharedBudget::decodeDecision(triple(1, 0, 4), 5, 1010);
  ASSERT_TRUE(d);
  EXPECT_TRUE(d->reachable);
  EXPECT_TRUE(d->admitted);
  EXPECT_EQ(d->remaining, 4);
  d = SharedBudget::decodeDecision(triple(1, 0, 0), 5, 1010);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->remaining, 0);
  d = SharedBudget::decodeDecision(triple(0, 0, 0), 5, 1010);  // max_concurrent: wait for a release
  ASSERT_TRUE(d);
  EXPECT_FALSE(d->admitted);
  EXPECT_EQ(d->wait_ms, 0);
  d = SharedBudget::decodeDecision(triple(0, 1011, 0), 5, 1010);  // the window
  ASSERT_TRUE(d);
  EXPECT_EQ(d->wait_ms, 1011);
  d = SharedBudget::decodeDecision(triple(0, 3'600'000, 0), 5, 1010);  // the longest pause
  ASSERT_TRUE(d);
  EXPECT_EQ(d->wait_ms, 3'600'000);
}

TEST(SharedBudgetReplies, OutOfRangeDecisionsAreRejectedOrCut) {
  // Rejected: a decision no script of ours sends.
  for (const RedisReply& bad : {triple(2, 0, 0), triple(-1, 0, 0), triple(1, 0, -1), triple(1, 0, 5),
                                triple(1, 0, 1LL << 40), triple(1, 7, 0), triple(0, -1, 0),
                                triple(0, -9'000'000'000'000'000'000LL, 0), triple(0, 10, 3), integer(1),
                                array({integer(1), integer(0)}), array({integer(1), integer(0), integer(0), integer(0)}),
                                RedisReply{}}) {
    EXPECT_FALSE(SharedBudget::decodeDecision(bad, 5, 1010));
  }
  RedisReply text;
  text.type = RedisReply::Type::String;
  text.str = "1";
  EXPECT_FALSE(SharedBudget::decodeDecision(array({text, integer(0), integer(0)}), 5, 1010));
  // Cut: a wait longer than any pause or window never holds a queue for ever
  // (nor overflows a time point).
  for (long long huge : {3'600'001LL, 1LL << 62, std::numeric_limits<long long>::max()}) {
    auto d = SharedBudget::decodeDecision(triple(0, huge, 0), 5, 1010);
    ASSERT_TRUE(d);
    EXPECT_EQ(d->wait_ms, SharedBudget::kMaxWaitMs);
  }
  // A window longer than the longest pause: its own span is the bound.
  auto d = SharedBudget::decodeDecision(triple(0, 1LL << 62, 0), 5, 7'200'010);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->wait_ms, 7'200'011);
}

TEST(SharedBudgetReplies, InstanceCountsAndDigestsAreChecked) {
  EXPECT_EQ(SharedBudget::decodeInstances(integer(1)), 1);
  EXPECT_EQ(SharedBudget::decodeInstances(integer(3)), 3);
  EXPECT_EQ(SharedBudget::decodeInstances(integer(SharedBudget::kMaxInstances)), SharedBudget::kMaxInstances);
  for (long long bad : {0LL, -1LL, SharedBudget::kMaxInstances + 1LL, 1LL << 40, std::numeric_limits<long long>::min()}) {
    EXPECT_EQ(SharedBudget::decodeInstances(integer(bad)), std::nullopt) << bad;
  }
  RedisReply text;
  text.type = RedisReply::Type::String;
  text.str = "3";
  EXPECT_EQ(SharedBudget::decodeInstances(text), std::nullopt);

  text.str = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db";
  EXPECT_EQ(SharedBudget::decodeDigest(text), text.str);
  for (std::string bad : {"", "e0e1f9fabfc9d4800c877a703b823ac0578ff8d", "e0e1f9fabfc9d4800c877a703b823ac0578ff8dbb",
                          "e0e1f9fabfc9d4800c877a703b823ac0578ff8d\n", "e0e1f9fabfc9d4800c877a703b823ac0578ff8 "}) {
    text.str = bad;
    EXPECT_EQ(SharedBudget::decodeDigest(text), std::nullopt) << bad;
  }
  EXPECT_EQ(SharedBudget::decodeDigest(integer(1)), std::nullopt);
}

}  // namespace
}  // namespace wfp

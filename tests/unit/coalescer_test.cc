// Coalescer against a real Redis (the redis-server scripts/test starts,
// WFP_REDIS_URL): what a flight does once it holds the cross-instance lock.
#include "proxy/coalescer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "proxy/event_loop.h"
#include "tests/unit/run_loop.h"
#include "proxy/redis_client.h"

namespace wfp {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test_loop::runUntil;

class CoalescerRedis : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* url = std::getenv("WFP_REDIS_URL");
    if (!url || !*url) GTEST_SKIP() << "WFP_REDIS_URL not set (scripts/test starts redis-server)";
    auto parsed = parseRedisUrl(url);
    ASSERT_TRUE(parsed.has_value()) << url;
    RedisOptions o;
    o.url = *parsed;
    redis_ = std::make_unique<RedisClient>(loop_, o);
    ASSERT_TRUE(runUntil(loop_, [&] { return redis_->up(); }, 2s)) << "never connected";
    key_ = "wfpcoal" + std::to_string(std::random_device{}()) + ":v1:{acme}:run:wf:0:abc";
  }
  // EXISTS <key>:lock, answered.
  std::optional<long long> lockExists() {
    std::optional<long long> got;
    bool done = false;
    redis_->command({"EXISTS", key_ + ":lock"}, [&](std::optional<RedisReply> r) {
      if (r && r->type == RedisReply::Type::Integer) got = r->integer;
      done = true;
    });
    runUntil(loop_, [&] { return done; }, 2s);
    return got;
  }
  // The lock is given back asynchronously: ask a few times.
  bool lockGone() {
    for (int i = 0; i < 40; ++i) {
      if (lockExists() == 0) return true;
      runUntil(loop_, [] { return false; }, 50ms);
    }
    return false;
  }

  EventLoop loop_;
  std::unique_ptr<RedisClient> redis_;
  std::string key_;
};

// The previous holder stored the result and let go between our look-up and
// our lock attempt: the flight that now holds the lock must not run again.
TEST_F(CoalescerRedis, AFlightThatGetsTheLockLooksInTheCacheBeforeRunning) {
  int leads = 0;
  int lookups = 0;
  auto stored = std::make_shared<CachedResponse>();
  stored->body = R"({"success":true})";
  FlightHooks hooks;
  hooks.on_lead = [&](uint64_t) { ++leads; };
  hooks.lookup_shared = [&](const std::string& key, int64_t, std::function<void(CachedResponsePtr)> fn) {
    ++lookups;
    EXPECT_EQ(key, key_);
    fn(stored);
  };
  Coalescer coalescer(loop_, redis_.get(), "wfpcoal:", hooks);
  std::optional<FlightOutcome> got;
  auto joined = coalescer.join(key_, [&](const FlightOutcome& o) { got = o; });
  EXPECT_TRUE(joined.created);
  ASSERT_TRUE(runUntil(loop_, [&] { return got.has_value(); }, 2s));
  EXPECT_EQ(leads, 0);
  EXPECT_EQ(lookups, 1);
  ASSERT_TRUE(got->response);
  EXPECT_EQ(got->response->body, stored->body);
  EXPECT_TRUE(got->remote);
  EXPECT_EQ(coalescer.flights(), 0u);
  EXPECT_TRUE(lockGone()) << "the lock was not given back";
}

TEST_F(CoalescerRedis, AFlightThatGetsTheLockAndFindsNothingLeadsOnce) {
  int leads = 0;
  FlightHooks hooks;
  hooks.on_lead = [&](uint64_t) { ++leads; };
  hooks.lookup_shared = [&](const std::string&, int64_t, std::function<void(CachedResponsePtr)> fn) { fn(nullptr); };
  Coalescer coalescer(loop_, redis_.get(), "wfpcoal:", hooks);
  bool answered = false;
  auto joined = coalescer.join(key_, [&](const FlightOutcome&) { answered = true; });
  ASSERT_TRUE(runUntil(loop_, [&] { return leads == 1; }, 2s));
  EXPECT_EQ(lockExists(), 1);  // held while the run goes on
  coalescer.markStarted(joined.flight);
  FlightOutcome done;
  done.response = std::make_shared<CachedResponse>();
  coalescer.complete(joined.flight, done);
  EXPECT_TRUE(answered);
  EXPECT_EQ(leads, 1);
  EXPECT_TRUE(lockGone());
}

// A waiter that leaves while the flight is still looking: the lock goes back
// and nothing runs.
TEST_F(CoalescerRedis, LeavingDuringTheLookGivesTheLockBack) {
  int leads = 0;
  std::function<void(CachedResponsePtr)> pending;
  FlightHooks hooks;
  hooks.on_lead = [&](uint64_t) { ++leads; };
  hooks.lookup_shared = [&](const std::string&, int64_t, std::function<void(CachedResponsePtr)> fn) { pending = fn; };
  Coalescer coalescer(loop_, redis_.get(), "wfpcoal:", hooks);
  auto joined = coalescer.join(key_, [](const FlightOutcome&) { ADD_FAILURE() << "no outcome expected"; });
  ASSERT_TRUE(runUntil(loop_, [&] { return static_cast<bool>(pending); }, 2s));
  coalescer.leave(joined.waiter);
  pending(nullptr);  // the look-up answers after the waiter left
  EXPECT_EQ(leads, 0);
  EXPECT_EQ(coalescer.flights(), 0u);
  EXPECT_TRUE(lockGone());
}


int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// docs/http.md: the look after taking the lock honours what the waiters'
// Cache-Control accepts. An entry stored before a no-cache request came (or
// older than its max-age) is not an answer: the flight runs.
TEST_F(CoalescerRedis, AnEntryOlderThanAWaiterAcceptsIsRunAfresh) {
  int leads = 0;
  int lookups = 0;
  auto stored = std::make_shared<CachedResponse>();
  stored->body = R"({"success":true})";
  stored->stored_at_ms = nowMs() - 5000;
  FlightHooks hooks;
  hooks.on_lead = [&](uint64_t) { ++leads; };
  hooks.lookup_shared = [&](const std::string&, int64_t, std::function<void(CachedResponsePtr)> fn) {
    ++lookups;
    fn(stored);
  };
  Coalescer coalescer(loop_, redis_.get(), "wfpcoal:", hooks);
  WaiterNeeds no_cache;
  no_cache.min_stored_at_ms = nowMs();
  bool answered = false;
  auto joined = coalescer.join(key_, [&](const FlightOutcome&) { answered = true; }, no_cache);
  ASSERT_TRUE(runUntil(loop_, [&] { return leads == 1; }, 2s));
  EXPECT_EQ(lookups, 1);
  EXPECT_FALSE(answered);
  coalescer.markStarted(joined.flight);
  FlightOutcome done;
  done.response = std::make_shared<CachedResponse>();
  coalescer.complete(joined.flight, done);
  EXPECT_TRUE(answered);
  EXPECT_TRUE(lockGone());
}

// A flight that follows another instance's run ends when that run's result
// is found; what this instance prepared for it goes then (on_end), once.
TEST_F(CoalescerRedis, AFollowedFlightEndsOnceAndTellsItsOwner) {
  // Another instance holds the lock.
  bool set = false;
  redis_->command({"SET", key_ + ":lock", "someone-else", "PX", "5000"}, [&](std::optional<RedisReply>) { set = true; });
  ASSERT_TRUE(runUntil(loop_, [&] { return set; }, 2s));
  int leads = 0;
  int ends = 0;
  auto stored = std::make_shared<CachedResponse>();
  stored->body = R"({"success":true})";
  stored->stored_at_ms = nowMs();
  bool found = false;
  FlightHooks hooks;
  hooks.on_lead = [&](uint64_t) { ++leads; };
  hooks.on_end = [&](uint64_t) { ++ends; };
  hooks.lookup_shared = [&](const std::string&, int64_t, std::function<void(CachedResponsePtr)> fn) {
    fn(found ? stored : nullptr);
  };
  Coalescer coalescer(loop_, redis_.get(), "wfpcoal:", hooks);
  std::optional<FlightOutcome> got;
  uint64_t created = 0;
  coalescer.join(key_, [&](const FlightOutcome& o) { got = o; }, WaiterNeeds{},
                 [&](uint64_t flight) { created = flight; });
  EXPECT_NE(created, 0u);
  runUntil(loop_, [] { return false; }, 200ms);  // following now
  EXPECT_FALSE(got.has_value());
  found = true;  // the leader stored its result
  ASSERT_TRUE(runUntil(loop_, [&] { return got.has_value(); }, 3s));
  EXPECT_TRUE(got->remote);
  EXPECT_EQ(leads, 0);
  EXPECT_EQ(ends, 1);
  EXPECT_EQ(coalescer.flights(), 0u);
  EXPECT_EQ(coalescer.waiters(), 0u);
}

// Without Redis: only-if-cached waiters never make a flight run.
TEST(Coalescer, OnlyIfCachedWaitersAloneNeverLead) {
  EventLoop loop;
  int leads = 0;
  int ends = 0;
  FlightHooks hooks;
  hooks.on_lead = [&](uint64_t) { ++leads; };
  hooks.on_end = [&](uint64_t) { ++ends; };
  Coalescer coalescer(loop, nullptr, "p:", hooks);
  WaiterNeeds only_if_cached;
  only_if_cached.may_run = false;
  std::optional<FlightOutcome> got;
  coalescer.join("k", [&](const FlightOutcome& o) { got = o; }, only_if_cached);
  EXPECT_FALSE(got.has_value()) << "answered inside join()";
  ASSERT_TRUE(runUntil(loop, [&] { return got.has_value(); }, std::chrono::milliseconds(2000)));
  EXPECT_EQ(got->rejected, FlightOutcome::Rejected::NotCached);
  EXPECT_EQ(leads, 0);
  EXPECT_EQ(ends, 1);
  EXPECT_EQ(coalescer.flights(), 0u);
}

TEST(Coalescer, WhenTheLastWaiterThatMayRunLeavesTheRestAreNotCached) {
  EventLoop loop;
  int leads = 0;
  std::vector<uint64_t> ended;
  FlightHooks hooks;
  hooks.on_lead = [&](uint64_t) { ++leads; };
  hooks.on_end = [&](uint64_t flight) { ended.push_back(flight); };
  Coalescer coalescer(loop, nullptr, "p:", hooks);
  auto runner = coalescer.join("k", [](const FlightOutcome&) { ADD_FAILURE() << "it left"; });
  EXPECT_EQ(leads, 1);  // queued, say: not started
  WaiterNeeds only_if_cached;
  only_if_cached.may_run = false;
  std::optional<FlightOutcome> got;
  coalescer.join("k", [&](const FlightOutcome& o) { got = o; }, only_if_cached);
  EXPECT_FALSE(got.has_value());
  coalescer.leave(runner.waiter);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->rejected, FlightOutcome::Rejected::NotCached);
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0], runner.flight);
  EXPECT_EQ(coalescer.flights(), 0u);
  EXPECT_EQ(coalescer.waiters(), 0u);
}

// Once started, a run goes on for whoever waits, only-if-cached included.
TEST(Coalescer, AStartedRunAnswersOnlyIfCachedWaiters) {
  EventLoop loop;
  FlightHooks hooks;
  hooks.on_lead = [](uint64_t) {};
  Coalescer coalescer(loop, nullptr, "p:", hooks);
  auto runner = coalescer.join("k", [](const FlightOutcome&) {});
  coalescer.markStarted(runner.flight);
  WaiterNeeds only_if_cached;
  only_if_cached.may_run = false;
  std::optional<FlightOutcome> got;
  coalescer.join("k", [&](const FlightOutcome& o) { got = o; }, only_if_cached);
  coalescer.leave(runner.waiter);
  EXPECT_FALSE(got.has_value());
  FlightOutcome done;
  done.response = std::make_shared<CachedResponse>();
  coalescer.complete(runner.flight, done);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->rejected, FlightOutcome::Rejected::No);
  EXPECT_TRUE(got->response);
}

}  // namespace
}  // namespace wfp

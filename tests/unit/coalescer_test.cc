// Coalescer against a real Redis (the redis-server scripts/test starts,
// WFP_REDIS_URL): what a flight does once it holds the cross-instance lock.
#include "proxy/coalescer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <random>

#include "proxy/event_loop.h"
#include "proxy/redis_client.h"

namespace wfp {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

bool runUntil(EventLoop& loop, const std::function<bool()>& done, std::chrono::milliseconds limit) {
  if (done()) return true;
  auto deadline = Clock::now() + limit;
  std::unique_ptr<Timer> poll;
  poll = std::make_unique<Timer>(loop, [&] {
    if (done() || Clock::now() >= deadline) {
      loop.stop();
      return;
    }
    poll->start(1ms);
  });
  poll->start(0us);
  loop.run();
  return done();
}

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
  hooks.on_lead = [&](uint64_t, std::string) { ++leads; };
  hooks.lookup_shared = [&](const std::string& key, std::function<void(CachedResponsePtr)> fn) {
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
  hooks.on_lead = [&](uint64_t, std::string) { ++leads; };
  hooks.lookup_shared = [&](const std::string&, std::function<void(CachedResponsePtr)> fn) { fn(nullptr); };
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
  hooks.on_lead = [&](uint64_t, std::string) { ++leads; };
  hooks.lookup_shared = [&](const std::string&, std::function<void(CachedResponsePtr)> fn) { pending = fn; };
  Coalescer coalescer(loop_, redis_.get(), "wfpcoal:", hooks);
  auto joined = coalescer.join(key_, [](const FlightOutcome&) { ADD_FAILURE() << "no outcome expected"; });
  ASSERT_TRUE(runUntil(loop_, [&] { return static_cast<bool>(pending); }, 2s));
  coalescer.leave(joined.waiter);
  pending(nullptr);  // the look-up answers after the waiter left
  EXPECT_EQ(leads, 0);
  EXPECT_EQ(coalescer.flights(), 0u);
  EXPECT_TRUE(lockGone());
}

}  // namespace
}  // namespace wfp

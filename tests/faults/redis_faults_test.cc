// Redis faults under a steady load of cache requests (docs/http.md "Redis is an
// optimisation, not a dependency"): Redis killed, paused (SIGSTOP) and
// resumed, restarted cleanly. Every request keeps succeeding through the L1
// and the upstream, each input runs upstream once, a paused Redis costs a
// request at most about one redis.timeout_ms, workflow_proxy_redis_up drops
// and recovers, and one warning is logged per outage.
#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "tests/faults/fault_helpers.h"

namespace wfp::test::faults {
namespace {

bool redisUp(ProxyProcess& proxy) { return metricOf(proxy, "workflow_proxy_redis_up") == 1.0; }
bool redisDown(ProxyProcess& proxy) { return metricOf(proxy, "workflow_proxy_redis_up") == 0.0; }

// Every request of the load succeeded, and the upstream ran each distinct
// input exactly once (repeats are hits from the L1 or Redis, never re-runs).
void expectAllServed(SteadyLoad& load, Simulator& sim, std::chrono::milliseconds worst_allowed) {
  auto results = load.results();
  ASSERT_FALSE(results.empty());
  std::chrono::milliseconds worst{0};
  std::map<int, int> statuses;
  for (const auto& r : results) {
    ++statuses[r.status];
    worst = std::max(worst, r.took);
  }
  EXPECT_EQ(statuses[200], static_cast<int>(results.size())) << [&] {
    std::string s;
    for (auto& [k, v] : statuses) s += std::to_string(k) + ":" + std::to_string(v) + " ";
    return s;
  }();
  EXPECT_LE(worst, worst_allowed);
  EXPECT_EQ(simRuns(sim), load.uniqueInputs()) << "an input ran upstream more than once, or not at all";
}

size_t downWarnings(ProxyProcess& proxy) { return countOf(proxy.log(), "redis: down"); }

TEST(Faults, RedisKilledUnderLoadThenRestarted) {
  if (!haveRedisServer()) GTEST_SKIP() << "no redis-server";
  OwnRedis redis;
  Simulator sim;
  ProxyProcess proxy(redisCacheConfig(redis.url()), sim.url());
  ASSERT_TRUE(eventually([&] { return redisUp(proxy); }, 5s));
  SteadyLoad load(proxy.port());
  ASSERT_TRUE(load.advance(10));

  redis.kill();
  EXPECT_TRUE(eventually([&] { return redisDown(proxy); }, 5s));
  EXPECT_EQ(nlohmann::json::parse(httpRequest(adminPortOf(proxy), "GET", "/readyz").body)["redis"], "down");
  ASSERT_TRUE(load.advance(15));

  redis.start();
  EXPECT_TRUE(eventually([&] { return redisUp(proxy); }, 10s));
  ASSERT_TRUE(load.advance(15));
  load.stop();
  expectAllServed(load, sim, 2s);
  EXPECT_EQ(downWarnings(proxy), 1u) << proxy.log();
  // After the outage the cache writes to Redis again: a fresh proxy on the
  // same Redis hits an input stored after the restart.
  EXPECT_EQ(runOn(proxy.port(), "wf_after", R"({"k":1})").status, 200);
  ProxyProcess second(redisCacheConfig(redis.url()), sim.url());
  ASSERT_TRUE(eventually([&] { return redisUp(second); }, 5s));
  EXPECT_EQ(runOn(second.port(), "wf_after", R"({"k":1})").header("x-cache"), "HIT");
  expectAlive(proxy);
}

TEST(Faults, RedisPausedUnderLoadCostsAtMostATimeoutThenNothing) {
  if (!haveRedisServer()) GTEST_SKIP() << "no redis-server";
  OwnRedis redis;
  Simulator sim;
  // A command timeout far above a request's own time, so that "waited for
  // Redis" and "did not" stay apart on a busy machine under ASan.
  ProxyProcess proxy(baseConfig("redis:\n  url: " + redis.url() +
                                "\n  key_prefix: \"f:\"\n  timeout_ms: 1000\ncache:\n  backend: redis\n"),
                     sim.url());
  ASSERT_TRUE(eventually([&] { return redisUp(proxy); }, 5s));
  SteadyLoad load(proxy.port());
  ASSERT_TRUE(load.advance(10));

  redis.pause();  // commands in flight now never get an answer
  EXPECT_TRUE(eventually([&] { return redisDown(proxy); }, 5s));
  ASSERT_TRUE(load.advance(20));
  // Once Redis is known to be down, requests do not wait for it.
  size_t before = load.count();
  ASSERT_TRUE(load.advance(10));
  auto results = load.results();
  std::chrono::milliseconds worst_after{0};
  for (size_t i = before; i < results.size(); ++i) worst_after = std::max(worst_after, results[i].took);
  EXPECT_LT(worst_after, 500ms) << "requests still wait for a paused Redis";

  redis.resume();
  EXPECT_TRUE(eventually([&] { return redisUp(proxy); }, 10s));
  ASSERT_TRUE(load.advance(15));
  load.stop();
  // A request caught mid-command waits for at most about one timeout (1 s).
  expectAllServed(load, sim, 2500ms);
  EXPECT_EQ(downWarnings(proxy), 1u) << proxy.log();
  expectAlive(proxy);
}

TEST(Faults, RedisRestartedCleanlyUnderLoad) {
  if (!haveRedisServer()) GTEST_SKIP() << "no redis-server";
  OwnRedis redis;
  Simulator sim;
  ProxyProcess proxy(redisCacheConfig(redis.url()), sim.url());
  ASSERT_TRUE(eventually([&] { return redisUp(proxy); }, 5s));
  SteadyLoad load(proxy.port(), 30ms);
  for (int round = 0; round < 2; ++round) {
    ASSERT_TRUE(load.advance(10));
    redis.terminate();
    redis.start();
    EXPECT_TRUE(eventually([&] { return redisUp(proxy); }, 10s)) << "round " << round;
  }
  ASSERT_TRUE(load.advance(10));
  load.stop();
  expectAllServed(load, sim, 2s);
  expectAlive(proxy);
}

TEST(Faults, RedisPausedWhileRunsAreInFlightAcrossTwoInstances) {
  // Two instances on one Redis coalesce through a Redis lock and pub/sub.
  // Pausing Redis while a run is in flight must not lose the waiters: every
  // request is answered, and each input runs at most once per instance.
  if (!haveRedisServer()) GTEST_SKIP() << "no redis-server";
  OwnRedis redis;
  Simulator sim;
  sim.configureWorkflows({{"wf_slow", {{"latency_ms", 600}}}});
  ProxyProcess a(redisCacheConfig(redis.url()), sim.url());
  ProxyProcess b(redisCacheConfig(redis.url()), sim.url());
  ASSERT_TRUE(eventually([&] { return redisUp(a) && redisUp(b); }, 5s));
  Connection ca(a.port());
  ca.send(buildRequest("POST", "/api/v1/run/wf_slow", kAcme, R"({"x":1})"));
  ASSERT_TRUE(eventually([&] { return simTotal(sim) == 1; }, 2s));
  Connection cb(b.port());
  cb.send(buildRequest("POST", "/api/v1/run/wf_slow", kAcme, R"({"x":1})"));
  std::this_thread::sleep_for(150ms);  // b waits on a's lock
  redis.pause();
  HttpResponse ra = ca.readResponse(10s);
  HttpResponse rb = cb.readResponse(10s);
  redis.resume();
  EXPECT_EQ(ra.status, 200) << ra.raw;
  EXPECT_EQ(rb.status, 200) << rb.raw;
  EXPECT_LE(simRuns(sim), 2);
  EXPECT_TRUE(eventually([&] { return redisUp(a) && redisUp(b); }, 10s));
  EXPECT_EQ(runOn(b.port(), "wf_slow", R"({"x":1})").status, 200);
  expectAlive(a);
  expectAlive(b);
}

TEST(Faults, SharedBudgetSurvivesARedisOutageWithoutUpstream429) {
  if (!haveRedisServer()) GTEST_SKIP() << "no redis-server";
  OwnRedis redis;
  Simulator sim;
  const std::string cfg = "redis:\n  url: " + redis.url() +
                          "\n  key_prefix: \"sb:\"\n  timeout_ms: 200\ncache:\n  backend: redis\n"
                          "rate_limit:\n  shared: true\n";
  ProxyProcess a(baseConfig(cfg), sim.url());
  ProxyProcess b(baseConfig(cfg), sim.url());
  ASSERT_TRUE(eventually([&] { return redisUp(a) && redisUp(b); }, 5s));
  // Let each instance see the other's heartbeat.
  std::this_thread::sleep_for(1500ms);
  redis.kill();
  std::vector<std::string> reqs;
  for (int i = 0; i < 12; ++i) reqs.push_back(buildRequest("POST", "/api/v1/run/wf_b", kAcme, "{\"i\":" + std::to_string(i) + "}"));
  std::vector<HttpResponse> ra, rb;
  std::thread ta([&] { ra = concurrentRequests(a.port(), reqs, 30s); });
  std::vector<std::string> reqs_b;
  for (int i = 100; i < 112; ++i) reqs_b.push_back(buildRequest("POST", "/api/v1/run/wf_b", kAcme, "{\"i\":" + std::to_string(i) + "}"));
  rb = concurrentRequests(b.port(), reqs_b, 30s);
  ta.join();
  for (const auto& r : ra) EXPECT_EQ(r.status, 200) << r.raw;
  for (const auto& r : rb) EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(sim.stats()["status_429"], 0) << "the instances together went over the organisation's budget";
  redis.start();
  EXPECT_TRUE(eventually([&] { return redisUp(a) && redisUp(b); }, 10s));
  expectAlive(a);
  expectAlive(b);
}

}  // namespace
}  // namespace wfp::test::faults

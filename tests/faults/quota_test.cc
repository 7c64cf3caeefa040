// Client quotas and usage (docs/rate-limits.md "Client quotas", docs/operations.md
// "Usage"), with the real binary, the upstream simulator and, for the fleet,
// a real redis-server: what the upstream received is the measure.
#include <csignal>
#include <regex>
#include <thread>

#include "tests/faults/fault_helpers.h"

namespace wfp::test::faults {
namespace {

const Headers kBilling = kAcme;  // acme's client "billing"
const Headers kTutor{{"Authorization", "Bearer acme-other-key"}, {"Content-Type", "application/json"}};
constexpr const char* kQuotaBody = R"({"error":"Quota exceeded","success":false,"code":"quota_exceeded"})";

// baseConfig() with a quota on acme's client billing (and `extra` after it).
std::string quotaConfig(const std::string& quota, const std::string& extra = "") {
  std::string cfg = baseConfig(extra);
  const std::string billing = "        key: acme-client-key\n";
  cfg.replace(cfg.find(billing), billing.size(), billing + "        quota: " + quota + "\n");
  return cfg;
}

std::string input(const std::string& client, int i) {
  return R"({"client":")" + client + R"(","i":)" + std::to_string(i) + "}";
}

// Runs the upstream received whose input names `client`.
int upstreamRunsOf(Simulator& sim, const std::string& client) {
  int n = 0;
  for (const auto& r : sim.requests()) {
    if (r.value("body", nlohmann::json()).is_string() &&
        r["body"].get<std::string>().find("\"client\":\"" + client + "\"") != std::string::npos) {
      ++n;
    }
  }
  return n;
}

void expectQuotaExceeded(const HttpResponse& r) {
  EXPECT_EQ(r.status, 429) << r.raw;
  EXPECT_EQ(r.body, kQuotaBody);
  ASSERT_TRUE(r.header("Retry-After")) << r.raw;
  EXPECT_GE(std::stoi(*r.header("Retry-After")), 1);
}

bool redisUpOn(ProxyProcess& p) { return metricOf(p, "workflow_proxy_redis_up").value_or(0) == 1; }

TEST(Quota, AClientOverItsQuotaIsRefusedWhileAnotherOfItsOrganisationRuns) {
  Simulator sim;
  ProxyProcess proxy(quotaConfig("{runs: 3, window_s: 3600}"), sim.url());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(runOn(proxy.port(), "wf_q", input("billing", i), kBilling).status, 200);
  HttpResponse over = runOn(proxy.port(), "wf_q", input("billing", 3), kBilling);
  expectQuotaExceeded(over);
  EXPECT_GT(std::stoi(over.header("Retry-After").value_or("0")), 3000) << "a run frees up only at the window's end";
  EXPECT_EQ(over.header("X-Cache"), "MISS");
  EXPECT_EQ(upstreamRunsOf(sim, "billing"), 3) << "no upstream call over quota";

  // Hits are free, over quota too.
  HttpResponse hit = runOn(proxy.port(), "wf_q", input("billing", 1), kBilling);
  EXPECT_EQ(hit.status, 200) << hit.raw;
  EXPECT_EQ(hit.header("X-Cache"), "HIT");

  // Another client of the same organisation has no quota: it keeps running.
  for (int i = 0; i < 4; ++i) EXPECT_EQ(runOn(proxy.port(), "wf_q", input("tutor", i), kTutor).status, 200);
  EXPECT_EQ(upstreamRunsOf(sim, "tutor"), 4);
  EXPECT_EQ(simRuns(sim), 7);

  // Streams are runs too, and refused the same way.
  HttpResponse stream = streamOn(proxy.port(), "wf_q", input("billing", 9), kBilling);
  expectQuotaExceeded(stream);
  EXPECT_EQ(simTotal(sim), 7);
}

TEST(Quota, JoiningARunInFlightIsFreeAndAnUnsentRunIsGivenBack) {
  Simulator sim;
  sim.configureWorkflows({{"wf_slow", {{"latency_ms", 400}}}});
  ProxyProcess proxy(quotaConfig("{runs: 1, window_s: 3600}"), sim.url());
  // tutor-web starts the run; billing (quota 1) joins it: coalesced, free.
  std::thread leader([&] { EXPECT_EQ(runOn(proxy.port(), "wf_slow", input("shared", 1), kTutor).status, 200); });
  std::this_thread::sleep_for(150ms);
  HttpResponse joined = runOn(proxy.port(), "wf_slow", input("shared", 1), kBilling);
  leader.join();
  EXPECT_EQ(joined.status, 200) << joined.raw;
  EXPECT_EQ(joined.header("X-Cache"), "COALESCED");
  // Its one run is still there.
  EXPECT_EQ(runOn(proxy.port(), "wf_q", input("billing", 1), kBilling).status, 200);
  expectQuotaExceeded(runOn(proxy.port(), "wf_q", input("billing", 2), kBilling));
  EXPECT_EQ(simRuns(sim), 2);
}

TEST(Quota, TheWindowSlides) {
  Simulator sim;
  ProxyProcess proxy(quotaConfig("{runs: 2, window_s: 2}"), sim.url());
  EXPECT_EQ(runOn(proxy.port(), "wf_q", input("billing", 1), kBilling).status, 200);
  EXPECT_EQ(runOn(proxy.port(), "wf_q", input("billing", 2), kBilling).status, 200);
  HttpResponse over = runOn(proxy.port(), "wf_q", input("billing", 3), kBilling);
  expectQuotaExceeded(over);
  EXPECT_LE(std::stoi(over.header("Retry-After").value_or("99")), 3);
  std::this_thread::sleep_for(std::chrono::seconds(std::stoi(over.header("Retry-After").value_or("3"))) + 100ms);
  EXPECT_EQ(runOn(proxy.port(), "wf_q", input("billing", 3), kBilling).status, 200) << "the window moved on";
  EXPECT_EQ(upstreamRunsOf(sim, "billing"), 3);
}

TEST(Quota, AReloadKeepsWhatWasUsed) {
  Simulator sim;
  ProxyProcess proxy(quotaConfig("{runs: 2, window_s: 3600}"), sim.url());
  EXPECT_EQ(runOn(proxy.port(), "wf_q", input("billing", 1), kBilling).status, 200);
  EXPECT_EQ(runOn(proxy.port(), "wf_q", input("billing", 2), kBilling).status, 200);
  expectQuotaExceeded(runOn(proxy.port(), "wf_q", input("billing", 3), kBilling));
  // One more run allowed by the reload: the two used stay used.
  std::string yaml = readFile(proxy.configPath());
  yaml = std::regex_replace(yaml, std::regex("quota: \\{runs: 2,"), "quota: {runs: 3,");
  proxy.dir().write("proxy.yaml", yaml);
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return proxy.log().find("configuration reloaded") != std::string::npos; }))
      << proxy.log();
  EXPECT_EQ(runOn(proxy.port(), "wf_q", input("billing", 3), kBilling).status, 200);
  expectQuotaExceeded(runOn(proxy.port(), "wf_q", input("billing", 4), kBilling));
  EXPECT_EQ(upstreamRunsOf(sim, "billing"), 3);
  // One client with a quota, one window held: bounded by the configuration.
  EXPECT_EQ(metricOf(proxy, "workflow_proxy_tracked_entries{map=\"quota_windows\"}"), 1.0) << metrics(proxy);
}

// Two instances on one Redis with rate_limit.shared, billing's quota 4 a day.
struct SharedFleet {
  static std::string config(const OwnRedis& redis) {
    return quotaConfig("{runs: 4, window_s: 86400}", "redis:\n  url: " + redis.url() +
                                                         "\n  key_prefix: \"q:\"\n  timeout_ms: 200\n"
                                                         "rate_limit:\n  shared: true\n");
  }
  OwnRedis redis;
  Simulator sim;
  ProxyProcess a{config(redis), sim.url()};
  ProxyProcess b{config(redis), sim.url()};
};

TEST(Quota, TwoInstancesSharingRedisHoldOneQuota) {
  if (!haveRedisServer()) GTEST_SKIP() << "no redis-server";
  SharedFleet fleet;
  auto& [redis, sim, a, b] = fleet;
  ASSERT_TRUE(eventually([&] { return redisUpOn(a) && redisUpOn(b); }, 5s));
  std::vector<std::string> on_a, on_b;
  for (int i = 0; i < 5; ++i) {
    on_a.push_back(buildRequest("POST", "/api/v1/run/wf_q", kBilling, input("billing", i)));
    on_b.push_back(buildRequest("POST", "/api/v1/run/wf_q", kBilling, input("billing", 100 + i)));
  }
  std::vector<HttpResponse> ra;
  std::thread ta([&] { ra = concurrentRequests(a.port(), on_a, 30s); });
  std::vector<HttpResponse> rb = concurrentRequests(b.port(), on_b, 30s);
  ta.join();
  int ok = 0, refused = 0;
  for (const auto* set : {&ra, &rb}) {
    for (const auto& r : *set) {
      if (r.status == 200) ++ok;
      if (r.status == 429 && r.body == kQuotaBody) ++refused;
    }
  }
  EXPECT_EQ(ok, 4);
  EXPECT_EQ(refused, 6);
  EXPECT_EQ(upstreamRunsOf(sim, "billing"), 4) << "never more than the quota across the fleet";
  // Each instance reports the fleet's count.
  for (ProxyProcess* p : {&a, &b}) {
    auto usage = nlohmann::json::parse(httpRequest(p->adminPort(), "GET", "/admin/usage").body);
    EXPECT_EQ(usage["organisations"]["acme"]["clients"]["billing"]["quota"]["used"], 4) << usage.dump();
  }
}

TEST(Quota, WithRedisAwayTheLocalCountDecidesThenTheFleetsAgain) {
  if (!haveRedisServer()) GTEST_SKIP() << "no redis-server";
  SharedFleet fleet;
  auto& [redis, sim, a, b] = fleet;
  ASSERT_TRUE(eventually([&] { return redisUpOn(a) && redisUpOn(b); }, 5s));
  EXPECT_EQ(runOn(a.port(), "wf_q", input("billing", 1), kBilling).status, 200);

  redis.kill();
  ASSERT_TRUE(eventually([&] { return !redisUpOn(a); }, 5s));
  EXPECT_EQ(runOn(a.port(), "wf_q", input("billing", 2), kBilling).status, 200) << "fail-open to the local count";

  // Back, empty: A remembers its own two runs; B and A count in Redis again.
  redis.start();
  ASSERT_TRUE(eventually([&] { return redisUpOn(a) && redisUpOn(b); }, 10s));
  EXPECT_EQ(runOn(b.port(), "wf_q", input("billing", 3), kBilling).status, 200);
  EXPECT_EQ(runOn(b.port(), "wf_q", input("billing", 4), kBilling).status, 200);
  EXPECT_EQ(runOn(a.port(), "wf_q", input("billing", 5), kBilling).status, 200);  // Redis: 3
  EXPECT_EQ(runOn(b.port(), "wf_q", input("billing", 6), kBilling).status, 200);  // Redis: 4
  // A has run 3 times itself, under its quota of 4: only Redis can refuse it.
  expectQuotaExceeded(runOn(a.port(), "wf_q", input("billing", 7), kBilling));
  expectQuotaExceeded(runOn(b.port(), "wf_q", input("billing", 8), kBilling));
  EXPECT_EQ(upstreamRunsOf(sim, "billing"), 6);

  // Emptied again (FLUSHALL, a restart): B's own three runs still count, so
  // it runs once more at most, and reports at least what it ran itself.
  redis.kill();
  redis.start();
  ASSERT_TRUE(eventually([&] { return redisUpOn(b); }, 10s));
  EXPECT_EQ(runOn(b.port(), "wf_q", input("billing", 9), kBilling).status, 200);
  expectQuotaExceeded(runOn(b.port(), "wf_q", input("billing", 10), kBilling));
  auto usage = nlohmann::json::parse(httpRequest(b.adminPort(), "GET", "/admin/usage").body);
  EXPECT_EQ(usage["organisations"]["acme"]["clients"]["billing"]["quota"]["used"], 4) << usage.dump();
  EXPECT_EQ(upstreamRunsOf(sim, "billing"), 7);
  expectAlive(a);
  expectAlive(b);
}

// --- usage ------------------------------------------------------------------------

TEST(Usage, MatchesWhatTheUpstreamCountedAndTheMetric) {
  Simulator sim;
  sim.configureWorkflows({{"wf_slow", {{"latency_ms", 400}}}, {"wf_err", {{"status", 500}}}});
  ProxyProcess proxy(quotaConfig("{runs: 3, window_s: 600}"), sim.url());
  const int p = proxy.port();
  // billing: 2 runs, 1 hit, then 1 coalesced onto tutor's run, 1 upstream
  // error (a run), 1 over quota.
  EXPECT_EQ(runOn(p, "wf_q", input("billing", 1), kBilling).status, 200);
  EXPECT_EQ(runOn(p, "wf_q", input("billing", 2), kBilling).status, 200);
  EXPECT_EQ(runOn(p, "wf_q", input("billing", 1), kBilling).header("X-Cache"), "HIT");
  std::thread leader([&] { EXPECT_EQ(runOn(p, "wf_slow", input("tutor", 1), kTutor).status, 200); });
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(runOn(p, "wf_slow", input("tutor", 1), kBilling).header("X-Cache"), "COALESCED");
  leader.join();
  EXPECT_EQ(runOn(p, "wf_err", input("billing", 3), kBilling).status, 500);
  expectQuotaExceeded(runOn(p, "wf_q", input("billing", 4), kBilling));
  // tutor-web: 3 runs (one above), 2 hits.
  EXPECT_EQ(runOn(p, "wf_q", input("tutor", 2), kTutor).status, 200);
  EXPECT_EQ(runOn(p, "wf_q", input("tutor", 3), kTutor).status, 200);
  EXPECT_EQ(runOn(p, "wf_q", input("tutor", 2), kTutor).header("X-Cache"), "HIT");
  EXPECT_EQ(runOn(p, "wf_q", input("tutor", 3), kTutor).header("X-Cache"), "HIT");

  ASSERT_EQ(upstreamRunsOf(sim, "billing"), 3);
  ASSERT_EQ(upstreamRunsOf(sim, "tutor"), 3);
  HttpResponse r = httpRequest(proxy.adminPort(), "GET", "/admin/usage");
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  EXPECT_EQ(r.body,
            R"({"organisations":{"acme":{"clients":{)"
            R"("billing":{"runs":3,"hits":1,"coalesced":1,"stale":0,"errors":2,"quota":{"runs":3,"window_s":600,"used":3}},)"
            R"("tutor-web":{"runs":3,"hits":2,"coalesced":0,"stale":0,"errors":0,"quota":null}}},)"
            R"("globex":{"clients":{"globex-app":{"runs":0,"hits":0,"coalesced":0,"stale":0,"errors":0,"quota":null}}}}})");

  const std::string text = metrics(proxy);
  auto series = [&](const std::string& client, const std::string& cache) {
    return metricValue(text, "workflow_proxy_client_requests_total{org=\"acme\",client=\"" + client +
                                 "\",cache=\"" + cache + "\"}");
  };
  EXPECT_EQ(series("billing", "HIT"), 1);
  EXPECT_EQ(series("billing", "COALESCED"), 1);
  EXPECT_EQ(series("billing", "MISS"), 4);  // two runs, the 500, the 429
  EXPECT_EQ(series("tutor-web", "HIT"), 2);
  EXPECT_EQ(series("tutor-web", "MISS"), 3);
  EXPECT_EQ(series("globex-app", "MISS"), std::nullopt) << "no sample for what never happened";
}

TEST(Usage, IsAnAdminActionAndOnlyAGet) {
  Simulator sim;
  TempDir secrets;
  secrets.write("admin-token", "usage-token\n");
  ProxyProcess proxy(baseConfig("admin:\n  token_file: " + secrets.file("admin-token") + "\n"), sim.url());
  HttpResponse anonymous = httpRequest(proxy.adminPort(), "GET", "/admin/usage");
  EXPECT_EQ(anonymous.status, 401);
  EXPECT_EQ(anonymous.body, R"({"error":"Unauthorized","success":false,"code":"unauthorized"})");
  EXPECT_EQ(httpRequest(proxy.adminPort(), "GET", "/admin/usage", {{"Authorization", "Bearer usage-token"}}).status,
            200);
  HttpResponse post = httpRequest(proxy.adminPort(), "POST", "/admin/usage", {{"Authorization", "Bearer usage-token"}});
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.header("Allow"), "GET, HEAD");
  // Not on the client listener.
  EXPECT_EQ(httpRequest(proxy.port(), "GET", "/admin/usage", kAcme).status, 404);
}

}  // namespace
}  // namespace wfp::test::faults

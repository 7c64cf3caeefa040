// Health, readiness, reload and drain (docs/operations.md).
#include <gtest/gtest.h>

#include <signal.h>

#include <future>
#include <thread>

#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

const Headers kAcme{{"Authorization", "Bearer acme-client-key"}};

TEST(Lifecycle, HealthAndReadiness) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  HttpResponse r = httpRequest(proxy.adminPort(), "GET", "/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"status":"ok"})");
  r = httpRequest(proxy.adminPort(), "GET", "/readyz");
  EXPECT_EQ(r.status, 200);
  auto j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["status"], "ready");
  EXPECT_EQ(j["redis"], "off");
  EXPECT_TRUE(j["queues"].contains("acme"));
  r = httpRequest(proxy.adminPort(), "GET", "/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, R"({"error":"Not found","success":false,"code":"not_found"})");
  // Admin routes are not on the client listener when admin_listen is set.
  httpRequest(proxy.port(), "GET", "/healthz", kAcme);
  EXPECT_EQ(sim.stats()["total"], 1);
}

TEST(Lifecycle, AdminRequestsDuringSlowClientRequestsAreIndependent) {
  // Regression: the client and admin servers numbered their exchanges from 1
  // each, and the handler keyed requests by that number.
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_slow", {{"latency_ms", 500}}}});
  auto slow = std::async(std::launch::async, [&] {
    return httpRequest(proxy.port(), "POST", "/api/v1/run/wf_slow", kAcme, "{}");
  });
  ASSERT_TRUE(eventually([&] { return sim.stats()["total"] == 1; }));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(httpRequest(proxy.adminPort(), "GET", "/readyz").status, 200);
    EXPECT_EQ(httpRequest(proxy.adminPort(), "GET", "/healthz").status, 200);
  }
  EXPECT_EQ(slow.get().status, 200);
  EXPECT_TRUE(proxy.process().running());
}

TEST(Lifecycle, IdleProxyExitsAtOnceOnSigterm) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  auto start = std::chrono::steady_clock::now();
  proxy.process().signal(SIGTERM);
  auto code = proxy.process().wait(std::chrono::seconds(5));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(Lifecycle, DrainFinishesTheRunningRequestThenExits) {
  Simulator sim;
  ProxyProcess proxy(baseConfig("shutdown_grace_s: 10\n"), sim.url());
  sim.configureWorkflows({{"wf_slow", {{"latency_ms", 600}}}});
  auto slow = std::async(std::launch::async, [&] {
    return httpRequest(proxy.port(), "POST", "/api/v1/run/wf_slow", kAcme, "{}");
  });
  ASSERT_TRUE(eventually([&] { return sim.stats()["total"] == 1; }));
  proxy.process().signal(SIGTERM);
  HttpResponse r = slow.get();
  EXPECT_EQ(r.status, 200);
  auto code = proxy.process().wait(std::chrono::seconds(5));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
}

TEST(Lifecycle, DrainGraceOverAnswers503) {
  Simulator sim;
  ProxyProcess proxy(baseConfig("shutdown_grace_s: 0.3\n"), sim.url());
  sim.configureWorkflows({{"wf_slow", {{"latency_ms", 5000}}}});
  auto slow = std::async(std::launch::async, [&] {
    return httpRequest(proxy.port(), "POST", "/api/v1/run/wf_slow", kAcme, "{}");
  });
  ASSERT_TRUE(eventually([&] { return sim.stats()["total"] == 1; }));
  proxy.process().signal(SIGTERM);
  HttpResponse r = slow.get();
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, R"({"error":"The proxy is shutting down","success":false,"code":"shutting_down"})");
  auto code = proxy.process().wait(std::chrono::seconds(5));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
}

TEST(Lifecycle, ReloadAppliesNewKeysAndRejectsABadFile) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  Headers newcomer{{"Authorization", "Bearer brand-new-key"}};
  EXPECT_EQ(httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", newcomer, "{}").status, 401);

  std::string text = readFile(proxy.configPath());
  std::string added = text + "  - name: initech\n    api_key: sk_sim_acme\n    clients:\n"
                             "      - name: newcomer\n        key: brand-new-key\n";
  proxy.dir().write("proxy.yaml", added);
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] {
    return httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", newcomer, "{}").status == 200;
  }));

  proxy.dir().write("proxy.yaml", added + "bogus_key: 1\n");
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return proxy.log().find("reload rejected") != std::string::npos; }));
  // The problems follow the "reload rejected" line in log calls of their own.
  EXPECT_TRUE(eventually([&] { return proxy.log().find("unknown key") != std::string::npos; })) << proxy.log();
  EXPECT_EQ(httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", newcomer, "{}").status, 200);
  EXPECT_TRUE(proxy.process().running());
}

// What a reload cannot apply (Redis, the cache backend, shared budgets,
// addresses) is said in the log; the admin listener takes the reloaded limits
// as the client listener does. (Regression: both were silent, and the admin
// listener kept the limits it started with.)
TEST(Lifecycle, AReloadSaysWhatNeedsARestartAndTheAdminListenerFollowsItsLimits) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  const std::string big(4000, ' ');
  const std::string purge = R"({"organisation":"acme","workflow_id":"wf_x"})";
  EXPECT_EQ(httpRequest(proxy.adminPort(), "POST", "/admin/purge", {}, purge + big).status, 200);

  std::string text = readFile(proxy.configPath());
  proxy.dir().write("proxy.yaml", text + "redis:\n  url: redis://127.0.0.1:1/0\nlimits:\n  max_body_bytes: 1000\n");
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return proxy.log().find("configuration reloaded") != std::string::npos; }))
      << proxy.log();
  EXPECT_NE(proxy.log().find("reload: redis changed; it takes effect after a restart"), std::string::npos)
      << proxy.log();
  EXPECT_EQ(proxy.log().find("reload: rate_limit.shared changed"), std::string::npos) << proxy.log();
  EXPECT_EQ(httpRequest(proxy.adminPort(), "POST", "/admin/purge", {}, purge + big).status, 413);
  EXPECT_EQ(httpRequest(proxy.adminPort(), "POST", "/admin/purge", {}, purge).status, 200);
}

// workflow_proxy_config_last_reload_successful follows each SIGHUP; the
// timestamp moves only with a success.
TEST(Lifecycle, TheLastReloadIsInTheMetrics) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  auto metric = [&](const std::string& name) {
    return sampleSum(parseSamples(httpRequest(proxy.adminPort(), "GET", "/metrics").body), name, {});
  };
  const std::string ok = "workflow_proxy_config_last_reload_successful";
  const std::string at = "workflow_proxy_config_last_reload_success_timestamp_seconds";
  EXPECT_EQ(metric(ok), 1);
  double started = metric(at);
  EXPECT_GT(started, 1.7e9);

  std::string text = readFile(proxy.configPath());
  proxy.dir().write("proxy.yaml", text + "bogus_key: 1\n");
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return metric(ok) == 0; })) << proxy.log();
  EXPECT_EQ(metric(at), started);

  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  proxy.dir().write("proxy.yaml", text);
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return metric(ok) == 1; })) << proxy.log();
  EXPECT_GT(metric(at), started);
}

}  // namespace
}  // namespace wfp::test

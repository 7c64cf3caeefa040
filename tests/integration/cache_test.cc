// One input, one upstream run (docs/http.md, docs/operations.md purge): memory and Redis
// backends, coalescing in one process and across instances, Redis outages.
// Redis tests use the redis-server scripts/test started (WFP_REDIS_URL) or
// one of their own (WFP_REDIS_SERVER) when they kill it.
#include <strings.h>

#include <gtest/gtest.h>

#include <signal.h>

#include <future>
#include <random>
#include <thread>

#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

const Headers kAcme{{"Authorization", "Bearer acme-client-key"}, {"Content-Type", "application/json"}};
const Headers kGlobex{{"Authorization", "Bearer globex-client-key"}, {"Content-Type", "application/json"}};

Headers with(Headers h, const std::string& name, const std::string& value) {
  h.emplace_back(name, value);
  return h;
}

HttpResponse runOn(int port, const std::string& wf, const std::string& body, const Headers& h = kAcme) {
  return httpRequest(port, "POST", "/api/v1/run/" + wf, h, body);
}

int runs(Simulator& sim) { return sim.stats()["runs"].get<int>(); }

// A unique prefix per test so tests sharing one redis-server never meet.
std::string uniquePrefix() {
  std::random_device rd;
  return "t" + std::to_string(rd()) + ":";
}

std::string redisUrl() {
  const char* url = std::getenv("WFP_REDIS_URL");
  return url ? url : "";
}

std::string redisConfig(const std::string& url, const std::string& prefix, const std::string& extra = "") {
  return baseConfig("redis:\n  url: " + url + "\n  key_prefix: \"" + prefix +
                    "\"\n  timeout_ms: 250\ncache:\n  backend: redis\n" + extra);
}

class MemoryCache : public ::testing::Test {
 protected:
  void start(const std::string& extra = "") {
    sim_ = std::make_unique<Simulator>();
    proxy_ = std::make_unique<ProxyProcess>(baseConfig(extra), sim_->url());
  }
  HttpResponse run(const std::string& wf, const std::string& body, const Headers& h = kAcme) {
    return runOn(proxy_->port(), wf, body, h);
  }
  std::unique_ptr<Simulator> sim_;
  std::unique_ptr<ProxyProcess> proxy_;
};

TEST_F(MemoryCache, SecondIdenticalRequestIsAHitWithTheSameBytes) {
  start();
  HttpResponse first = run("wf_a", R"({"story":"charlie"})");
  HttpResponse second = run("wf_a", R"({"story":"charlie"})");
  ASSERT_EQ(first.status, 200);
  ASSERT_EQ(second.status, 200);
  EXPECT_EQ(first.body, second.body);
  EXPECT_EQ(first.header("x-cache"), "MISS");
  EXPECT_EQ(first.header("cache-status"), "workflow-proxy; fwd=miss; stored");
  EXPECT_EQ(second.header("x-cache"), "HIT");
  EXPECT_EQ(second.header("cache-status").value_or("").rfind("workflow-proxy; hit; ttl=", 0), 0u);
  EXPECT_EQ(second.header("age"), "0");
  EXPECT_EQ(second.header("content-type"), first.header("content-type"));
  EXPECT_TRUE(second.header("x-ratelimit-limit").has_value());
  EXPECT_TRUE(second.header("x-ratelimit-remaining").has_value());
  EXPECT_EQ(second.header("server-timing"), "queue;dur=0.000, upstream;dur=0.000");
  EXPECT_NE(second.header("x-request-id"), first.header("x-request-id"));
  // Every header of the stored response is there once, and no framing header twice.
  for (const char* name : {"content-type", "x-request-id", "server-timing", "x-cache", "content-length"}) {
    int count = 0;
    for (const auto& [n, v] : second.headers) count += strcasecmp(n.c_str(), name) == 0;
    EXPECT_EQ(count, 1) << name << "\n" << second.raw;
  }
  EXPECT_EQ(runs(*sim_), 1);
}

TEST_F(MemoryCache, EquivalentSpellingsAreOneInput) {
  start();
  std::vector<std::string> variants = {
      R"({"a":1,"b":[1,2],"c":"A"})",       R"({ "c" : "\u0041", "b":[1, 2], "a":1.0 })",
      R"({"b":[1,2],"a":10e-1,"c":"A"})",    R"({"a":2,"a":1,"b":[1,2],"c":"A"})",
      "\n{\"c\":\"A\",\n\"a\":1e0,\"b\":[1,2.0]}"};
  std::string body;
  for (const auto& v : variants) {
    HttpResponse r = run("wf_v", v);
    ASSERT_EQ(r.status, 200) << v;
    if (body.empty()) body = r.body;
    EXPECT_EQ(r.body, body) << v;
  }
  EXPECT_EQ(runs(*sim_), 1);
  // Different values, order of arrays, and null vs absent are other inputs.
  run("wf_v", R"({"a":1,"b":[2,1],"c":"A"})");
  run("wf_v", R"({"a":1,"b":[1,2],"c":"A","d":null})");
  run("wf_v2", R"({"a":1,"b":[1,2],"c":"A"})");
  EXPECT_EQ(runs(*sim_), 4);
}

TEST_F(MemoryCache, OrganisationsNeverShareEntries) {
  start();
  HttpResponse a = run("wf_o", "{}", kAcme);
  HttpResponse g = run("wf_o", "{}", kGlobex);
  EXPECT_NE(a.body, g.body);
  EXPECT_EQ(g.header("x-cache"), "MISS");
  EXPECT_EQ(runs(*sim_), 2);
  // Two clients of one organisation do share.
  HttpResponse other = run("wf_o", "{}", {{"Authorization", "Bearer acme-other-key"}});
  EXPECT_EQ(other.header("x-cache"), "HIT");
  EXPECT_EQ(other.body, a.body);
}

TEST_F(MemoryCache, ErrorsAreNeverStored) {
  start();
  sim_->configureWorkflows({{"wf_err", {{"status", 500}}}, {"wf_404", {{"status", 404}}}});
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(run("wf_err", "{}").status, 500);
    EXPECT_EQ(run("wf_404", "{}").status, 404);
  }
  EXPECT_EQ(runs(*sim_), 4);
  HttpResponse r = run("wf_err", "{}");
  EXPECT_EQ(r.header("cache-status"), "workflow-proxy; fwd=miss");
}

TEST_F(MemoryCache, CacheControlDirectives) {
  start();
  HttpResponse first = run("wf_cc", "{}");
  // no-cache: runs upstream and stores the fresh result.
  HttpResponse fresh = run("wf_cc", "{}", with(kAcme, "Cache-Control", "no-cache"));
  EXPECT_EQ(fresh.header("x-cache"), "MISS");
  EXPECT_EQ(fresh.header("cache-status"), "workflow-proxy; fwd=request; stored");
  EXPECT_NE(fresh.body, first.body);
  EXPECT_EQ(run("wf_cc", "{}").body, fresh.body);
  // no-store: neither read nor written.
  HttpResponse bypass = run("wf_cc", "{}", with(kAcme, "Cache-Control", "no-store"));
  EXPECT_EQ(bypass.header("x-cache"), "BYPASS");
  EXPECT_NE(bypass.body, fresh.body);
  EXPECT_EQ(run("wf_cc", "{}").body, fresh.body);
  // max-age: an entry older than N seconds is not accepted.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  HttpResponse young = run("wf_cc", "{}", with(kAcme, "Cache-Control", "max-age=0"));
  EXPECT_EQ(young.header("x-cache"), "MISS");
  HttpResponse old_ok = run("wf_cc", "{}", with(kAcme, "Cache-Control", "max-age=60"));
  EXPECT_EQ(old_ok.header("x-cache"), "HIT");
  int before = runs(*sim_);
  EXPECT_EQ(before, 4);
  // only-if-cached: a hit, or 504 without an upstream call.
  EXPECT_EQ(run("wf_cc", "{}", with(kAcme, "Cache-Control", "only-if-cached")).header("x-cache"), "HIT");
  HttpResponse miss = run("wf_cc", R"({"other":1})", with(kAcme, "Cache-Control", "only-if-cached"));
  EXPECT_EQ(miss.status, 504);
  EXPECT_EQ(miss.body, R"({"error":"Not in cache","success":false,"code":"not_cached"})");
  EXPECT_EQ(runs(*sim_), before);
}

TEST_F(MemoryCache, WorkflowTtlZeroIsNeverCachedButStillCoalesced) {
  start("cache:\n  workflows:\n    wf_live: { ttl_s: 0 }\n");
  sim_->configureWorkflows({{"wf_live", {{"latency_ms", 300}}}});
  EXPECT_EQ(run("wf_live", "{}").header("x-cache"), "BYPASS");
  EXPECT_EQ(run("wf_live", "{}").header("x-cache"), "BYPASS");
  EXPECT_EQ(runs(*sim_), 2);
  std::vector<std::string> reqs(20, buildRequest("POST", "/api/v1/run/wf_live", kAcme, "{}"));
  auto responses = concurrentRequests(proxy_->port(), reqs);
  int coalesced = 0;
  for (auto& r : responses) {
    EXPECT_EQ(r.status, 200);
    coalesced += r.header("x-cache") == "COALESCED";
  }
  EXPECT_EQ(coalesced, 19);
  EXPECT_EQ(runs(*sim_), 3);
}

TEST_F(MemoryCache, ThousandConcurrentIdenticalRequestsMakeOneUpstreamRun) {
  start();
  sim_->configureWorkflows({{"wf_hot", {{"latency_ms", 500}}}});
  std::vector<std::string> reqs(1000, buildRequest("POST", "/api/v1/run/wf_hot", kAcme, R"({"q":"same"})"));
  auto responses = concurrentRequests(proxy_->port(), reqs);
  std::string body = responses[0].body;
  int ok = 0, coalesced = 0, miss = 0;
  for (auto& r : responses) {
    ok += r.status == 200 && r.body == body;
    coalesced += r.header("x-cache") == "COALESCED";
    miss += r.header("x-cache") == "MISS";
  }
  EXPECT_EQ(ok, 1000);
  EXPECT_EQ(miss, 1);
  EXPECT_EQ(coalesced + miss + 0, 1000 - static_cast<int>(std::count_if(responses.begin(), responses.end(), [](auto& r) {
                                          return r.header("x-cache") == "HIT";
                                        })));
  EXPECT_EQ(runs(*sim_), 1);
  HttpResponse metrics = httpRequest(proxy_->adminPort(), "GET", "/metrics");
  EXPECT_NE(metrics.body.find("workflow_proxy_coalesced_total{org=\"acme\"}"), std::string::npos);
}

TEST_F(MemoryCache, WaitersThatLeaveDetachAndTheRunIsStillStored) {
  start();
  sim_->configureWorkflows({{"wf_slow", {{"latency_ms", 600}}}});
  {
    // The creator and one waiter hang up while the run is upstream.
    Connection a(proxy_->port());
    Connection b(proxy_->port());
    a.send(buildRequest("POST", "/api/v1/run/wf_slow", kAcme, "{}"));
    ASSERT_TRUE(eventually([&] { return runs(*sim_) == 1; }));
    b.send(buildRequest("POST", "/api/v1/run/wf_slow", kAcme, "{}"));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // A third waiter still gets the result.
  HttpResponse c = runOn(proxy_->port(), "wf_slow", "{}");
  EXPECT_EQ(c.status, 200);
  EXPECT_EQ(c.header("x-cache"), "COALESCED");
  // And the run was stored although its creator left: the retry is a hit.
  HttpResponse retry = runOn(proxy_->port(), "wf_slow", "{}");
  EXPECT_EQ(retry.header("x-cache"), "HIT");
  EXPECT_EQ(runs(*sim_), 1);
}

TEST_F(MemoryCache, StaleIfErrorServesAnExpiredEntryWhenTheUpstreamFails) {
  start("cache:\n  ttl_s: 1\n  stale_if_error_s: 60\n");
  HttpResponse good = run("wf_s", "{}");
  ASSERT_EQ(good.status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  sim_->configureWorkflows({{"wf_s", {{"status", 500}}}});
  HttpResponse stale = run("wf_s", "{}");
  EXPECT_EQ(stale.status, 200);
  EXPECT_EQ(stale.body, good.body);
  EXPECT_EQ(stale.header("x-cache"), "STALE");
  EXPECT_EQ(stale.header("cache-status"), "workflow-proxy; hit; fwd=stale");
  // Without a stale entry the upstream's error is forwarded.
  EXPECT_EQ(run("wf_s", R"({"new":1})").status, 500);
}

TEST_F(MemoryCache, PurgeDropsAWorkflowOrOneInput) {
  start();
  HttpResponse a1 = run("wf_p", R"({"x":1})");
  HttpResponse b1 = run("wf_p", R"({"x":2})");
  EXPECT_EQ(run("wf_p", R"({"x":1})").header("x-cache"), "HIT");
  HttpResponse r = httpRequest(proxy_->adminPort(), "POST", "/admin/purge", {},
                               R"({"organisation":"acme","workflow_id":"wf_p","body":{"x":1}})");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"success":true})");
  EXPECT_EQ(run("wf_p", R"({"x":1})").header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_p", R"({"x":2})").header("x-cache"), "HIT");
  r = httpRequest(proxy_->adminPort(), "POST", "/admin/purge", {}, R"({"organisation":"acme","workflow_id":"wf_p"})");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(run("wf_p", R"({"x":2})").header("x-cache"), "MISS");
  r = httpRequest(proxy_->adminPort(), "POST", "/admin/purge", {}, R"({"organisation":"nope","workflow_id":"wf_p"})");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, R"({"error":"Not found","success":false,"code":"not_found"})");
  EXPECT_EQ(httpRequest(proxy_->adminPort(), "POST", "/admin/purge", {}, "not json").status, 400);
}

// Purge by body finds the input the run path keyed, whatever numbers it holds:
// integers beyond 64 bits, exponents beyond a double, spellings of one value.
// (Regression: the body went through a second JSON parser, which rounded
// 18446744073709551617 and turned 1e400 into null; such inputs stayed HITs.)
TEST_F(MemoryCache, PurgeByBodyKeepsEveryDigit) {
  start();
  const std::string big = R"({"n":18446744073709551617,"e":1e400,"s":"caf\u00e9"})";
  const std::string near = R"({"n":18446744073709551616,"e":1e400,"s":"caf\u00e9"})";
  run("wf_digits", big);
  run("wf_digits", near);
  ASSERT_EQ(run("wf_digits", big).header("x-cache"), "HIT");
  // Another spelling of the same input: key order, spaces, 10e399, a raw é.
  HttpResponse r = httpRequest(proxy_->adminPort(), "POST", "/admin/purge", {},
                               R"({"organisation":"acme","workflow_id":"wf_digits",)"
                               R"( "body": {"s":"café", "e":10e399, "n":18446744073709551617}})");
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(run("wf_digits", big).header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_digits", near).header("x-cache"), "HIT");  // one digit apart: another input
  // "body" that is not an object, and a body that is not JSON.
  r = httpRequest(proxy_->adminPort(), "POST", "/admin/purge", {},
                  R"({"organisation":"acme","workflow_id":"wf_digits","body":[1]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, R"({"error":"\"body\" must be a JSON object","success":false,"code":"invalid_json"})");
  r = httpRequest(proxy_->adminPort(), "POST", "/admin/purge", {}, R"({"organisation":"acme",)");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find(R"("code":"invalid_json")"), std::string::npos) << r.body;
}

TEST_F(MemoryCache, BackendOffBypassesEverything) {
  start("cache:\n  backend: off\n");
  EXPECT_EQ(run("wf_off", "{}").header("x-cache"), "BYPASS");
  EXPECT_EQ(run("wf_off", "{}").header("x-cache"), "BYPASS");
  EXPECT_EQ(runs(*sim_), 2);
}

// --- Redis ---------------------------------------------------------------------

class RedisCache : public ::testing::Test {
 protected:
  void SetUp() override {
    if (redisUrl().empty()) GTEST_SKIP() << "WFP_REDIS_URL not set (scripts/test starts redis-server)";
    prefix_ = uniquePrefix();
    sim_ = std::make_unique<Simulator>();
  }
  // A proxy connected to Redis: a request that came before its first
  // connection would (rightly) go on without the shared cache.
  std::unique_ptr<ProxyProcess> proxy(const std::string& extra = "") {
    auto p = std::make_unique<ProxyProcess>(redisConfig(redisUrl(), prefix_, extra), sim_->url());
    int admin = p->adminPort();
    bool up = eventually([admin] {
      HttpResponse ready = httpRequest(admin, "GET", "/readyz");
      return ready.ok && ready.body.find(R"("redis":"up")") != std::string::npos;
    }, std::chrono::seconds(5));
    EXPECT_TRUE(up) << "the proxy never connected to Redis";
    return p;
  }
  std::string prefix_;
  std::unique_ptr<Simulator> sim_;
};

TEST_F(RedisCache, HitSurvivesAProxyRestart) {
  std::string body;
  {
    auto p = proxy();
    HttpResponse r = runOn(p->port(), "wf_r", R"({"k":"v"})");
    ASSERT_EQ(r.status, 200);
    body = r.body;
  }
  auto p = proxy();
  HttpResponse r = runOn(p->port(), "wf_r", R"({ "k" : "v" })");
  EXPECT_EQ(r.header("x-cache"), "HIT");
  EXPECT_EQ(r.body, body);
  EXPECT_EQ(runs(*sim_), 1);
  HttpResponse ready = httpRequest(p->adminPort(), "GET", "/readyz");
  EXPECT_EQ(nlohmann::json::parse(ready.body)["redis"], "up");
}

// SIGTERM while a run is upstream whose only client already left: the drain
// waits for the run (within the grace) and for its write to Redis, so the
// result the organisation paid for is not lost.
TEST_F(RedisCache, ADrainWaitsForARunInFlightAndItsCacheWrite) {
  sim_->configureWorkflows({{"wf_drain", {{"latency_ms", 700}}}});
  const std::string input = R"({"drain":1})";
  {
    auto p = proxy("shutdown_grace_s: 10\n");
    {
      Connection c(p->port());
      c.send(buildRequest("POST", "/api/v1/run/wf_drain", kAcme, input));
      ASSERT_TRUE(eventually([&] { return sim_->stats()["total"] == 1; }, std::chrono::seconds(5)));
    }  // the client leaves; the run goes on (it is stored for the next one)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    p->process().signal(SIGTERM);
    auto code = p->process().wait(std::chrono::seconds(10));
    ASSERT_TRUE(code.has_value());
    EXPECT_EQ(*code, 0);
  }
  auto q = proxy();
  HttpResponse r = runOn(q->port(), "wf_drain", input);
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.header("x-cache"), "HIT");
  EXPECT_EQ(runs(*sim_), 1);
}

TEST_F(RedisCache, ThreeInstancesMakeOneRunForOneInput) {
  sim_->configureWorkflows({{"wf_multi", {{"latency_ms", 800}}}});
  auto a = proxy();
  auto b = proxy();
  auto c = proxy();
  std::string req = buildRequest("POST", "/api/v1/run/wf_multi", kAcme, R"({"same":true})");
  std::vector<std::future<std::vector<HttpResponse>>> parts;
  for (int port : {a->port(), b->port(), c->port()}) {
    parts.push_back(std::async(std::launch::async, [port, req] {
      return concurrentRequests(port, std::vector<std::string>(100, req));
    }));
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  }
  std::string body;
  int ok = 0;
  for (auto& part : parts) {
    for (auto& r : part.get()) {
      if (body.empty()) body = r.body;
      ok += r.status == 200 && r.body == body;
    }
  }
  EXPECT_EQ(ok, 300);
  EXPECT_EQ(runs(*sim_), 1);
  // Afterwards every instance answers from the shared cache.
  for (int port : {a->port(), b->port(), c->port()}) {
    EXPECT_EQ(runOn(port, "wf_multi", R"({"same":true})").header("x-cache"), "HIT");
  }
  EXPECT_EQ(runs(*sim_), 1);
}

TEST_F(RedisCache, AFailedRunReachesTheOtherInstancesWithoutRetrying) {
  sim_->configureWorkflows({{"wf_fail", {{"latency_ms", 500}, {"status", 500}}}});
  auto a = proxy();
  auto b = proxy();
  auto first = std::async(std::launch::async, [&] { return runOn(a->port(), "wf_fail", "{}"); });
  ASSERT_TRUE(eventually([&] { return runs(*sim_) == 1; }));
  HttpResponse second = runOn(b->port(), "wf_fail", "{}");
  EXPECT_EQ(first.get().status, 500);
  EXPECT_EQ(second.status, 500);
  EXPECT_EQ(second.header("x-cache"), "COALESCED");
  EXPECT_EQ(runs(*sim_), 1);
}

// Read-your-writes across a fleet: once a client has its answer from one
// instance, the same input on another is a hit (the cache write leaves before
// the response does), not a second wait on the first instance's flight.
TEST_F(RedisCache, AnAnswerFromOneInstanceIsAHitOnAnotherRightAway) {
  auto a = proxy();
  auto b = proxy();
  int hits = 0;
  std::string last;
  for (int i = 0; i < 40; ++i) {
    std::string body = R"({"i":)" + std::to_string(i) + "}";
    ASSERT_EQ(runOn(a->port(), "wf_ryw", body).status, 200);
    HttpResponse r = runOn(b->port(), "wf_ryw", body);
    ASSERT_EQ(r.status, 200);
    std::string cache = r.header("x-cache").value_or("");
    hits += cache == "HIT";
    if (cache != "HIT") last = cache;
  }
  EXPECT_EQ(hits, 40) << "last other answer: " << last;
  EXPECT_EQ(runs(*sim_), 40);
}

TEST_F(RedisCache, PurgeOnOneInstanceIsSeenByTheOthers) {
  auto a = proxy();
  auto b = proxy();
  runOn(a->port(), "wf_pp", "{}");
  EXPECT_EQ(runOn(b->port(), "wf_pp", "{}").header("x-cache"), "HIT");
  HttpResponse r = httpRequest(a->adminPort(), "POST", "/admin/purge", {},
                               R"({"organisation":"acme","workflow_id":"wf_pp"})");
  EXPECT_EQ(r.status, 200);
  // b learns of the purge by pub/sub: ask it, without ever running the input
  // upstream, until it no longer has the entry (504 to only-if-cached).
  EXPECT_TRUE(eventually([&] {
    return runOn(b->port(), "wf_pp", "{}", with(kAcme, "Cache-Control", "only-if-cached")).status == 504;
  }, std::chrono::seconds(5)));
  EXPECT_EQ(runOn(b->port(), "wf_pp", "{}").header("x-cache"), "MISS");
  EXPECT_EQ(runs(*sim_), 2);
}

TEST_F(RedisCache, CorruptValuesInRedisAreMisses) {
  auto p = proxy();
  HttpResponse r = runOn(p->port(), "wf_c", "{}");
  ASSERT_EQ(r.status, 200);
  // Overwrite every entry of this test's prefix with garbage, through redis-cli.
  std::string url = redisUrl();
  std::string port = url.substr(url.rfind(':') + 1);
  port = port.substr(0, port.find('/'));
  std::string cmd = "redis-cli -p " + port + " --scan --pattern '" + prefix_ +
                    "v1:*' | while read k; do redis-cli -p " + port + " set \"$k\" garbage >/dev/null; done";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto fresh = proxy();  // a new instance: empty L1
  HttpResponse after = runOn(fresh->port(), "wf_c", "{}");
  EXPECT_EQ(after.status, 200);
  EXPECT_EQ(after.header("x-cache"), "MISS");
  EXPECT_EQ(runs(*sim_), 2);
}

// A private redis-server that the test kills and restarts.
class OwnRedis {
 public:
  OwnRedis() {
    const char* bin = std::getenv("WFP_REDIS_SERVER");
    server_ = bin ? bin : "/usr/bin/redis-server";
    Simulator probe;  // borrow a free port
    port_ = probe.port();
    probe.process().signal(SIGKILL);
    probe.process().wait(std::chrono::seconds(5));
    start();
  }
  void start() {
    process_ = std::make_unique<Process>(
        std::vector<std::string>{server_, "--port", std::to_string(port_), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", dir_.path, "--logfile", dir_.file("redis.log")},
        std::vector<std::string>{}, dir_.file("redis.stderr"), false);
    eventually([&] { return readFile(dir_.file("redis.log")).find("Ready to accept") != std::string::npos; });
  }
  void kill() {
    process_->signal(SIGKILL);
    process_->wait(std::chrono::seconds(5));
    std::remove(dir_.file("redis.log").c_str());
  }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/0"; }
  Process& process() { return *process_; }

 private:
  TempDir dir_;
  std::string server_;
  int port_ = 0;
  std::unique_ptr<Process> process_;
};

TEST(RedisOutage, RequestsGoOnWithoutRedisAndRecover) {
  if (!std::getenv("WFP_REDIS_SERVER") && access("/usr/bin/redis-server", X_OK) != 0) GTEST_SKIP();
  OwnRedis redis;
  Simulator sim;
  ProxyProcess proxy(redisConfig(redis.url(), "o:"), sim.url());
  EXPECT_EQ(runOn(proxy.port(), "wf_o", R"({"n":0})").status, 200);
  redis.kill();
  for (int i = 1; i <= 8; ++i) {  // under the upstream's 10/s
    HttpResponse r = runOn(proxy.port(), "wf_o", "{\"n\":" + std::to_string(i) + "}");
    EXPECT_EQ(r.status, 200) << i;
  }
  // Repeats are served from L1 while Redis is away.
  EXPECT_EQ(runOn(proxy.port(), "wf_o", R"({"n":5})").header("x-cache"), "HIT");
  HttpResponse m = httpRequest(proxy.adminPort(), "GET", "/metrics");
  EXPECT_NE(m.body.find("workflow_proxy_redis_up 0"), std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(httpRequest(proxy.adminPort(), "GET", "/readyz").body)["redis"], "down");
  redis.start();
  ASSERT_TRUE(eventually([&] {
    return httpRequest(proxy.adminPort(), "GET", "/metrics").body.find("workflow_proxy_redis_up 1") !=
           std::string::npos;
  }, std::chrono::seconds(15)));
  EXPECT_EQ(runOn(proxy.port(), "wf_o", R"({"n":100})").status, 200);
  // One warning per outage, not one per request.
  std::string log = proxy.log();
  size_t warnings = 0;
  for (size_t pos = log.find("redis: down"); pos != std::string::npos; pos = log.find("redis: down", pos + 1)) {
    ++warnings;
  }
  EXPECT_EQ(warnings, 1u) << log;
}

TEST(RedisOutage, RedisDownAtStartIsNotFatal) {
  Simulator sim;
  ProxyProcess proxy(redisConfig("redis://127.0.0.1:1/0", "d:"), sim.url());
  EXPECT_EQ(runOn(proxy.port(), "wf_d", "{}").status, 200);
  EXPECT_EQ(runOn(proxy.port(), "wf_d", "{}").header("x-cache"), "HIT");
}

}  // namespace
}  // namespace wfp::test

// Where the parts meet (docs/http.md, docs/security.md): the defects found by trying the
// proxy from outside — two instances on one Redis, a key rotated by SIGHUP,
// an encoded query parameter, a Redis that forgets, many distinct inputs.
// Each test here failed on the code before its fix (see the closing note of
// the issue that brought them).
#include <gtest/gtest.h>

#include <signal.h>

#include <filesystem>
#include <future>
#include <random>
#include <regex>

#include "tests/faults/fault_helpers.h"

namespace wfp::test::faults {
namespace {

Headers with(Headers h, const std::string& name, const std::string& value) {
  h.emplace_back(name, value);
  return h;
}

std::string sharedRedisUrl() {
  const char* url = std::getenv("WFP_REDIS_URL");
  return url ? url : "";
}

// A unique prefix per test so tests sharing one redis-server never meet.
std::string uniquePrefix() {
  std::random_device rd;
  return "s" + std::to_string(rd()) + ":";
}

std::string redisConfig(const std::string& url, const std::string& prefix, const std::string& extra = "") {
  return baseConfig("redis:\n  url: " + url + "\n  key_prefix: \"" + prefix +
                    "\"\n  timeout_ms: 250\ncache:\n  backend: redis\n" + extra);
}

// redis-cli against the redis-server of `url` (redis://127.0.0.1:PORT/0).
int redisCli(const std::string& url, const std::string& args) {
  std::string port = url.substr(url.rfind(':') + 1);
  port = port.substr(0, port.find('/'));
  return std::system(("redis-cli -p " + port + " " + args + " >/dev/null").c_str());
}

// Sim requests whose path starts with `path`.
nlohmann::json simRequests(Simulator& sim, const std::string& path) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : sim.requests()) {
    if (r["path"].get<std::string>().rfind(path, 0) == 0) out.push_back(r);
  }
  return out;
}

std::string headerOf(const nlohmann::json& record, const std::string& name) {
  for (const auto& h : record["headers"]) {
    std::string n = h[0];
    if (strcasecmp(n.c_str(), name.c_str()) == 0) return h[1];
  }
  return "";
}

// The base configuration with acme limited to one start per `window_s`.
std::string oneStartPer(const std::string& window_s) {
  return std::regex_replace(baseConfig(), std::regex("    api_key: sk_sim_acme\n"),
                            "    api_key: sk_sim_acme\n    rate_limit:\n      requests: 1\n      window_s: " +
                                window_s + "\n");
}

bool reloaded(ProxyProcess& p, size_t times) {
  return eventually([&] { return countOf(p.log(), "configuration reloaded") >= times; }, 5s);
}

// acme's upstream key rotated: the simulator knows only sk_sim_acme_2 from
// now on, and `proxy` is told by a SIGHUP reload.
void rotateAcmeKey(Simulator& sim, ProxyProcess& proxy) {
  nlohmann::json keys = {{"sk_sim_acme_2", {{"org", "acme"}, {"rps", 10}}}, {"sk_sim_acme", nullptr}};
  ASSERT_EQ(httpRequest(sim.port(), "POST", "/__sim/keys", {}, keys.dump()).status, 200);
  std::string text = readFile(proxy.configPath());
  text = std::regex_replace(text, std::regex("api_key: sk_sim_acme\n"), "api_key: sk_sim_acme_2\n");
  proxy.dir().write("proxy.yaml.next", text);
  std::filesystem::rename(proxy.dir().file("proxy.yaml.next"), proxy.configPath());
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(reloaded(proxy, 1)) << proxy.log();
}

class RedisSeams : public ::testing::Test {
 protected:
  void SetUp() override {
    if (sharedRedisUrl().empty()) GTEST_SKIP() << "WFP_REDIS_URL not set (scripts/test starts redis-server)";
    prefix_ = uniquePrefix();
    sim_ = std::make_unique<Simulator>();
  }
  // A proxy connected to Redis (see RedisCache::proxy).
  std::unique_ptr<ProxyProcess> proxy(const std::string& extra = "") {
    auto p = std::make_unique<ProxyProcess>(redisConfig(sharedRedisUrl(), prefix_, extra), sim_->url());
    EXPECT_TRUE(eventually([&] { return metricOf(*p, "workflow_proxy_redis_up") == 1.0; }, 5s))
        << "the proxy never connected to Redis";
    return p;
  }
  std::string prefix_;
  std::unique_ptr<Simulator> sim_;
};

// --- 1. Cache-Control with the Redis backend, one instance and two -----------

TEST_F(RedisSeams, NoCacheRunsUpstreamOnTheInstanceThatStoredAndOnAnother) {
  auto a = proxy();
  auto b = proxy();
  HttpResponse first = runOn(a->port(), "wf_nc", "{}");
  ASSERT_EQ(first.status, 200);
  // The look after taking the fleet lock must not answer a no-cache request
  // with the stored entry.
  HttpResponse again = runOn(a->port(), "wf_nc", "{}", with(kAcme, "Cache-Control", "no-cache"));
  EXPECT_EQ(again.header("x-cache"), "MISS");
  EXPECT_EQ(again.header("cache-status"), "workflow-proxy; fwd=request; stored");
  EXPECT_NE(again.body, first.body);
  EXPECT_EQ(simRuns(*sim_), 2);
  HttpResponse other = runOn(b->port(), "wf_nc", "{}", with(kAcme, "Cache-Control", "no-cache"));
  EXPECT_EQ(other.header("x-cache"), "MISS");
  EXPECT_NE(other.body, again.body);
  EXPECT_EQ(simRuns(*sim_), 3);
  // The fresh result was stored: a plain request on either instance hits it.
  EXPECT_EQ(runOn(b->port(), "wf_nc", "{}").body, other.body);
  EXPECT_EQ(simRuns(*sim_), 3);
}

TEST_F(RedisSeams, MaxAgeRefusesAnOlderEntryOnEveryInstance) {
  auto a = proxy();
  auto b = proxy();
  HttpResponse first = runOn(a->port(), "wf_ma", "{}");
  ASSERT_EQ(first.status, 200);
  std::this_thread::sleep_for(2100ms);
  HttpResponse old_ok = runOn(b->port(), "wf_ma", "{}", with(kAcme, "Cache-Control", "max-age=60"));
  EXPECT_EQ(old_ok.header("x-cache"), "HIT");
  HttpResponse young = runOn(b->port(), "wf_ma", "{}", with(kAcme, "Cache-Control", "max-age=1"));
  EXPECT_EQ(young.header("x-cache"), "MISS");
  EXPECT_NE(young.body, first.body);
  EXPECT_EQ(simRuns(*sim_), 2);
  // What b just stored is young enough for a.
  HttpResponse on_a = runOn(a->port(), "wf_ma", "{}", with(kAcme, "Cache-Control", "max-age=1"));
  EXPECT_EQ(on_a.body, young.body);
  EXPECT_EQ(simRuns(*sim_), 2);
  // And the old entry is not young enough on the instance that stored it.
  std::this_thread::sleep_for(1100ms);
  HttpResponse again = runOn(a->port(), "wf_ma", "{}", with(kAcme, "Cache-Control", "max-age=1"));
  EXPECT_EQ(again.header("x-cache"), "MISS");
  EXPECT_EQ(simRuns(*sim_), 3);
}

TEST_F(RedisSeams, OnlyIfCachedNeverRunsUpstreamOnAnyInstance) {
  auto a = proxy();
  auto b = proxy();
  const Headers oic = with(kAcme, "Cache-Control", "only-if-cached");
  HttpResponse miss = runOn(b->port(), "wf_oic", "{}", oic);
  EXPECT_EQ(miss.status, 504);
  EXPECT_EQ(miss.body, R"({"error":"Not in cache","success":false,"code":"not_cached"})");
  EXPECT_EQ(simTotal(*sim_), 0);
  HttpResponse stored = runOn(a->port(), "wf_oic", "{}");
  ASSERT_EQ(stored.status, 200);
  for (int port : {a->port(), b->port()}) {
    HttpResponse hit = runOn(port, "wf_oic", "{}", oic);
    EXPECT_EQ(hit.header("x-cache"), "HIT");
    EXPECT_EQ(hit.body, stored.body);
  }
  // Purged on one instance: a miss on both, still without an upstream call.
  ASSERT_EQ(httpRequest(a->adminPort(), "POST", "/admin/purge", {}, R"({"organisation":"acme","workflow_id":"wf_oic"})")
                .status,
            200);
  EXPECT_EQ(runOn(a->port(), "wf_oic", "{}", oic).status, 504);
  EXPECT_TRUE(eventually([&] { return runOn(b->port(), "wf_oic", "{}", oic).status == 504; }, 5s));
  EXPECT_EQ(simRuns(*sim_), 1);
}

// An only-if-cached request that joined a queued run never keeps it alive
// alone: when the request that needed the run leaves, the run is dropped and
// the only-if-cached request gets its 504.
TEST(CacheControlSeams, OnlyIfCachedAloneNeverLeadsARun) {
  Simulator sim;
  // One start per 10 s for acme: the second input waits in the queue.
  auto a = std::make_unique<ProxyProcess>(oneStartPer("10"), sim.url());
  ASSERT_EQ(runOn(a->port(), "wf_q", R"({"n":1})").status, 200);  // spends the window
  {
    Connection leader(a->port());
    leader.send(buildRequest("POST", "/api/v1/run/wf_q", kAcme, R"({"n":2})"));
    std::this_thread::sleep_for(200ms);  // queued now
    auto follower = std::async(std::launch::async, [&] {
      return runOn(a->port(), "wf_q", R"({"n":2})", with(kAcme, "Cache-Control", "only-if-cached"));
    });
    std::this_thread::sleep_for(200ms);  // attached to the queued run
    leader.close();
    HttpResponse r = follower.get();
    EXPECT_EQ(r.status, 504) << r.raw;
  }
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(simRuns(sim), 1);
}

// --- 2. A follower keeps nothing of the run it never led --------------------

TEST_F(RedisSeams, AFollowerSendsTheCurrentKeyAndRequestIdLater) {
  sim_->configureWorkflows({{"wf_follow", {{"latency_ms", 600}}}});
  auto a = proxy();
  auto b = proxy();
  const std::string input = R"({"k":1})";
  auto led = std::async(std::launch::async, [&] { return runOn(a->port(), "wf_follow", input); });
  ASSERT_TRUE(eventually([&] { return simRuns(*sim_) == 1; }, 5s));
  HttpResponse followed = runOn(b->port(), "wf_follow", input, with(kAcme, "X-Request-Id", "req-old"));
  EXPECT_EQ(followed.header("x-cache"), "COALESCED");
  EXPECT_EQ(led.get().status, 200);
  // Nothing of the run b prepared but never led is left on b.
  EXPECT_EQ(metricOf(*b, "workflow_proxy_tracked_entries{map=\"prepared_runs\"}"), 0.0) << metrics(*b);
  EXPECT_EQ(metricOf(*b, "workflow_proxy_tracked_entries{map=\"flights\"}"), 0.0);

  // The input is purged, and acme's key rotated on b.
  ASSERT_EQ(httpRequest(a->adminPort(), "POST", "/admin/purge", {},
                        R"({"organisation":"acme","workflow_id":"wf_follow","body":{"k":1}})")
                .status,
            200);
  ASSERT_NO_FATAL_FAILURE(rotateAcmeKey(*sim_, *b));

  HttpResponse later = runOn(b->port(), "wf_follow", input, with(kAcme, "X-Request-Id", "req-new"));
  EXPECT_EQ(later.status, 200) << later.raw;
  EXPECT_EQ(later.header("x-cache"), "MISS");
  auto runs = simRequests(*sim_, "/api/v1/run/wf_follow");
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(headerOf(runs[1], "authorization"), "Bearer sk_sim_acme_2");
  EXPECT_EQ(headerOf(runs[1], "x-request-id"), "req-new");
}

// A request queued before a key rotation is sent with the key in force when
// it starts, not the one of when it was queued.
TEST(KeySeams, AQueuedRunCarriesTheKeyInForceWhenItStarts) {
  Simulator sim;
  auto a = std::make_unique<ProxyProcess>(oneStartPer("2"), sim.url());
  ASSERT_EQ(runOn(a->port(), "wf_rot", R"({"n":1})").status, 200);  // spends the window
  auto queued = std::async(std::launch::async, [&] { return runOn(a->port(), "wf_rot", R"({"n":2})"); });
  auto token = std::async(std::launch::async, [&] {
    return httpRequest(a->port(), "GET", "/api/v1/token?ttl=30", kAcme);
  });
  std::this_thread::sleep_for(300ms);
  ASSERT_NO_FATAL_FAILURE(rotateAcmeKey(sim, *a));
  EXPECT_EQ(queued.get().status, 200);
  EXPECT_EQ(token.get().status, 200);
  auto all = sim.requests();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(headerOf(all[1], "authorization"), "Bearer sk_sim_acme_2");
  EXPECT_EQ(headerOf(all[2], "authorization"), "Bearer sk_sim_acme_2");
}

// --- 7. Purge after Redis forgets a generation --------------------------------

TEST(PurgeSeams, APurgeWorksAfterRedisRestartsEmpty) {
  if (!haveRedisServer()) GTEST_SKIP() << "no redis-server";
  OwnRedis redis;
  Simulator sim;
  ProxyProcess p(redisCacheConfig(redis.url()), sim.url());
  const std::string purge = R"({"organisation":"acme","workflow_id":"wf_gen"})";
  ASSERT_EQ(runOn(p.port(), "wf_gen", "{}").status, 200);
  ASSERT_EQ(httpRequest(p.adminPort(), "POST", "/admin/purge", {}, purge).status, 200);
  ASSERT_EQ(runOn(p.port(), "wf_gen", "{}").header("x-cache"), "MISS");  // generation 1
  redis.kill();
  redis.start();  // empty: the generation is gone
  ASSERT_TRUE(eventually([&] { return metricOf(p, "workflow_proxy_redis_up") == 1.0; }, 15s)) << p.log();
  HttpResponse before = runOn(p.port(), "wf_gen", "{}");
  EXPECT_EQ(before.header("x-cache"), "HIT");  // the generation did not go back to 0
  ASSERT_EQ(httpRequest(p.adminPort(), "POST", "/admin/purge", {}, purge).status, 200);
  HttpResponse after = runOn(p.port(), "wf_gen", "{}");
  EXPECT_EQ(after.header("x-cache"), "MISS");
  EXPECT_EQ(simRuns(sim), 3);
}

TEST_F(RedisSeams, APurgeWorksWhenTheStoredGenerationIsNotANumber) {
  auto a = proxy();
  const std::string purge = R"({"organisation":"acme","workflow_id":"wf_bad"})";
  const std::string gen_key = prefix_ + "gen:{acme}:wf_bad";
  for (const char* bad : {"-1", "abc", "99999999999999999999999"}) {
    SCOPED_TRACE(bad);
    ASSERT_EQ(runOn(a->port(), "wf_bad", "{}").status, 200);
    ASSERT_EQ(redisCli(sharedRedisUrl(), "set '" + gen_key + "' " + bad), 0);
    std::this_thread::sleep_for(1100ms);  // the instance reads the generation again
    int runs = simRuns(*sim_);
    runOn(a->port(), "wf_bad", "{}");
    ASSERT_EQ(httpRequest(a->adminPort(), "POST", "/admin/purge", {}, purge).status, 200);
    HttpResponse after = runOn(a->port(), "wf_bad", "{}");
    EXPECT_EQ(after.header("x-cache"), "MISS");
    EXPECT_LE(simRuns(*sim_), runs + 2);
    HttpResponse hit = runOn(a->port(), "wf_bad", "{}");
    EXPECT_EQ(hit.header("x-cache"), "HIT");
  }
}

// --- 3. An encoded token parameter ------------------------------------------------

TEST(StreamSeams, AnyEncodingOfTokenMakesAClientTokenStream) {
  Simulator sim;
  ProxyProcess p(baseConfig("cache:\n  streams: true\n"), sim.url());
  for (const std::string query :
       {"%74oken=pub_tok_other", "t%6Fken=x", "%74%6F%6B%65%6E=x", "a=1&%74oken=x", "token=", "x=1&token=y"}) {
    SCOPED_TRACE(query);
    int before = sim.stats()["total"].get<int>();
    HttpResponse r = httpRequest(p.port(), "POST", "/api/v1/run/wf_tok/stream?" + query, kAcme, "{}");
    EXPECT_EQ(r.header("x-cache"), "BYPASS");
    auto all = sim.requests();
    ASSERT_EQ(all.size(), static_cast<size_t>(before + 1));
    const auto& sent = all.back();
    EXPECT_EQ(sent["route"], "stream");
    EXPECT_EQ(sent["uri"], "/api/v1/run/wf_tok/stream?" + query);  // as given, no token of ours
    EXPECT_EQ(headerOf(sent, "authorization"), "");
  }
  EXPECT_EQ(sim.stats()["tokens"], 0);
  // A name that only looks like it is not a token: the proxy fetches one.
  HttpResponse own = httpRequest(p.port(), "POST", "/api/v1/run/wf_tok/stream?tokens=1&toke=2", kAcme, "{}");
  EXPECT_EQ(own.status, 200);
  EXPECT_EQ(sim.stats()["tokens"], 1);
}

// --- 5. Per-key state is bounded -------------------------------------------------

// Sends `n` requests made by `make(i)` over `conns` keep-alive connections,
// pipelined in batches, and returns how many got `status`.
int pipelined(int port, int n, int conns, const std::function<std::string(int)>& make, int status) {
  std::atomic<int> matched{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < conns; ++c) {
    threads.emplace_back([&, c] {
      Connection conn(port);
      constexpr int kBatch = 50;
      for (int i = c; i < n;) {
        std::string batch;
        int sent = 0;
        for (; sent < kBatch && i < n; ++sent, i += conns) batch += make(i);
        conn.send(batch);
        for (int k = 0; k < sent; ++k) {
          HttpResponse r = conn.readResponse(30s);
          if (!r.ok) return;
          matched += r.status == status;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  return matched;
}

std::string keepAliveRun(const std::string& wf, const Headers& headers, const std::string& body) {
  std::string out = "POST /api/v1/run/" + wf + " HTTP/1.1\r\nHost: x\r\n";
  for (const auto& [k, v] : headers) out += k + ": " + v + "\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  return out;
}

TEST(BoundSeams, DistinctNeverCachedWorkflowsDoNotGrowMemory) {
  Simulator sim;
  ProxyProcess p(baseConfig(), sim.url());
  const Headers oic = with(kAcme, "Cache-Control", "only-if-cached");
  auto make = [&](int i) { return keepAliveRun("wf_" + std::to_string(i), oic, "{}"); };
  const int warm = 5000;
  ASSERT_EQ(pipelined(p.port(), warm, 4, make, 504), warm);
  long before = rssKiB(p.process().pid());
  const int n = 100000;
  auto more = [&](int i) { return make(warm + i); };
  ASSERT_EQ(pipelined(p.port(), n, 4, more, 504), n);
  long after = rssKiB(p.process().pid());
  EXPECT_EQ(simTotal(sim), 0);
  auto generations = metricOf(p, "workflow_proxy_tracked_entries{map=\"generations\"}");
  ASSERT_TRUE(generations.has_value()) << metrics(p);
  EXPECT_LE(*generations, 64);
  if (!underAsan()) {
    EXPECT_LE(after - before, 4 * 1024) << "RSS " << before << " KiB → " << after << " KiB";
  }
}


// --- 6. The key is checked on the head ------------------------------------------

TEST(HeadSeams, ARequestWithoutAValidKeyIsRefusedBeforeItsBody) {
  Simulator sim;
  ProxyProcess p(baseConfig("limits:\n  max_body_bytes: 2MiB\n"), sim.url());
  // Expect: 100-continue gets the 401, never a 100.
  std::string raw = rawExchange(p.port(),
                                "POST /api/v1/run/wf_head HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
                                "Content-Type: application/json\r\nContent-Length: 1048576\r\n"
                                "Expect: 100-continue\r\n\r\n",
                                5s);
  EXPECT_EQ(raw.rfind("HTTP/1.1 401 ", 0), 0u) << raw;
  EXPECT_EQ(raw.find("100 Continue"), std::string::npos) << raw;
  EXPECT_NE(raw.find("Connection: close"), std::string::npos) << raw;
  EXPECT_NE(raw.find(kUnauthorizedBody), std::string::npos) << raw;
  // No Authorization at all (no default_organisation) is refused the same way.
  std::string none = rawExchange(p.port(),
                                 "POST /api/v1/run/wf_head HTTP/1.1\r\nHost: x\r\n"
                                 "Content-Length: 1048576\r\nExpect: 100-continue\r\n\r\n",
                                 5s);
  EXPECT_EQ(none.rfind("HTTP/1.1 401 ", 0), 0u) << none;
  // So is a request whose route does not exist or refuses the method.
  for (const std::string line : {"POST /api/v1/run/bad%2Fid", "GET /api/v1/run/wf_head"}) {
    std::string refused = rawExchange(p.port(),
                                      line + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n"
                                             "Content-Length: 1048576\r\nExpect: 100-continue\r\n\r\n",
                                      5s);
    EXPECT_EQ(refused.find("100 Continue"), std::string::npos) << refused;
    EXPECT_TRUE(refused.rfind("HTTP/1.1 404 ", 0) == 0 || refused.rfind("HTTP/1.1 405 ", 0) == 0) << refused;
  }

  // 100 connections that announce 1 MiB and send half of it: each gets its
  // 401 at once, and the proxy holds none of the bodies.
  long before = rssKiB(p.process().pid());
  const std::string half(512 * 1024, 'x');
  std::vector<std::unique_ptr<Connection>> conns;
  for (int i = 0; i < 100; ++i) {
    conns.push_back(std::make_unique<Connection>(p.port()));
    conns.back()->send("POST /api/v1/run/wf_head HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope-" +
                       std::to_string(i) + "\r\nContent-Length: 1048576\r\n\r\n" + half);
  }
  long held = rssKiB(p.process().pid());
  for (auto& c : conns) {
    HttpResponse r = c->readResponse(5s);
    ASSERT_TRUE(r.ok) << "no answer before the body was complete";
    EXPECT_EQ(r.status, 401);
    EXPECT_EQ(r.body, kUnauthorizedBody);
  }
  if (!underAsan()) {
    EXPECT_LE(held - before, 8 * 1024) << "RSS " << before << " KiB → " << held << " KiB";
  }
  EXPECT_EQ(simTotal(sim), 0);
  // A valid key still sends its body and runs.
  EXPECT_EQ(runOn(p.port(), "wf_head", R"({"ok":1})").status, 200);
  auto log = p.accessLog();
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.front()["status"], 401);
}


// --- 8. TRACE and CONNECT --------------------------------------------------------

TEST(MethodSeams, TraceAndConnectAreRefusedAndNeverForwarded) {
  Simulator sim;
  ProxyProcess p(baseConfig(), sim.url());
  for (const std::string line : {"TRACE /api/v1/echo", "TRACE /api/v1/run/wf_x", "TRACE /api/v1/token",
                                 "CONNECT /api/v1/echo", "CONNECT upstream.example:443"}) {
    SCOPED_TRACE(line);
    std::string raw = rawExchange(p.port(), line + " HTTP/1.1\r\nHost: x\r\n"
                                                   "Authorization: Bearer acme-client-key\r\n\r\n", 5s);
    HttpResponse r = parseResponse(raw);
    EXPECT_EQ(r.status, 405) << raw;
    EXPECT_NE(r.body.find("method_not_allowed"), std::string::npos) << raw;
    EXPECT_TRUE(r.header("allow").has_value()) << raw;
    EXPECT_EQ(raw.find("sk_sim_acme"), std::string::npos);
  }
  EXPECT_EQ(simTotal(sim), 0);
}

}  // namespace
}  // namespace wfp::test::faults

// Cache keys that ignore noise (docs/http.md): cache.workflows.<id>.key_ignore
// and key_normalize with the real binary and the upstream simulator — one
// upstream run per shaped input, the first body sent byte for byte,
// coalescing, purge by body, streams, and reloads that add or drop rules.
#include <gtest/gtest.h>

#include <signal.h>

#include <thread>

#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

const Headers kAcme{{"Authorization", "Bearer acme-client-key"}, {"Content-Type", "application/json"}};

const char* kRules =
    "cache:\n"
    "  workflows:\n"
    "    wf_ignore:\n"
    "      key_ignore: [request_id, meta.trace_id]\n"
    "    wf_norm:\n"
    "      key_normalize: [trim, collapse_whitespace, lowercase]\n"
    "    wf_slow:\n"
    "      key_ignore: [request_id]\n"
    "    wf_stream:\n"
    "      key_ignore: [request_id]\n"
    "      key_normalize: [lowercase]\n"
    "    wf_plain: { ttl_s: 3600 }\n";

class CacheKeyRules : public ::testing::Test {
 protected:
  void SetUp() override {
    sim_ = std::make_unique<Simulator>();
    proxy_ = std::make_unique<ProxyProcess>(baseConfig(kRules), sim_->url());
  }
  HttpResponse run(const std::string& wf, const std::string& body) {
    return httpRequest(proxy_->port(), "POST", "/api/v1/run/" + wf, kAcme, body);
  }
  HttpResponse purge(const std::string& wf, const std::string& body) {
    return httpRequest(proxy_->adminPort(), "POST", "/admin/purge", {},
                       R"({"organisation":"acme","workflow_id":")" + wf + R"(","body":)" + body + "}");
  }
  int runs() { return sim_->stats()["runs"].get<int>(); }
  // The bodies the upstream received on `path`, in order.
  std::vector<std::string> upstreamBodies(const std::string& path) {
    std::vector<std::string> out;
    for (auto& r : sim_->requests()) {
      if (r["path"] == path) out.push_back(r["body"].get<std::string>());
    }
    return out;
  }
  std::unique_ptr<Simulator> sim_;
  std::unique_ptr<ProxyProcess> proxy_;
};

TEST_F(CacheKeyRules, InputsThatDifferOnlyInIgnoredMembersAreOneRun) {
  const std::string first = R"({"q":"x", "request_id":"r-1","meta":{"trace_id":"t-1","lang":"en"}})";
  HttpResponse a = run("wf_ignore", first);
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.header("x-cache"), "MISS");
  // Another request_id (top level) and another meta.trace_id (dotted), in
  // another order: a hit, with the first request's answer.
  HttpResponse b = run("wf_ignore", R"({"meta":{"lang":"en","trace_id":"t-2"},"request_id":"r-2","q":"x"})");
  EXPECT_EQ(b.status, 200);
  EXPECT_EQ(b.header("x-cache"), "HIT");
  EXPECT_EQ(b.body, a.body);
  HttpResponse c = run("wf_ignore", R"({"q":"x","meta":{"lang":"en"}})");  // both absent
  EXPECT_EQ(c.header("x-cache"), "HIT");
  EXPECT_EQ(runs(), 1);
  // The upstream got the first body as the client wrote it: its own
  // request_id and trace_id, its spacing and member order.
  EXPECT_EQ(upstreamBodies("/api/v1/run/wf_ignore"), std::vector<std::string>{first});
  EXPECT_NE(a.body.find(R"(\"request_id\":\"r-1\")"), std::string::npos) << a.body;
  EXPECT_NE(b.body.find(R"(\"trace_id\":\"t-1\")"), std::string::npos) << b.body;  // the leader's answer

  // What is not ignored still tells inputs apart: another meta.lang, or a
  // trace_id at the top level (only meta.trace_id is ignored).
  EXPECT_EQ(run("wf_ignore", R"({"q":"x","request_id":"r-3","meta":{"trace_id":"t-1","lang":"fr"}})")
                .header("x-cache"),
            "MISS");
  EXPECT_EQ(run("wf_ignore", R"({"q":"x","trace_id":"t-1","meta":{"lang":"en"}})").header("x-cache"), "MISS");
  EXPECT_EQ(runs(), 3);
}

TEST_F(CacheKeyRules, InputsThatDifferOnlyInWhitespaceAndCaseAreOneRun) {
  const std::string first = "{\"q\":\"  What is  the Capital\\tof FRANCE? \",\"n\":1}";
  HttpResponse a = run("wf_norm", first);
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.header("x-cache"), "MISS");
  for (const std::string& same : {
           std::string(R"({"q":"what is the capital of france?","n":1.0})"),
           std::string("{\"n\":1,\"q\":\"What\\nis the\\u00a0CAPITAL of France?\"}"),
           std::string("{\"q\":\"\\u0057HAT IS THE CAPITAL OF FRANCE?\\r\\n\",\"n\":1}"),
       }) {
    HttpResponse r = run("wf_norm", same);
    EXPECT_EQ(r.header("x-cache"), "HIT") << same;
    EXPECT_EQ(r.body, a.body) << same;
  }
  EXPECT_EQ(runs(), 1);
  EXPECT_EQ(upstreamBodies("/api/v1/run/wf_norm"), std::vector<std::string>{first});
  // Inner characters still count, and so do member names.
  EXPECT_EQ(run("wf_norm", R"({"q":"whatis the capital of france?","n":1})").header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_norm", R"({"Q":"what is the capital of france?","n":1})").header("x-cache"), "MISS");
  EXPECT_EQ(runs(), 3);
}

TEST_F(CacheKeyRules, AWorkflowWithoutRulesIsUnaffected) {
  EXPECT_EQ(run("wf_plain", R"({"q":"x","request_id":"1"})").header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_plain", R"({"q":"x","request_id":"2"})").header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_plain", R"({"q":"X","request_id":"2"})").header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_other", R"({"q":" x"})").header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_other", R"({"q":"x"})").header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_plain", R"({"request_id":"2","q":"X"})").header("x-cache"), "HIT");
  EXPECT_EQ(runs(), 5);
}

// Coalescing keys by the shaped input too: a request that differs from the
// running one only in an ignored member waits for it and gets its answer.
TEST_F(CacheKeyRules, CoalescingUsesTheShapedKey) {
  sim_->configureWorkflows({{"wf_slow", {{"latency_ms", 600}}}});
  const std::string first = R"({"q":"slow","request_id":"leader"})";
  Connection a(proxy_->port());
  a.send(buildRequest("POST", "/api/v1/run/wf_slow", kAcme, first));
  ASSERT_TRUE(eventually([&] { return runs() == 1; }));
  Connection b(proxy_->port());
  b.send(buildRequest("POST", "/api/v1/run/wf_slow", kAcme, R"({"request_id":"follower","q":"slow"})"));
  HttpResponse ra = a.readResponse();
  HttpResponse rb = b.readResponse();
  ASSERT_EQ(ra.status, 200) << ra.raw;
  ASSERT_EQ(rb.status, 200) << rb.raw;
  EXPECT_EQ(ra.header("x-cache"), "MISS");
  EXPECT_EQ(rb.header("x-cache"), "COALESCED");
  EXPECT_EQ(rb.body, ra.body);
  EXPECT_NE(rb.body.find("leader"), std::string::npos) << rb.body;
  EXPECT_EQ(runs(), 1);
  EXPECT_EQ(upstreamBodies("/api/v1/run/wf_slow"), std::vector<std::string>{first});

  // Many at once, each with its own request_id: one run.
  std::vector<std::string> reqs;
  for (int i = 0; i < 20; ++i) {
    reqs.push_back(buildRequest("POST", "/api/v1/run/wf_slow", kAcme,
                                R"({"q":"burst","request_id":")" + std::to_string(i) + "\"}"));
  }
  auto responses = concurrentRequests(proxy_->port(), reqs);
  for (auto& r : responses) {
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, responses[0].body);
  }
  EXPECT_EQ(runs(), 2);
}

// The body sent is the leader's: when the request that created a flight
// leaves while queued, the waiter that leads the run now sends its own bytes
// (with its own request_id), not those of a client that is gone.
TEST(CacheKeyRulesLeader, AWaiterThatTakesTheLeadSendsItsOwnBody) {
  Simulator sim;
  std::string cfg = baseConfig(kRules);
  const std::string anchor = "    api_key: sk_sim_acme\n";
  cfg.insert(cfg.find(anchor) + anchor.size(), "    rate_limit:\n      requests: 1\n      window_s: 1.5\n");
  ProxyProcess proxy(cfg, sim.url());
  ASSERT_EQ(httpRequest(proxy.port(), "POST", "/api/v1/run/wf_other", kAcme, "{}").status, 200);  // the budget is spent
  const std::string second = R"({"request_id":"second", "q":"queued"})";
  Connection b(proxy.port());
  {
    Connection a(proxy.port());
    a.send(buildRequest("POST", "/api/v1/run/wf_slow", kAcme, R"({"q":"queued","request_id":"creator"})"));
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    b.send(buildRequest("POST", "/api/v1/run/wf_slow", kAcme, second));
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
  }  // the creator hangs up while queued
  HttpResponse rb = b.readResponse();
  ASSERT_EQ(rb.status, 200) << rb.raw;
  EXPECT_NE(rb.body.find("second"), std::string::npos) << rb.body;
  EXPECT_EQ(rb.body.find("creator"), std::string::npos) << rb.body;
  std::vector<std::string> sent;
  for (auto& r : sim.requests()) {
    if (r["path"] == "/api/v1/run/wf_slow") sent.push_back(r["body"].get<std::string>());
  }
  EXPECT_EQ(sent, std::vector<std::string>{second});
}

TEST_F(CacheKeyRules, PurgeByBodyUsesTheSameRules) {
  ASSERT_EQ(run("wf_ignore", R"({"q":"p","request_id":"1","meta":{"trace_id":"a"}})").status, 200);
  ASSERT_EQ(run("wf_norm", R"({"q":"Purge Me"})").status, 200);
  EXPECT_EQ(runs(), 2);
  // A body that differs only in ignored members names the same entry.
  HttpResponse p = purge("wf_ignore", R"({"meta":{"trace_id":"zzz"},"request_id":"other","q":"p"})");
  EXPECT_EQ(p.status, 200) << p.raw;
  HttpResponse again = run("wf_ignore", R"({"q":"p","request_id":"1","meta":{"trace_id":"a"}})");
  EXPECT_EQ(again.header("x-cache"), "MISS");
  EXPECT_EQ(runs(), 3);
  // Likewise a body that differs only in what the normalisers erase.
  EXPECT_EQ(purge("wf_norm", R"({"q":"  purge   ME "})").status, 200);
  EXPECT_EQ(run("wf_norm", R"({"q":"Purge Me"})").header("x-cache"), "MISS");
  EXPECT_EQ(runs(), 4);
  // A body that differs elsewhere purges nothing.
  EXPECT_EQ(purge("wf_ignore", R"({"q":"other"})").status, 200);
  EXPECT_EQ(run("wf_ignore", R"({"q":"p","request_id":"2","meta":{}})").header("x-cache"), "HIT");
  EXPECT_EQ(runs(), 4);
}

TEST_F(CacheKeyRules, StreamsUseTheShapedKey) {
  auto stream = [&](const std::string& body) {
    return httpRequest(proxy_->port(), "POST", "/api/v1/run/wf_stream/stream", kAcme, body);
  };
  const std::string first = R"({"q":"Tell A Story","request_id":"s-1"})";
  HttpResponse a = stream(first);
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.header("x-cache"), "MISS");
  HttpResponse b = stream(R"({"request_id":"s-2","q":"tell a story"})");
  EXPECT_EQ(b.status, 200);
  EXPECT_EQ(b.header("x-cache"), "HIT");
  EXPECT_EQ(b.body, a.body);
  EXPECT_EQ(upstreamBodies("/api/v1/run/wf_stream/stream"), std::vector<std::string>{first});
  // The run route keeps its own entries under the same rules.
  EXPECT_EQ(run("wf_stream", first).header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_stream", R"({"q":"TELL a story","request_id":"s-3"})").header("x-cache"), "HIT");
}

// docs/http.md: the rules are part of the key. An entry stored under them
// never answers a request keyed without them (after a reload that drops the
// rules, {"q":"x"} is another input than {"q":"x","request_id":"1"} was), and
// is found again when the same rules come back.
TEST_F(CacheKeyRules, AReloadThatDropsTheRulesDoesNotServeShapedEntries) {
  ASSERT_EQ(run("wf_ignore", R"({"q":"x","request_id":"1"})").header("x-cache"), "MISS");
  EXPECT_EQ(run("wf_ignore", R"({"q":"x"})").header("x-cache"), "HIT");
  const std::string with_rules = readFile(proxy_->configPath());
  const std::string without = with_rules.substr(0, with_rules.find("cache:\n"));
  auto reload = [&](const std::string& text) {
    const std::string before = proxy_->log();
    proxy_->dir().write("proxy.yaml", text);
    proxy_->process().signal(SIGHUP);
    size_t seen = before.size();
    ASSERT_TRUE(eventually([&] { return proxy_->log().find("configuration reloaded", seen) != std::string::npos; }))
        << proxy_->log();
  };
  reload(without);
  EXPECT_EQ(run("wf_ignore", R"({"q":"x"})").header("x-cache"), "MISS");
  EXPECT_EQ(runs(), 2);
  reload(with_rules);
  EXPECT_EQ(run("wf_ignore", R"({"q":"x","request_id":"9"})").header("x-cache"), "HIT");
  EXPECT_EQ(runs(), 2);
}

}  // namespace
}  // namespace wfp::test

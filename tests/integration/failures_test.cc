// Upstream failures (refused, slow, reset) and clients that leave.
#include <gtest/gtest.h>

#include <sys/socket.h>

#include <thread>

#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

const Headers kAcme{{"Authorization", "Bearer acme-client-key"}};

int closedPort() {
  // A port nobody listens on: bind, read the port, close.
  Simulator sim;
  int port = sim.port();
  sim.process().signal(SIGKILL);
  sim.process().wait(std::chrono::seconds(5));
  return port;
}

TEST(UpstreamFailures, RefusedIs502) {
  int port = closedPort();
  ProxyProcess proxy(baseConfig(), "http://127.0.0.1:" + std::to_string(port));
  HttpResponse r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", kAcme, "{}");
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(r.body,
            R"({"error":"The upstream API could not be reached","success":false,"code":"upstream_unavailable"})");
  EXPECT_EQ(r.header("content-type"), "application/json");
  // Every run response says how the cache was involved, the proxy's own
  // errors included (regression: these carried neither header).
  EXPECT_EQ(r.header("X-Cache").value_or(""), "MISS") << r.raw;
  EXPECT_EQ(r.header("Cache-Status").value_or(""), "workflow-proxy; fwd=miss; detail=upstream_unavailable") << r.raw;
  // A stream likewise (its token fetch failed).
  r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x/stream", kAcme, "{}");
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(r.header("X-Cache").value_or(""), "MISS") << r.raw;
  EXPECT_EQ(r.header("Cache-Status").value_or(""), "workflow-proxy; fwd=miss; detail=upstream_unavailable") << r.raw;
  // Pass-through paths too, without cache headers: they never touch the cache.
  r = httpRequest(proxy.port(), "GET", "/api/v1/balance", kAcme);
  EXPECT_EQ(r.status, 502);
  EXPECT_FALSE(r.header("X-Cache").has_value()) << r.raw;
}

TEST(UpstreamFailures, TimeoutIs504) {
  Simulator sim;
  std::string cfg = R"(upstream:
  base_url: {{UPSTREAM}}
  timeout_s: 0.5
log:
  access_log: off
organisations:
  - name: acme
    api_key: sk_sim_acme
    clients:
      - name: billing
        key: acme-client-key
)";
  ProxyProcess proxy(cfg, sim.url());
  sim.configureWorkflows({{"wf_slow", {{"latency_ms", 3000}}}});
  auto start = std::chrono::steady_clock::now();
  HttpResponse r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_slow", kAcme, "{}");
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.status, 504);
  EXPECT_EQ(r.body,
            R"({"error":"The upstream API did not answer in time","success":false,"code":"upstream_timeout"})");
  EXPECT_LT(took, std::chrono::milliseconds(2900));
}

TEST(UpstreamFailures, ResetBeforeResponseIs502AndMidStreamIsATruncatedStream) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.fault({{"mode", "reset"}, {"count", 1}});
  HttpResponse r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", kAcme, "{}");
  EXPECT_EQ(r.status, 502);

  sim.fault({{"mode", "malformed"}, {"count", 1}});
  r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", kAcme, "{}");
  EXPECT_EQ(r.status, 502);

  // A pass-through response cut mid-body: the client sees the cut (no final
  // chunk), not a well-formed short answer.
  sim.fault({{"mode", "reset_mid_body"}, {"count", 1}});
  Connection c(proxy.port());
  c.send("GET /api/v1/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n\r\n");
  HttpResponse cut = c.readResponse(std::chrono::seconds(5));
  EXPECT_FALSE(cut.ok);
  EXPECT_NE(cut.raw.find("HTTP/1.1 200"), std::string::npos);

  // The proxy is healthy afterwards.
  r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", kAcme, "{}");
  EXPECT_EQ(r.status, 200);
}

TEST(ClientDisconnect, LeavingWhileUpstreamRunsCancelsThePassThroughTransfer) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.fault({{"mode", "hang"}, {"count", 1}});
  {
    Connection c(proxy.port());
    c.send("GET /api/v1/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n\r\n");
    ASSERT_TRUE(eventually([&] { return sim.stats()["total"] == 1; }));
  }  // client hangs up while the upstream hangs
  // The access log records the abandoned request as 499.
  ASSERT_TRUE(eventually([&] {
    for (const auto& line : proxy.accessLog()) {
      if (line["status"] == 499) return true;
    }
    return false;
  }));
  HttpResponse r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", kAcme, "{}");
  EXPECT_EQ(r.status, 200);
}

}  // namespace
}  // namespace wfp::test

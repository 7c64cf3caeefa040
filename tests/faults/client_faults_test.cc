// Clients that misbehave (docs/http.md, docs/rate-limits.md; README "HTTP server
// behaviour"): they leave while queued, coalesced, streaming or uploading;
// they open thousands of idle connections; they dribble a request one byte
// at a time (slowloris). The proxy must spend nothing on a client that left
// before its request started upstream, keep serving everyone else promptly,
// and cut slow clients off after limits.client_header_timeout_s.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <thread>

#include "tests/faults/fault_helpers.h"

namespace wfp::test::faults {
namespace {

bool accessLogHas(ProxyProcess& proxy, int status, const std::string& path) {
  for (const auto& line : proxy.accessLog()) {
    if (line.is_object() && line["status"] == status && line["path"] == path) return true;
  }
  return false;
}

nlohmann::json recordsOn(Simulator& sim, const std::string& path) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : sim.requests()) {
    if (r["path"].get<std::string>() == path) out.push_back(r);
  }
  return out;
}

// Reads until at least `n` bytes after the head arrived, or `timeout`.
std::string readSome(Connection& c, size_t n, std::chrono::milliseconds timeout) {
  std::string got;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{c.fd(), POLLIN, 0};
    if (::poll(&p, 1, 20) <= 0) continue;
    ssize_t k = ::read(c.fd(), buf, sizeof buf);
    if (k <= 0) break;
    got.append(buf, static_cast<size_t>(k));
    size_t head = got.find("\r\n\r\n");
    if (head != std::string::npos && got.size() - head - 4 >= n) break;
  }
  return got;
}

std::string tightBudgetConfig() {
  return R"(upstream:
  base_url: {{UPSTREAM}}
log:
  access_log: {{DIR}}/access.log
organisations:
  - name: acme
    api_key: sk_sim_acme
    rate_limit: { requests: 1, window_s: 1.5 }
    clients:
      - name: billing
        key: acme-client-key
)";
}

TEST(Faults, AClientThatLeavesWhileQueuedMakesNoUpstreamCall) {
  Simulator sim;
  ProxyProcess proxy(tightBudgetConfig(), sim.url());
  ASSERT_EQ(runOn(proxy.port(), "wf_q", R"({"n":"first"})").status, 200);  // spends the budget
  {
    Connection queued(proxy.port());
    queued.send(buildRequest("POST", "/api/v1/run/wf_q", kAcme, R"({"n":"left"})"));
    ASSERT_TRUE(eventually([&] { return metricOf(proxy, "workflow_proxy_queue_depth{org=\"acme\"}") == 1.0; }, 2s))
        << metrics(proxy);
  }  // the client hangs up while its request waits for budget
  EXPECT_TRUE(eventually([&] { return accessLogHas(proxy, 499, "/api/v1/run/wf_q"); }, 3s));
  EXPECT_TRUE(eventually([&] { return metricOf(proxy, "workflow_proxy_queue_depth{org=\"acme\"}") == 0.0; }, 2s));
  // The next request (after the window) runs; the abandoned one never did.
  HttpResponse r = runOn(proxy.port(), "wf_q", R"({"n":"next"})");
  EXPECT_EQ(r.status, 200);
  std::this_thread::sleep_for(200ms);
  auto runs = recordsOn(sim, "/api/v1/run/wf_q");
  ASSERT_EQ(runs.size(), 2u) << runs.dump();
  for (const auto& rec : runs) EXPECT_EQ(rec["body"].get<std::string>().find("left"), std::string::npos);
  expectAlive(proxy);
}

TEST(Faults, ACoalescedClientThatLeavesDoesNotDisturbTheOthers) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_co", {{"latency_ms", 800}}}});
  const std::string req = buildRequest("POST", "/api/v1/run/wf_co", kAcme, R"({"same":true})");
  Connection first(proxy.port());
  first.send(req);
  ASSERT_TRUE(eventually([&] { return simTotal(sim) == 1; }, 2s));
  Connection second(proxy.port());
  Connection third(proxy.port());
  second.send(req);
  third.send(req);
  std::this_thread::sleep_for(100ms);
  second.close();  // a waiter leaves mid-flight
  HttpResponse a = first.readResponse(5s);
  HttpResponse c = third.readResponse(5s);
  EXPECT_EQ(a.status, 200);
  EXPECT_EQ(c.status, 200);
  EXPECT_EQ(a.body, c.body);
  EXPECT_EQ(a.header("x-cache"), "MISS");
  EXPECT_EQ(c.header("x-cache"), "COALESCED");
  EXPECT_EQ(simRuns(sim), 1);
  EXPECT_TRUE(eventually([&] { return accessLogHas(proxy, 499, "/api/v1/run/wf_co"); }, 3s));
  // The creator leaving does not cancel the run either: it is stored.
  sim.configureWorkflows({{"wf_co2", {{"latency_ms", 500}}}});
  {
    Connection creator(proxy.port());
    creator.send(buildRequest("POST", "/api/v1/run/wf_co2", kAcme, "{}"));
    ASSERT_TRUE(eventually([&] { return simTotal(sim) == 2; }, 2s));
  }
  Connection late(proxy.port());
  late.send(buildRequest("POST", "/api/v1/run/wf_co2", kAcme, "{}"));
  HttpResponse l = late.readResponse(5s);
  EXPECT_EQ(l.status, 200);
  EXPECT_TRUE(l.header("x-cache") == "COALESCED" || l.header("x-cache") == "HIT") << l.raw;
  EXPECT_EQ(simRuns(sim), 2);
  expectAlive(proxy);
}

TEST(Faults, LeavingAnUnsharedStreamAbortsTheUpstreamTransfer) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_s", {{"chunks", 30}, {"chunk_delay_ms", 100}, {"chunk_bytes", 100}}}});
  {
    // no-store: neither shared nor stored, so only this client needs it.
    Connection c(proxy.port());
    Headers h = kAcme;
    h.emplace_back("Cache-Control", "no-store");
    c.send(buildRequest("POST", "/api/v1/run/wf_s/stream", h, R"({"a":1})"));
    std::string got = readSome(c, 100, 5s);
    ASSERT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  }
  EXPECT_TRUE(eventually([&] {
    auto recs = recordsOn(sim, "/api/v1/run/wf_s/stream");
    return recs.size() == 1 && !recs[0]["aborted_ms"].is_null();
  }, 2s)) << sim.requests().dump();
  EXPECT_TRUE(eventually([&] { return accessLogHas(proxy, 499, "/api/v1/run/wf_s/stream"); }, 2s));
  EXPECT_EQ(sim.stats()["pending"], 0);

  // A pass-through stream (SSE chat completion) likewise.
  sim.configureWorkflows({{"m_slow", {{"chunks", 30}, {"chunk_delay_ms", 100}}}});
  {
    Connection c(proxy.port());
    c.send(buildRequest("POST", "/api/v1/chat/completions", kAcme,
                        R"({"model":"m_slow","stream":true,"messages":[{"role":"user","content":"hi"}]})"));
    std::string got = readSome(c, 10, 5s);
    ASSERT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  }
  EXPECT_TRUE(eventually([&] {
    auto recs = recordsOn(sim, "/api/v1/chat/completions");
    return recs.size() == 1 && !recs[0]["aborted_ms"].is_null();
  }, 2s)) << sim.requests().dump();
  EXPECT_EQ(runOn(proxy.port(), "wf_after", "{}").status, 200);
  expectAlive(proxy);
}

TEST(Faults, LeavingAStoredOrSharedStreamLetsItFinishForTheOthers) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_s", {{"chunks", 8}, {"chunk_delay_ms", 60}, {"chunk_bytes", 50}}}});
  const std::string req = buildRequest("POST", "/api/v1/run/wf_s/stream", kAcme, R"({"b":1})");
  Connection stays(proxy.port());
  stays.send(req);
  {
    Connection leaves(proxy.port());
    leaves.send(req);
    std::string got = readSome(leaves, 50, 5s);
    ASSERT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  }
  HttpResponse full = stays.readResponse(10s);
  ASSERT_TRUE(full.ok) << full.raw;
  EXPECT_EQ(full.status, 200);
  EXPECT_EQ(full.body.size(), 8u * 50u);
  auto recs = recordsOn(sim, "/api/v1/run/wf_s/stream");
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_TRUE(eventually([&] { return !recordsOn(sim, "/api/v1/run/wf_s/stream")[0]["done_ms"].is_null(); }, 2s));
  // The completed stream was stored: a replay, byte for byte.
  HttpResponse hit = streamOn(proxy.port(), "wf_s", R"({"b":1})");
  EXPECT_EQ(hit.header("x-cache"), "HIT");
  EXPECT_EQ(hit.body, full.body);
  EXPECT_EQ(recordsOn(sim, "/api/v1/run/wf_s/stream").size(), 1u);
  expectAlive(proxy);
}

TEST(Faults, AClientThatLeavesMidUploadMakesNoUpstreamCall) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  {
    Connection c(proxy.port());
    c.send("POST /api/v1/run/wf_up HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n"
           "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"story\":\"" +
           std::string(400, 'a'));
    std::this_thread::sleep_for(100ms);
  }
  {
    Connection c(proxy.port());
    c.send("POST /api/v1/run/wf_up HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n"
           "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n");
    std::this_thread::sleep_for(100ms);
  }
  {
    // Half a pass-through upload: nothing is forwarded before the body is whole.
    Connection c(proxy.port());
    c.send("POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n"
           "Content-Length: 500\r\n\r\n{\"model\":");
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(simTotal(sim), 0) << sim.requests().dump();
  HttpResponse r = runOn(proxy.port(), "wf_up", R"({"story":"whole"})");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(simTotal(sim), 1);
  expectAlive(proxy);
}

std::string slowConfig(double header_timeout_s, int max_connections = 10000) {
  return baseConfig("limits:\n  client_header_timeout_s: " + std::to_string(header_timeout_s) +
                    "\n  max_client_connections: " + std::to_string(max_connections) + "\n");
}

TEST(Faults, AnUploadThatStallsIsCutOffWith408) {
  Simulator sim;
  ProxyProcess proxy(slowConfig(1), sim.url());
  Connection c(proxy.port());
  auto start = std::chrono::steady_clock::now();
  c.send("POST /api/v1/run/wf_up HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n"
         "Content-Length: 100\r\n\r\n{\"a\":");
  HttpResponse r = c.readResponse(5s);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.status, 408) << r.raw;
  EXPECT_EQ(r.body, R"({"error":"Request timeout","success":false,"code":"request_timeout"})");
  EXPECT_GE(took, 900ms);
  EXPECT_LT(took, 2500ms);
  EXPECT_EQ(simTotal(sim), 0);
  expectAlive(proxy);
}

// A non-blocking socket connected to the proxy that sends nothing.
int idleConnection(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

TEST(Faults, ThousandsOfIdleConnectionsAndASlowlorisDoNotStarveNormalRequests) {
  constexpr int kIdle = 2000;
  Simulator sim;
  ProxyProcess proxy(slowConfig(3), sim.url());  // long enough to open 2000 connections under ASan
  ASSERT_EQ(runOn(proxy.port(), "wf_n", R"({"warm":1})").status, 200);
  const pid_t pid = proxy.process().pid();
  const int fds_before = openFds(pid);

  std::vector<int> idle;
  for (int i = 0; i < kIdle; ++i) {
    int fd = idleConnection(proxy.port());
    ASSERT_GE(fd, 0) << "connection " << i << ": " << std::strerror(errno);
    idle.push_back(fd);
  }
  EXPECT_TRUE(eventually([&] { return openFds(pid) >= fds_before + kIdle; }, 3s)) << openFds(pid);
  EXPECT_TRUE(eventually([&] { return metricOf(proxy, "workflow_proxy_client_connections").value_or(0) >= kIdle; }, 3s))
      << metricOf(proxy, "workflow_proxy_client_connections").value_or(-1);

  // The slowloris: one byte of a valid request every 200 ms, forever.
  std::atomic<bool> stop{false};
  std::atomic<long> slowloris_ms{-1};
  std::string slowloris_reply;
  std::thread slowloris([&] {
    Connection c(proxy.port());
    const std::string req = "POST /api/v1/run/wf_n HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n"
                            "X-Padding: " + std::string(200, 'p') + "\r\n\r\n";
    auto start = std::chrono::steady_clock::now();
    size_t i = 0;
    while (!stop && i < req.size()) {
      try {
        c.send(req.substr(i++, 1));
      } catch (...) {
        break;  // the proxy closed the connection
      }
      pollfd p{c.fd(), POLLIN, 0};
      if (::poll(&p, 1, 200) > 0) break;  // an answer (the 408) or a close
    }
    HttpResponse r = c.readResponse(2s);
    slowloris_reply = r.raw;
    slowloris_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start)
                       .count();
  });

  // Meanwhile normal requests are served promptly.
  std::chrono::milliseconds worst{0};
  for (int i = 0; i < 10; ++i) {
    auto start = std::chrono::steady_clock::now();
    HttpResponse r = runOn(proxy.port(), "wf_n", "{\"i\":" + std::to_string(i % 3) + "}");
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    worst = std::max(worst, took);
    EXPECT_EQ(r.status, 200);
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_LT(worst, 500ms);

  slowloris.join();
  stop = true;
  EXPECT_GE(slowloris_ms.load(), 2500) << slowloris_reply;
  EXPECT_LT(slowloris_ms.load(), 5500) << "the slowloris was not cut off after client_header_timeout_s";
  if (!slowloris_reply.empty()) {
    HttpResponse r = parseResponse(slowloris_reply);
    EXPECT_EQ(r.status, 408) << slowloris_reply;
  }

  // The idle connections were closed by the proxy too (they never sent a request).
  int closed = 0;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  for (int fd : idle) {
    pollfd p{fd, POLLIN, 0};
    int ms = static_cast<int>(std::max<long>(
        0, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count()));
    char b;
    if (::poll(&p, 1, ms) > 0 && ::recv(fd, &b, 1, MSG_DONTWAIT) <= 0) ++closed;
    ::close(fd);
  }
  EXPECT_EQ(closed, kIdle);
  EXPECT_TRUE(eventually([&] { return openFds(pid) <= fds_before + 2; }, 3s)) << openFds(pid) << " vs " << fds_before;
  EXPECT_EQ(runOn(proxy.port(), "wf_n", R"({"after":1})").status, 200);
  expectAlive(proxy);
}

TEST(Faults, SigtermWithIdleSlowAndStreamingClientsExitsWithinTheGrace) {
  Simulator sim;
  ProxyProcess proxy(baseConfig("shutdown_grace_s: 1\nlimits:\n  client_header_timeout_s: 30\n"), sim.url());
  sim.configureWorkflows({{"wf_long", {{"chunks", 100}, {"chunk_delay_ms", 100}, {"chunk_bytes", 10}}}});
  std::vector<int> idle;
  for (int i = 0; i < 500; ++i) idle.push_back(idleConnection(proxy.port()));
  Connection slow(proxy.port());
  slow.send("POST /api/v1/run/wf_x HTTP/1.1\r\nHost: x\r\nAuthorization: Bear");
  Connection streaming(proxy.port());
  streaming.send(buildRequest("POST", "/api/v1/run/wf_long/stream", kAcme, "{}"));
  ASSERT_EQ(readSome(streaming, 10, 5s).rfind("HTTP/1.1 200", 0), 0u);
  auto start = std::chrono::steady_clock::now();
  proxy.process().signal(SIGTERM);
  auto code = proxy.process().wait(8s);
  auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(code.has_value()) << "the proxy did not exit within 8 s of SIGTERM";
  EXPECT_EQ(*code, 0) << proxy.log();
  EXPECT_LT(took, 3s);
  HttpResponse cut = streaming.readResponse(2s);
  EXPECT_FALSE(cut.ok) << "a stream still running when the grace ends is cut";
  for (int fd : idle) ::close(fd);
}

TEST(Faults, AnAdminRequestWhileAClientRequestIsInFlight) {
  // Regression: the client and admin servers numbered exchanges independently
  // while RunHandler keyed requests by that id; a health check during a slow
  // client request was a use after free (SIGSEGV). Fixed in 971e511.
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_slow", {{"latency_ms", 800}}}});
  // Client exchange #1 waits on the upstream ...
  Connection c(proxy.port());
  c.send(buildRequest("POST", "/api/v1/run/wf_slow", kAcme, "{}"));
  ASSERT_TRUE(eventually([&] { return simTotal(sim) == 1; }, 2s));
  // ... while admin exchange #1 is a health check.
  HttpResponse h = httpRequest(proxy.adminPort(), "GET", "/healthz");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, R"({"status":"ok"})");
  HttpResponse r = c.readResponse(5s);
  EXPECT_EQ(r.status, 200);
  HttpResponse m = httpRequest(proxy.adminPort(), "GET", "/metrics");
  EXPECT_EQ(m.status, 200);
  expectAlive(proxy);
}

TEST(Faults, TheClientConnectionsGaugeCountsOpenConnections) {
  // Regression: the gauge was never fed (always 0). Fixed in deaa69e.
  Simulator sim;
  ProxyProcess proxy(slowConfig(10), sim.url());
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) idle.push_back(idleConnection(proxy.port()));
  EXPECT_TRUE(eventually([&] { return metricOf(proxy, "workflow_proxy_client_connections").value_or(0) >= 20; }, 3s))
      << metrics(proxy);
  for (int fd : idle) ::close(fd);
  EXPECT_TRUE(eventually([&] { return metricOf(proxy, "workflow_proxy_client_connections").value_or(-1) <= 1; }, 3s));
}

TEST(Faults, AtMaxClientConnectionsNewClientsWaitAndAreThenServed) {
  Simulator sim;
  ProxyProcess proxy(slowConfig(1, 50), sim.url());
  std::vector<int> idle;
  for (int i = 0; i < 50; ++i) idle.push_back(idleConnection(proxy.port()));
  // The 51st connects (the kernel's backlog) and is served once the idle ones are cut.
  auto start = std::chrono::steady_clock::now();
  HttpResponse r = runOn(proxy.port(), "wf_max", "{}");
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_LT(took, 4s);
  for (int fd : idle) ::close(fd);
  EXPECT_EQ(runOn(proxy.port(), "wf_max", "{}").header("x-cache"), "HIT");
  expectAlive(proxy);
}

}  // namespace
}  // namespace wfp::test::faults

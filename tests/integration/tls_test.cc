// TLS and mTLS on the client listener (docs/security.md, docs/http.md): real
// certificates made for each test (tests/tools/make_test_certs.sh), the real
// binary, real clients (OpenSSL here, Debian's python3-requests through
// tests/tools/tls_requests.py).
#include <gtest/gtest.h>

#include <openssl/ssl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>
#include <thread>

#include "tests/integration/harness.h"
#include "tests/integration/tls_client.h"

namespace wfp::test {
namespace {

using namespace std::chrono_literals;

const Headers kJson{{"Content-Type", "application/json"}};

// acme/billing may come with a key or its certificate; globex/batch only
// with its certificate.
const char* kOrganisations = R"(organisations:
  - name: acme
    api_key: sk_sim_acme
    clients:
      - name: billing
        key: acme-client-key
        tls_subject: billing.acme.test
  - name: globex
    api_key: sk_sim_globex
    clients:
      - name: globex-app
        key: globex-client-key
      - name: batch
        tls_subject: batch.globex.test
)";

// `cert`/`key`: the served pair; with `client_ca` client certificates are required.
std::string tlsConfig(const std::string& cert, const std::string& key, const std::string& client_ca = "",
                      const std::string& extra = "") {
  std::string yaml =
      "upstream:\n  base_url: {{UPSTREAM}}\nlog:\n  level: debug\n  access_log: {{DIR}}/access.log\n"
      "tls:\n  cert_file: " + cert + "\n  key_file: " + key + "\n";
  if (!client_ca.empty()) yaml += "  client_ca_file: " + client_ca + "\n";
  return yaml + extra + kOrganisations;
}

// Options for a client that trusts the test CA; `cn`: with that client certificate.
TlsClientOptions trusting(const TestCertificates& certs, const std::string& cn = "") {
  TlsClientOptions o;
  o.ca_file = certs.ca();
  if (!cn.empty()) {
    o.cert_file = certs.clientCert(cn);
    o.key_file = certs.clientKey(cn);
  }
  return o;
}

TlsClientOptions withAlpn(TlsClientOptions o, std::vector<std::string> alpn) {
  o.alpn = std::move(alpn);
  return o;
}

TlsClientOptions upTo(TlsClientOptions o, int max_version) {
  o.max_version = max_version;
  return o;
}

std::string runRequest(const std::string& wf, const std::string& body, const Headers& extra = {},
                       bool close = false) {
  std::string req = "POST /api/v1/run/" + wf + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
  for (const auto& [k, v] : extra) req += k + ": " + v + "\r\n";
  req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  if (close) req += "Connection: close\r\n";
  return req + "\r\n" + body;
}

std::vector<Sample> scrape(const ProxyProcess& proxy) {
  return parseSamples(httpRequest(proxy.adminPort(), "GET", "/metrics").body);
}

double failures(const ProxyProcess& proxy, const std::string& reason) {
  return sampleSum(scrape(proxy), "workflow_proxy_tls_handshake_failures_total", {{"reason", reason}});
}

double openConnections(const ProxyProcess& proxy) {
  return sampleSum(scrape(proxy), "workflow_proxy_client_connections", {});
}

// The access log line of the request whose X-Request-Id was `id`.
nlohmann::json accessRecord(const ProxyProcess& proxy, const std::string& id) {
  nlohmann::json found;
  eventually([&] {
    for (const auto& line : proxy.accessLog()) {
      if (line.value("request_id", "") == id) {
        found = line;
        return true;
      }
    }
    return false;
  });
  return found;
}

// Runs a command, returning its exit code and stdout.
std::pair<int, std::string> run(const std::string& command) {
  std::string out;
  FILE* f = ::popen(command.c_str(), "r");
  if (!f) return {-1, out};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  int status = ::pclose(f);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// --- plain TLS -----------------------------------------------------------------

// A drop-in HTTPS client (python3-requests, certificate verified against the
// test CA): a run reaches the upstream and comes back, the same input is
// then a hit, a stream arrives chunk by chunk; one pooled connection serves
// all three (keep-alive).
TEST(Tls, AnHttpsClientRunsHitsAndStreamsOverOneConnection) {
  TestCertificates certs;
  Simulator sim;
  sim.configureWorkflows({{"wf_tls", {{"chunks", 5}, {"chunk_delay_ms", 200}}}});
  ProxyProcess proxy(tlsConfig(certs.file("server.pem"), certs.file("server.key")), sim.url());

  auto [code, out] = run("/usr/bin/python3 " + shellQuote(std::string(WFP_SOURCE_DIR) + "/tests/tools/tls_requests.py") +
                         " --port " + std::to_string(proxy.port()) + " --ca " + shellQuote(certs.ca()) +
                         " --auth acme-client-key --workflow wf_tls 2>&1");
  ASSERT_EQ(code, 0) << out << "\n(python3-requests comes with scripts/install-deps --test)";
  auto result = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(result.is_object()) << out;

  ASSERT_EQ(result["runs"].size(), 2u);
  EXPECT_EQ(result["runs"][0]["status"], 200);
  EXPECT_EQ(result["runs"][0]["x_cache"], "MISS");
  EXPECT_NE(result["runs"][0]["body"].get<std::string>().find("of wf_tls for acme"), std::string::npos) << out;
  EXPECT_EQ(result["runs"][1]["status"], 200);
  EXPECT_EQ(result["runs"][1]["x_cache"], "HIT");
  EXPECT_EQ(result["runs"][1]["body"], result["runs"][0]["body"]);

  const auto& stream = result["stream"];
  EXPECT_EQ(stream["status"], 200);
  EXPECT_EQ(stream["transfer_encoding"], "chunked");
  std::string text;
  for (const auto& c : stream["chunks"]) text += c["text"].get<std::string>();
  EXPECT_NE(text.find("of wf_tls for acme"), std::string::npos) << out;
  // Streamed as the upstream sent it (4 gaps of 200 ms), not all at the end.
  ASSERT_GE(stream["chunks"].size(), 2u) << out;
  double first = stream["chunks"].front()["at_s"], last = stream["chunks"].back()["at_s"];
  EXPECT_GT(last - first, 0.5) << out;

  // The three requests came on one connection (one client address and port).
  std::set<std::string> peers;
  for (const auto& line : proxy.accessLog()) {
    if (line.value("path", "").rfind("/api/v1/run/wf_tls", 0) == 0) peers.insert(line.value("remote_addr", ""));
  }
  EXPECT_EQ(peers.size(), 1u);
  EXPECT_EQ(sim.stats()["runs"], 1);
}

// TLS 1.3 and 1.2 are spoken; ALPN says http/1.1 when the client offers it,
// nothing when it offers only h2 (the client may then speak HTTP/1.1 anyway).
TEST(Tls, VersionsAndAlpn) {
  TestCertificates certs;
  Simulator sim;
  ProxyProcess proxy(tlsConfig(certs.file("server.pem"), certs.file("server.key")), sim.url());
  TlsConnection v13(proxy.port(), withAlpn(trusting(certs), {"h2", "http/1.1"}));
  ASSERT_TRUE(v13.handshakeOk()) << v13.error();
  EXPECT_EQ(v13.protocol(), "TLSv1.3");
  EXPECT_EQ(v13.alpn(), "http/1.1");
  TlsConnection v12(proxy.port(), upTo(trusting(certs), TLS1_2_VERSION));
  ASSERT_TRUE(v12.handshakeOk()) << v12.error();
  EXPECT_EQ(v12.protocol(), "TLSv1.2");
  EXPECT_EQ(v12.alpn(), "");
  TlsConnection h2only(proxy.port(), withAlpn(trusting(certs), {"h2"}));
  ASSERT_TRUE(h2only.handshakeOk()) << h2only.error();
  EXPECT_EQ(h2only.alpn(), "");
  for (TlsConnection* c : {&v13, &v12, &h2only}) {
    ASSERT_TRUE(c->send(runRequest("wf_v", "{}", {{"Authorization", "Bearer acme-client-key"}})));
    HttpResponse r = c->readResponse(10s);
    EXPECT_EQ(r.status, 200) << c->error() << r.raw;
  }
}

// Two requests in one TLS write (one record): both answered, in order, on
// the connection, which stays open.
TEST(Tls, PipelinedRequestsAreAnsweredInOrder) {
  TestCertificates certs;
  Simulator sim;
  sim.configureWorkflows({{"wf_slow_first", {{"latency_ms", 300}}}});
  ProxyProcess proxy(tlsConfig(certs.file("server.pem"), certs.file("server.key")), sim.url());
  TlsConnection c(proxy.port(), trusting(certs));
  ASSERT_TRUE(c.handshakeOk()) << c.error();
  const Headers auth{{"Authorization", "Bearer acme-client-key"}, {"X-Request-Id", "pipelined-1"}};
  const Headers auth2{{"Authorization", "Bearer acme-client-key"}, {"X-Request-Id", "pipelined-2"}};
  ASSERT_TRUE(c.send(runRequest("wf_slow_first", R"({"n":1})", auth) + runRequest("wf_fast", R"({"n":2})", auth2)));
  HttpResponse first = c.readResponse(10s);
  HttpResponse second = c.readResponse(10s);
  ASSERT_TRUE(first.ok) << c.error();
  ASSERT_TRUE(second.ok) << c.error();
  EXPECT_EQ(first.header("x-request-id"), "pipelined-1");
  EXPECT_NE(first.body.find(R"(wf_slow_first for acme: {\"n\":1})"), std::string::npos) << first.body;
  EXPECT_EQ(second.header("x-request-id"), "pipelined-2");
  EXPECT_NE(second.body.find(R"(wf_fast for acme: {\"n\":2})"), std::string::npos) << second.body;
  // Kept alive: a third request on the same connection.
  ASSERT_TRUE(c.send(runRequest("wf_fast", R"({"n":3})", auth)));
  EXPECT_EQ(c.readResponse(10s).status, 200) << c.error();
}

// Hundreds of pipelined hits of ~15 KiB each (one TLS record each, written
// at once) to a client that reads nothing for a second: the socket fills, a
// write is cut short, OpenSSL's retry goes through the bufferevent, and every
// answer still arrives whole and in order.
TEST(Tls, PipelinedAnswersToAClientThatWaitsArriveWholeAndInOrder) {
  TestCertificates certs;
  Simulator sim;
  sim.configureWorkflows({{"wf_15k", {{"result", std::string(15000, 'x')}}}});
  ProxyProcess proxy(tlsConfig(certs.file("server.pem"), certs.file("server.key")), sim.url());
  TlsConnection c(proxy.port(), trusting(certs));
  ASSERT_TRUE(c.handshakeOk()) << c.error();
  const Headers auth{{"Authorization", "Bearer acme-client-key"}};
  ASSERT_TRUE(c.send(runRequest("wf_15k", "{}", auth)));
  HttpResponse first = c.readResponse(10s);
  ASSERT_EQ(first.status, 200) << c.error();
  ASSERT_GT(first.body.size(), 15000u);
  constexpr int kCount = 600;  // ~9 MiB of answers: more than the socket buffers hold
  std::string burst;
  for (int i = 0; i < kCount; ++i) {
    burst += runRequest("wf_15k", "{}", {{"Authorization", "Bearer acme-client-key"},
                                         {"X-Request-Id", "p" + std::to_string(i)}});
  }
  ASSERT_TRUE(c.send(burst));
  std::this_thread::sleep_for(1s);
  for (int i = 0; i < kCount; ++i) {
    HttpResponse r = c.readResponse(20s);
    ASSERT_TRUE(r.ok) << "answer " << i << ": " << c.error();
    ASSERT_EQ(r.header("x-request-id"), "p" + std::to_string(i));
    ASSERT_EQ(r.header("x-cache"), "HIT");
    ASSERT_EQ(r.body, first.body) << "answer " << i;
  }
  EXPECT_EQ(sim.stats()["runs"], 1);
}

// Back-pressure holds over TLS as over TCP: a client that reads nothing
// pauses the upstream instead of growing the proxy; then every byte arrives.
TEST(Tls, ASlowReaderKeepsTheProxysMemoryBounded) {
  TestCertificates certs;
  Simulator sim;
  sim.configureWorkflows({{"wf_big", {{"chunks", 768}, {"chunk_bytes", 65536}, {"chunk_delay_ms", 0}}}});
  ProxyProcess proxy(tlsConfig(certs.file("server.pem"), certs.file("server.key")), sim.url());
  auto rss = [&] {
    std::string status = readFile("/proc/" + std::to_string(proxy.process().pid()) + "/status");
    size_t at = status.find("VmRSS:");
    return at == std::string::npos ? -1L : std::stol(status.substr(at + 6));
  };
  long baseline = rss();
  TlsConnection c(proxy.port(), trusting(certs));
  ASSERT_TRUE(c.handshakeOk()) << c.error();
  std::string req = "POST /api/v1/run/wf_big/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Authorization: Bearer acme-client-key\r\nContent-Length: 2\r\n\r\n{}";
  ASSERT_TRUE(c.send(req));
  std::this_thread::sleep_for(1500ms);  // the client reads nothing
  long stalled = rss();
  nlohmann::json streams = nlohmann::json::array();
  for (auto& r : sim.requests()) {
    if (r["path"].get<std::string>().find("/stream") != std::string::npos) streams.push_back(r);
  }
  ASSERT_EQ(streams.size(), 1u);
  EXPECT_TRUE(streams[0]["done_ms"].is_null()) << "the upstream should be paused";
  EXPECT_LT(stalled - baseline, 16 * 1024) << "RSS grew by " << (stalled - baseline) << " KiB";
  HttpResponse r = c.readResponse(60s);
  EXPECT_TRUE(r.ok) << c.error();
  EXPECT_EQ(r.body.size(), 768u * 65536u);
}

// --- mTLS ----------------------------------------------------------------------

// With client_ca_file a certificate the CA signed is required. Its subject
// CN stands for a client key when the request has no Authorization header;
// a header, when present, decides alone.
TEST(Tls, ClientCertificatesAreRequiredAndNameTheClient) {
  TestCertificates certs({"billing.acme.test", "batch.globex.test", "stranger.test"});
  Simulator sim;
  ProxyProcess proxy(tlsConfig(certs.file("server.pem"), certs.file("server.key"), certs.ca()), sim.url());
  auto as = [&](const std::string& cn) { return trusting(certs, cn); };
  auto ask = [&](const TlsClientOptions& options, const Headers& headers, const std::string& id) {
    TlsConnection c(proxy.port(), options);
    Headers h = headers;
    h.emplace_back("X-Request-Id", id);
    if (!c.handshakeOk() || !c.send(runRequest("wf_m", R"({"id":")" + id + "\"}", h))) return HttpResponse{};
    HttpResponse r = c.readResponse(10s);
    if (!r.ok) r.reason = c.error();
    return r;
  };

  // The certificate alone: billing of acme, and batch of globex (no key at all).
  HttpResponse billing = ask(as("billing.acme.test"), {}, "by-cert-billing");
  ASSERT_EQ(billing.status, 200) << billing.reason << billing.raw;
  EXPECT_NE(billing.body.find("for acme"), std::string::npos) << billing.body;
  EXPECT_EQ(accessRecord(proxy, "by-cert-billing")["client"], "billing");
  HttpResponse batch = ask(as("batch.globex.test"), {}, "by-cert-batch");
  ASSERT_EQ(batch.status, 200) << batch.reason << batch.raw;
  EXPECT_NE(batch.body.find("for globex"), std::string::npos) << batch.body;
  EXPECT_EQ(accessRecord(proxy, "by-cert-batch")["client"], "batch");
  EXPECT_EQ(accessRecord(proxy, "by-cert-batch")["org"], "globex");
  // The upstream got globex's key for it.
  bool globex_key = false;
  for (auto& r : sim.requests()) {
    for (auto& h : r["headers"]) globex_key |= h[0] == "Authorization" && h[1] == "Bearer sk_sim_globex";
  }
  EXPECT_TRUE(globex_key);

  // A header decides alone: another client's key wins, a wrong key is 401.
  HttpResponse keyed = ask(as("billing.acme.test"), {{"Authorization", "Bearer globex-client-key"}}, "key-wins");
  EXPECT_EQ(keyed.status, 200);
  EXPECT_NE(keyed.body.find("for globex"), std::string::npos) << keyed.body;
  EXPECT_EQ(accessRecord(proxy, "key-wins")["client"], "globex-app");
  EXPECT_EQ(ask(as("billing.acme.test"), {{"Authorization", "Bearer wrong"}}, "wrong-key").status, 401);
  // A valid certificate whose CN names no client: as without a key (no default_organisation here).
  HttpResponse stranger = ask(as("stranger.test"), {}, "stranger");
  EXPECT_EQ(stranger.status, 401) << stranger.reason;

  // No certificate, or one from another CA: refused in the handshake (over
  // TLS 1.3 the client learns it from the server's alert on its first read),
  // no HTTP answer at all.
  for (int version : {0, TLS1_2_VERSION}) {
    SCOPED_TRACE(version == 0 ? "TLS 1.3" : "TLS 1.2");
    HttpResponse none = ask(upTo(trusting(certs), version), {}, "no-cert");
    EXPECT_FALSE(none.ok);
    EXPECT_EQ(none.status, 0) << none.raw;
    TlsClientOptions other = upTo(trusting(certs), version);
    other.cert_file = certs.file("other-client.pem");
    other.key_file = certs.file("other-client.key");
    HttpResponse foreign = ask(other, {}, "other-ca");
    EXPECT_FALSE(foreign.ok);
    EXPECT_EQ(foreign.status, 0) << foreign.raw;
  }
  EXPECT_TRUE(eventually([&] { return failures(proxy, "client_certificate") == 4; })) << failures(proxy, "client_certificate");
  EXPECT_EQ(sim.stats()["runs"], 3);  // billing, batch, key-wins: nothing refused went upstream
  EXPECT_TRUE(eventually([&] { return openConnections(proxy) == 0; }));
}

// With default_organisation, a request without a key and without a
// certificate that names a client gets the default, as over plain HTTP.
TEST(Tls, ACertificateNamingNoClientIsLikeNoKey) {
  TestCertificates certs({"stranger.test"});
  Simulator sim;
  ProxyProcess proxy(tlsConfig(certs.file("server.pem"), certs.file("server.key"), certs.ca(),
                               "default_organisation: globex\n"),
                     sim.url());
  TlsConnection c(proxy.port(), trusting(certs, "stranger.test"));
  ASSERT_TRUE(c.handshakeOk()) << c.error();
  ASSERT_TRUE(c.send(runRequest("wf_d", "{}", {{"X-Request-Id", "stranger-default"}})));
  HttpResponse r = c.readResponse(10s);
  EXPECT_EQ(r.status, 200) << c.error();
  EXPECT_NE(r.body.find("for globex"), std::string::npos) << r.body;
  EXPECT_EQ(accessRecord(proxy, "stranger-default")["client"], "default");
}

// --- reload --------------------------------------------------------------------

// SIGHUP reads the certificate files again: new connections get the new
// certificate, a kept-alive connection goes on with the one it has. Files
// that do not load make the whole reload fail, and the running ones stay.
TEST(Tls, ReloadSwapsTheCertificateForNewConnections) {
  namespace fs = std::filesystem;
  TestCertificates certs;
  const std::string live_cert = certs.file("live.pem"), live_key = certs.file("live.key");
  fs::copy_file(certs.file("server.pem"), live_cert);
  fs::copy_file(certs.file("server.key"), live_key);
  Simulator sim;
  ProxyProcess proxy(tlsConfig(live_cert, live_key), sim.url());
  const Headers auth{{"Authorization", "Bearer acme-client-key"}};

  TlsConnection old_conn(proxy.port(), trusting(certs));
  ASSERT_TRUE(old_conn.handshakeOk()) << old_conn.error();
  EXPECT_EQ(old_conn.peerSerial(), "1001");
  ASSERT_TRUE(old_conn.send(runRequest("wf_r", R"({"n":1})", auth)));
  ASSERT_EQ(old_conn.readResponse(10s).status, 200);

  fs::copy_file(certs.file("server2.pem"), live_cert, fs::copy_options::overwrite_existing);
  fs::copy_file(certs.file("server2.key"), live_key, fs::copy_options::overwrite_existing);
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return proxy.log().find("tls: reloaded") != std::string::npos; })) << proxy.log();
  TlsConnection fresh(proxy.port(), trusting(certs));
  ASSERT_TRUE(fresh.handshakeOk()) << fresh.error();
  EXPECT_EQ(fresh.peerSerial(), "1002");
  ASSERT_TRUE(fresh.send(runRequest("wf_r", R"({"n":2})", auth)));
  EXPECT_EQ(fresh.readResponse(10s).status, 200) << fresh.error();
  // The old connection still works, on its old certificate.
  ASSERT_TRUE(old_conn.send(runRequest("wf_r", R"({"n":3})", auth)));
  EXPECT_EQ(old_conn.readResponse(10s).status, 200) << old_conn.error();
  EXPECT_EQ(old_conn.peerSerial(), "1001");

  // A key that does not match the certificate: the reload is refused whole.
  fs::copy_file(certs.file("server.key"), live_key, fs::copy_options::overwrite_existing);
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return proxy.log().find("reload rejected") != std::string::npos; })) << proxy.log();
  const std::string text = readFile(proxy.configPath());
  const int key_line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + text.find("  key_file:"), '\n'));
  EXPECT_TRUE(eventually([&] {
    return proxy.log().find(proxy.configPath() + ":" + std::to_string(key_line) + ": tls.key_file: the private key in " +
                            live_key + " does not match the certificate") != std::string::npos;
  })) << proxy.log();
  EXPECT_EQ(sampleSum(scrape(proxy), "workflow_proxy_config_last_reload_successful", {}), 0);
  TlsConnection after(proxy.port(), trusting(certs));
  ASSERT_TRUE(after.handshakeOk()) << after.error();
  EXPECT_EQ(after.peerSerial(), "1002");
  // Never a key's content in the log.
  EXPECT_EQ(proxy.log().find("PRIVATE KEY"), std::string::npos);
}

// --- what is not a TLS client --------------------------------------------------

// A plain-HTTP request on the TLS listener is closed without an HTTP answer;
// a connection that sends nothing is closed after client_header_timeout_s.
// Neither leaks a connection: with max_client_connections 4, a dozen of
// them leave room for a real client.
TEST(Tls, PlainHttpAndStalledHandshakesAreClosedAndLeakNothing) {
  TestCertificates certs;
  Simulator sim;
  ProxyProcess proxy(tlsConfig(certs.file("server.pem"), certs.file("server.key"), "",
                               "limits:\n  client_header_timeout_s: 1\n  max_client_connections: 4\n"),
                     sim.url());
  ASSERT_EQ(openConnections(proxy), 0);

  for (int i = 0; i < 6; ++i) {
    auto start = std::chrono::steady_clock::now();
    std::string got = rawExchange(proxy.port(), buildRequest("GET", "/api/v1/run/wf_p", {}, ""), 10s);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 3s) << "not closed";
    EXPECT_EQ(got.find("HTTP/1."), std::string::npos) << got;
  }
  EXPECT_TRUE(eventually([&] { return failures(proxy, "plain_http") == 6; })) << failures(proxy, "plain_http");

  // Stalled: TCP connects, then nothing. Closed by the header timeout.
  std::vector<std::unique_ptr<Connection>> stalled;
  for (int i = 0; i < 4; ++i) stalled.push_back(std::make_unique<Connection>(proxy.port()));
  EXPECT_TRUE(eventually([&] { return openConnections(proxy) == 4; }));
  auto start = std::chrono::steady_clock::now();
  for (auto& c : stalled) {
    HttpResponse r = c->readResponse(10s);  // returns at EOF
    EXPECT_TRUE(r.raw.empty()) << r.raw;
  }
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GT(waited, 500ms);
  EXPECT_LT(waited, 5s);
  EXPECT_TRUE(eventually([&] { return failures(proxy, "timeout") == 4; })) << failures(proxy, "timeout");
  EXPECT_TRUE(eventually([&] { return openConnections(proxy) == 0; })) << openConnections(proxy);

  // Room is left for real clients.
  for (int i = 0; i < 6; ++i) {
    TlsConnection c(proxy.port(), trusting(certs));
    ASSERT_TRUE(c.handshakeOk()) << c.error();
    ASSERT_TRUE(c.send(runRequest("wf_p", "{}", {{"Authorization", "Bearer acme-client-key"}}, true)));
    EXPECT_EQ(c.readResponse(10s).status, 200) << c.error();
    // Connection: close ends with close_notify: a clean TLS close.
    EXPECT_TRUE(c.waitClosed(5s)) << c.error();
    EXPECT_EQ(c.error(), "") << "closed without close_notify";
  }
}

// --- the configuration check -----------------------------------------------------

TEST(Tls, CheckConfigLoadsTheFilesAsTheStartDoes) {
  TestCertificates certs;
  TempDir dir;
  dir.write("garbage.pem", "not a certificate\n");
  struct Case {
    std::string name;
    std::string cert, key, ca;
    int line;  // of the key the problem is reported at
    std::string message;
  };
  const std::vector<Case> cases = {
      {"mismatch", certs.file("server.pem"), certs.file("server2.key"), "", 5,
       "tls.key_file: the private key in " + certs.file("server2.key") + " does not match the certificate"},
      {"cert-missing", dir.file("nope.pem"), certs.file("server.key"), "", 4,
       "tls.cert_file: " + dir.file("nope.pem") + ": No such file or directory"},
      {"key-missing", certs.file("server.pem"), dir.file("nope.key"), "", 5,
       "tls.key_file: " + dir.file("nope.key") + ": No such file or directory"},
      {"cert-garbage", dir.file("garbage.pem"), certs.file("server.key"), "", 4,
       "tls.cert_file: cannot load a certificate chain (PEM) from " + dir.file("garbage.pem")},
      {"ca-garbage", certs.file("server.pem"), certs.file("server.key"), dir.file("garbage.pem"), 6,
       "tls.client_ca_file: "},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    // Lines: cert_file 4, key_file 5, client_ca_file 6.
    std::string yaml = "admin_listen: \"\"\nlisten: 127.0.0.1:0\ntls:\n  cert_file: " + c.cert + "\n  key_file: " + c.key + "\n" +
           (c.ca.empty() ? "" : "  client_ca_file: " + c.ca + "\n") + "organisations:\n  - name: acme\n    api_key: sk_x\n";
    std::string path = dir.file(c.name + ".yaml");
    dir.write(c.name + ".yaml", yaml);
    auto [code, out] = run(std::string(WFP_PROXY_BIN) + " --check-config --config " + shellQuote(path) + " 2>&1");
    EXPECT_EQ(code, 2) << out;
    EXPECT_NE(out.find(path + ":" + std::to_string(c.line) + ": " + c.message), std::string::npos) << out;
    EXPECT_EQ(out.find("PRIVATE KEY"), std::string::npos) << out;
    // The start refuses it too (exit 1: a file may appear, as for the listen address).
    auto [start_code, start_out] = run(std::string(WFP_PROXY_BIN) + " --config " + shellQuote(path) + " 2>&1");
    EXPECT_EQ(start_code, 1) << start_out;
  }
  std::string ok = dir.file("ok.yaml");
  dir.write("ok.yaml", "admin_listen: \"\"\nlisten: 127.0.0.1:0\ntls:\n  cert_file: " + certs.file("server.pem") +
                           "\n  key_file: " + certs.file("server.key") + "\n  client_ca_file: " + certs.ca() +
                           "\norganisations:\n  - name: acme\n    api_key: sk_x\n");
  auto [code, out] = run(std::string(WFP_PROXY_BIN) + " --check-config --config " + shellQuote(ok) + " 2>&1");
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(out, "config OK\n");
}

}  // namespace
}  // namespace wfp::test

// The drop-in path (docs/http.md): the real proxy binary in
// front of the upstream simulator, asserting on what the simulator received
// and on the exact bytes the client gets.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <regex>
#include <thread>

#include <gtest/gtest.h>

#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

const std::string kUnauthorized = R"({"error":"Unauthorized. Please provide a valid secret key.","success":false})";

std::optional<std::string> headerOf(const nlohmann::json& recorded, const std::string& name) {
  for (const auto& h : recorded["headers"]) {
    std::string n = h[0];
    if (n.size() == name.size() && std::equal(n.begin(), n.end(), name.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        })) {
      return h[1].get<std::string>();
    }
  }
  return std::nullopt;
}

class Forwarding : public ::testing::Test {
 protected:
  void SetUp() override {
    sim_ = std::make_unique<Simulator>();
    proxy_ = std::make_unique<ProxyProcess>(baseConfig(), sim_->url());
  }
  HttpResponse run(const std::string& wf, const std::string& body, Headers headers = {}) {
    headers.emplace_back("Content-Type", "application/json");
    return httpRequest(proxy_->port(), "POST", "/api/v1/run/" + wf, headers, body);
  }
  Headers acme() { return {{"Authorization", "Bearer acme-client-key"}}; }

  std::unique_ptr<Simulator> sim_;
  std::unique_ptr<ProxyProcess> proxy_;
};

TEST_F(Forwarding, RunIsByteIdenticalToADirectCall) {
  sim_->configureWorkflows({{"wf_fixed", {{"result", "Once upon a time"}, {"citations", {"https://example.com/a"}}}}});
  const std::string body = R"({"story": "a dog named charlie",  "n": 1.50})";
  HttpResponse direct = httpRequest(sim_->port(), "POST", "/api/v1/run/wf_fixed",
                                    {{"Authorization", "Bearer sk_sim_acme"}, {"Content-Type", "application/json"}},
                                    body);
  // Let the simulator's sliding window forget the direct call.
  HttpResponse via = run("wf_fixed", body, acme());
  ASSERT_TRUE(direct.ok && via.ok);
  EXPECT_EQ(via.status, 200);
  EXPECT_EQ(via.status, direct.status);
  EXPECT_EQ(via.reason, direct.reason);
  EXPECT_EQ(via.body, direct.body);
  EXPECT_EQ(via.body, R"({"success":true,"result":"Once upon a time","citations":["https://example.com/a"]})");
  EXPECT_EQ(via.header("content-type"), direct.header("content-type"));
  EXPECT_EQ(via.header("x-ratelimit-limit"), direct.header("x-ratelimit-limit"));
  EXPECT_TRUE(via.header("x-ratelimit-remaining").has_value());
  EXPECT_TRUE(via.header("x-request-id").has_value());
  auto timing = via.header("server-timing");
  ASSERT_TRUE(timing.has_value());
  EXPECT_NE(timing->find("queue;dur="), std::string::npos);
  EXPECT_NE(timing->find("upstream;dur="), std::string::npos);
  EXPECT_TRUE(std::regex_match(*timing, std::regex(R"(queue;dur=[0-9]+\.[0-9]{3}, upstream;dur=[0-9]+\.[0-9]{3})")))
      << *timing;

  // The simulator got the client's bytes unchanged, with the organisation key.
  auto reqs = sim_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1]["body"], body);
  EXPECT_EQ(headerOf(reqs[1], "authorization"), "Bearer sk_sim_acme");
  EXPECT_EQ(headerOf(reqs[1], "accept-encoding"), "identity");
  EXPECT_EQ(reqs[1]["uri"], "/api/v1/run/wf_fixed");
}

TEST_F(Forwarding, OrganisationKeyReplacesClientKeyAndNeverLeaks) {
  HttpResponse r = run("wf_any", "{}", {{"Authorization", "Bearer globex-client-key"}, {"x-user-id", "u-42"}});
  ASSERT_EQ(r.status, 200);
  auto reqs = sim_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0]["org"], "globex");
  EXPECT_EQ(headerOf(reqs[0], "authorization"), "Bearer sk_sim_globex");
  EXPECT_EQ(headerOf(reqs[0], "x-user-id"), "u-42");
  EXPECT_EQ(reqs[0].dump().find("globex-client-key"), std::string::npos);
  EXPECT_EQ(r.raw.find("sk_sim_globex"), std::string::npos);
  EXPECT_EQ(proxy_->log().find("sk_sim_"), std::string::npos);
  // The line is written once the reply has gone out, so possibly after the client read it.
  ASSERT_TRUE(eventually([&] { return !proxy_->accessLog().empty(); }));
  EXPECT_EQ(proxy_->accessLog().back().dump().find("sk_sim_"), std::string::npos);
}

TEST_F(Forwarding, UnauthorizedIsTheUpstreamsExactBodyAndSpendsNothing) {
  for (const Headers& h : std::vector<Headers>{{}, {{"Authorization", "Bearer wrong-key"}},
                                               {{"Authorization", "Basic YWNtZQ=="}}, {{"Authorization", "Bearer"}}}) {
    HttpResponse r = run("wf_any", "{}", h);
    EXPECT_EQ(r.status, 401);
    EXPECT_EQ(r.body, kUnauthorized);
    EXPECT_EQ(r.header("content-type"), "application/json");
  }
  HttpResponse t = httpRequest(proxy_->port(), "GET", "/api/v1/token", {{"Authorization", "Bearer nope"}});
  EXPECT_EQ(t.status, 401);
  EXPECT_EQ(t.body, kUnauthorized);
  EXPECT_EQ(sim_->stats()["total"], 0);
}

// The proxy remembers a connection's last accepted Authorization header to
// skip hashing it again; every request must still be judged by its own key,
// and by the keys configured now.
TEST_F(Forwarding, EveryRequestOnAKeepAliveConnectionIsJudgedByItsOwnKey) {
  Connection c(proxy_->port());
  auto send = [&](const std::string& key, const std::string& input) {
    std::string body = R"({"n":")" + input + R"("})";
    c.send("POST /api/v1/run/wf_keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
           body);
    return c.readResponse();
  };
  HttpResponse a = send("acme-client-key", "1");
  ASSERT_EQ(a.status, 200) << a.raw;
  HttpResponse g = send("globex-client-key", "1");  // same input, other organisation: its own run
  ASSERT_EQ(g.status, 200) << g.raw;
  EXPECT_EQ(g.header("x-cache"), "MISS");
  HttpResponse wrong = send("acme-client-kez", "2");  // same length as the remembered key
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(wrong.body, kUnauthorized);
  HttpResponse again = send("acme-client-key", "1");
  ASSERT_EQ(again.status, 200);
  EXPECT_EQ(again.header("x-cache"), "HIT");
  auto reqs = sim_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0]["org"], "acme");
  EXPECT_EQ(reqs[1]["org"], "globex");

  // A reload that revokes the key applies to the open connection too.
  std::ifstream in(proxy_->configPath());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string revoked = "      - name: billing\n        key: acme-client-key\n";
  ASSERT_NE(text.find(revoked), std::string::npos) << text;
  text.replace(text.find(revoked), revoked.size(), "");
  proxy_->dir().write("proxy.yaml.next", text);
  ASSERT_EQ(std::rename(proxy_->dir().file("proxy.yaml.next").c_str(), proxy_->configPath().c_str()), 0);
  proxy_->process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return proxy_->log().find("configuration reloaded") != std::string::npos; }))
      << proxy_->log();
  HttpResponse revoked_now = send("acme-client-key", "1");
  EXPECT_EQ(revoked_now.status, 401) << revoked_now.raw;
  EXPECT_EQ(sim_->stats()["total"], 2);
}

TEST_F(Forwarding, ProxyErrorsHaveExactBodiesAndMakeNoUpstreamCall) {
  // A malformed workflow id: the upstream's sentence for an unknown workflow.
  HttpResponse r = run("wf%2Fx", "{}", acme());
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, R"({"error":"Workflow not found","success":false,"code":"not_found"})");
  EXPECT_EQ(run("wf_x/other", "{}", acme()).status, 404);
  EXPECT_EQ(run("..", "{}", acme()).status, 404);

  r = httpRequest(proxy_->port(), "GET", "/api/v1/run/wf_x", acme());
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.body, R"({"error":"Method not allowed","success":false,"code":"method_not_allowed"})");
  EXPECT_EQ(r.header("allow"), "POST, OPTIONS");

  r = run("wf_x", R"({"a": tru})", acme());
  EXPECT_EQ(r.status, 400);
  auto j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["code"], "invalid_json");
  EXPECT_EQ(j["success"], false);
  EXPECT_NE(j["error"].get<std::string>().find("offset"), std::string::npos);
  EXPECT_EQ(run("wf_x", "[1,2]", acme()).status, 400);

  r = run("wf_x", "{\"a\":\"" + std::string(1024 * 1024 + 10, 'x') + "\"}", acme());
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.body, R"({"error":"Request body too large","success":false,"code":"payload_too_large"})");
  EXPECT_EQ(r.header("content-type"), "application/json");

  EXPECT_EQ(sim_->stats()["total"], 0);
}

TEST_F(Forwarding, EmptyBodyIsTheEmptyObjectAndForwardedAsIs) {
  HttpResponse r = run("wf_x", "", acme());
  EXPECT_EQ(r.status, 200);
  // The same input (it canonicalises to {} too): no-store forces a second run.
  Headers no_store = acme();
  no_store.emplace_back("Cache-Control", "no-store");
  r = run("wf_x", "  \n ", no_store);
  EXPECT_EQ(r.status, 200);
  auto reqs = sim_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0]["body"], "");
  EXPECT_EQ(reqs[1]["body"], "  \n ");
}

TEST_F(Forwarding, UpstreamErrorsAreForwardedUnchanged) {
  sim_->configureWorkflows({{"wf_gone", {{"status", 404}}}, {"wf_broken", {{"status", 500}}}});
  HttpResponse r = run("wf_gone", "{}", acme());
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, R"({"error":"Workflow not found","success":false})");
  r = run("wf_broken", "{}", acme());
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.body, R"({"error":"Failed to run workflow","success":false,"code":"internal_server_error"})");
}

TEST_F(Forwarding, HopByHopHeadersAreDroppedAndRequestIdKept) {
  HttpResponse r = run("wf_x", "{}",
                       {{"Authorization", "Bearer acme-client-key"}, {"X-Request-Id", "trace-123"},
                        {"Connection", "X-Secret-Hop"}, {"X-Secret-Hop", "1"}, {"Proxy-Authorization", "Basic x"},
                        {"X-Custom", "kept"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("x-request-id"), "trace-123");
  auto reqs = sim_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(headerOf(reqs[0], "x-request-id"), "trace-123");
  EXPECT_EQ(headerOf(reqs[0], "x-custom"), "kept");
  EXPECT_FALSE(headerOf(reqs[0], "x-secret-hop").has_value());
  EXPECT_FALSE(headerOf(reqs[0], "proxy-authorization").has_value());
  // Response side: end-to-end headers of a pass-through path arrive unchanged.
  r = httpRequest(proxy_->port(), "GET", "/__sim/echo/x?q=1",
                  {{"Authorization", "Bearer acme-client-key"}, {"x-sim-set-x-upstream-thing", "yes"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("x-upstream-thing"), "yes");
  auto echo = nlohmann::json::parse(r.body);
  EXPECT_EQ(echo["uri"], "/__sim/echo/x?q=1");
}

TEST_F(Forwarding, TokenRouteUsesTheOrganisationKeyAndForwardsQuery) {
  HttpResponse r = httpRequest(proxy_->port(), "GET", "/api/v1/token?ttl=30", acme());
  ASSERT_EQ(r.status, 200);
  auto j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["success"], true);
  EXPECT_EQ(j["ttl"], 30);
  EXPECT_TRUE(r.header("x-ratelimit-limit").has_value());
  auto reqs = sim_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0]["uri"], "/api/v1/token?ttl=30");
  EXPECT_EQ(headerOf(reqs[0], "authorization"), "Bearer sk_sim_acme");
}

TEST_F(Forwarding, StreamWithoutTokenFetchesOneWithTheOrganisationKey) {
  sim_->configureWorkflows({{"wf_story", {{"result", "Once upon a time there was a stream."}, {"chunks", 4}}}});
  HttpResponse r = httpRequest(proxy_->port(), "POST", "/api/v1/run/wf_story/stream", acme(), R"({"topic":"x"})");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "Once upon a time there was a stream.");
  EXPECT_EQ(r.header("content-type"), "text/plain; charset=utf-8");
  EXPECT_EQ(r.header("access-control-allow-origin"), "*");
  EXPECT_EQ(r.header("transfer-encoding"), "chunked");
  auto reqs = sim_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0]["path"], "/api/v1/token");
  EXPECT_EQ(headerOf(reqs[0], "authorization"), "Bearer sk_sim_acme");
  std::string uri = reqs[1]["uri"];
  EXPECT_EQ(uri.rfind("/api/v1/run/wf_story/stream?token=pub_tok_", 0), 0u) << uri;
  EXPECT_FALSE(headerOf(reqs[1], "authorization").has_value());
  EXPECT_EQ(reqs[1]["body"], R"({"topic":"x"})");
}

TEST_F(Forwarding, StreamWithAClientTokenIsForwardedAsGiven) {
  HttpResponse tok = httpRequest(sim_->port(), "GET", "/api/v1/token", {{"Authorization", "Bearer sk_sim_acme"}});
  std::string token = nlohmann::json::parse(tok.body)["token"];
  HttpResponse r = httpRequest(proxy_->port(), "POST", "/api/v1/run/wf_any/stream?token=" + token, {}, "{}");
  EXPECT_EQ(r.status, 200);
  EXPECT_FALSE(r.body.empty());
  // Single use: the same token again is the upstream's 401, forwarded.
  r = httpRequest(proxy_->port(), "POST", "/api/v1/run/wf_any/stream?token=" + token, {}, "{}");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.body, kUnauthorized);
}

TEST_F(Forwarding, OptionsIsForwardedWithoutAuthentication) {
  HttpResponse r = httpRequest(proxy_->port(), "OPTIONS", "/api/v1/run/wf_x/stream",
                               {{"Origin", "https://app.example"}, {"Access-Control-Request-Method", "POST"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{}");
  EXPECT_EQ(r.header("access-control-allow-methods"), "POST, OPTIONS");
  auto reqs = sim_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0]["method"], "OPTIONS");
  EXPECT_FALSE(headerOf(reqs[0], "authorization").has_value());
}

TEST_F(Forwarding, ChatCompletionsSseIsRelayed) {
  HttpResponse r = httpRequest(proxy_->port(), "POST", "/api/v1/chat/completions",
                               {{"Authorization", "Bearer acme-client-key"}, {"Content-Type", "application/json"}},
                               R"({"model":"agent","stream":true,"messages":[{"role":"user","content":"hi"}]})");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type").value_or("").rfind("text/event-stream", 0), 0u);
  EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos);
  auto reqs = sim_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(headerOf(reqs[0], "authorization"), "Bearer sk_sim_acme");
}

TEST_F(Forwarding, KeepAliveConnectionServesManyRequests) {
  Connection c(proxy_->port());
  for (int i = 0; i < 5; ++i) {
    std::string body = "{\"i\":" + std::to_string(i) + "}";
    c.send("POST /api/v1/run/wf_k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n"
           "Content-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body);
    HttpResponse r = c.readResponse();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.status, 200);
  }
  EXPECT_EQ(sim_->stats()["runs"], 5);
}

TEST_F(Forwarding, AccessLogHasOneJsonLinePerRequest) {
  auto traced = acme();
  traced.push_back({"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"});
  run("wf_log", "{}", traced);
  httpRequest(proxy_->port(), "POST", "/api/v1/run/wf_log/stream?token=pub_tok_secretvalue", {}, "{}");
  // The same input again: a hit, nothing upstream; a traceparent the format
  // refuses (upper-case hex) gives no trace id.
  auto bad_trace = acme();
  bad_trace.push_back({"traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"});
  run("wf_log", "{}", bad_trace);
  ASSERT_TRUE(eventually([&] { return proxy_->accessLog().size() >= 3; }));
  auto lines = proxy_->accessLog();
  const auto& first = lines[0];
  // In the order written (nlohmann::json sorts the keys it parses). The
  // values of this line hold no '":'.
  std::string first_line = readFile(proxy_->dir().file("access.log"));
  first_line.resize(first_line.find('\n'));
  std::vector<std::string> keys;
  std::regex key_re(R"re("([a-z_]+)":)re");
  for (auto it = std::sregex_iterator(first_line.begin(), first_line.end(), key_re); it != std::sregex_iterator();
       ++it) {
    keys.push_back((*it)[1]);
  }
  EXPECT_EQ(keys, (std::vector<std::string>{"time", "request_id", "org", "client", "method", "path", "status",
                                            "cache", "queue_ms", "upstream_ms", "bytes_in", "bytes_out",
                                            "remote_addr", "duration_ms", "upstream_status", "trace_id"}))
      << first.dump();
  EXPECT_EQ(first["org"], "acme");
  EXPECT_EQ(first["client"], "billing");
  EXPECT_EQ(first["status"], 200);
  EXPECT_EQ(first["path"], "/api/v1/run/wf_log");
  EXPECT_EQ(first["upstream_status"], 200);
  EXPECT_EQ(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_TRUE(first["remote_addr"].get<std::string>().rfind("127.0.0.1:", 0) == 0) << first.dump();
  ASSERT_TRUE(first["duration_ms"].is_number()) << first.dump();
  EXPECT_GE(first["duration_ms"].get<double>(), first["upstream_ms"].get<double>()) << first.dump();
  // The path is logged without its query: it may hold a token.
  EXPECT_EQ(lines[1]["path"], "/api/v1/run/wf_log/stream");
  EXPECT_EQ(lines[1].dump().find("pub_tok_secretvalue"), std::string::npos);
  // The hit: no upstream status, and no trace id from a malformed traceparent.
  EXPECT_EQ(lines[2]["cache"], "HIT") << lines[2].dump();
  EXPECT_TRUE(lines[2]["upstream_status"].is_null()) << lines[2].dump();
  EXPECT_TRUE(lines[2]["trace_id"].is_null()) << lines[2].dump();
}

// duration_ms runs from the complete head: a slow upload is in it (the
// proxy's overhead metric, which starts with the complete body, is not).
TEST_F(Forwarding, AccessLogDurationIncludesTheUpload) {
  const std::string body = R"({"slow":"upload"})";
  Connection c(proxy_->port());
  c.send("POST /api/v1/run/wf_slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-client-key\r\n"
         "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  c.send(body);
  HttpResponse r = c.readResponse();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  ASSERT_TRUE(eventually([&] { return !proxy_->accessLog().empty(); }));
  auto line = proxy_->accessLog().back();
  EXPECT_GE(line["duration_ms"].get<double>(), 290.0) << line.dump();
  EXPECT_LT(line["duration_ms"].get<double>(), 10000.0) << line.dump();
}

TEST(ForwardingDefaults, DefaultOrganisationAndPassThrough) {
  Simulator sim({"--key", "sk_sim_acme=acme:10", "--key", "sk_own_key=own:10"});
  ProxyProcess proxy(baseConfig("default_organisation: acme\nunknown_keys: pass_through\n"), sim.url());
  HttpResponse r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", {}, "{}");
  EXPECT_EQ(r.status, 200);
  r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_x", {{"Authorization", "Bearer sk_own_key"}}, "{}");
  EXPECT_EQ(r.status, 200);
  auto reqs = sim.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(headerOf(reqs[0], "authorization"), "Bearer sk_sim_acme");
  EXPECT_EQ(reqs[1]["org"], "own");
  EXPECT_EQ(headerOf(reqs[1], "authorization"), "Bearer sk_own_key");
}

}  // namespace
}  // namespace wfp::test

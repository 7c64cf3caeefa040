// Streaming runs (docs/http.md): tokens fetched for the client, bytes relayed as
// they arrive, back-pressure, identical streams shared and stored.
#include <gtest/gtest.h>

#include <fstream>
#include <future>
#include <thread>

#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

const Headers kAcme{{"Authorization", "Bearer acme-client-key"}, {"Content-Type", "application/json"}};

long rssKiB(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

nlohmann::json streamRecords(Simulator& sim) {
  nlohmann::json out = nlohmann::json::array();
  for (auto& r : sim.requests()) {
    std::string path = r["path"];
    if (path.size() > 7 && path.substr(path.size() - 7) == "/stream") out.push_back(r);
  }
  return out;
}

int tokenRequests(Simulator& sim) {
  int n = 0;
  for (auto& r : sim.requests()) n += r["path"] == "/api/v1/token";
  return n;
}

std::string streamRequest(const std::string& wf, const std::string& body, Headers h = kAcme) {
  return buildRequest("POST", "/api/v1/run/" + wf + "/stream", h, body);
}

TEST(Stream, BytesAndHeadersEqualADirectStream) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_s", {{"result", "Once upon a time, a stream of words."}, {"chunks", 5}}}});
  HttpResponse tok = httpRequest(sim.port(), "GET", "/api/v1/token", {{"Authorization", "Bearer sk_sim_acme"}});
  std::string token = nlohmann::json::parse(tok.body)["token"];
  HttpResponse direct = httpRequest(sim.port(), "POST", "/api/v1/run/wf_s/stream?token=" + token, {}, "{}");
  HttpResponse via = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_s/stream", kAcme, "{}");
  ASSERT_EQ(via.status, 200);
  EXPECT_EQ(via.body, direct.body);
  for (const char* h : {"content-type", "access-control-allow-origin", "access-control-allow-methods",
                        "access-control-allow-headers"}) {
    EXPECT_EQ(via.header(h), direct.header(h)) << h;
  }
  EXPECT_EQ(via.header("transfer-encoding"), "chunked");
  EXPECT_FALSE(via.header("content-length").has_value());
  EXPECT_EQ(via.header("x-cache"), "MISS");
  // One token request with the organisation key, one stream with that token.
  auto streams = streamRecords(sim);
  ASSERT_EQ(streams.size(), 2u);
  EXPECT_EQ(tokenRequests(sim), 2);  // ours and the direct one
}

TEST(Stream, TheFirstChunkArrivesBeforeTheUpstreamHasFinished) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_slow", {{"chunks", 5}, {"chunk_delay_ms", 300}}}});
  Connection c(proxy.port());
  c.send(streamRequest("wf_slow", "{}"));
  // Read until the first body bytes are here.
  std::string got;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    HttpResponse partial = c.readResponse(std::chrono::milliseconds(50));
    got += partial.raw;
    size_t head_end = got.find("\r\n\r\n");
    if (head_end != std::string::npos && got.size() > head_end + 8) break;
  }
  ASSERT_NE(got.find("HTTP/1.1 200"), std::string::npos);
  // The simulator's own record: the stream has not finished yet.
  auto streams = streamRecords(sim);
  ASSERT_EQ(streams.size(), 1u);
  EXPECT_TRUE(streams[0]["done_ms"].is_null()) << streams[0].dump();
  EXPECT_FALSE(streams[0]["first_byte_ms"].is_null());
}

TEST(Stream, FiftyIdenticalStreamsShareOneUpstreamStream) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_fan", {{"chunks", 10}, {"chunk_delay_ms", 50}}}});
  std::vector<std::string> reqs(50, streamRequest("wf_fan", R"({"topic":"same"})"));
  auto responses = concurrentRequests(proxy.port(), reqs);
  std::string body = responses[0].body;
  ASSERT_FALSE(body.empty());
  int same = 0, coalesced = 0;
  for (auto& r : responses) {
    same += r.status == 200 && r.body == body;
    coalesced += r.header("x-cache") == "COALESCED";
  }
  EXPECT_EQ(same, 50);
  EXPECT_EQ(coalesced, 49);
  EXPECT_EQ(streamRecords(sim).size(), 1u);
  EXPECT_EQ(tokenRequests(sim), 1);
}

TEST(Stream, ALateJoinerGetsTheBytesSoFarThenTheRest) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_late", {{"chunks", 6}, {"chunk_delay_ms", 300}}}});
  auto first = std::async(std::launch::async, [&] {
    return httpRequest(proxy.port(), "POST", "/api/v1/run/wf_late/stream", kAcme, "{}");
  });
  // Join once the stream has begun (its first chunk sent), ~1.5 s before its end.
  ASSERT_TRUE(eventually([&] {
    auto s = streamRecords(sim);
    return s.size() == 1 && !s[0]["first_byte_ms"].is_null();
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  HttpResponse late = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_late/stream", kAcme, "{}");
  HttpResponse early = first.get();
  EXPECT_EQ(late.body, early.body);
  EXPECT_EQ(late.header("x-cache"), "COALESCED");
  EXPECT_EQ(streamRecords(sim).size(), 1u);
}

TEST(Stream, ACompletedStreamIsReplayedOnAHit) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  HttpResponse first = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_h/stream", kAcme, R"({"a":1})");
  HttpResponse hit = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_h/stream", kAcme, R"({ "a" : 1.0 })");
  ASSERT_EQ(hit.status, 200);
  EXPECT_EQ(hit.header("x-cache"), "HIT");
  EXPECT_EQ(hit.body, first.body);
  EXPECT_EQ(hit.header("content-type"), first.header("content-type"));
  EXPECT_EQ(hit.header("access-control-allow-origin"), "*");
  EXPECT_EQ(hit.header("transfer-encoding"), "chunked");
  EXPECT_EQ(streamRecords(sim).size(), 1u);
  // The run route has its own entries: a stream entry never answers a run.
  HttpResponse run = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_h", kAcme, R"({"a":1})");
  EXPECT_EQ(run.header("x-cache"), "MISS");
}

TEST(Stream, AStreamCutShortIsNotStored) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.fault({{"mode", "reset_mid_body"}, {"path", "/api/v1/run/"}, {"count", 1}});
  Connection c(proxy.port());
  c.send(streamRequest("wf_cut", "{}"));
  HttpResponse cut = c.readResponse(std::chrono::seconds(5));
  EXPECT_FALSE(cut.ok);
  HttpResponse again = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_cut/stream", kAcme, "{}");
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(again.header("x-cache"), "MISS");
}

TEST(Stream, ClientTokenStreamsBypassTheCache) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  for (int i = 0; i < 2; ++i) {
    HttpResponse tok = httpRequest(sim.port(), "GET", "/api/v1/token", {{"Authorization", "Bearer sk_sim_acme"}});
    std::string token = nlohmann::json::parse(tok.body)["token"];
    HttpResponse r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_ct/stream?token=" + token, {}, "{}");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.header("x-cache"), "BYPASS");
  }
  EXPECT_EQ(streamRecords(sim).size(), 2u);
}

TEST(Stream, ASlowReaderKeepsTheProxysMemoryBounded) {
  Simulator sim;
  ProxyProcess proxy(baseConfig("cache:\n  streams: false\n"), sim.url());
  // 48 MiB of stream, as fast as the upstream can send it.
  sim.configureWorkflows({{"wf_big", {{"chunks", 768}, {"chunk_bytes", 65536}, {"chunk_delay_ms", 0}}}});
  long baseline = rssKiB(proxy.process().pid());
  Connection c(proxy.port());
  c.send(streamRequest("wf_big", "{}"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // the client reads nothing
  long stalled = rssKiB(proxy.process().pid());
  auto streams = streamRecords(sim);
  ASSERT_EQ(streams.size(), 1u);
  EXPECT_TRUE(streams[0]["done_ms"].is_null()) << "the upstream should be paused";
  EXPECT_LT(stalled - baseline, 16 * 1024) << "RSS grew by " << (stalled - baseline) << " KiB";
  // Then the client reads everything: nothing was lost.
  HttpResponse r = c.readResponse(std::chrono::seconds(60));
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.body.size(), 768u * 65536u);
}

TEST(Stream, SharedStreamsToASlowReaderStayBoundedToo) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_big2", {{"chunks", 768}, {"chunk_bytes", 65536}, {"chunk_delay_ms", 0}}}});
  long baseline = rssKiB(proxy.process().pid());
  Connection c(proxy.port());
  c.send(streamRequest("wf_big2", "{}"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  long stalled = rssKiB(proxy.process().pid());
  // Kept whole up to 8 MiB (for storage and late joiners), then bounded.
  EXPECT_LT(stalled - baseline, 24 * 1024) << "RSS grew by " << (stalled - baseline) << " KiB";
  HttpResponse r = c.readResponse(std::chrono::seconds(60));
  EXPECT_EQ(r.body.size(), 768u * 65536u);
}

TEST(Stream, LeavingMidStreamStopsAnUnsharedUpstreamStream) {
  Simulator sim;
  ProxyProcess proxy(baseConfig("cache:\n  streams: false\n"), sim.url());
  sim.configureWorkflows({{"wf_long", {{"chunks", 50}, {"chunk_delay_ms", 100}}}});
  {
    Connection c(proxy.port());
    c.send(streamRequest("wf_long", "{}"));
    c.readResponse(std::chrono::milliseconds(400));
  }
  ASSERT_TRUE(eventually([&] {
    auto s = streamRecords(sim);
    return s.size() == 1 && !s[0]["aborted_ms"].is_null();
  }));
}

TEST(Stream, LeavingMidStreamLetsAStoredStreamFinish) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  sim.configureWorkflows({{"wf_keep", {{"chunks", 5}, {"chunk_delay_ms", 100}}}});
  {
    Connection c(proxy.port());
    c.send(streamRequest("wf_keep", "{}"));
    c.readResponse(std::chrono::milliseconds(250));
  }
  ASSERT_TRUE(eventually([&] {
    auto s = streamRecords(sim);
    return s.size() == 1 && !s[0]["done_ms"].is_null();
  }));
  // The proxy stores the stream once it has read its end, a moment after the
  // simulator wrote it: until then a request joins the flight (only-if-cached
  // too, but it never starts one).
  Headers cached_only = kAcme;
  cached_only.emplace_back("Cache-Control", "only-if-cached");
  EXPECT_TRUE(eventually([&] {
    return httpRequest(proxy.port(), "POST", "/api/v1/run/wf_keep/stream", cached_only, "{}").header("x-cache") ==
           "HIT";
  }, std::chrono::seconds(5)));
  HttpResponse hit = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_keep/stream", kAcme, "{}");
  EXPECT_EQ(hit.header("x-cache"), "HIT");
  EXPECT_EQ(streamRecords(sim).size(), 1u);
}

}  // namespace
}  // namespace wfp::test

namespace wfp::test {
namespace {

TEST(Stream, SharedStreamsGiveTheirTokenFetchSlotBack) {
  // Regression: the token fetch's concurrency slot was never returned, so
  // after max_concurrent (16) streams the organisation stopped starting.
  Simulator sim({"--key", "sk_sim_acme=acme:1000", "--key", "sk_sim_globex=globex:1000"});
  ProxyProcess proxy(baseConfig(), sim.url());
  for (int i = 0; i < 20; ++i) {
    HttpResponse r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_slots/stream", kAcme,
                                 "{\"i\":" + std::to_string(i) + "}", std::chrono::seconds(5));
    ASSERT_EQ(r.status, 200) << i;
  }
  EXPECT_EQ(httpRequest(proxy.port(), "POST", "/api/v1/run/wf_slots", kAcme, "{}").status, 200);
}

}  // namespace
}  // namespace wfp::test

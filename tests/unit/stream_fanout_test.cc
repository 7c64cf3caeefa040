// StreamFanout: identical streams share one token fetch and one upstream
// stream; late joiners get the bytes so far; what nobody waits for any more
// spends nothing — on the simulation's virtual clock, with a transport the
// test answers by hand.
#include "proxy/stream_fanout.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "proxy/headers.h"
#include "tests/simulation/sim_runtime.h"
#include "tests/unit/hand_transport.h"
#include "tests/unit/test_config.h"

namespace wfp {
namespace {

// What one subscriber saw.
struct Seen {
  int begun = 0;
  std::string bytes;
  int ended = -1;  // 1 complete, 0 cut
  int refused = 0;
  std::string refused_body;
  int failed = 0;
  int not_cached = 0;
  bool blocked = false;  // write() says the client's backlog is high
};

struct StreamFanoutTest : ::testing::Test {
  sim::SimRuntime rt;
  Metrics metrics;
  Scheduler scheduler{rt, rt, metrics};
  HandTransport transport;
  KeysInForce keys;
  UpstreamPorts ports{rt, transport, scheduler, metrics, keys};
  CacheStore cache{rt, nullptr, "wfp:", 1 << 20};
  StreamFanout fanout{ports, cache};

  explicit StreamFanoutTest(int requests = 10) {
    ConfigPtr config = acmeConfig("sk_acme", requests);
    keys.setConfig(config);
    scheduler.configure(config);
  }

  StreamWork work(const std::string& key) {
    StreamWork w;
    w.key = key;
    w.token.request.method = "GET";
    w.token.request.url = "http://upstream.test/api/v1/token?ttl=60";
    w.token.request.headers = {{"Authorization", ""}};
    w.token.admission = Admission{"acme", "acme", "client", 1};
    w.token.org = "acme";
    w.token.org_label = "acme";
    w.stream.method = "POST";
    w.stream.url = "http://upstream.test/api/v1/run/wf/stream";
    w.stream.body = R"({"topic":"tides"})";
    w.store = true;
    w.keep_ms = 60000;
    return w;
  }
  uint64_t join(const std::string& key, Seen& seen, bool* created = nullptr, bool may_run = true) {
    StreamSubscriber s;
    s.begin = [&seen](const UpstreamHead&) { ++seen.begun; };
    s.write = [&seen](std::string_view data) {
      seen.bytes.append(data);
      return !seen.blocked;
    };
    s.end = [&seen](bool complete) { seen.ended = complete ? 1 : 0; };
    s.refused = [&seen](const UpstreamHead& head, const std::string& body) {
      seen.refused = head.status;
      seen.refused_body = body;
    };
    s.failed = [&seen](UpstreamFailure) { ++seen.failed; };
    s.rejected = [](RejectReason, int) {};
    s.may_run = may_run;
    s.not_cached = [&seen] { ++seen.not_cached; };
    bool made = false;
    uint64_t id = fanout.join(work(key), std::move(s), &made);
    if (created) *created = made;
    return id;
  }
  // Answers the token fetch (the last transfer) and returns the stream's transfer.
  uint64_t giveToken(const std::string& token) {
    transport.answer(transport.last(), 200, R"({"token":")" + token + R"("})");
    return transport.last();
  }
};

TEST_F(StreamFanoutTest, IdenticalStreamsShareOneTokenFetchAndOneStreamAndALateJoinerGetsTheBytesSoFar) {
  Seen a, b, late;
  bool created_a = false, created_b = true;
  join("k", a, &created_a);
  join("k", b, &created_b);
  EXPECT_TRUE(created_a);
  EXPECT_FALSE(created_b);
  ASSERT_EQ(transport.started.size(), 1u) << "one token fetch for both";
  EXPECT_EQ(*findHeader(transport.started[0].headers, "authorization"), "Bearer sk_acme");
  uint64_t stream = giveToken("tok1");
  ASSERT_EQ(transport.started.size(), 2u);
  EXPECT_EQ(transport.started[1].url, "http://upstream.test/api/v1/run/wf/stream?token=tok1");
  EXPECT_EQ(findHeader(transport.started[1].headers, "authorization"), nullptr) << "the token is the credential";
  transport.head(stream, 200, {{"Content-Type", "text/plain; charset=utf-8"}});
  transport.data(stream, "abc");
  EXPECT_EQ(a.bytes, "abc");
  EXPECT_EQ(b.bytes, "abc");
  join("k", late);
  EXPECT_EQ(late.begun, 1);
  EXPECT_EQ(late.bytes, "abc") << "the bytes so far, first";
  transport.data(stream, "def");
  transport.done(stream);
  for (const Seen* s : {&a, &b, &late}) {
    EXPECT_EQ(s->bytes, "abcdef");
    EXPECT_EQ(s->ended, 1);
  }
  EXPECT_EQ(transport.started.size(), 2u);
  // Both upstream requests, the token's and the stream's, counted for the
  // organisation. (Regression: the stream's was counted for org="", its label
  // read from the token's spec after that had been moved away.)
  std::string metrics_text = metrics.render();
  EXPECT_NE(metrics_text.find("workflow_proxy_upstream_requests_total{org=\"acme\",code=\"200\"} 2\n"),
            std::string::npos)
      << metrics_text;
  EXPECT_EQ(metrics_text.find("org=\"\""), std::string::npos) << metrics_text;
  CachedResponsePtr stored = cache.peekLocal("k");
  ASSERT_NE(stored, nullptr) << "a complete 200 stream is stored";
  EXPECT_TRUE(stored->stream);
  EXPECT_EQ(stored->body, "abcdef");
  EXPECT_EQ(fanout.flights(), 0u);
}

TEST_F(StreamFanoutTest, ARefusedTokenIsEverySubscribersAnswerAndNothingStreams) {
  Seen a, b;
  join("k", a);
  join("k", b);
  transport.answer(transport.last(), 402, R"({"error":"Payment required","success":false})");
  for (const Seen* s : {&a, &b}) {
    EXPECT_EQ(s->refused, 402);
    EXPECT_EQ(s->refused_body, R"({"error":"Payment required","success":false})");
  }
  EXPECT_EQ(transport.started.size(), 1u);
  EXPECT_EQ(fanout.flights(), 0u);
}

TEST_F(StreamFanoutTest, AStreamCutShortIsNotStoredAndCutsEverySubscriber) {
  Seen a;
  join("k", a);
  uint64_t stream = giveToken("tok1");
  transport.head(stream, 200);
  transport.data(stream, "ab");
  transport.done(stream, UpstreamFailure::Unavailable);
  EXPECT_EQ(a.ended, 0);
  EXPECT_EQ(cache.peekLocal("k"), nullptr);
}

TEST_F(StreamFanoutTest, OnlyIfCachedLeftAloneBeforeTheStreamIsAnsweredNotCached) {
  Seen a, b;
  uint64_t sub_a = join("k", a);
  join("k", b, nullptr, /*may_run=*/false);
  uint64_t token_fetch = transport.last();
  fanout.leave(sub_a);
  EXPECT_EQ(b.not_cached, 1);
  EXPECT_EQ(transport.cancelled, std::vector<uint64_t>{token_fetch});
  EXPECT_EQ(fanout.flights(), 0u);
}

TEST_F(StreamFanoutTest, ASlowSubscriberIsWrittenToOnlyAfterItDrained) {
  Seen a, slow;
  join("k", a);
  uint64_t sub_slow = join("k", slow);
  uint64_t stream = giveToken("tok1");
  transport.head(stream, 200);
  slow.blocked = true;
  transport.data(stream, "abc");  // taken, and the slow one's backlog is now high
  transport.data(stream, "def");
  EXPECT_EQ(a.bytes, "abcdef");
  EXPECT_EQ(slow.bytes, "abc");
  slow.blocked = false;
  fanout.resume(sub_slow);
  EXPECT_EQ(slow.bytes, "abcdef");
}

struct OneStartASecond : StreamFanoutTest {
  OneStartASecond() : StreamFanoutTest(1) {}
};

TEST_F(OneStartASecond, AStreamWhoseEverySubscriberLeftWhileQueuedSpendsNothing) {
  Seen first, queued;
  join("k1", first);  // its token fetch takes the second's only start
  uint64_t sub = join("k2", queued);
  EXPECT_EQ(transport.started.size(), 1u);
  EXPECT_EQ(scheduler.queued(), 1u);
  fanout.leave(sub);
  EXPECT_EQ(scheduler.queued(), 0u);
  for (int i = 0; i < 1000 && rt.step(); ++i) {
  }
  EXPECT_EQ(transport.started.size(), 1u) << "no token fetched for a stream nobody waits for";
}

}  // namespace
}  // namespace wfp

// The flight outcome's wire form (proxy/flight_outcome.h): what a follower
// accepts from the flight's Redis channel, where anyone who can PUBLISH can
// write (docs/security.md).
#include "proxy/flight_outcome.h"

#include <algorithm>
#include <memory>
#include <string>

#include "proxy/hash.h"

#include <gtest/gtest.h>

namespace wfp {
namespace {

constexpr int64_t kNow = 1764340000123;

CachedResponse entry() {
  CachedResponse e;
  e.status = 200;
  e.reason = "OK";
  e.headers = {{"content-type", "application/json"}};
  e.body = R"({"success":true})";
  e.stored_at_ms = kNow;
  return e;
}

TEST(FlightOutcome, EveryKindRoundTrips) {
  FlightOutcome timeout;
  timeout.failure = UpstreamFailure::Timeout;
  auto t = decodeOutcome(encodeOutcome(timeout), kNow);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->failure, UpstreamFailure::Timeout);
  EXPECT_TRUE(t->remote);

  FlightOutcome down;
  down.failure = UpstreamFailure::Unavailable;
  auto u = decodeOutcome(encodeOutcome(down), kNow);
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->failure, UpstreamFailure::Unavailable);

  FlightOutcome limited;
  limited.rejected = FlightOutcome::Rejected::RateLimited;
  limited.retry_after_s = 30;
  auto q = decodeOutcome(encodeOutcome(limited), kNow);
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->rejected, FlightOutcome::Rejected::RateLimited);
  EXPECT_EQ(q->retry_after_s, 30);

  for (bool stored : {true, false}) {
    FlightOutcome ran;
    ran.response = std::make_shared<const CachedResponse>(entry());
    ran.stored = stored;
    auto r = decodeOutcome(encodeOutcome(ran), kNow);
    ASSERT_TRUE(r.has_value());
    ASSERT_NE(r->response, nullptr);
    EXPECT_EQ(r->stored, stored);
    EXPECT_EQ(r->response->body, R"({"success":true})");
    EXPECT_EQ(r->response->clientHead().lines, "content-type: application/json\r\n");
  }
}

TEST(FlightOutcome, RetryAfterIsDigitsWithinADay) {
  for (const char* good : {"Q0", "Q1", "Q86400", "Q00030"}) {
    EXPECT_TRUE(decodeOutcome(good, kNow).has_value()) << good;
  }
  EXPECT_EQ(decodeOutcome("Q86400", kNow)->retry_after_s, 86400);
  // atoi read "-1" as -1, "99999999999" as whatever it overflowed to, and
  // " 5", "5x", "+5" as 5; each was a Retry-After sent to clients.
  for (const char* bad : {"Q", "Q-1", "Q+5", "Q 5", "Q5 ", "Q5x", "Qx", "Q86401", "Q99999", "Q100000",
                          "Q99999999999", "Q2147483648", "Q0x10", "Q1e3", "Q\r\n5"}) {
    EXPECT_FALSE(decodeOutcome(bad, kNow).has_value()) << bad;
  }
  // The encoder stays inside what the decoder takes.
  FlightOutcome limited;
  limited.rejected = FlightOutcome::Rejected::RateLimited;
  for (int s : {-5, 0, 86400, 90000, 2147483647}) {
    limited.retry_after_s = s;
    auto q = decodeOutcome(encodeOutcome(limited), kNow);
    ASSERT_TRUE(q.has_value()) << s;
    EXPECT_EQ(q->retry_after_s, std::clamp(s, 0, kMaxOutcomeRetryAfterS));
  }
}

TEST(FlightOutcome, AnythingElseIsIgnored) {
  FlightOutcome ran;
  ran.response = std::make_shared<const CachedResponse>(entry());
  const std::string good = encodeOutcome(ran);
  ASSERT_TRUE(decodeOutcome(good, kNow).has_value());
  std::string body = good.substr(2);
  for (const std::string& bad :
       {std::string(), std::string("R"), std::string("RS"), std::string("R-"), "RX" + body, "Rs" + body,
        "R\0" + body, "RSS" + body, std::string("T "), std::string("TT"), std::string("U\n"), std::string("t"),
        std::string("X"), "S" + body, good.substr(0, good.size() - 1), good + "x"}) {
    EXPECT_FALSE(decodeOutcome(bad, kNow).has_value()) << ::testing::PrintToString(bad.substr(0, 8));
  }
}

// The cached-entry checks hold for an outcome: a published response whose
// checksum is valid but whose head would split the client's response, or
// whose stored time is far ahead, is ignored.
TEST(FlightOutcome, AResponseIsCheckedLikeACachedEntry) {
  CachedResponse e = entry();
  e.headers.push_back({"X-A", "b"});
  std::string value = encodeCachedResponse(e);
  // Turn the value's "b" into CR LF ... and re-seal it as the encoder would.
  size_t at = value.rfind("X-A");
  ASSERT_NE(at, std::string::npos);
  std::string payload = value.substr(12);
  std::string hostile_payload = payload;
  size_t v = hostile_payload.find("X-A") + 3 + 4;  // the value's bytes after its length
  hostile_payload[v] = '\n';
  std::string sum(8, '\0');
  uint64_t x = xxh64(hostile_payload);
  for (int i = 0; i < 8; ++i) sum[i] = static_cast<char>((x >> (8 * i)) & 0xff);
  EXPECT_FALSE(decodeOutcome("R-WFPC" + sum + hostile_payload, kNow).has_value());
  EXPECT_TRUE(decodeOutcome("R-" + value, kNow).has_value());

  FlightOutcome future;
  CachedResponse later = entry();
  later.stored_at_ms = kNow + 365LL * 86400 * 1000;
  future.response = std::make_shared<const CachedResponse>(later);
  EXPECT_FALSE(decodeOutcome(encodeOutcome(future), kNow).has_value());
  later.status = 1000;
  later.stored_at_ms = kNow;
  future.response = std::make_shared<const CachedResponse>(later);
  EXPECT_FALSE(decodeOutcome(encodeOutcome(future), kNow).has_value());
}

}  // namespace
}  // namespace wfp

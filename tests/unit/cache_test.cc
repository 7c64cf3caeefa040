#include "proxy/cache.h"

#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proxy/hash.h"

#include <gtest/gtest.h>

namespace wfp {
namespace {

// The reader's clock in these tests: a little after sample()'s stored_at.
constexpr int64_t kNow = 1764340000123 + 5000;

CachedResponse sample() {
  CachedResponse e;
  e.status = 200;
  e.reason = "OK";
  e.headers = {{"content-type", "application/json"}, {"x-ratelimit-limit", "10"}};
  e.body = std::string(R"({"success":true,"result":"a)") + std::string("\0\xff", 2) + "\"}";
  e.stored_at_ms = 1764340000123;
  return e;
}

TEST(CacheEntry, RoundTripsEveryField) {
  CachedResponse e = sample();
  e.stream = true;
  auto d = decodeCachedResponse(encodeCachedResponse(e), kNow);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->status, 200);
  EXPECT_EQ(d->reason, "OK");
  EXPECT_EQ(d->body, e.body);
  EXPECT_EQ(d->stored_at_ms, e.stored_at_ms);
  EXPECT_TRUE(d->stream);
  ASSERT_EQ(d->headers.size(), 2u);
  EXPECT_EQ(d->headers[1].value, "10");
}

TEST(CacheEntry, CorruptOrForeignValuesAreMisses) {
  std::string enc = encodeCachedResponse(sample());
  EXPECT_FALSE(decodeCachedResponse("").has_value());
  EXPECT_FALSE(decodeCachedResponse(R"({"success":true})").has_value());
  EXPECT_FALSE(decodeCachedResponse(enc.substr(0, enc.size() - 1)).has_value());
  for (size_t i = 0; i < enc.size(); i += 7) {
    std::string bad = enc;
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    EXPECT_FALSE(decodeCachedResponse(bad).has_value()) << i;
  }
  std::string other_version = enc;
  other_version[12] = 9;  // version byte, checksum now wrong too
  EXPECT_FALSE(decodeCachedResponse(other_version).has_value());
}

// What a proxy before format 2 wrote (a fleet upgrades one instance at a time).
std::string encodeVersion1(const CachedResponse& e) {
  std::string p;
  auto u = [&p](uint64_t v, int n) {
    for (int i = 0; i < n; ++i) p.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  auto bytes = [&](const std::string& s) {
    u(s.size(), 4);
    p += s;
  };
  p.push_back(1);
  p.push_back(e.stream ? 1 : 0);
  u(static_cast<uint64_t>(e.status), 4);
  u(static_cast<uint64_t>(e.stored_at_ms), 8);
  bytes(e.reason);
  u(e.headers.size(), 4);
  for (const auto& h : e.headers) {
    bytes(h.name);
    bytes(h.value);
  }
  bytes(e.body);
  Sha256 sum = sha256(p);
  return "WFPC" + std::string(reinterpret_cast<const char*>(sum.data()), 8) + p;
}

TEST(CacheEntry, ValuesOfTheFirstFormatAreStillRead) {
  CachedResponse e = sample();
  auto d = decodeCachedResponse(encodeVersion1(e), kNow);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->body, e.body);
  EXPECT_EQ(d->headers.size(), 2u);
  EXPECT_EQ(d->clientHead().lines, "content-type: application/json\r\n");
  EXPECT_EQ(d->clientHead().ratelimit_limit, "10");
  std::string bad = encodeVersion1(e);
  bad.back() = static_cast<char>(bad.back() ^ 1);
  EXPECT_FALSE(decodeCachedResponse(bad, kNow).has_value());
}

TEST(CacheEntry, TheClientHeadIsRebuiltFromTheCheckedHeaders) {
  CachedResponse e = sample();
  e.headers.push_back({"Keep-Alive", "timeout=5"});      // hop-by-hop: never sent from the cache
  e.headers.push_back({"X-Bad", std::string("a\rb")});   // unsafe value: dropped
  e.headers.push_back({"x-ratelimit-remaining", "7"});
  EXPECT_EQ(e.clientHead().lines, "content-type: application/json\r\n");
  auto d = decodeCachedResponse(encodeCachedResponse(e), kNow);
  ASSERT_TRUE(d.has_value());
  const auto& head = d->clientHead();
  EXPECT_EQ(head.lines, "content-type: application/json\r\n");
  EXPECT_EQ(head.ratelimit_limit, "10");
  EXPECT_EQ(head.ratelimit_remaining, "7");
  // The encoder leaves out what a client may not get, so the value reads back.
  ASSERT_EQ(d->headers.size(), 3u);
  EXPECT_EQ(d->headers[2].name, "x-ratelimit-remaining");
}

// --- values written by someone else (docs/security.md) -------------------------------

// A value as anyone with write access to Redis can make it: any field, any
// format, and a checksum computed exactly as the encoder does.
struct RawValue {
  uint8_t version = 3;
  uint8_t stream = 0;
  uint32_t status = 200;
  uint64_t stored_at = 1764340000123;
  std::string reason = "OK";
  std::vector<std::pair<std::string, std::string>> headers = {{"content-type", "application/json"}};
  std::optional<uint32_t> header_count;  // a lie about the count, if set
  std::string body = R"({"success":true})";
  // Format 2 only: the preformatted client head and the x-ratelimit pair.
  std::string lines = "content-type: application/json\r\n";
  std::optional<std::string> limit, remaining;
  std::optional<uint8_t> limit_flag;  // the presence flag written for `limit`, if set
  std::string trailer;  // bytes after the last field

  std::string payload() const {
    std::string p;
    auto u = [&p](uint64_t v, int n) {
      for (int i = 0; i < n; ++i) p.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    };
    auto bytes = [&](std::string_view s) {
      u(s.size(), 4);
      p += s;
    };
    p.push_back(static_cast<char>(version));
    p.push_back(static_cast<char>(stream));
    u(status, 4);
    u(stored_at, 8);
    bytes(reason);
    u(header_count.value_or(static_cast<uint32_t>(headers.size())), 4);
    for (const auto& [n, v] : headers) {
      bytes(n);
      bytes(v);
    }
    bytes(body);
    if (version == 2) {
      bytes(lines);
      for (const auto* v : {&limit, &remaining}) {
        p.push_back(static_cast<char>(v == &limit && limit_flag ? *limit_flag : v->has_value() ? 1 : 0));
        bytes(v->has_value() ? std::string_view(**v) : std::string_view());
      }
    }
    p += trailer;
    return p;
  }
  std::string sealed() const { return seal(payload(), version); }
  static std::string seal(const std::string& p, uint8_t version) {
    std::string sum(8, '\0');
    if (version == 1) {
      Sha256 s = sha256(p);
      sum.assign(reinterpret_cast<const char*>(s.data()), 8);
    } else {
      uint64_t x = xxh64(p);
      for (int i = 0; i < 8; ++i) sum[i] = static_cast<char>((x >> (8 * i)) & 0xff);
    }
    return "WFPC" + sum + p;
  }
};

bool isTokenChar(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// What a hit on `e` puts on the wire (run_handler.cc replyCached and the
// server's respond()): status line, the entry's preformatted head, the
// hit's own fields, framing, the body.
std::string renderHit(const CachedResponse& e) {
  std::string out = "HTTP/1.1 " + std::to_string(e.status) + " ";
  for (char c : e.reason) {
    if (c == '\t' || static_cast<unsigned char>(c) >= 0x20) out.push_back(c);
  }
  out += "\r\n";
  out += e.clientHead().lines;
  out += "X-Request-Id: 0123456789abcdef0123456789abcdef\r\nX-Cache: HIT\r\n";
  out += "Content-Length: " + std::to_string(e.body.size()) + "\r\n\r\n";
  out += e.body;
  return out;
}

// Every line of a preformatted head is "token: value\r\n", with no CR, LF or
// NUL in the value, and no framing or hop-by-hop field.
::testing::AssertionResult isSafeHead(std::string_view lines) {
  while (!lines.empty()) {
    size_t crlf = lines.find("\r\n");
    if (crlf == std::string_view::npos) return ::testing::AssertionFailure() << "unterminated line";
    std::string_view line = lines.substr(0, crlf);
    lines.remove_prefix(crlf + 2);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      return ::testing::AssertionFailure() << "not a field: " << ::testing::PrintToString(std::string(line));
    }
    std::string_view name = line.substr(0, colon);
    for (unsigned char c : name) {
      if (!isTokenChar(c)) return ::testing::AssertionFailure() << "not a token: " << std::string(name);
    }
    if (line.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos) {
      return ::testing::AssertionFailure() << "CR, LF or NUL in " << std::string(name);
    }
    for (const char* framing : {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
                                "trailer", "proxy-connection"}) {
      if (lower(name) == framing) return ::testing::AssertionFailure() << "framing field " << std::string(name);
    }
  }
  return ::testing::AssertionSuccess();
}

// The attack of the issue "Where the parts meet": a format-2 value with a
// valid checksum whose stored head hides a second response. A hit used to
// write the stored lines verbatim: the client read two responses.
TEST(HostileValue, InjectedLinesInAFormat2HeadNeverReachAClient) {
  const std::string smuggled =
      "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\npwned";
  RawValue v;
  v.version = 2;
  v.lines = "content-type: application/json\r\nContent-Length: 0\r\n\r\n" + smuggled + "\r\nX-A: b\r\n";
  v.limit = "10\r\n\r\n" + smuggled;  // the stored x-ratelimit pair is no better
  auto d = decodeCachedResponse(v.sealed(), kNow);
  ASSERT_TRUE(d.has_value()) << "the headers themselves are fine: a hit, from the checked headers";
  EXPECT_EQ(d->clientHead().lines, "content-type: application/json\r\n");
  EXPECT_FALSE(d->clientHead().ratelimit_limit.has_value());
  EXPECT_TRUE(isSafeHead(d->clientHead().lines));
  const std::string wire = renderHit(*d);
  EXPECT_EQ(wire.find("pwned"), std::string::npos) << wire;
  EXPECT_EQ(wire.find("HTTP/1.1 ", 1), std::string::npos) << "a second status line:\n" << wire;
  // One head, then exactly the body it announces.
  EXPECT_EQ(wire.find("\r\n\r\n") + 4, wire.size() - d->body.size()) << wire;
}

TEST(HostileValue, AHeaderThatCouldSplitTheResponseIsAMiss) {
  const std::string smuggled = "\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\npwned";
  for (uint8_t version : {1, 2, 3}) {
    for (const auto& bad : std::vector<std::pair<std::string, std::string>>{
             {"X-A", "b" + smuggled},
             {"X-A", std::string("b\0c", 3)},
             {"X-A", "b\nc"},
             {"X-A\r\nX-B", "c"},
             {"X A", "c"},
             {"", "c"},
             {"Content-Length", "5"},
             {"transfer-encoding", "chunked"},
             {"Connection", "close"},
             {"Keep-Alive", "timeout=5"},
             {"Upgrade", "h2c"},
             {"x-ratelimit-limit", "10" + smuggled},
             {"X-Request-Id", "a\r\nb"},
         }) {
      RawValue v;
      v.version = version;
      v.headers.push_back(bad);
      EXPECT_FALSE(decodeCachedResponse(v.sealed(), kNow).has_value())
          << "format " << int(version) << ": " << ::testing::PrintToString(bad.first + ": " + bad.second);
    }
  }
}

TEST(HostileValue, AReasonWithControlsIsAMiss) {
  for (const std::string& reason :
       {std::string("OK\r\nSet-Cookie: a=b"), std::string("OK\n"), std::string("O\0K", 3), std::string("OK\x7f"),
        std::string("OK\x01"), std::string(kMaxReasonBytes + 1, 'x')}) {
    RawValue v;
    v.reason = reason;
    EXPECT_FALSE(decodeCachedResponse(v.sealed(), kNow).has_value()) << ::testing::PrintToString(reason);
  }
  RawValue fine;
  fine.reason = "Quite \tOK \xc3\xa9";  // HTAB, SP, VCHAR, obs-text
  auto d = decodeCachedResponse(fine.sealed(), kNow);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->reason, fine.reason);
}

TEST(HostileValue, OutOfRangeNumbersAreMisses) {
  for (uint32_t status : {0u, 99u, 600u, 999u, 0xffffffffu /* -1 */, 0x80000000u}) {
    RawValue v;
    v.status = status;
    EXPECT_FALSE(decodeCachedResponse(v.sealed(), kNow).has_value()) << status;
  }
  for (uint32_t status : {100u, 204u, 599u}) {
    RawValue v;
    v.status = status;
    EXPECT_TRUE(decodeCachedResponse(v.sealed(), kNow).has_value()) << status;
  }
  for (uint64_t stored_at : {~0ull /* -1 */, 0x8000000000000000ull, 0x7fffffffffffffffull}) {
    RawValue v;
    v.stored_at = stored_at;
    EXPECT_FALSE(decodeCachedResponse(v.sealed(), kNow).has_value()) << stored_at;
  }
  RawValue stream;
  stream.stream = 2;
  EXPECT_FALSE(decodeCachedResponse(stream.sealed(), kNow).has_value());
  for (uint32_t count : {2u, 0xffffffffu, 0x7fffffffu}) {
    RawValue v;
    v.header_count = count;  // more than there are
    EXPECT_FALSE(decodeCachedResponse(v.sealed(), kNow).has_value()) << count;
  }
  RawValue many;
  many.headers.assign(kMaxStoredHeaders + 1, {"x-a", "b"});
  EXPECT_FALSE(decodeCachedResponse(many.sealed(), kNow).has_value());
  RawValue trailing;
  trailing.trailer = "x";
  EXPECT_FALSE(decodeCachedResponse(trailing.sealed(), kNow).has_value());
  RawValue flag;
  flag.version = 2;
  flag.limit = "10";
  flag.limit_flag = 2;  // format 2's presence flags are 0 or 1
  EXPECT_FALSE(decodeCachedResponse(flag.sealed(), kNow).has_value());
}

// A stored time in the future must not keep an entry fresh for as long as it
// is ahead: within the skew a fleet's clocks may have it is read, beyond it
// the value is a miss.
TEST(HostileValue, AStoredTimeInTheFutureIsAMissBeyondTheSkew) {
  for (int64_t ahead : {int64_t{0}, int64_t{1}, kMaxStoredAtSkewMs}) {
    RawValue v;
    v.stored_at = static_cast<uint64_t>(kNow + ahead);
    EXPECT_TRUE(decodeCachedResponse(v.sealed(), kNow).has_value()) << ahead;
  }
  for (int64_t ahead : {kMaxStoredAtSkewMs + 1, int64_t{365} * 86400 * 1000, int64_t{100} * 365 * 86400 * 1000}) {
    RawValue v;
    v.stored_at = static_cast<uint64_t>(kNow + ahead);
    EXPECT_FALSE(decodeCachedResponse(v.sealed(), kNow).has_value()) << ahead;
  }
  // The wall-clock form too: a value stored a century from now.
  RawValue far;
  far.stored_at = 4102444800000 * 2;  // ~2230
  EXPECT_FALSE(decodeCachedResponse(far.sealed()).has_value());
}

TEST(HostileValue, Format2ValuesStillReadWithTheirHeadRebuilt) {
  RawValue v;
  v.version = 2;
  v.headers.push_back({"x-ratelimit-limit", "10"});
  v.lines = "content-type: text/html\r\nX-Other: from-the-lines\r\n";  // disagrees with the headers
  v.limit = "99";
  auto d = decodeCachedResponse(v.sealed(), kNow);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->clientHead().lines, "content-type: application/json\r\n");
  EXPECT_EQ(d->clientHead().ratelimit_limit, "10");
  // A broken head is still a broken value.
  RawValue cut = v;
  cut.remaining = "7";
  std::string p = cut.payload();
  p.resize(p.size() - 1);  // the last stored string one byte short
  EXPECT_FALSE(decodeCachedResponse(RawValue::seal(p, 2), kNow).has_value());
}

TEST(HostileValue, WhatTheEncoderWritesReadsBack) {
  CachedResponse e = sample();
  e.reason = std::string("O\r\nK\x01") + std::string(2000, 'y');
  e.headers.push_back({"Content-Length", "5"});
  e.headers.push_back({"Bad Name", "x"});
  e.headers.push_back({"x-b", std::string("1\0", 2)});
  auto d = decodeCachedResponse(encodeCachedResponse(e), kNow);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->reason.substr(0, 3), "OKy");
  EXPECT_EQ(d->reason.size(), kMaxReasonBytes);
  EXPECT_EQ(d->headers.size(), 2u);
  // And a decoded value encodes to itself.
  auto again = decodeCachedResponse(encodeCachedResponse(*d), kNow);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(encodeCachedResponse(*again), encodeCachedResponse(*d));
}

TEST(Storable, OnlyAnObjectWhoseSuccessIsTrue) {
  for (const char* yes : {R"({"success":true})", R"( {"result":"x","success" : true} )",
                          R"({"success":false,"a":[1,-2.5e3,{"b":null}],"success":true})",
                          R"({"a":"\"success\":false","success":true,"c":"\u00e9\\"})"}) {
    EXPECT_TRUE(isSuccessObject(yes)) << yes;
  }
  for (const char* no : {"", "{}", "[]", R"("success")", R"({"success":false})", R"({"success":"true"})",
                         R"({"success":1})", R"({"success":true,"success":false})", R"({"ok":{"success":true}})",
                         R"({"success":true)", R"({"success":true}x)", R"({"success":true,})",
                         R"({"succ\u0065ss":true})", "{\"success\":true,\"a\":\"\x01\"}",
                         R"({"success":true,"a":[1,2})", R"({"success":tru})"}) {
    EXPECT_FALSE(isSuccessObject(no)) << no;
  }
  std::string deep = R"({"success":true,"a":)" + std::string(5000, '[') + std::string(5000, ']') + "}";
  EXPECT_FALSE(isSuccessObject(deep));  // beyond the nesting bound: not stored, no stack overflow
  std::string big = R"({"success":true,"result":")" + std::string(8 << 20, 'x') + "\"}";
  EXPECT_TRUE(isSuccessObject(big));
}

TEST(CacheEntry, TheChecksumIsXxh64) {
  // Reference values of XXH64 with seed 0 (xxHash's own and python-xxhash's examples).
  EXPECT_EQ(xxh64(""), 0xEF46DB3751D8E999ull);
  EXPECT_EQ(xxh64("a"), 0xD24EC4F1A98C6E5Bull);
  EXPECT_EQ(xxh64("abc"), 0x44BC2CF5AD770999ull);
  EXPECT_EQ(xxh64("Nobody inspects the spammish repetition"), 0xFBCEA83C8A378BF1ull);
}

// The bytes the encoder writes for sample(), pinned: a fleet mixes instances
// of different builds on one Redis, so a value must read the same in all of
// them (the checksum in bytes 4-11 is XXH64 of the payload; these bytes were
// written by the hand-written XXH64 before the switch to libxxhash).
TEST(CacheEntry, TheFormatIsPinned) {
  const std::string kHex =
      "5746504335f5ae636a62bd3a0300c80000007be5dbca9a010000020000004f4b020000000c000000636f6e74656e742d7479"
      "7065100000006170706c69636174696f6e2f6a736f6e11000000782d726174656c696d69742d6c696d69740200000031301f"
      "0000007b2273756363657373223a747275652c22726573756c74223a226100ff227d";
  std::string golden;
  for (size_t i = 0; i + 1 < kHex.size(); i += 2) {
    golden.push_back(static_cast<char>(std::stoi(kHex.substr(i, 2), nullptr, 16)));
  }
  ASSERT_EQ(golden.size(), 134u);
  EXPECT_EQ(encodeCachedResponse(sample()), golden);
  auto d = decodeCachedResponse(golden, kNow);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->body, sample().body);
  EXPECT_EQ(d->stored_at_ms, sample().stored_at_ms);
}

TEST(CacheKey, FormatAndSeparation) {
  EXPECT_EQ(cacheKey("wfp:", "acme", "run", "wf_1", 0, "ab12"), "wfp:v1:{acme}:run:wf_1:0:ab12");
  EXPECT_NE(cacheKey("wfp:", "acme", "run", "wf_1", 0, "ab"), cacheKey("wfp:", "globex", "run", "wf_1", 0, "ab"));
  EXPECT_NE(cacheKey("wfp:", "acme", "run", "wf_1", 0, "ab"), cacheKey("wfp:", "acme", "stream", "wf_1", 0, "ab"));
  EXPECT_NE(cacheKey("wfp:", "acme", "run", "wf_1", 0, "ab"), cacheKey("wfp:", "acme", "run", "wf_1", 1, "ab"));
}

TEST(MemoryCache, LruIsBoundedByBytes) {
  MemoryCache cache(4096);
  auto e = std::make_shared<CachedResponse>(sample());
  e->body = std::string(1000, 'x');
  for (int i = 0; i < 10; ++i) cache.put("k" + std::to_string(i), e, 1'000'000);
  EXPECT_LE(cache.bytes(), 4096u);
  EXPECT_LT(cache.entries(), 10u);
  EXPECT_NE(cache.get("k9", 0), nullptr);
  EXPECT_EQ(cache.get("k0", 0), nullptr);
  // Recently used entries survive.
  MemoryCache c2(3500);
  c2.put("a", e, 1'000'000);
  c2.put("b", e, 1'000'000);
  ASSERT_NE(c2.get("a", 0), nullptr);
  c2.put("c", e, 1'000'000);
  EXPECT_NE(c2.get("a", 0), nullptr);
  EXPECT_EQ(c2.get("b", 0), nullptr);
}

TEST(MemoryCache, ExpiredEntriesAreGone) {
  MemoryCache cache(1 << 20);
  cache.put("k", std::make_shared<CachedResponse>(sample()), 1000);
  EXPECT_NE(cache.get("k", 999), nullptr);
  EXPECT_EQ(cache.get("k", 1000), nullptr);
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
}

}  // namespace
}  // namespace wfp

#include "proxy/cache.h"

#include "proxy/hash.h"

#include <gtest/gtest.h>

namespace wfp {
namespace {

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
  auto d = decodeCachedResponse(encodeCachedResponse(e));
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
  auto d = decodeCachedResponse(encodeVersion1(e));
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->body, e.body);
  EXPECT_EQ(d->headers.size(), 2u);
  EXPECT_EQ(d->clientHead().lines, "content-type: application/json\r\n");
  EXPECT_EQ(d->clientHead().ratelimit_limit, "10");
  std::string bad = encodeVersion1(e);
  bad.back() = static_cast<char>(bad.back() ^ 1);
  EXPECT_FALSE(decodeCachedResponse(bad).has_value());
}

TEST(CacheEntry, TheClientHeadTravelsWithTheEntry) {
  CachedResponse e = sample();
  e.headers.push_back({"Keep-Alive", "timeout=5"});      // hop-by-hop: never sent from the cache
  e.headers.push_back({"X-Bad", std::string("a\rb")});   // unsafe value: dropped
  e.headers.push_back({"x-ratelimit-remaining", "7"});
  auto d = decodeCachedResponse(encodeCachedResponse(e));
  ASSERT_TRUE(d.has_value());
  const auto& head = d->clientHead();
  EXPECT_EQ(head.lines, "content-type: application/json\r\n");
  EXPECT_EQ(head.ratelimit_limit, "10");
  EXPECT_EQ(head.ratelimit_remaining, "7");
  EXPECT_EQ(d->headers.size(), 5u);  // the stored headers themselves are kept as they were
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

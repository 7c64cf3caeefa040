#include "proxy/headers.h"

#include <gtest/gtest.h>

namespace wfp {
namespace {

std::vector<std::string> names(const HttpHeaders& h) {
  std::vector<std::string> out;
  for (const auto& x : h) out.push_back(x.name + ": " + x.value);
  return out;
}

TEST(Headers, RequestMappingDropsHopByHopAndReplacesAuthorization) {
  HttpHeaders client{{"Host", "proxy:8080"},
                     {"Authorization", "Bearer client-key"},
                     {"Content-Type", "application/json"},
                     {"Connection", "keep-alive, X-Private"},
                     {"X-Private", "secret-hop"},
                     {"Keep-Alive", "timeout=5"},
                     {"TE", "trailers"},
                     {"Transfer-Encoding", "chunked"},
                     {"Content-Length", "12"},
                     {"Expect", "100-continue"},
                     {"x-user-id", "u1"},
                     {"Upgrade", "h2c"},
                     {"Proxy-Authorization", "Basic x"}};
  UpstreamHeaderOptions opts;
  opts.authorization = "Bearer sk_org";
  opts.request_id = "rid-1";
  HttpHeaders out = upstreamRequestHeaders(client, opts);
  EXPECT_EQ(names(out), (std::vector<std::string>{"Authorization: Bearer sk_org", "Content-Type: application/json",
                                                  "x-user-id: u1", "X-Request-Id: rid-1"}));
}

TEST(Headers, RequestIdAndIdentityEncodingKeepPosition) {
  HttpHeaders client{{"X-Request-Id", "abc"}, {"Accept-Encoding", "gzip, br"}, {"Accept", "*/*"}};
  UpstreamHeaderOptions opts;
  opts.request_id = "abc";
  opts.identity_encoding = true;
  HttpHeaders out = upstreamRequestHeaders(client, opts);
  EXPECT_EQ(names(out),
            (std::vector<std::string>{"X-Request-Id: abc", "Accept-Encoding: identity", "Accept: */*"}));
  // Without the option the client's encoding goes through.
  opts.identity_encoding = false;
  out = upstreamRequestHeaders(client, opts);
  EXPECT_EQ(out[1].value, "gzip, br");
}

TEST(Headers, PassThroughKeepsClientAuthorization) {
  HttpHeaders client{{"authorization", "Bearer sk_client_own"}};
  UpstreamHeaderOptions opts;
  opts.request_id = "r";
  HttpHeaders out = upstreamRequestHeaders(client, opts);
  EXPECT_EQ(out[0].value, "Bearer sk_client_own");
}

TEST(Headers, ResponseMappingKeepsEndToEndInOrder) {
  HttpHeaders upstream{{"content-type", "application/json"}, {"x-ratelimit-limit", "10"},
                       {"Connection", "close"},              {"Transfer-Encoding", "chunked"},
                       {"Content-Length", "10"},             {"set-cookie", "a=1"},
                       {"set-cookie", "b=2"},                {"x-ratelimit-remaining", "9"},
                       {"content-encoding", "gzip"}};
  EXPECT_EQ(names(clientResponseHeaders(upstream)),
            (std::vector<std::string>{"content-type: application/json", "x-ratelimit-limit: 10", "set-cookie: a=1",
                                      "set-cookie: b=2", "x-ratelimit-remaining: 9", "content-encoding: gzip"}));
}

// Filtering in place (a caller moves its headers in) gives what the copy
// gives, with a Connection header naming fields or without one.
TEST(Headers, ResponseMappingInPlaceMatchesTheCopy) {
  const HttpHeaders lists[] = {
      {{"content-type", "application/json"}, {"Content-Length", "2"}, {"Keep-Alive", "timeout=5"},
       {"x-ratelimit-limit", "10"}, {"Trailer", "x"}, {"set-cookie", "a=1"}},
      {{"Connection", "X-Private, close"}, {"X-Private", "hop"}, {"x-ok", "1"}, {"x-private", "hop2"}},
      {},
  };
  for (const HttpHeaders& list : lists) {
    HttpHeaders moved = list;
    EXPECT_EQ(names(clientResponseHeaders(std::move(moved))), names(clientResponseHeaders(list)));
  }
}

// Moved in, the client's headers are rebuilt in their own memory: the same
// fields in the same order as from a copy, duplicates of the replaced fields
// dropped, the missing ones appended.
TEST(Headers, RequestMappingMovedInKeepsOrderAndDropsDuplicates) {
  HttpHeaders client{{"Host", "proxy"},          {"x-request-id", "client-id"}, {"Authorization", "Bearer a"},
                     {"Connection", "X-Hop"},    {"X-Hop", "1"},                {"authorization", "Bearer b"},
                     {"Accept", "*/*"},          {"X-Request-Id", "again"},     {"Content-Length", "5"}};
  UpstreamHeaderOptions opts;
  opts.authorization = "Bearer sk_org";
  opts.request_id = "rid";
  opts.identity_encoding = true;
  HttpHeaders copy = client;
  HttpHeaders out = upstreamRequestHeaders(std::move(copy), opts);
  EXPECT_EQ(names(out), (std::vector<std::string>{"x-request-id: rid", "Authorization: Bearer sk_org", "Accept: */*",
                                                  "Accept-Encoding: identity"}));
  EXPECT_EQ(names(upstreamRequestHeaders(client, opts)), names(out));
}

// isSafeHeaderValue looks at eight bytes at a time: CR, LF or NUL at any
// offset of any length is found; every other byte (TAB, 0x0e, 0x7f, bytes
// >= 0x80) is not mistaken for one.
TEST(Headers, SafeValuesAtEveryOffset) {
  for (size_t len = 1; len <= 40; ++len) {
    for (size_t at = 0; at < len; ++at) {
      for (char bad : {'\r', '\n', '\0'}) {
        std::string v(len, 'a');
        v[at] = bad;
        EXPECT_FALSE(isSafeHeaderValue(v)) << len << " " << at << " " << int(bad);
      }
      for (char fine : {'\t', '\x0e', '\x7f', '\x80', '\xff', '\x8d', '\x8a'}) {
        std::string v(len, 'a');
        v[at] = fine;
        EXPECT_TRUE(isSafeHeaderValue(v)) << len << " " << at << " " << int(fine);
      }
    }
  }
  EXPECT_TRUE(isSafeHeaderValue(""));
}

TEST(Headers, SafeValuesAndRequestIds) {
  EXPECT_TRUE(isSafeHeaderValue("abc def"));
  EXPECT_FALSE(isSafeHeaderValue("a\r\nX-Injected: 1"));
  EXPECT_FALSE(isSafeHeaderValue(std::string("a\0b", 3)));
  std::string id = newRequestId();
  EXPECT_EQ(id.size(), 32u);
  EXPECT_NE(id, newRequestId());
}

TEST(Headers, HopByHopIsEveryListedNameInAnyCase) {
  for (const char* hop : {"connection", "Keep-Alive", "PROXY-CONNECTION", "te", "TE", "Trailer", "transfer-encoding",
                          "Upgrade", "Proxy-Authenticate", "proxy-authorization"}) {
    EXPECT_TRUE(isHopByHop(hop)) << hop;
  }
  // Same length or first letter as a listed name, or a byte away from one.
  for (const char* end_to_end : {"", "t", "tE-", "ta", "content-length", "x-ratelimit-limit", "transfer-encodinG2",
                                 "connectiom", "Connection ", " connection", "keep_alive", "upgrade\r",
                                 "proxy-authorization-x-much-longer-than-any-listed-name"}) {
    EXPECT_FALSE(isHopByHop(end_to_end)) << end_to_end;
  }
}

}  // namespace
}  // namespace wfp

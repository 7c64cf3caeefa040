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

// The stream-token rules (docs/http.md): the query read as the upstream
// reads it, the token route's answer, and where the token goes.
#include "proxy/stream_token.h"

#include <gtest/gtest.h>

namespace wfp {
namespace {

TEST(StreamToken, AnyEncodingOfTheNameIsAToken) {
  for (const char* q : {"token=x", "%74oken=x", "t%6Fken=x", "%74%6F%6B%65%6E=x", "%74%6f%6b%65%6e=x", "a=1&token=x",
                        "a=1&%74oken=x&b=2", "token=", "token", "&&token=x"}) {
    EXPECT_TRUE(queryHasToken(q)) << q;
  }
}

TEST(StreamToken, OtherNamesAreNot) {
  for (const char* q : {"", "tokens=x", "toke=x", "Token=x", "TOKEN=x", "x=token", "a=token%3Dx", "token+=x",
                        "%74oken%=x", "%7", "%", "to%ken=x", "tok%65n%3D=x"}) {
    EXPECT_FALSE(queryHasToken(q)) << q;
  }
}

TEST(StreamToken, ThePlusIsASpace) {
  EXPECT_FALSE(queryHasToken("tok+en=x"));
  EXPECT_FALSE(queryHasToken("+token=x"));
}

TEST(StreamToken, TheAnswerYieldsAWellFormedTokenOnly) {
  EXPECT_EQ(tokenFromAnswer(200, R"({"success":true,"token":"pub_tok_abc123","ttl":60})"), "pub_tok_abc123");
  EXPECT_EQ(tokenFromAnswer(429, R"({"success":true,"token":"pub_tok_abc123"})"), "");
  EXPECT_EQ(tokenFromAnswer(200, R"({"success":true,"token":"a&token=b"})"), "");
  EXPECT_EQ(tokenFromAnswer(200, R"({"success":true,"token":"a b"})"), "");
  EXPECT_EQ(tokenFromAnswer(200, R"({"success":true,"token":""})"), "");
  EXPECT_EQ(tokenFromAnswer(200, R"({"success":true,"token":1})"), "");
  EXPECT_EQ(tokenFromAnswer(200, R"(["token"])"), "");
  EXPECT_EQ(tokenFromAnswer(200, "not json"), "");
  EXPECT_EQ(tokenFromAnswer(200, R"({"token":")" + std::string(300, 'a') + R"("})"), "");
}

TEST(StreamToken, WithTokenAppendsToTheQuery) {
  EXPECT_EQ(withToken("http://u/api/v1/run/w/stream", "t1"), "http://u/api/v1/run/w/stream?token=t1");
  EXPECT_EQ(withToken("http://u/api/v1/run/w/stream?a=1", "t1"), "http://u/api/v1/run/w/stream?a=1&token=t1");
}

}  // namespace
}  // namespace wfp

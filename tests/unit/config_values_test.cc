// The value grammars that config_values.h made callable on their own (sizes,
// listen addresses and redis.url are pinned in config_test.cc, as are the
// loader's messages for all of them).
#include "proxy/config_values.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace wfp {
namespace {

TEST(ConfigValues, Seconds) {
  EXPECT_EQ(parseSeconds("30"), 30.0);
  EXPECT_EQ(parseSeconds("0.25"), 0.25);
  EXPECT_EQ(parseSeconds("1e3"), 1000.0);
  EXPECT_EQ(parseSeconds("-2"), -2.0);  // the range is the caller's, which names the key
  auto zero = parseSeconds("-0");
  ASSERT_TRUE(zero);
  EXPECT_FALSE(std::signbit(*zero));
  for (const char* bad : {"", " 1", "1 ", "1s", "+1", "inf", "nan", "1e999", "0x10", "1,5"}) {
    EXPECT_FALSE(parseSeconds(bad)) << bad;
  }
}

TEST(ConfigValues, Bool) {
  for (const char* yes : {"true", "TRUE", "Yes", "on"}) EXPECT_EQ(parseBool(yes), true) << yes;
  for (const char* no : {"false", "No", "OFF"}) EXPECT_EQ(parseBool(no), false) << no;
  for (const char* bad : {"", "1", "0", "y", "n", "true ", "enabled"}) EXPECT_FALSE(parseBool(bad)) << bad;
}

TEST(ConfigValues, BaseUrl) {
  std::string error;
  EXPECT_EQ(parseBaseUrl("https://api.example.com", &error), "https://api.example.com");
  EXPECT_EQ(parseBaseUrl("http://127.0.0.1:8080/prefix/", &error), "http://127.0.0.1:8080/prefix");
  EXPECT_EQ(parseBaseUrl("HTTPS://[::1]:443", &error), "HTTPS://[::1]:443");
  EXPECT_FALSE(parseBaseUrl("https://user:secret@host", &error));
  EXPECT_EQ(error.find("secret"), std::string::npos);  // never echoed
  EXPECT_FALSE(parseBaseUrl("ftp://host", &error));
  EXPECT_FALSE(parseBaseUrl("https://host?x=1", &error));
  EXPECT_FALSE(parseBaseUrl("https://host:0", &error));
  EXPECT_FALSE(parseBaseUrl("https://", nullptr));
}

TEST(ConfigValues, HexDigest) {
  const std::string hex = "00ff" + std::string(58, 'a') + "Bc";
  auto d = parseHexDigest(hex);
  ASSERT_TRUE(d);
  EXPECT_EQ((*d)[0], 0x00);
  EXPECT_EQ((*d)[1], 0xff);
  EXPECT_EQ((*d)[2], 0xaa);
  EXPECT_EQ((*d)[31], 0xbc);
  EXPECT_FALSE(parseHexDigest(hex.substr(1)));
  EXPECT_FALSE(parseHexDigest(hex + "0"));
  EXPECT_FALSE(parseHexDigest("0g" + hex.substr(2)));
  EXPECT_FALSE(parseHexDigest("+f" + hex.substr(2)));
}

TEST(ConfigValues, OrganisationName) {
  EXPECT_TRUE(isOrganisationName("acme"));
  EXPECT_TRUE(isOrganisationName("tutor.web_2-b"));
  EXPECT_TRUE(isOrganisationName(std::string(64, 'n')));
  EXPECT_FALSE(isOrganisationName(std::string(65, 'n')));
  EXPECT_FALSE(isOrganisationName(""));
  EXPECT_FALSE(isOrganisationName("a b"));
  EXPECT_FALSE(isOrganisationName("a/b"));
}

}  // namespace
}  // namespace wfp

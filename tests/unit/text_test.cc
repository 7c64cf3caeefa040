#include "proxy/text.h"

#include <gtest/gtest.h>

#include <string>

namespace wfp {
namespace {

TEST(Text, EqualsIgnoreCaseFoldsAsciiOnly) {
  EXPECT_TRUE(equalsIgnoreCase("Content-TYPE", "content-type"));
  EXPECT_TRUE(equalsIgnoreCase("", ""));
  EXPECT_FALSE(equalsIgnoreCase("content-typ", "content-type"));
  EXPECT_FALSE(equalsIgnoreCase("a", "b"));
  // '@' and '`' sit next to 'A' and 'a'; '[' is 'Z' + 1: none of them fold.
  EXPECT_FALSE(equalsIgnoreCase("@", "`"));
  EXPECT_FALSE(equalsIgnoreCase("[", "{"));
  // Bytes above 0x7f are compared as they are (no locale).
  EXPECT_FALSE(equalsIgnoreCase("\xc3\x89", "\xc3\xa9"));  // É, é
  EXPECT_TRUE(equalsIgnoreCase("\xc3\xa9", "\xc3\xa9"));
  EXPECT_FALSE(equalsIgnoreCase(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST(Text, StartsWithIgnoreCase) {
  EXPECT_TRUE(startsWithIgnoreCase("REDIS://host", "redis://"));
  EXPECT_TRUE(startsWithIgnoreCase("x", ""));
  EXPECT_FALSE(startsWithIgnoreCase("redis:/", "redis://"));
  EXPECT_FALSE(startsWithIgnoreCase("rediss://host", "redis://"));
}

TEST(Text, TrimOwsRemovesOnlySpaceAndTab) {
  EXPECT_EQ(trimOws(" \t value \t"), "value");
  EXPECT_EQ(trimOws("a b"), "a b");
  EXPECT_EQ(trimOws(" \t "), "");
  EXPECT_EQ(trimOws(""), "");
  // CR, LF, VT and FF are not OWS: a header value keeps them (and is refused elsewhere).
  EXPECT_EQ(trimOws("\r\nv\n"), "\r\nv\n");
  EXPECT_EQ(trimOws("\vv\f"), "\vv\f");
}

TEST(Text, TrimSpaceRemovesAllAsciiWhitespace) {
  EXPECT_EQ(trimSpace(" \t\r\n\v\fkey\n"), "key");
  EXPECT_EQ(trimSpace("  1 MiB "), "1 MiB");
  EXPECT_EQ(trimSpace("\n"), "");
  EXPECT_EQ(trimSpace(std::string("\0k", 2)), std::string("\0k", 2));  // NUL is not whitespace
  EXPECT_EQ(trimSpace("\xa0k\xa0"), "\xa0k\xa0");                     // nor a Latin-1 NBSP
}

TEST(Text, TokenIsRfc9110Tchar) {
  for (std::string_view ok : {"GET", "content-type", "X-Custom_1", "!#$%&'*+-.^_`|~", "a"}) {
    EXPECT_TRUE(isToken(ok)) << ok;
  }
  for (std::string_view bad : {"", "a b", "a:b", "a/b", "\"q\"", "a,b", "(c)", "a=b", "a\tb", "\xc3\xa9"}) {
    EXPECT_FALSE(isToken(bad)) << bad;
  }
  EXPECT_FALSE(isToken(std::string("a\0b", 3)));
  int tchars = 0;
  for (int c = 0; c < 256; ++c) tchars += isTokenChar(static_cast<char>(c)) ? 1 : 0;
  EXPECT_EQ(tchars, 26 + 26 + 10 + 15);
}

TEST(Text, VisibleAsciiIsWiderThanAToken) {
  EXPECT_TRUE(isVisibleAscii("sk-live/abc+def=="));
  EXPECT_TRUE(isVisibleAscii("a:b,\"c\"(d)"));  // not a token, still a usable key
  EXPECT_TRUE(isVisibleAscii("!~"));
  EXPECT_TRUE(isVisibleAscii(""));
  for (std::string_view bad : {"a b", "key\n", "\tkey", "k\x7f", "k\xc3\xa9", "\x80"}) {
    EXPECT_FALSE(isVisibleAscii(bad)) << bad;
  }
  EXPECT_FALSE(isVisibleAscii(std::string("a\0b", 3)));
}

TEST(Text, WorkflowId) {
  EXPECT_TRUE(isValidWorkflowId("wf_abc123"));
  EXPECT_TRUE(isValidWorkflowId("wf-A_9"));
  EXPECT_TRUE(isValidWorkflowId("a"));
  EXPECT_TRUE(isValidWorkflowId(std::string(128, 'z')));
  EXPECT_FALSE(isValidWorkflowId(std::string(129, 'z')));
  EXPECT_FALSE(isValidWorkflowId(""));
  for (std::string_view bad : {"wf.x", "wf/x", "wf%2Fx", "..", "wf x", "wf:x", "wf\n", "w\xc3\xa9"}) {
    EXPECT_FALSE(isValidWorkflowId(bad)) << bad;
  }
}

TEST(Text, CharacterClassesAreAscii) {
  EXPECT_TRUE(isDigit('0') && isDigit('9') && !isDigit('a') && !isDigit('/') && !isDigit(':'));
  EXPECT_TRUE(isAlnum('z') && isAlnum('Z') && isAlnum('5') && !isAlnum('_') && !isAlnum('\xe9'));
  EXPECT_TRUE(isHexDigit('f') && isHexDigit('F') && !isHexDigit('g') && !isHexDigit('G'));
  EXPECT_TRUE(isOws(' ') && isOws('\t') && !isOws('\n') && !isOws('\r'));
  EXPECT_TRUE(isSpace('\v') && isSpace('\f') && isSpace('\r') && !isSpace('\0') && !isSpace('\x85'));
  EXPECT_EQ(asciiLower('Q'), 'q');
  EXPECT_EQ(asciiLower('q'), 'q');
  EXPECT_EQ(asciiLower('@'), '@');
  EXPECT_EQ(asciiLower('\xc9'), '\xc9');
}

}  // namespace
}  // namespace wfp

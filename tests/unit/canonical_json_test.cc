// Tests for canonicalizeJson() (docs/http.md invalid_json).
#include "proxy/canonical_json.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace wfp {
namespace {

using namespace std::string_literals;

std::string canon(std::string_view body) {
  CanonicalJson r = canonicalizeJson(body);
  EXPECT_TRUE(r.ok) << "body: " << body << "\nerror: " << r.error;
  return r.canonical;
}

// Expects `body` to be rejected; returns the result for further checks.
CanonicalJson rejected(std::string_view body, size_t max_depth = kDefaultMaxJsonDepth) {
  CanonicalJson r = canonicalizeJson(body, max_depth);
  EXPECT_FALSE(r.ok) << "body accepted: " << body << "\ncanonical: " << r.canonical;
  EXPECT_FALSE(r.error.empty());
  EXPECT_TRUE(r.canonical.empty());
  EXPECT_LE(r.error_offset, body.size());
  EXPECT_NE(r.error.find("at offset " + std::to_string(r.error_offset)), std::string::npos) << r.error;
  return r;
}

struct Case {
  std::string input;
  std::string expected;
};

void expectTable(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    SCOPED_TRACE("input: " + c.input);
    const std::string got = canon(c.input);
    EXPECT_EQ(got, c.expected);
    // The canonical form is itself valid input and a fixed point.
    EXPECT_EQ(canon(got), got);
  }
}

// Wraps a value as {"v":value}.
std::string wrap(std::string_view value) { return "{\"v\":" + std::string(value) + "}"; }

// --- Structure ----------------------------------------------------------------

TEST(CanonicalJsonTest, EmptyAndWhitespaceBodiesAreTheEmptyObject) {
  expectTable({
      {"", "{}"},
      {" ", "{}"},
      {" \t\r\n ", "{}"},
      {"{}", "{}"},
      {" { } ", "{}"},
  });
}

TEST(CanonicalJsonTest, KeysSortedRecursively) {
  expectTable({
      {R"({"b":1,"a":2})", R"({"a":2,"b":1})"},
      {R"({"story":"a story about a dog named charlie"})", R"({"story":"a story about a dog named charlie"})"},
      {R"({"z":{"y":1,"x":[{"d":1,"c":2}]},"a":[]})", R"({"a":[],"z":{"x":[{"c":2,"d":1}],"y":1}})"},
      {R"({"b":{},"a":{"c":{},"b":[[]]}})", R"({"a":{"b":[[]],"c":{}},"b":{}})"},
      {R"({"ab":1,"a":2,"":3,"b":4,"aa":5})", R"({"":3,"a":2,"aa":5,"ab":1,"b":4})"},
      {R"({"B":1,"a":2,"A":3,"_":4})", R"({"A":3,"B":1,"_":4,"a":2})"},
  });
}

TEST(CanonicalJsonTest, DuplicateKeysLastWins) {
  expectTable({
      {R"({"a":1,"a":2})", R"({"a":2})"},
      {R"({"a":1,"b":0,"a":2,"a":3})", R"({"a":3,"b":0})"},
      {R"({"a":1,"a":{"b":2}})", R"({"a":{"b":2}})"},
      {R"({"a":{"b":2},"a":1})", R"({"a":1})"},
      {R"({"x":{"b":1,"b":[1,{"c":1,"c":2}]}})", R"({"x":{"b":[1,{"c":2}]}})"},
      {R"({"a":1,"\u0061":2})", R"({"a":2})"},
      {R"({"\u0061":1,"a":2,"b":3})", R"({"a":2,"b":3})"},
      {R"({"a\"":1,"a\u0022":2})", R"({"a\"":2})"},
      {R"({"😀":1,"\ud83d\ude00":2})", R"({"😀":2})"},
      {R"({"\ud800":1,"\uD800":2})", R"({"\ud800":2})"},
      {R"({"z":1,"y":2,"z":3,"y":4,"x":5})", R"({"x":5,"y":4,"z":3})"},
  });
}

TEST(CanonicalJsonTest, WhitespaceEverywhereIsInsignificant) {
  const std::string expected = R"({"a":[1,true,null,{"b":"c d"}],"e":false})";
  expectTable({
      {" \n{ \"e\" : false , \"a\"\t:\r\n[ 1 ,true , null,{ \"b\" : \"c d\" } ] } \n\t", expected},
      {"{\"e\":false,\"a\":[1,true,null,{\"b\":\"c d\"}]}", expected},
      {"\r\n\r\n{\r\n\"a\"\r\n:\r\n[\r\n1\r\n,\r\ntrue\r\n,\r\nnull\r\n,\r\n{\r\n\"b\"\r\n:\r\n\"c d\"\r\n}\r\n]\r\n,"
       "\r\n\"e\"\r\n:\r\nfalse\r\n}\r\n",
       expected},
      {R"({ "a" : [ ] , "b" : { } })", R"({"a":[],"b":{}})"},
  });
}

TEST(CanonicalJsonTest, NullDiffersFromAbsentAndArraysKeepOrder) {
  EXPECT_NE(canon(R"({"a":null})"), canon("{}"));
  EXPECT_EQ(canon(R"({"a":null})"), R"({"a":null})");
  EXPECT_NE(canon(R"({"a":[1,2]})"), canon(R"({"a":[2,1]})"));
  EXPECT_EQ(canon(R"({"a":[3,1,2,[{"b":1,"a":0}]]})"), R"({"a":[3,1,2,[{"a":0,"b":1}]]})");
  EXPECT_NE(canon(R"({"a":true})"), canon(R"({"a":"true"})"));
  EXPECT_NE(canon(R"({"a":1})"), canon(R"({"a":"1"})"));
  EXPECT_NE(canon(R"({"a":false})"), canon(R"({"a":null})"));
  EXPECT_NE(canon(R"({"a":[]})"), canon(R"({"a":{}})"));
  EXPECT_NE(canon(R"({"a":""})"), canon(R"({"a":null})"));
}

// --- Strings --------------------------------------------------------------------

TEST(CanonicalJsonTest, EveryEscape) {
  expectTable({
      {wrap(R"("\"")"), wrap(R"("\"")")},
      {wrap(R"("\\")"), wrap(R"("\\")")},
      {wrap(R"("\/")"), wrap(R"("/")")},
      {wrap(R"("/")"), wrap(R"("/")")},
      {wrap(R"("\b\f\n\r\t")"), wrap(R"("\b\f\n\r\t")")},
      {wrap(R"("\u0008\u000c\u000A\u000d\u0009")"), wrap(R"("\b\f\n\r\t")")},
      {wrap(R"("\u0022\u005c\u005C\u002f")"), wrap(R"("\"\\\\/")")},
      {wrap(R"("\u0000")"), wrap(R"("\u0000")")},
      {wrap(R"("\u0001\u001f\u001F\u000b\u000B")"), wrap(R"("\u0001\u001f\u001f\u000b\u000b")")},
      {wrap(R"("\u0020")"), wrap(R"(" ")")},
      {wrap(R"("\u007f")"), wrap("\"\x7f\"")},
      {wrap("\"\x7f\""), wrap("\"\x7f\"")},
      {wrap(R"("\u0041\u0062c")"), wrap(R"("Abc")")},
      {wrap(R"("\u00e9")"), wrap("\"\xc3\xa9\"")},
      {wrap(R"("\u00E9")"), wrap("\"é\"")},
      {wrap(R"("\u4e2d\u6587")"), wrap("\"中文\"")},
      {wrap(R"("\uffff")"), wrap("\"\xef\xbf\xbf\"")},
      {wrap(R"("\ud83d\ude00")"), wrap("\"😀\"")},
      {wrap(R"("\uD83D\uDE00")"), wrap("\"😀\"")},
      {wrap(R"("\udbff\udfff")"), wrap("\"\xf4\x8f\xbf\xbf\"")},
      {wrap(R"("\ud800\udc00")"), wrap("\"\xf0\x90\x80\x80\"")},
      {wrap(R"("a\u0000b")"), wrap(R"("a\u0000b")")},
      {wrap(R"("")"), wrap(R"("")")},
  });
  EXPECT_EQ(canon(R"({"a":"\u0041"})"), canon(R"({"a":"A"})"));
  EXPECT_EQ(canon(R"({"a":"\ud83d\ude00"})"), canon("{\"a\":\"\xf0\x9f\x98\x80\"}"));
}

TEST(CanonicalJsonTest, LoneSurrogatesStayLowerCaseEscapes) {
  expectTable({
      {wrap(R"("\ud800")"), wrap(R"("\ud800")")},
      {wrap(R"("\uDBFF")"), wrap(R"("\udbff")")},
      {wrap(R"("\udc00")"), wrap(R"("\udc00")")},
      {wrap(R"("\uDFFF")"), wrap(R"("\udfff")")},
      {wrap(R"("\ud800x")"), wrap(R"("\ud800x")")},
      {wrap(R"("\ud800\u0041")"), wrap(R"("\ud800A")")},
      {wrap(R"("\ud800\ud800")"), wrap(R"("\ud800\ud800")")},
      {wrap(R"("\udc00\ud800")"), wrap(R"("\udc00\ud800")")},
      {wrap(R"("\ud800\ud83d\ude00")"), wrap("\"\\ud800😀\"")},
      {wrap(R"("\ud83d\ude00\udc00")"), wrap("\"😀\\udc00\"")},
      {wrap(R"("\ud800\n")"), wrap(R"("\ud800\n")")},
      {wrap(R"("\ud800\\u")"), wrap(R"("\ud800\\u")")},
      {R"({"\ud800":1})", R"({"\ud800":1})"},
  });
  // Distinct from each other and from the replacement character.
  EXPECT_NE(canon(wrap(R"("\ud800")")), canon(wrap(R"("\udc00")")));
  EXPECT_NE(canon(wrap(R"("\ud800")")), canon(wrap("\"\xef\xbf\xbd\"")));
  EXPECT_NE(canon(wrap(R"("\ud800")")), canon(wrap(R"("\\ud800")")));
}

TEST(CanonicalJsonTest, KeysSortByDecodedUtf8Bytes) {
  expectTable({
      // é (C3 A9) and 中 (E4 B8 AD) sort after every ASCII key.
      {"{\"\xc3\xa9\":1,\"z\":2,\"\xe4\xb8\xad\":3,\"\x7f\":4}", "{\"z\":2,\"\x7f\":4,\"\xc3\xa9\":1,\"\xe4\xb8\xad\":3}"},
      {R"({"\u00e9":1,"z":2})", "{\"z\":2,\"\xc3\xa9\":1}"},
      // U+FFFF (EF BF BF) before U+10000 (F0 90 80 80), unlike UTF-16 order.
      {R"({"\ud800\udc00":1,"\uffff":2})", "{\"\xef\xbf\xbf\":2,\"\xf0\x90\x80\x80\":1}"},
      {R"({"\ud83d\ude00":1,"\uff61":2})", "{\"\xef\xbd\xa1\":2,\"\xf0\x9f\x98\x80\":1}"},
      // Escaped keys sort by what they decode to: '"' is 0x22, '\' is 0x5C.
      {R"({"#":1,"\"":2,"!":3})", R"({"!":3,"\"":2,"#":1})"},
      {R"({"]":1,"\\":2,"[":3})", R"({"[":3,"\\":2,"]":1})"},
      {R"({" ":1,"\n":2,"\u0000":3,"\u001f":4})", R"({"\u0000":3,"\n":2,"\u001f":4," ":1})"},
      {R"({"a\"b":1,"a":2,"a#":3,"a!":4})", R"({"a":2,"a!":4,"a\"b":1,"a#":3})"},
      // A lone surrogate sorts as its code point: between U+D7FF and U+E000.
      {"{\"\xee\x80\x80\":1,\"\\udc00\":2,\"\xed\x9f\xbf\":3,\"\\ud800\":4}",
       "{\"\xed\x9f\xbf\":3,\"\\ud800\":4,\"\\udc00\":2,\"\xee\x80\x80\":1}"},
  });
}

TEST(CanonicalJsonTest, RawUtf8IsKept) {
  expectTable({
      {"{\"k\":\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"}",
       "{\"k\":\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"}"},
      {"{\"\xf0\x9f\x90\xb6\":\"dog \xf0\x9f\x90\x95 named charlie\"}",
       "{\"\xf0\x9f\x90\xb6\":\"dog \xf0\x9f\x90\x95 named charlie\"}"},
  });
}

// --- Numbers --------------------------------------------------------------------

TEST(CanonicalJsonTest, NumbersByExactValue) {
  const std::vector<std::pair<std::string, std::string>> numbers = {
      {"1", "1"},
      {"1.0", "1"},
      {"1e0", "1"},
      {"1E0", "1"},
      {"1e+0", "1"},
      {"1e-0", "1"},
      {"10e-1", "1"},
      {"0.1e1", "1"},
      {"0.001e3", "1"},
      {"1.000000000000000000000000000000", "1"},
      {"100", "100"},
      {"1e2", "100"},
      {"1E+2", "100"},
      {"0.1e3", "100"},
      {"10000e-2", "100"},
      {"0", "0"},
      {"-0", "0"},
      {"0.0", "0"},
      {"-0.0", "0"},
      {"0e10", "0"},
      {"0E-10", "0"},
      {"-0.000e+999", "0"},
      {"0e99999999999999999999999999", "0"},
      {"1.5", "1.5"},
      {"15e-1", "1.5"},
      {"0.15e1", "1.5"},
      {"1.50", "1.5"},
      {"-1.5E+3", "-1500"},
      {"-1500", "-1500"},
      {"-15e2", "-1500"},
      {"0.1", "0.1"},
      {"1e-1", "0.1"},
      {"0.10000000000000001", "0.10000000000000001"},
      {"123.456", "123.456"},
      {"-0.5", "-0.5"},
      {"0.001", "0.001"},
      {"0.000001", "0.000001"},  // largest run of zeros in decimal form
      {"1e-6", "0.000001"},
      {"1.5e-6", "0.0000015"},
      {"1e-7", "1e-7"},
      {"0.0000001", "1e-7"},
      {"12e-8", "1.2e-7"},
      {"-1.25e-10", "-1.25e-10"},
      {"1e20", "100000000000000000000"},
      {"1e21", "1e+21"},
      {"10e20", "1e+21"},
      {"1000000000000000000000", "1e+21"},
      {"1.5e21", "1500000000000000000000"},
      {"123e20", "12300000000000000000000"},
      {"1e100", "1e+100"},
      {"-2.5e100", "-2.5e+100"},
      {"9007199254740993", "9007199254740993"},
      {"9007199254740992", "9007199254740992"},
      {"18446744073709551617", "18446744073709551617"},
      {"123456789012345678901234567890", "123456789012345678901234567890"},
      {"1.23456789012345678901234567890e29", "123456789012345678901234567890"},
      {"12345678901234567890123456789e1", "123456789012345678901234567890"},
      {"0.00000000000000000000000000000123456789012345678901234567890e59", "123456789012345678901234567890"},
      {"1e1000000000", "1e+1000000000"},
      {"1e-999999999", "1e-999999999"},
      {"0.1e-999999998", "1e-999999999"},
      {"1.1e999999999", "1.1e+999999999"},
      {"1.7976931348623157e308", "1.7976931348623157e+308"},
      {"5e-324", "5e-324"},
      {"1e400", "1e+400"},
  };
  for (const auto& [in, out] : numbers) {
    SCOPED_TRACE("number: " + in);
    EXPECT_EQ(canon(wrap(in)), wrap(out));
    EXPECT_EQ(canon(wrap(out)), wrap(out));  // fixed point
  }
  EXPECT_NE(canon(wrap("9007199254740993")), canon(wrap("9007199254740992")));
  EXPECT_NE(canon(wrap("0.1")), canon(wrap("0.10000000000000001")));
  EXPECT_NE(canon(wrap("1e400")), canon(wrap("1e401")));
  EXPECT_NE(canon(wrap("1")), canon(wrap("-1")));
  EXPECT_EQ(canon(wrap("123456789012345678901234567890")), canon(wrap("1.23456789012345678901234567890e29")));
}

TEST(CanonicalJsonTest, HugeNumbersAreExactOrOutOfRange) {
  // A 100000-digit integer keeps every digit.
  std::string digits(100000, '7');
  EXPECT_EQ(canon(wrap(digits)), wrap(digits));
  EXPECT_EQ(canon(wrap(digits + "e0")), wrap(digits));
  EXPECT_EQ(canon(wrap("0." + digits + "e100000")), wrap(digits));
  // Exponents beyond 10^9 are rejected, without overflow however long.
  for (const char* n : {"1e1000000001", "1e-1000000001", "1e999999999999", "-1e-99999999999999999999999999999",
                              "1e9223372036854775807", "1e-9223372036854775808", "1e18446744073709551616"}) {
    SCOPED_TRACE(n);
    const CanonicalJson r = rejected(wrap(n));
    EXPECT_EQ(r.error, "number out of range at offset 5");
  }
  // The range is a property of the value, not of the spelling.
  EXPECT_EQ(canon(wrap("10e999999999")), wrap("1e+1000000000"));
  EXPECT_FALSE(canonicalizeJson(wrap("100e999999999")).ok);
  EXPECT_EQ(canon(wrap("0.01e-999999997")), wrap("1e-999999999"));
  EXPECT_FALSE(canonicalizeJson(wrap("0.01e-999999999")).ok);
}

// --- Errors ---------------------------------------------------------------------

TEST(CanonicalJsonTest, ErrorMessagesAndOffsets) {
  struct ErrorCase {
    std::string input;
    std::string error;
  };
  const std::vector<ErrorCase> cases = {
      {"[]", "expected a JSON object at offset 0"},
      {"[1,2]", "expected a JSON object at offset 0"},
      {"  \"x\"", "expected a JSON object at offset 2"},
      {"1", "expected a JSON object at offset 0"},
      {"null", "expected a JSON object at offset 0"},
      {"x", "expected a JSON object at offset 0"},
      {"{", "unexpected end of input at offset 1"},
      {"{\"a\"", "unexpected end of input at offset 4"},
      {"{\"a\":", "unexpected end of input at offset 5"},
      {"{\"a\":1", "unexpected end of input at offset 6"},
      {"{\"a\":1,", "unexpected end of input at offset 7"},
      {"{\"a\":[1,2", "unexpected end of input at offset 9"},
      {"{\"a\":1}x", "unexpected character 'x' at offset 7"},
      {"{\"a\":1} {}", "unexpected character '{' at offset 8"},
      {"{\"a\":1}\x00"s, "unexpected byte 0x00 at offset 7"},
      {"{\"a\":1,}", "unexpected character '}' at offset 7"},
      {"{\"a\":[1,]}", "unexpected character ']' at offset 8"},
      {"{\"a\":[,1]}", "unexpected character ',' at offset 6"},
      {"{,}", "unexpected character ',' at offset 1"},
      {"{\"a\" 1}", "unexpected character '1' at offset 5"},
      {"{\"a\"::1}", "unexpected character ':' at offset 5"},
      {"{\"a\":1 \"b\":2}", "unexpected character '\"' at offset 7"},
      {"{a:1}", "unexpected character 'a' at offset 1"},
      {"{'a':1}", "unexpected character ''' at offset 1"},
      {"{1:1}", "unexpected character '1' at offset 1"},
      {"{\"a\":1]", "unexpected character ']' at offset 6"},
      {"{\"a\":[1}", "unexpected character '}' at offset 7"},
      {"{\"a\":x}", "unexpected character 'x' at offset 5"},
      {"{\"a\":tru}", "unexpected character '}' at offset 8"},
      {"{\"a\":tru", "unexpected end of input at offset 8"},
      {"{\"a\":True}", "unexpected character 'T' at offset 5"},
      {"{\"a\":nul}", "unexpected character '}' at offset 8"},
      {"{\"a\":nulll}", "unexpected character 'l' at offset 9"},
      {"{\"a\":falsy}", "unexpected character 'y' at offset 9"},
      {"{\"a\":NaN}", "unexpected character 'N' at offset 5"},
      {"{\"a\":Infinity}", "unexpected character 'I' at offset 5"},
      {"{\"a\":-Infinity}", "unexpected character 'I' at offset 6"},
      {"{\"a\":undefined}", "unexpected character 'u' at offset 5"},
      // Numbers.
      {"{\"a\":01}", "unexpected character '1' at offset 6"},
      {"{\"a\":-01}", "unexpected character '1' at offset 7"},
      {"{\"a\":00}", "unexpected character '0' at offset 6"},
      {"{\"a\":+1}", "unexpected character '+' at offset 5"},
      {"{\"a\":.5}", "unexpected character '.' at offset 5"},
      {"{\"a\":1.}", "unexpected character '}' at offset 7"},
      {"{\"a\":1.e5}", "unexpected character 'e' at offset 7"},
      {"{\"a\":1e}", "unexpected character '}' at offset 7"},
      {"{\"a\":1e+}", "unexpected character '}' at offset 8"},
      {"{\"a\":1e-}", "unexpected character '}' at offset 8"},
      {"{\"a\":1e+-1}", "unexpected character '-' at offset 8"},
      {"{\"a\":-}", "unexpected character '}' at offset 6"},
      {"{\"a\":--1}", "unexpected character '-' at offset 6"},
      {"{\"a\":-", "unexpected end of input at offset 6"},
      {"{\"a\":1.5.2}", "unexpected character '.' at offset 8"},
      {"{\"a\":0x10}", "unexpected character 'x' at offset 6"},
      {"{\"a\":1_000}", "unexpected character '_' at offset 6"},
      {"{\"a\":1 2}", "unexpected character '2' at offset 7"},
      // Comments are not JSON.
      {"{/*c*/}", "unexpected character '/' at offset 1"},
      {"{\"a\":1}//c", "unexpected character '/' at offset 7"},
      {"{\"a\":1 # c\n}", "unexpected character '#' at offset 7"},
      // Whitespace beyond RFC 8259's four characters.
      {"{\"a\":\f1}", "unexpected byte 0x0c at offset 5"},
      {"{\"a\":\v1}", "unexpected byte 0x0b at offset 5"},
      {"\xc2\xa0{}", "expected a JSON object at offset 0"},
      {"{}\xc2\xa0", "unexpected byte 0xc2 at offset 2"},
      {"\xef\xbb\xbf{}", "expected a JSON object at offset 0"},  // a BOM is not allowed (RFC 8259 §8.1)
      // Strings.
      {"{\"a", "unterminated string at offset 1"},
      {"{\"a\":\"abc", "unterminated string at offset 5"},
      {"{\"a\":\"abc\\", "unterminated string at offset 5"},
      {"{\"a\":\"abc\\\"}", "unterminated string at offset 5"},
      {"{\"a\":\"\\u12", "unterminated string at offset 5"},
      {"{\"a\":\"\\u12\"}", "invalid character '\"' in \\u escape at offset 10"},
      {"{\"a\":\"\\u12g4\"}", "invalid character 'g' in \\u escape at offset 10"},
      {"{\"a\":\"\\uXXXX\"}", "invalid character 'X' in \\u escape at offset 8"},
      {"{\"a\":\"\\U0041\"}", "invalid escape character 'U' at offset 7"},
      {"{\"a\":\"\\x41\"}", "invalid escape character 'x' at offset 7"},
      {"{\"a\":\"\\a\"}", "invalid escape character 'a' at offset 7"},
      {"{\"a\":\"\\'\"}", "invalid escape character ''' at offset 7"},
      {"{\"a\":\"\\0\"}", "invalid escape character '0' at offset 7"},
      {"{\"a\":\"\\\n\"}", "invalid escape byte 0x0a at offset 7"},
      {"{\"a\":\"\\\xc3\xa9\"}", "invalid escape byte 0xc3 at offset 7"},
      {"{\"a\":\"\\ud800\\u12\"}", "invalid character '\"' in \\u escape at offset 16"},
      {"{\"a\":\"\\ud800\\x\"}", "invalid escape character 'x' at offset 13"},
      {"{\"a\":\"a\nb\"}", "unescaped control byte 0x0a in string at offset 7"},
      {"{\"a\":\"\t\"}", "unescaped control byte 0x09 in string at offset 6"},
      {"{\"a\":\"\x00\"}"s, "unescaped control byte 0x00 in string at offset 6"},
      {"{\"a\":\"\x1f\"}", "unescaped control byte 0x1f in string at offset 6"},
      {"{\"a\nb\":1}", "unescaped control byte 0x0a in string at offset 3"},
      {"{\"a\":'x'}", "unexpected character ''' at offset 5"},
  };
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE("input: " + c.input);
    const CanonicalJson r = rejected(c.input);
    EXPECT_EQ(r.error, c.error);
  }
}

TEST(CanonicalJsonTest, ErrorsEchoAtMostOneCharacter) {
  const std::string secret = "sk-secret-value-that-must-not-be-logged";
  for (const std::string& body : {"{\"" + secret + "\" " + secret + "}", "{\"a\":" + secret + "}", secret,
                                 "{\"a\":\"" + secret + "\\q" + secret + "\"}", "{\"" + secret}) {
    const CanonicalJson r = rejected(body);
    EXPECT_EQ(r.error.find("secret"), std::string::npos) << r.error;
    EXPECT_LT(r.error.size(), 80u) << r.error;
  }
}

TEST(CanonicalJsonTest, InvalidUtf8IsRejected) {
  struct Utf8Case {
    std::string bytes;  // placed at offset 6 inside {"a":"..."}
    size_t offset;      // expected error offset
  };
  const std::vector<Utf8Case> cases = {
      {"\x80", 6},                  // lone continuation byte
      {"\xbf", 6},                  //
      {"\xc0\x80", 6},              // overlong NUL
      {"\xc0\xaf", 6},              // overlong '/'
      {"\xc1\xbf", 6},              // overlong
      {"\xe0\x80\xaf", 6},          // overlong 3-byte
      {"\xe0\x9f\xbf", 6},          // overlong 3-byte (U+07FF)
      {"\xf0\x80\x80\xaf", 6},      // overlong 4-byte
      {"\xf0\x8f\xbf\xbf", 6},      // overlong 4-byte (U+FFFF)
      {"\xed\xa0\x80", 6},          // U+D800 encoded
      {"\xed\xbf\xbf", 6},          // U+DFFF encoded
      {"\xed\xa0\xbd\xed\xb8\x80", 6},  // CESU-8 surrogate pair
      {"\xf4\x90\x80\x80", 6},      // U+110000
      {"\xf5\x80\x80\x80", 6},      // beyond U+10FFFF
      {"\xf8\x88\x80\x80\x80", 6},  // 5-byte form
      {"\xfc\x84\x80\x80\x80\x80", 6},
      {"\xfe", 6},
      {"\xff", 6},
      {"\xc3", 6},                  // truncated by the closing quote
      {"\xe2\x82", 6},              // truncated 3-byte
      {"\xf0\x9f\x98", 6},          // truncated 4-byte
      {"\xc3\xc3\xa9", 6},          // lead byte followed by lead byte
      {"\xe2\x28\xa1", 6},
      {"ok\xe2\x82\x28", 8},
      {"ok \xc3\xa9 \x80", 12},
  };
  for (const Utf8Case& c : cases) {
    const std::string body = "{\"a\":\"" + c.bytes + "\"}";
    SCOPED_TRACE(testing::PrintToString(body));
    const CanonicalJson r = rejected(body);
    EXPECT_EQ(r.error, "invalid UTF-8 at offset " + std::to_string(c.offset));
  }
  // In a key too.
  EXPECT_EQ(rejected("{\"k\xff\":1}").error, "invalid UTF-8 at offset 3");
  // Input that ends inside a sequence is an unterminated string.
  EXPECT_EQ(rejected("{\"a\":\"\xf0\x9f").error, "unterminated string at offset 5");
  // Outside strings a non-ASCII byte is simply unexpected.
  EXPECT_EQ(rejected("{\"a\":\xc3\xa9}").error, "unexpected byte 0xc3 at offset 5");
}

// --- Depth ------------------------------------------------------------------------

std::string nested(size_t depth) {  // depth containers in all, the outermost an object
  std::string s = "{\"a\":";
  s.append(depth - 1, '[');
  s += "1";
  s.append(depth - 1, ']');
  s += "}";
  return s;
}

TEST(CanonicalJsonTest, DepthLimit) {
  EXPECT_EQ(canon(nested(1)), nested(1));
  EXPECT_EQ(canon(nested(256)), nested(256));
  const CanonicalJson r = rejected(nested(257));
  EXPECT_EQ(r.error, "nesting deeper than 256 at offset 260");  // the 257th opening bracket
  EXPECT_EQ(r.error_offset, 260u);

  // Objects count too.
  std::string objects;
  for (int i = 0; i < 256; ++i) objects += "{\"k\":";
  objects += "0";
  objects.append(256, '}');
  EXPECT_EQ(canon(objects), objects);
  std::string deeper;
  for (int i = 0; i < 257; ++i) deeper += "{\"k\":";
  deeper += "0";
  deeper.append(257, '}');
  EXPECT_EQ(rejected(deeper).error, "nesting deeper than 256 at offset 1280");

  // A custom limit.
  EXPECT_TRUE(canonicalizeJson(nested(3), 3).ok);
  EXPECT_EQ(rejected(nested(4), 3).error, "nesting deeper than 3 at offset 7");
  EXPECT_EQ(rejected("{}", 0).error, "nesting deeper than 0 at offset 0");
  // A large limit costs no native stack: the parser does not recurse.
  EXPECT_EQ(canonicalizeJson(nested(100000), 1000000).canonical, nested(100000));
}

TEST(CanonicalJsonTest, MillionOpenBracketsFailFast) {
  const auto start = std::chrono::steady_clock::now();
  std::string body = "{\"a\":" + std::string(1000000, '[');
  EXPECT_EQ(rejected(body).error, "nesting deeper than 256 at offset 260");
  body = std::string(1000000, '[');
  EXPECT_EQ(rejected(body).error, "expected a JSON object at offset 0");
  body.clear();
  for (int i = 0; i < 200000; ++i) body += "{\"a\":";
  EXPECT_FALSE(canonicalizeJson(body).ok);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, std::chrono::seconds(2));
}

// --- Larger inputs -------------------------------------------------------------------

TEST(CanonicalJsonTest, ManyMembersSortedAndDeduplicated) {
  // 20000 keys in reverse order, each twice; the second occurrence wins.
  std::string body = "{";
  for (int i = 19999; i >= 0; --i) {
    char key[16];
    std::snprintf(key, sizeof key, "k%05d", i);
    body += "\"" + std::string(key) + "\":\"old\",";
  }
  for (int i = 19999; i >= 0; --i) {
    char key[16];
    std::snprintf(key, sizeof key, "k%05d", i);
    body += "\"" + std::string(key) + "\":" + std::to_string(i) + (i == 0 ? "" : ",");
  }
  body += "}";
  std::string expected = "{";
  for (int i = 0; i < 20000; ++i) {
    char key[16];
    std::snprintf(key, sizeof key, "k%05d", i);
    expected += "\"" + std::string(key) + "\":" + std::to_string(i) + (i == 19999 ? "" : ",");
  }
  expected += "}";
  EXPECT_EQ(canon(body), expected);
}

TEST(CanonicalJsonTest, LongStrings) {
  std::string text;
  for (int i = 0; i < 100000; ++i) text += "dog \xf0\x9f\x90\x95 caf\xc3\xa9 ";
  EXPECT_EQ(canon("{\"s\":\"" + text + "\"}"), "{\"s\":\"" + text + "\"}");
  std::string escaped, plain;
  for (int i = 0; i < 50000; ++i) {
    escaped += "\\u0041\\n\\ud83d\\ude00";
    plain += "A\\n\xf0\x9f\x98\x80";
  }
  EXPECT_EQ(canon("{\"s\":\"" + escaped + "\"}"), "{\"s\":\"" + plain + "\"}");
}

TEST(CanonicalJsonTest, SpecialBytesAtEveryAlignment) {
  // The string scanner looks at eight bytes at a time; put each kind of
  // special byte at every position relative to that.
  const std::vector<std::pair<std::string, std::string>> specials = {
      {"\\\"", "\\\""}, {"\\n", "\\n"}, {"\\u0041", "A"}, {"\xc3\xa9", "\xc3\xa9"},
      {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"}, {"\x7f", "\x7f"}, {"\\\\", "\\\\"}, {"~", "~"},
  };
  for (size_t before = 0; before < 20; ++before) {
    for (const auto& [in, out] : specials) {
      const std::string pad(before, 'x');
      SCOPED_TRACE(testing::PrintToString(pad + in));
      EXPECT_EQ(canon("{\"" + pad + in + pad + "\":\"" + pad + in + "\"}"),
                "{\"" + pad + out + pad + "\":\"" + pad + out + "\"}");
    }
    const std::string pad(before, 'y');
    EXPECT_EQ(rejected("{\"a\":\"" + pad + "\x01" + pad + "\"}").error_offset, 6 + before);
    EXPECT_EQ(rejected("{\"a\":\"" + pad + "\xff" + pad + "\"}").error_offset, 6 + before);
    EXPECT_EQ(rejected("{\"a\":\"" + pad).error_offset, 5u);
  }
}

TEST(CanonicalJsonTest, OutputLongerThanInput) {
  // Numbers are the only thing that can grow; 1e20 is 4 bytes in, 21 out.
  std::string body = "{\"a\":[", expected = "{\"a\":[";
  for (int i = 0; i < 5000; ++i) {
    body += i ? ",1e20" : "1e20";
    expected += std::string(i ? "," : "") + "100000000000000000000";
  }
  body += "],\"b\":1e-6}";
  expected += "],\"b\":0.000001}";
  EXPECT_EQ(canon(body), expected);
  EXPECT_EQ(canon("{\"b\":1e20,\"a\":9e20}"), "{\"a\":900000000000000000000,\"b\":100000000000000000000}");
}

// --- Randomised equivalence ------------------------------------------------------------
//
// A model of JSON values with exactly known canonical form. Each document is
// spelled many ways (key order, whitespace, escapes, number spellings, earlier
// duplicates); every spelling must canonicalise to the model's canonical
// bytes, and changing one leaf must change them.

struct Value;
using Object = std::vector<std::pair<std::u32string, Value>>;
using Array = std::vector<Value>;
struct Number {
  bool negative = false;
  std::string digits;  // no leading or trailing zeros; empty for zero
  int64_t exp = 0;     // value = digits × 10^exp
};
struct Value {
  std::variant<std::nullptr_t, bool, Number, std::u32string, Array, Object> v;
};

// UTF-8, with lone surrogates as 3-byte generalized UTF-8 (their sort order).
std::string wtf8(const std::u32string& s) {
  std::string out;
  for (char32_t cp : s) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return out;
}

std::string hex4(unsigned v, bool upper) {
  char buf[8];
  std::snprintf(buf, sizeof buf, upper ? "%04X" : "%04x", v);
  return buf;
}

// The canonical form, written independently of the implementation.
std::string modelString(const std::u32string& s) {
  std::string out = "\"";
  for (char32_t cp : s) {
    switch (cp) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      default: break;
    }
    if (cp < 0x20 || (cp >= 0xD800 && cp <= 0xDFFF)) {
      out += "\\u" + hex4(cp, false);
    } else {
      out += wtf8(std::u32string(1, cp));
    }
  }
  return out + "\"";
}

std::string modelNumber(const Number& n) {
  if (n.digits.empty()) return "0";
  const int64_t len = static_cast<int64_t>(n.digits.size());
  const int64_t point = len + n.exp;
  std::string out = n.negative ? "-" : "";
  if (n.exp >= 0 && n.exp <= 20) {
    out += n.digits + std::string(n.exp, '0');
  } else if (n.exp < 0 && point > 0) {
    out += n.digits.substr(0, point) + "." + n.digits.substr(point);
  } else if (n.exp < 0 && point > -6) {
    out += "0." + std::string(-point, '0') + n.digits;
  } else {
    out += n.digits.substr(0, 1);
    if (len > 1) out += "." + n.digits.substr(1);
    out += point - 1 < 0 ? "e-" + std::to_string(1 - point) : "e+" + std::to_string(point - 1);
  }
  return out;
}

std::string modelScalar(const Value& v) {
  switch (v.v.index()) {
    case 0: return "null";
    case 1: return std::get<bool>(v.v) ? "true" : "false";
    case 2: return modelNumber(std::get<Number>(v.v));
    default: return modelString(std::get<std::u32string>(v.v));
  }
}

class Generator {
 public:
  explicit Generator(uint32_t seed) : rng_(seed) {}

  size_t pick(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }
  bool coin() { return pick(2) == 0; }

  char32_t codePoint() {
    static const char32_t kPool[] = {'a', 'b', 'z', 'A', ' ', '"', '\\', '/', '\n', '\t', '\b', '\f', '\r', 0x00, 0x01,
                                     0x1f, 0x7f, '~', '0', 0xe9, 0x4e2d, 0xffff, 0xfffd, 0x1f600, 0x10ffff, 0x10000};
    switch (pick(10)) {
      case 0: return static_cast<char32_t>(0x20 + pick(0x5f));
      case 1: return static_cast<char32_t>(0x80 + pick(0xD800 - 0x80));
      case 2: return static_cast<char32_t>(0xE000 + pick(0x110000 - 0xE000));
      case 3: return static_cast<char32_t>(0xD800 + pick(0x800));  // a lone surrogate (see string())
      default: return kPool[pick(sizeof kPool / sizeof kPool[0])];
    }
  }

  std::u32string string(size_t max_len) {
    std::u32string s;
    const size_t len = pick(max_len + 1);
    while (s.size() < len) {
      char32_t cp = codePoint();
      // A high surrogate followed by a low one would be a pair, not two lone ones.
      if (!s.empty() && s.back() >= 0xD800 && s.back() <= 0xDBFF && cp >= 0xDC00 && cp <= 0xDFFF) continue;
      s += cp;
    }
    return s;
  }

  Number number() {
    Number n;
    if (pick(8) == 0) return n;  // zero
    n.negative = coin();
    const size_t len = 1 + pick(pick(4) == 0 ? 40 : 6);
    for (size_t i = 0; i < len; ++i) n.digits += static_cast<char>('0' + pick(10));
    n.digits[0] = static_cast<char>('1' + pick(9));
    n.digits.back() = static_cast<char>('1' + pick(9));
    n.exp = static_cast<int64_t>(pick(pick(4) == 0 ? 2000 : 50)) - (pick(4) == 0 ? 1000 : 25);
    return n;
  }

  Value value(int depth) {
    const size_t kind = depth >= 4 ? pick(4) : pick(6);
    switch (kind) {
      case 0: return Value{nullptr};
      case 1: return Value{coin()};
      case 2: return Value{number()};
      case 3: return Value{string(8)};
      case 4: {
        Array a;
        const size_t n = pick(5);
        for (size_t i = 0; i < n; ++i) a.push_back(value(depth + 1));
        return Value{std::move(a)};
      }
      default: return Value{object(depth + 1)};
    }
  }

  Object object(int depth) {
    Object o;
    const size_t n = pick(7);
    while (o.size() < n) {
      std::u32string key = string(4);
      if (std::any_of(o.begin(), o.end(), [&](const auto& m) { return m.first == key; })) continue;
      o.emplace_back(std::move(key), value(depth));
    }
    return o;
  }

  std::mt19937& rng() { return rng_; }

 private:
  std::mt19937 rng_;
};

// Writes a value in one of its many equivalent spellings.
class Speller {
 public:
  explicit Speller(Generator& gen) : gen_(gen) {}

  std::string ws() {
    static const char* const kWs[] = {"", "", "", " ", "\n", "\t", "\r\n  ", "  "};
    return kWs[gen_.pick(8)];
  }

  std::string string(const std::u32string& s) {
    std::string out = "\"";
    for (size_t i = 0; i < s.size(); ++i) {
      const char32_t cp = s[i];
      const bool upper = gen_.coin();
      if (cp >= 0xD800 && cp <= 0xDFFF) {
        out += "\\u" + hex4(cp, upper);
        continue;
      }
      const char* short_form = nullptr;
      switch (cp) {
        case '"': short_form = "\\\""; break;
        case '\\': short_form = "\\\\"; break;
        case '/': short_form = gen_.coin() ? "\\/" : "/"; break;
        case '\b': short_form = "\\b"; break;
        case '\f': short_form = "\\f"; break;
        case '\n': short_form = "\\n"; break;
        case '\r': short_form = "\\r"; break;
        case '\t': short_form = "\\t"; break;
        default: break;
      }
      const bool must_escape = cp < 0x20 || cp == '"' || cp == '\\';
      if (gen_.pick(3) == 0 || (must_escape && short_form == nullptr)) {
        if (cp < 0x10000) {
          out += "\\u" + hex4(cp, upper);
        } else {
          const unsigned v = cp - 0x10000;
          out += "\\u" + hex4(0xD800 + (v >> 10), upper) + "\\u" + hex4(0xDC00 + (v & 0x3FF), gen_.coin());
        }
      } else if (short_form != nullptr) {
        out += short_form;
      } else {
        out += wtf8(std::u32string(1, cp));
      }
    }
    return out + "\"";
  }

  std::string number(const Number& n) {
    if (n.digits.empty()) {
      static const char* const kZeros[] = {"0", "-0", "0.0", "-0.000", "0e5", "0E-7", "-0.0e+12", "0.00e0"};
      return kZeros[gen_.pick(8)];
    }
    std::string out = n.negative ? "-" : "";
    // Written digits W = digits followed by z zeros: value = W × 10^(exp - z).
    const size_t z = gen_.pick(3);
    const std::string w = n.digits + std::string(z, '0');
    int64_t e = n.exp - static_cast<int64_t>(z);
    if (gen_.pick(4) == 0) {
      // 0.000W × 10^x
      const size_t y = gen_.pick(3);
      out += "0." + std::string(y, '0') + w;
      e += static_cast<int64_t>(y + w.size());
    } else {
      // W with a point after q digits.
      const size_t q = 1 + gen_.pick(w.size());
      out += w.substr(0, q);
      if (q < w.size()) out += "." + w.substr(q);
      e += static_cast<int64_t>(w.size() - q);
    }
    if (e != 0 || gen_.pick(4) == 0) {
      out += gen_.coin() ? "e" : "E";
      if (e < 0) {
        out += "-";
      } else if (gen_.coin()) {
        out += "+";
      }
      out += std::string(gen_.pick(3), '0') + std::to_string(e < 0 ? -e : e);
    }
    return out;
  }

  std::string value(const Value& v) {
    switch (v.v.index()) {
      case 0: return "null";
      case 1: return std::get<bool>(v.v) ? "true" : "false";
      case 2: return number(std::get<Number>(v.v));
      case 3: return string(std::get<std::u32string>(v.v));
      case 4: {
        const Array& a = std::get<Array>(v.v);
        std::string out = "[" + ws();
        for (size_t i = 0; i < a.size(); ++i) out += (i > 0 ? "," + ws() : "") + value(a[i]) + ws();
        return out + "]";
      }
      default: return object(std::get<Object>(v.v));
    }
  }

  std::string object(const Object& o) {
    std::vector<const std::pair<std::u32string, Value>*> order;
    for (const auto& m : o) order.push_back(&m);
    std::shuffle(order.begin(), order.end(), gen_.rng());
    std::vector<std::string> members;
    for (const auto* m : order) {
      // Sometimes an earlier duplicate that the real member overrides.
      if (gen_.pick(8) == 0) members.push_back(member(m->first, gen_.value(3)));
      members.push_back(member(m->first, m->second));
    }
    std::string out = "{" + ws();
    for (size_t i = 0; i < members.size(); ++i) out += (i > 0 ? "," + ws() : "") + members[i];
    return out + "}";
  }

 private:
  std::string member(const std::u32string& key, const Value& v) {
    return string(key) + ws() + ":" + ws() + value(v) + ws();
  }

  Generator& gen_;
};

std::string modelObject(const Object& o);

std::string modelValue(const Value& v) {
  if (v.v.index() == 5) return modelObject(std::get<Object>(v.v));
  if (v.v.index() == 4) {
    std::string out = "[";
    const Array& a = std::get<Array>(v.v);
    for (size_t i = 0; i < a.size(); ++i) out += (i > 0 ? "," : "") + modelValue(a[i]);
    return out + "]";
  }
  return modelScalar(v);
}

std::string modelObject(const Object& o) {
  std::vector<const std::pair<std::u32string, Value>*> members;
  for (const auto& m : o) members.push_back(&m);
  std::sort(members.begin(), members.end(), [](const auto* a, const auto* b) { return wtf8(a->first) < wtf8(b->first); });
  std::string out = "{";
  for (size_t i = 0; i < members.size(); ++i) {
    out += (i > 0 ? "," : "") + modelString(members[i]->first) + ":" + modelValue(members[i]->second);
  }
  return out + "}";
}

// Changes one leaf (or an empty container) of `o`, so that its canonical form differs.
void mutateOneLeaf(Object& o, Generator& gen) {
  std::vector<Value*> leaves;
  std::vector<Value*> stack;
  for (auto& m : o) stack.push_back(&m.second);
  while (!stack.empty()) {
    Value* v = stack.back();
    stack.pop_back();
    if (auto* a = std::get_if<Array>(&v->v); a != nullptr && !a->empty()) {
      for (auto& e : *a) stack.push_back(&e);
    } else if (auto* obj = std::get_if<Object>(&v->v); obj != nullptr && !obj->empty()) {
      for (auto& m : *obj) stack.push_back(&m.second);
    } else {
      leaves.push_back(v);
    }
  }
  if (leaves.empty()) {
    o.emplace_back(U"new", Value{nullptr});
    return;
  }
  Value* leaf = leaves[gen.pick(leaves.size())];
  switch (leaf->v.index()) {
    case 0: leaf->v = false; break;
    case 1: leaf->v = !std::get<bool>(leaf->v); break;
    case 2: {
      Number& n = std::get<Number>(leaf->v);
      if (n.digits.empty()) {
        n.digits = "1";
      } else if (gen.coin()) {
        n.exp += 1;
      } else {
        n.digits.back() = n.digits.back() == '9' ? '8' : static_cast<char>(n.digits.back() + 1);
      }
      break;
    }
    case 3: std::get<std::u32string>(leaf->v) += U'x'; break;
    case 4: std::get<Array>(leaf->v).push_back(Value{nullptr}); break;
    default: leaf->v = Array{}; break;  // {} → []
  }
}

TEST(CanonicalJsonTest, RandomisedSpellingsCanonicaliseIdentically) {
  Generator gen(20240611);
  Speller speller(gen);
  for (int doc = 0; doc < 400; ++doc) {
    Object o = gen.object(0);
    const std::string expected = modelObject(o);
    SCOPED_TRACE("document " + std::to_string(doc) + ", expected " + expected);
    for (int variant = 0; variant < 6; ++variant) {
      const std::string body = speller.ws() + speller.object(o) + speller.ws();
      SCOPED_TRACE("spelling: " + body);
      const CanonicalJson r = canonicalizeJson(body);
      ASSERT_TRUE(r.ok) << r.error;
      ASSERT_EQ(r.canonical, expected);
    }
    const CanonicalJson again = canonicalizeJson(expected);
    ASSERT_TRUE(again.ok) << again.error;
    EXPECT_EQ(again.canonical, expected);  // fixed point

    Object changed = o;
    mutateOneLeaf(changed, gen);
    const std::string changed_body = speller.object(changed);
    const CanonicalJson r = canonicalizeJson(changed_body);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.canonical, modelObject(changed));
    EXPECT_NE(r.canonical, expected) << "mutated: " << changed_body;
  }
}

// Truncating a valid document anywhere must give an error (never a crash or a
// different valid document), with the offset inside the input.
TEST(CanonicalJsonTest, EveryTruncationIsRejected) {
  Generator gen(7);
  Speller speller(gen);
  for (int doc = 0; doc < 50; ++doc) {
    Object o = gen.object(0);
    if (o.empty()) continue;
    const std::string body = speller.object(o);
    for (size_t len = 1; len < body.size(); ++len) {
      const std::string_view prefix(body.data(), len);
      const CanonicalJson r = canonicalizeJson(prefix);
      ASSERT_FALSE(r.ok) << prefix;
      ASSERT_LE(r.error_offset, len);
    }
  }
}

// An envelope's member is the canonical form of that member alone.
TEST(CanonicalJsonTest, MemberOfAnEnvelopeIsItsOwnCanonicalForm) {
  const std::string inner = R"({ "z" : [1.0, {"b":"x\"}","a":null}], "n": 18446744073709551617 , "e": 1e400 })";
  CanonicalJson whole = canonicalizeJson(R"({"workflow_id":"wf","body":)" + inner + R"(,"a":"}{,"})");
  ASSERT_TRUE(whole.ok) << whole.error;
  auto member = canonicalMember(whole.canonical, "body");
  ASSERT_TRUE(member.has_value()) << whole.canonical;
  EXPECT_EQ(*member, canonicalizeJson(inner).canonical);
  EXPECT_EQ(canonicalMember(whole.canonical, "a").value_or("?"), R"("}{,")");
  EXPECT_EQ(canonicalMember(whole.canonical, "workflow_id").value_or("?"), R"("wf")");
  EXPECT_FALSE(canonicalMember(whole.canonical, "missing").has_value());
  EXPECT_FALSE(canonicalMember(whole.canonical, "b").has_value());  // nested, not top level
  EXPECT_FALSE(canonicalMember("{}", "body").has_value());
  EXPECT_FALSE(canonicalMember("", "body").has_value());
  // Duplicates were resolved (last wins) before: one member remains.
  CanonicalJson dup = canonicalizeJson(R"({"body":{"x":1},"body":{"x":2}})");
  EXPECT_EQ(canonicalMember(dup.canonical, "body").value_or("?"), R"({"x":2})");
}

}  // namespace
}  // namespace wfp

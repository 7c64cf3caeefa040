// Tests of the key rules (proxy/key_rules.h; docs/http.md, "Cache keys that
// ignore noise"): key_ignore paths, the normalisers, that the shaped text is
// canonical again, and how the rules enter the input digest.
#include "proxy/key_rules.h"

#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/canonical_json.h"
#include "proxy/hash.h"

namespace wfp {
namespace {

std::string canon(std::string_view body) {
  CanonicalJson r = canonicalizeJson(body);
  EXPECT_TRUE(r.ok) << body << ": " << r.error;
  return r.canonical;
}

KeyRules rules(std::vector<std::vector<std::string>> ignore, unsigned normalize = 0) {
  KeyRules r;
  r.ignore = std::move(ignore);
  r.normalize = normalize;
  return r;
}

KeyRules normalizing(unsigned normalize) { return rules({}, normalize); }

constexpr unsigned kAll = KeyRules::Trim | KeyRules::CollapseWhitespace | KeyRules::Lowercase;

// The shaped text of `body`, checked to be canonical: canonicalizeJson gives
// it back unchanged.
std::string shape(std::string_view body, const KeyRules& r) {
  const std::string shaped = shapeKeyText(canon(body), r);
  CanonicalJson again = canonicalizeJson(shaped);
  EXPECT_TRUE(again.ok) << shaped << ": " << again.error;
  EXPECT_EQ(again.canonical, shaped) << "not canonical; from " << body;
  return shaped;
}

// --- no rules --------------------------------------------------------------

TEST(KeyRulesTest, NoRulesChangeNothing) {
  const std::string c = canon(R"({"q":" Mixed  Case ","request_id":"1","n":1.50})");
  EXPECT_EQ(shapeKeyText(c, KeyRules{}), c);
  // The digest is the canonical body's, as before key rules existed: entries
  // stored by an earlier version stay reachable.
  EXPECT_EQ(inputDigest(c, nullptr), sha256Hex(c));
  KeyRules none;
  EXPECT_EQ(inputDigest(c, &none), sha256Hex(c));
}

// --- key_ignore ------------------------------------------------------------

TEST(KeyRulesTest, IgnoreRemovesATopLevelMemberWhereverItStands) {
  const KeyRules r = rules({{"request_id"}});
  EXPECT_EQ(shape(R"({"q":"x","request_id":"1"})", r), R"({"q":"x"})");
  EXPECT_EQ(shape(R"({"request_id":"1","z":2})", r), R"({"z":2})");          // first
  EXPECT_EQ(shape(R"({"a":1,"request_id":[1,{"b":2}],"z":2})", r), R"({"a":1,"z":2})");  // middle, any value
  EXPECT_EQ(shape(R"({"request_id":{"deep":{"er":1}}})", r), "{}");            // the only one
  EXPECT_EQ(shape("{}", r), "{}");
  // Two inputs that differ only there are one input.
  EXPECT_EQ(shape(R"({"q":"x","request_id":"1"})", r), shape(R"({"request_id":"2","q":"x"})", r));
  // The name must match exactly: no prefix, no case folding.
  EXPECT_EQ(shape(R"({"request_id2":1,"Request_id":2,"request_i":3})", r),
            R"({"Request_id":2,"request_i":3,"request_id2":1})");
}

TEST(KeyRulesTest, IgnoreFollowsDottedPathsThroughObjects) {
  EXPECT_EQ(shape(R"({"meta":{"trace_id":"t","user":"u"},"q":1})", rules({{"meta", "trace_id"}})),
            R"({"meta":{"user":"u"},"q":1})");
  EXPECT_EQ(shape(R"({"a":{"b":{"c":1,"d":2},"c":3},"c":4})", rules({{"a", "b", "c"}})),
            R"({"a":{"b":{"d":2},"c":3},"c":4})");
  // A path names one place: the same name elsewhere stays.
  EXPECT_EQ(shape(R"({"b":1,"a":{"b":2,"a":{"b":3}}})", rules({{"a", "b"}})), R"({"a":{"a":{"b":3}},"b":1})");
  EXPECT_EQ(shape(R"({"b":1,"a":{"b":2}})", rules({{"b"}})), R"({"a":{"b":2}})");
  // Removing the last member of an object leaves it empty, not absent.
  EXPECT_EQ(shape(R"({"meta":{"trace_id":"t"}})", rules({{"meta", "trace_id"}})), R"({"meta":{}})");
  // Several paths at once, overlapping and repeated.
  EXPECT_EQ(shape(R"({"a":{"x":1,"y":2,"z":3},"b":4,"c":5})",
                  rules({{"a", "x"}, {"c"}, {"a", "z"}, {"c"}, {"a", "x"}})),
            R"({"a":{"y":2},"b":4})");
  EXPECT_EQ(shape(R"({"a":{"b":1},"c":2})", rules({{"a", "b"}, {"a"}})), R"({"c":2})");
  // A path stopped by an array does not disturb the paths after it, with the
  // arrays copied whole or walked (for the normalisers).
  for (unsigned normalize : {0u, unsigned{KeyRules::Trim}}) {
    EXPECT_EQ(shape(R"({"a":[{"b":1},["x",{"b":2}]],"c":{"d":1,"e":2},"f":[{"d":3}]})",
                    rules({{"a", "b"}, {"c", "d"}, {"f", "d"}}, normalize)),
              R"({"a":[{"b":1},["x",{"b":2}]],"c":{"e":2},"f":[{"d":3}]})");
  }
}

TEST(KeyRulesTest, IgnoreDoesNothingThroughMissingMembersAndNonObjects) {
  const KeyRules r = rules({{"a", "b"}, {"x", "y", "z"}});
  for (const char* body : {
           R"({"q":1})",                      // a missing
           R"({"a":{"c":1}})",                // b missing
           R"({"a":[{"b":1},{"b":2}]})",      // paths do not descend into arrays
           R"({"a":"b"})",                    // a string
           R"({"a":1})",                      // a number
           R"({"a":null})",                   // null
           R"({"a":true})",                   // a literal
           R"({"a":{}})",                     // empty object
           R"({"x":{"y":[{"z":1}]}})",        // an array in the middle of the path
           R"({"x":{"y":"z"}})",
       }) {
    EXPECT_EQ(shape(body, r), canon(body)) << body;
  }
}

TEST(KeyRulesTest, IgnoreMatchesNamesAsDecodedText) {
  // The configuration's names are text; the body may escape them.
  EXPECT_EQ(shape(R"({"caf\u00e9":1,"k":2})", rules({{"café"}})), R"({"k":2})");
  EXPECT_EQ(shape(R"({"we\"ird\\name":1,"k":2})", rules({{"we\"ird\\name"}})), R"({"k":2})");
  EXPECT_EQ(shape(R"({"a\/b":{"c":1},"k":2})", rules({{"a/b", "c"}})), R"({"a/b":{},"k":2})");
  EXPECT_EQ(shape(R"({"\ud83d\ude00":1,"k":2})", rules({{"😀"}})), R"({"k":2})");
}

// --- key_normalize ---------------------------------------------------------

TEST(KeyRulesTest, TrimDropsLeadingAndTrailingWhitespaceOnly) {
  const KeyRules r = normalizing(KeyRules::Trim);
  EXPECT_EQ(shape(R"({"s":"  a  b  "})", r), R"({"s":"a  b"})");
  EXPECT_EQ(shape(R"({"s":"\t\n\r\f\u000b x\u000b\f\r\n\t "})", r), R"({"s":"x"})");
  EXPECT_EQ(shape(R"({"s":"   "})", r), R"({"s":""})");
  EXPECT_EQ(shape(R"({"s":""})", r), R"({"s":""})");
  // Unicode spaces: NO-BREAK SPACE, IDEOGRAPHIC SPACE, LINE SEPARATOR, NEL.
  EXPECT_EQ(shape("{\"s\":\"\u00a0\u3000x\u2028\u0085\"}", r), R"({"s":"x"})");
  // Not whitespace: ZERO WIDTH SPACE, BYTE ORDER MARK; and case is kept.
  EXPECT_EQ(shape("{\"s\":\"\u200bX\ufeff\"}", r), "{\"s\":\"\u200bX\ufeff\"}");
}

TEST(KeyRulesTest, CollapseWhitespaceMakesEachRunOneSpaceAndDoesNotTrim) {
  const KeyRules r = normalizing(KeyRules::CollapseWhitespace);
  EXPECT_EQ(shape(R"({"s":"a  \t\n b\u000bc"})", r), R"({"s":"a b c"})");
  EXPECT_EQ(shape(R"({"s":"  a  "})", r), R"({"s":" a "})");
  EXPECT_EQ(shape("{\"s\":\"a\u00a0\u2003 b\"}", r), R"({"s":"a b"})");
  EXPECT_EQ(shape(R"({"s":"\n"})", r), R"({"s":" "})");
  // With trim too: a run at either end goes, the others become one space.
  const KeyRules both = normalizing(KeyRules::Trim | KeyRules::CollapseWhitespace);
  EXPECT_EQ(shape(R"({"s":" \t a \n\n b \r"})", both), R"({"s":"a b"})");
  EXPECT_EQ(shape(R"({"s":" \t "})", both), R"({"s":""})");
}

TEST(KeyRulesTest, LowercaseIsUnicodeSimpleLowerCase) {
  const KeyRules r = normalizing(KeyRules::Lowercase);
  EXPECT_EQ(shape(R"({"s":"HeLLo, World 42!"})", r), R"({"s":"hello, world 42!"})");
  EXPECT_EQ(shape(R"({"s":"\u00c9COLE"})", r), "{\"s\":\"\u00e9cole\"}");  // É
  EXPECT_EQ(shape("{\"s\":\"ΣΑΣ Привет\"}", r), "{\"s\":\"σασ привет\"}");  // simple: no final sigma
  EXPECT_EQ(shape("{\"s\":\"İ\u1e9e\uff21\"}", r), "{\"s\":\"iß\uff41\"}");     // İ→i, ẞ→ß, fullwidth Ａ→ａ
  EXPECT_EQ(shape("{\"s\":\"\U00010400\"}", r), "{\"s\":\"\U00010428\"}");      // Deseret, 4 bytes
  EXPECT_EQ(shape("{\"s\":\"ß日本\"}", r), "{\"s\":\"ß日本\"}");               // no lower case: unchanged
  // Whitespace is kept as it was (only trim and collapse touch it).
  EXPECT_EQ(shape(R"({"s":" A\tB "})", r), R"({"s":" a\tb "})");
}

TEST(KeyRulesTest, LowercaseHelpers) {
  EXPECT_EQ(keyLowercase('A'), uint32_t{'a'});
  EXPECT_EQ(keyLowercase('z'), uint32_t{'z'});
  EXPECT_EQ(keyLowercase('@'), uint32_t{'@'});
  EXPECT_EQ(keyLowercase(0x212A), 0x6Bu);     // KELVIN SIGN → k
  EXPECT_EQ(keyLowercase(0xD800), 0xD800u);   // surrogates stay
  EXPECT_EQ(keyLowercase(0x10FFFF), 0x10FFFFu);
  for (uint32_t cp : {0x09u, 0x0Au, 0x0Bu, 0x0Cu, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2000u, 0x200Au, 0x2028u,
                      0x2029u, 0x202Fu, 0x205Fu, 0x3000u}) {
    EXPECT_TRUE(isKeyWhitespace(cp)) << std::hex << cp;
  }
  for (uint32_t cp : {0x00u, 0x08u, 0x0Eu, 0x1Fu, 0x21u, 0x84u, 0x86u, 0x180Eu, 0x200Bu, 0x200Cu, 0x2060u, 0xFEFFu,
                      0xD800u}) {
    EXPECT_FALSE(isKeyWhitespace(cp)) << std::hex << cp;
  }
}

TEST(KeyRulesTest, EscapesAndLoneSurrogatesKeepTheCanonicalForm) {
  const KeyRules r = normalizing(kAll);
  // Escaped characters are read as the characters they are and written back
  // by the one escaping rule.
  EXPECT_EQ(shape(R"({"s":"\"Q\\\u0001\u0041\/"})", r), R"({"s":"\"q\\\u0001a/"})");
  // Lone surrogates are neither whitespace nor cased: left as they are.
  EXPECT_EQ(shape(R"({"s":" \uD800X "})", r), R"({"s":"\ud800x"})");
  EXPECT_EQ(shape(R"({"s":"\udc00"})", r), R"({"s":"\udc00"})");
  // Collapsing never makes a high and a low surrogate neighbours (which
  // canonicalizeJson would join into one character): one space stays.
  EXPECT_EQ(shape(R"({"s":"\ud83d \t \ude00"})", r), R"({"s":"\ud83d \ude00"})");
  // A real pair is one character, unchanged.
  EXPECT_EQ(shape(R"({"s":" \ud83d\ude00 "})", r), "{\"s\":\"\U0001F600\"}");
}

TEST(KeyRulesTest, NormalisersReachEveryStringValueButNoName) {
  const KeyRules r = normalizing(kAll);
  EXPECT_EQ(shape(R"({" Key  A ":" V  A ","list":[["  X "],{"In ner":" Y"},"Z",[]],"o":{"p":{"Q":" R "}}})", r),
            R"({" Key  A ":"v a","list":[["x"],{"In ner":"y"},"z",[]],"o":{"p":{"Q":"r"}}})");
}

TEST(KeyRulesTest, NumbersAndLiteralsAreKeptByteForByte) {
  const std::string body =
      R"({"big":18446744073709551617,"e":1e400,"f":-1.5e-7,"g":100000000000000000000,"t":true,"n":null,)"
      R"("a":[0,-0.5,1e-400,false],"s":" A "})";
  const std::string c = canon(body);
  const std::string shaped = shape(body, rules({{"missing"}, {"a", "b"}}, kAll));
  EXPECT_EQ(shaped,
            R"({"a":[0,-0.5,1e-400,false],"big":18446744073709551617,"e":1e+400,"f":-1.5e-7,)"
            R"("g":100000000000000000000,"n":null,"s":"a","t":true})");
  // Everything but the string is as the canonical text had it.
  EXPECT_EQ(shaped.substr(0, shaped.find(R"("s":)")), c.substr(0, c.find(R"("s":)")));
}

TEST(KeyRulesTest, IgnoreAndNormaliseTogether) {
  const KeyRules r = rules({{"request_id"}, {"meta", "sent_at"}}, kAll);
  const std::string a = shape(R"({"q":"What is  2+2?","request_id":"r-1","meta":{"sent_at":1,"lang":"EN"}})", r);
  const std::string b = shape(R"({"meta":{"lang":" en ","sent_at":2},"request_id":"r-2","q":" what IS 2+2? "})", r);
  EXPECT_EQ(a, R"({"meta":{"lang":"en"},"q":"what is 2+2?"})");
  EXPECT_EQ(a, b);
}

// Deep nesting costs no native stack: the walk keeps its own, as deep as the
// input (which canonicalizeJson bounded).
TEST(KeyRulesTest, DeepInputIsWalkedWithoutRecursion) {
  std::string body;
  for (size_t i = 0; i + 1 < kDefaultMaxJsonDepth; ++i) body += R"({"a":)";
  body += R"({"a":" X ","b":1})";
  for (size_t i = 0; i + 1 < kDefaultMaxJsonDepth; ++i) body += "}";
  std::vector<std::string> path(kDefaultMaxJsonDepth - 1, "a");
  path.push_back("b");
  const std::string shaped = shape(body, rules({path}, kAll));
  std::string expected;
  for (size_t i = 0; i + 1 < kDefaultMaxJsonDepth; ++i) expected += R"({"a":)";
  expected += R"({"a":"x"})";
  for (size_t i = 0; i + 1 < kDefaultMaxJsonDepth; ++i) expected += "}";
  EXPECT_EQ(shaped, expected);

  std::string arrays(kDefaultMaxJsonDepth - 1, '[');
  arrays = R"({"a":)" + arrays + R"(" Q ")" + std::string(kDefaultMaxJsonDepth - 1, ']') + "}";
  EXPECT_EQ(shape(arrays, normalizing(kAll)),
            R"({"a":)" + std::string(kDefaultMaxJsonDepth - 1, '[') + R"("q")" +
                std::string(kDefaultMaxJsonDepth - 1, ']') + "}");
}

// Random documents, every rule at once: the shaped text is always canonical
// and shaping it again changes nothing.
TEST(KeyRulesTest, ShapedTextIsCanonicalAndAFixedPoint) {
  std::mt19937 rng(20261202);
  const std::vector<std::string> pieces = {" ", "\\t", "\\n", "\\u000b", "\u00a0", "\u3000", "A", "b", "É", "Σ",
                                           "\\\"", "\\\\", "\\u0001", "\\ud800", "\\udfff", "😀", "\u200b", "ẞ", "x"};
  const std::vector<std::string> names = {"a", "b", "request_id", "meta", "A", " a"};
  std::uniform_int_distribution<int> pick(0, 99);
  auto str = [&] {
    std::string s = "\"";
    for (int n = pick(rng) % 8; n > 0; --n) s += pieces[pick(rng) % pieces.size()];
    return s + "\"";
  };
  std::function<std::string(int)> value = [&](int depth) -> std::string {
    const int k = depth > 4 ? pick(rng) % 3 : pick(rng) % 5;
    if (k == 0) return str();
    if (k == 1) return std::to_string(pick(rng) - 50) + (pick(rng) % 2 ? "e3" : ".50");
    if (k == 2) return pick(rng) % 2 ? "null" : "true";
    std::string out = k == 3 ? "{" : "[";
    for (int n = pick(rng) % 4; n > 0; --n) {
      if (out.size() > 1) out += ",";
      if (k == 3) out += "\"" + names[pick(rng) % names.size()] + "\":";
      out += value(depth + 1);
    }
    return out + (k == 3 ? "}" : "]");
  };
  const KeyRules r = rules({{"request_id"}, {"meta", "a"}, {"a", "b", "a"}, {"A"}}, kAll);
  for (int i = 0; i < 2000; ++i) {
    std::string body = "{";
    for (int n = pick(rng) % 5; n > 0; --n) {
      if (body.size() > 1) body += ",";
      body += "\"" + names[pick(rng) % names.size()] + "\":" + value(0);
    }
    body += "}";
    const std::string shaped = shape(body, r);  // checks it is canonical
    EXPECT_EQ(shapeKeyText(shaped, r), shaped) << body;
    // Only one normaliser at a time: canonical too.
    for (unsigned n : {1u, 2u, 4u}) shape(body, rules({{"a"}}, n));
  }
}

// --- the digest ------------------------------------------------------------

TEST(KeyRulesTest, FingerprintNamesTheRulesWhateverTheirOrder) {
  const KeyRules a = rules({{"request_id"}, {"meta", "trace_id"}}, KeyRules::Trim | KeyRules::Lowercase);
  const KeyRules b = rules({{"meta", "trace_id"}, {"request_id"}, {"request_id"}},
                           KeyRules::Lowercase | KeyRules::Trim);
  EXPECT_EQ(keyRulesFingerprint(a),
            R"({"ignore":[["meta","trace_id"],["request_id"]],"normalize":["lowercase","trim"]})");
  EXPECT_EQ(keyRulesFingerprint(a), keyRulesFingerprint(b));
  EXPECT_EQ(canon(keyRulesFingerprint(a)), keyRulesFingerprint(a));  // canonical JSON: no raw newline in it
  // "a.b" and {"a.b"} (a name with a dot, which the configuration cannot
  // write) and ["a","b"] differ; so do other normalisers.
  EXPECT_NE(keyRulesFingerprint(rules({{"a", "b"}})), keyRulesFingerprint(rules({{"a.b"}})));
  EXPECT_NE(keyRulesFingerprint(rules({{"a"}})), keyRulesFingerprint(rules({{"a"}}, KeyRules::Trim)));
  EXPECT_EQ(keyRulesFingerprint(rules({{"we\"ird"}}, kAll)),
            R"({"ignore":[["we\"ird"]],"normalize":["collapse_whitespace","lowercase","trim"]})");
}

TEST(KeyRulesTest, DigestWithRulesIsSeparateFromTheDigestWithout) {
  const KeyRules r = rules({{"request_id"}});
  const std::string with_id = canon(R"({"q":"x","request_id":"1"})");
  const std::string other_id = canon(R"({"request_id":"2","q":"x"})");
  const std::string plain = canon(R"({"q":"x"})");
  // One input under the rules ...
  EXPECT_EQ(inputDigest(with_id, &r), inputDigest(other_id, &r));
  EXPECT_EQ(inputDigest(with_id, &r), inputDigest(plain, &r));
  EXPECT_EQ(inputDigest(with_id, &r),
            sha256Hex("rules:v1:" + keyRulesFingerprint(r) + "\n" + R"({"q":"x"})"));
  // ... but never the key of the same text without them (a reload that drops
  // the rules must not serve the shaped entry to {"q":"x"}), nor under other rules.
  EXPECT_NE(inputDigest(with_id, &r), inputDigest(plain, nullptr));
  EXPECT_NE(inputDigest(with_id, nullptr), inputDigest(other_id, nullptr));
  const KeyRules r2 = rules({{"request_id"}, {"trace"}});
  EXPECT_NE(inputDigest(plain, &r), inputDigest(plain, &r2));
  EXPECT_EQ(inputDigest(plain, &r).size(), 64u);
}

}  // namespace
}  // namespace wfp

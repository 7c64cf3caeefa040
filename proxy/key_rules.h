// Cache keys that ignore noise (docs/http.md, "Cache keys that ignore noise";
// docs/configuration.md, cache.workflows.<id>.key_ignore / key_normalize).
//
// Pure: text in, text out. A run's key names its input by a digest of the
// canonical body (proxy/canonical_json.h). A workflow may say that some of
// its input is noise: members to leave out, and string values to compare
// trimmed, with collapsed whitespace or in lower case. Those rules shape the
// text the digest is taken of — for the key only: the body sent upstream is
// still the client's own bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace wfp {

// How a run's input becomes its cache key, per workflow.
struct KeyRules {
  // Object members left out of the key: each path is one or more member
  // names, top level first ("request_id", "meta.trace_id" → {"meta",
  // "trace_id"}). Paths only go through objects, never into arrays. Names are
  // UTF-8 (the configuration loader checks it).
  std::vector<std::vector<std::string>> ignore;
  enum Normalizer : unsigned { Trim = 1, CollapseWhitespace = 2, Lowercase = 4 };
  unsigned normalize = 0;  // Normalizer bits, applied to every string value

  bool empty() const { return ignore.empty() && normalize == 0; }
};

// `canonical` (an output of canonicalizeJson, trusted to be one) with the
// rules applied, in canonical form again (canonicalizeJson of the result is
// the result):
//   * each `ignore` path removes the member at its end; a path through a
//     missing member or a non-object value (array, string, ...) removes
//     nothing;
//   * the normalisers rewrite every string value at any depth, inside arrays
//     too, never a member name: trim drops leading and trailing whitespace,
//     collapse_whitespace turns each run of whitespace into one space (it
//     does not trim), lowercase maps each character to its Unicode simple
//     lower case. Whitespace is Unicode's White_Space property (see
//     isKeyWhitespace). Lone surrogates are left as they are.
// Numbers, literals and member order are kept byte for byte. One pass; no
// recursion (an explicit stack, as deep as the input's nesting).
std::string shapeKeyText(std::string_view canonical, const KeyRules& rules);

// A text that names the rules and nothing else: equal rule sets (whatever the
// order or repetition of their entries) give equal fingerprints, different
// ones different. Canonical JSON, e.g.
// {"ignore":[["meta","trace_id"],["request_id"]],"normalize":["lowercase","trim"]}.
std::string keyRulesFingerprint(const KeyRules& rules);

// The hex SHA-256 that names an input in its cache key (proxy/cache.h
// cacheKey), for runs, streams and purge by body alike. Without rules (null
// or empty): the digest of `canonical` itself, with no extra pass. With
// rules: the digest of
//     "rules:v1:" + keyRulesFingerprint(rules) + "\n" + shapeKeyText(canonical, rules)
// so an entry stored under rules never answers a request keyed without them
// (or under other rules), while instances with the same rules agree.
std::string inputDigest(std::string_view canonical, const KeyRules* rules);

// Whitespace for trim and collapse_whitespace: the code points with Unicode's
// White_Space property — U+0009..U+000D, U+0020, U+0085, U+00A0, U+1680,
// U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
bool isKeyWhitespace(uint32_t cp);

// Unicode simple lower case of `cp` (glibc's towlower in the C.UTF-8 locale;
// ASCII only if that locale cannot be loaded). Surrogates map to themselves.
uint32_t keyLowercase(uint32_t cp);

}  // namespace wfp

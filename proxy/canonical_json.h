// Canonical JSON (docs/http.md): the form two run bodies are compared in.
//
// Pure: no I/O, no allocation beyond the output string. The input is parsed
// once; the output is
//   * objects with keys sorted by their UTF-8 bytes, duplicates resolved
//     last-wins (as JavaScript's JSON.parse does), recursively;
//   * no insignificant whitespace;
//   * strings decoded and re-encoded with one escaping rule: '"', '\\' and
//     control characters escaped (\b \f \n \r \t short forms, else \u00xx),
//     everything else as raw UTF-8; lone surrogates from \u escapes kept as
//     lower-case \udxxx escapes;
//   * numbers by exact decimal value (1, 1.0, 1e0, 10e-1 → "1"; -0 → "0";
//     integers beyond 2^53 keep every digit; no rounding through double);
//   * arrays in order; null/true/false as themselves.
// An empty or whitespace-only body is the object {}. The top level must be an
// object. Nesting deeper than max_depth is an error (stack safety).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace wfp {

struct CanonicalJson {
  bool ok = false;
  std::string canonical;  // when ok
  size_t error_offset = 0;  // byte offset in the input where parsing failed
  std::string error;        // e.g. "unexpected character 'x' at offset 12"
};

constexpr size_t kDefaultMaxJsonDepth = 256;

CanonicalJson canonicalizeJson(std::string_view body, size_t max_depth = kDefaultMaxJsonDepth);

// The value of the top-level member `name` in a canonical text (the output of
// canonicalizeJson), as it stands there: the canonical form of that value, the
// same bytes canonicalizeJson gives for it alone (the form is the same at any
// depth). `name` is matched as written in the canonical text (plain ASCII
// without escapes). nullopt when there is no such member. Lets an envelope
// ({"body": {...}}) yield its inner document without a second parser between
// the client's bytes and the key, which would round numbers (1e400,
// 2^64 + 1) the canonical form keeps exactly.
std::optional<std::string_view> canonicalMember(std::string_view canonical, std::string_view name);

// The canonical string form both ways, for code that rewrites canonical text
// (proxy/key_rules.cc) without a second copy of the escaping rule. "Content"
// is what stands between a canonical string's quotes.

// Appends the canonical content for code point `cp` (up to U+10FFFF; a
// surrogate U+D800..U+DFFF becomes its \udxxx escape): the bytes
// canonicalizeJson writes for that character.
void appendCanonicalCodePoint(std::string& out, uint32_t cp);

// Appends the canonical content of `utf8`, a raw (unescaped) UTF-8 string
// such as a member name from the configuration. False, with `out` partly
// written, when `utf8` is not well-formed UTF-8.
bool appendCanonicalString(std::string& out, std::string_view utf8);

// The code point at content[i] of a canonical string's content, advancing i
// past it. `content` must be canonical (it is not validated); a lone
// surrogate comes back as its value in 0xD800..0xDFFF.
uint32_t nextCanonicalCodePoint(std::string_view content, size_t& i);

// In a canonical text: the offset just past the string whose opening quote
// is at `quote`, and the offset where the value starting at `begin` ends (the
// ',', '}' or ']' after it, or the text's end after a complete value). npos
// if the text ends inside the string or value.
size_t canonicalStringEnd(std::string_view canonical, size_t quote);
size_t canonicalValueEnd(std::string_view canonical, size_t begin);

}  // namespace wfp

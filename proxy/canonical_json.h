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

}  // namespace wfp

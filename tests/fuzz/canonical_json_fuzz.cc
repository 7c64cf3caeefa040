// libFuzzer harness for canonicalizeJson().
//
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I. \
//     proxy/canonical_json.cc tests/fuzz/canonical_json_fuzz.cc -o /tmp/cj_fuzz
//   /tmp/cj_fuzz -max_total_time=60 -max_len=4096
//
// Checks, for every input:
//   * an error has an offset inside the input, says "at offset N", and is
//     short (it never echoes the input);
//   * accepted input has a canonical form that is itself accepted and is a
//     fixed point;
//   * where nlohmann/json is available, it agrees on validity (within the
//     documented differences) and the canonical form parses to an equal value.
#include "proxy/canonical_json.h"

#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <string_view>

#if __has_include(<nlohmann/json.hpp>)
#include <nlohmann/json.hpp>
#define WFP_FUZZ_DIFFERENTIAL 1
#endif

namespace {

[[noreturn]] void die(const char* what, std::string_view detail) {
  std::fprintf(stderr, "canonical_json_fuzz: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const wfp::CanonicalJson r = wfp::canonicalizeJson(body);

  if (!r.ok) {
    if (r.error_offset > size) die("error offset beyond input", r.error);
    if (r.error.find("at offset " + std::to_string(r.error_offset)) == std::string::npos) die("bad error", r.error);
    if (r.error.size() > 80) die("error too long", r.error);
    if (!r.canonical.empty()) die("canonical set on error", r.canonical);
  } else {
    const wfp::CanonicalJson again = wfp::canonicalizeJson(r.canonical);
    if (!again.ok) die("canonical form rejected", again.error);
    if (again.canonical != r.canonical) die("canonical form is not a fixed point", r.canonical);
  }

#ifdef WFP_FUZZ_DIFFERENTIAL
  // Documented differences: top level must be an object, an empty body is {},
  // a depth limit, numbers kept exact (nlohmann rejects those beyond double's
  // range, we those beyond 1e±10^9), lone surrogates are kept; and nlohmann's
  // lexer stops at a NUL byte.
  size_t first = 0;
  while (first < size && (data[first] == ' ' || data[first] == '\t' || data[first] == '\n' || data[first] == '\r')) {
    ++first;
  }
  if (first == size || data[first] != '{') return 0;
  if (!r.ok && (r.error.find("nesting") != std::string::npos || r.error.find("out of range") != std::string::npos)) {
    return 0;
  }
  if (body.find("\\u") != std::string_view::npos && (body.find("\\ud") != std::string_view::npos ||
                                                      body.find("\\uD") != std::string_view::npos)) {
    return 0;  // possibly a lone surrogate, which nlohmann rejects
  }
  if (body.find('\0') != std::string_view::npos) return 0;  // nlohmann's lexer takes NUL for end of input
  nlohmann::json theirs;
  bool they_accept = true;
  try {
    theirs = nlohmann::json::parse(body);
  } catch (const nlohmann::json::exception& e) {
    // nlohmann rejects numbers beyond double's range; we keep them exact.
    if (std::string_view(e.what()).find("number overflow") != std::string_view::npos) return 0;
    they_accept = false;
  }
  if (they_accept != r.ok) die(r.ok ? "accepted what nlohmann rejects" : "rejected what nlohmann accepts", r.error);
  if (r.ok) {
    const nlohmann::json canonical = nlohmann::json::parse(r.canonical, nullptr, false);
    if (canonical.is_discarded()) die("nlohmann rejects the canonical form", r.canonical);
    if (canonical != theirs) die("canonical form has a different value", r.canonical);
  }
#endif
  return 0;
}

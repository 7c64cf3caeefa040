// libFuzzer harness for the key rules (proxy/key_rules.h).
//
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I. proxy/canonical_json.cc \
//     proxy/key_rules.cc proxy/hash.cc tests/fuzz/key_rules_fuzz.cc -lcrypto -lxxhash -o /tmp/kr_fuzz
//   /tmp/kr_fuzz -max_total_time=60 -max_len=4096
//
// The first byte picks the rules (bits 0-2: the normalisers; bits 3-7: which
// of five ignore paths); the rest is a request body. Checks, for every body
// canonicalizeJson accepts:
//   * the shaped text is canonical: canonicalizeJson gives it back unchanged;
//   * shaping is idempotent: the shaped text shaped again is itself;
//   * without normalisers, nothing but members is removed (the shaped text is
//     never longer than the canonical one);
//   * the input digest of the shaped text equals that of the canonical text.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/canonical_json.h"
#include "proxy/key_rules.h"

namespace {

[[noreturn]] void die(const char* what, std::string_view detail) {
  std::fprintf(stderr, "key_rules_fuzz: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t selector = data[0];
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  const wfp::CanonicalJson c = wfp::canonicalizeJson(body);
  if (!c.ok) return 0;

  wfp::KeyRules rules;
  rules.normalize = selector & 7u;
  const std::vector<std::vector<std::string>> paths = {{"a"}, {"a", "b"}, {"b", "a", "c"}, {"é"}, {"x\"y"}};
  for (size_t i = 0; i < paths.size(); ++i) {
    if (selector & (8u << i)) rules.ignore.push_back(paths[i]);
  }
  if (rules.empty()) rules.ignore.push_back({"request_id"});

  const std::string shaped = wfp::shapeKeyText(c.canonical, rules);
  const wfp::CanonicalJson again = wfp::canonicalizeJson(shaped);
  if (!again.ok) die("shaped text rejected", again.error);
  if (again.canonical != shaped) die("shaped text is not canonical", shaped);
  if (wfp::shapeKeyText(shaped, rules) != shaped) die("shaping is not idempotent", shaped);
  if (rules.normalize == 0 && shaped.size() > c.canonical.size()) die("ignore made the text longer", shaped);
  if (wfp::inputDigest(shaped, &rules) != wfp::inputDigest(c.canonical, &rules)) die("digest differs", shaped);
  return 0;
}

// The simulation's one source of randomness: a seeded generator whose
// helpers do not depend on the standard library's distributions (which
// differ between implementations), so a seed means the same run anywhere.
#pragma once

#include <cstdint>
#include <random>

namespace wfp::sim {

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() { return gen_(); }
  // Uniform in [lo, hi] (inclusive).
  int64_t range(int64_t lo, int64_t hi) {
    if (hi <= lo) return lo;
    return lo + static_cast<int64_t>(next() % static_cast<uint64_t>(hi - lo + 1));
  }
  // True with probability `p` (0..1).
  bool chance(double p) { return static_cast<double>(next() >> 11) * 0x1.0p-53 < p; }
  template <typename C>
  const auto& pick(const C& items) {
    return items[static_cast<size_t>(range(0, static_cast<int64_t>(items.size()) - 1))];
  }

 private:
  std::mt19937_64 gen_;
};

}  // namespace wfp::sim

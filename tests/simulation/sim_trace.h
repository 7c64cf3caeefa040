// A readable account of one simulated run: what happened, at what virtual
// time. Kept in memory and printed only when a check fails (or when asked
// with scripts/simulate --trace), so passing seeds cost almost nothing.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/simulation/sim_runtime.h"

namespace wfp::sim {

class Trace {
 public:
  explicit Trace(const SimRuntime& rt) : rt_(rt) {}
  void add(std::string line) {
    if (lines_.size() < kMaxLines) lines_.push_back({rt_.nowUs(), std::move(line)});
  }
  // The last `last` lines, one per line: "    12.345 ms  what happened".
  std::string text(size_t last = kMaxLines) const {
    std::string out;
    size_t from = lines_.size() > last ? lines_.size() - last : 0;
    char stamp[32];
    for (size_t i = from; i < lines_.size(); ++i) {
      std::snprintf(stamp, sizeof stamp, "%10.3f ms  ", static_cast<double>(lines_[i].t_us) / 1000.0);
      out += stamp;
      out += lines_[i].text;
      out += '\n';
    }
    if (lines_.size() == kMaxLines) out += "(trace cut at " + std::to_string(kMaxLines) + " lines)\n";
    return out;
  }

 private:
  static constexpr size_t kMaxLines = 20000;
  struct Line {
    int64_t t_us;
    std::string text;
  };
  const SimRuntime& rt_;
  std::vector<Line> lines_;
};

}  // namespace wfp::sim

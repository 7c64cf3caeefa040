// The fleet simulation's driver (tests/simulation/sim_fleet.h).
//
//   wfp_simulate --seeds N [--from S]   run seeds S .. S+N-1; print failing seeds
//   wfp_simulate --seed S [--trace]     one seed; its trace when it fails (or always)
//
// Exit status: 0 when every seed passed, 1 when one failed, 2 on bad usage.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/simulation/sim_fleet.h"

namespace {

int usage() {
  std::fprintf(stderr, "usage: wfp_simulate --seeds N [--from S] | --seed S [--trace]\n");
  return 2;
}

bool number(const char* text, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(text, &end, 10);
  if (errno || !end || *end || text[0] == '-' || text[0] == '\0') return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t from = 1, count = 0, one = 0;
  bool single = false, trace = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--trace") {
      trace = true;
    } else if ((a == "--seeds" || a == "--from" || a == "--seed") && i + 1 < argc) {
      uint64_t v = 0;
      if (!number(argv[++i], &v)) return usage();
      if (a == "--seeds") count = v;
      if (a == "--from") from = v;
      if (a == "--seed") {
        one = v;
        single = true;
      }
    } else {
      return usage();
    }
  }
  if (single) {
    wfp::sim::SeedOptions options;
    options.trace = trace;
    wfp::sim::SeedResult r = wfp::sim::runSeed(one, options);
    if (!r.trace.empty()) std::fputs(r.trace.c_str(), stdout);
    std::printf("seed %llu: %s\n", static_cast<unsigned long long>(one), r.summary.c_str());
    for (const auto& f : r.failures) std::printf("  FAILED: %s\n", f.c_str());
    return r.failures.empty() ? 0 : 1;
  }
  if (count == 0) return usage();
  uint64_t failed = 0, events = 0;
  for (uint64_t s = from; s < from + count; ++s) {
    wfp::sim::SeedResult r = wfp::sim::runSeed(s);
    events += r.events;
    if (r.failures.empty()) continue;
    ++failed;
    std::printf("seed %llu FAILED (%s): %s\n", static_cast<unsigned long long>(s), r.summary.c_str(),
                r.failures.front().c_str());
    for (size_t i = 1; i < r.failures.size() && i < 5; ++i) std::printf("    and: %s\n", r.failures[i].c_str());
    std::printf("  replay: scripts/simulate --seed %llu\n", static_cast<unsigned long long>(s));
    std::fflush(stdout);
  }
  std::printf("%llu seeds from %llu: %llu failed, %llu events\n", static_cast<unsigned long long>(count),
              static_cast<unsigned long long>(from), static_cast<unsigned long long>(failed),
              static_cast<unsigned long long>(events));
  return failed ? 1 : 0;
}

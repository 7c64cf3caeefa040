// The fleet simulation (issue 13; in the spirit of FoundationDB's simulation
// tests and TigerBeetle's VOPR): N proxy instances' run paths — the real
// RunHandler, Coalescer, StreamFanout, CacheStore and Scheduler — in one
// process on one virtual clock, with a simulated Redis, a simulated upstream
// and simulated clients. One seed decides everything: the fleet's size and
// configuration, the clients' inputs, Cache-Control and disconnects, purges,
// SIGHUP reloads that rotate the organisation's key, Redis pauses, restarts
// and lost messages, upstream latency, 5xx, resets, 429s and hangs.
//
// The checks (runSeed's failures) hold after every seed:
//   - every client that stayed got exactly one response, with its own
//     X-Request-Id; a 200's bytes are those of an upstream run of the same
//     input, one its Cache-Control allows (fresh enough, or after its arrival
//     for no-cache/no-store);
//   - one upstream run per input and generation across the fleet while one
//     is running or stored and fresh, unless a request forbade the cache,
//     a purge came between, or Redis failed meanwhile;
//   - the upstream never counted more starts than its limit in a window,
//     never saw a revoked key, nor an X-Request-Id of another input or of a
//     request already answered;
//   - the exchange contract: nothing written after the end or after the
//     client left, no second response;
//   - at quiescence every per-key map of every instance is empty or within
//     its bound, and nothing is left in flight.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace wfp::sim {

struct SeedOptions {
  bool trace = false;  // print the whole trace even when the seed passes
};

struct SeedResult {
  std::vector<std::string> failures;
  std::string trace;    // the readable account (kept when a check failed or trace was asked)
  std::string summary;  // one line: the fleet, the traffic, the faults
  uint64_t events = 0;
};

SeedResult runSeed(uint64_t seed, const SeedOptions& options = {});

}  // namespace wfp::sim

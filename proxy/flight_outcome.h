// The outcome of a flight (one upstream run for a cache key), and its wire
// form on the flight's Redis channel, where the leading instance announces it
// to the instances that follow (SPEC §4.3, "across instances").
//
// A message read from Redis is untrusted input (SPEC §10.2): decodeOutcome()
// rejects anything malformed or out of range, never trusts a length or a
// number it reads, and returns a response whose headers passed the same
// checks as a cached entry's (see decodeCachedResponse).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "proxy/cache.h"
#include "proxy/upstream_client.h"

namespace wfp {

struct FlightOutcome {
  CachedResponsePtr response;  // what the upstream answered (any status); null on failure
  UpstreamFailure failure = UpstreamFailure::None;
  bool stored = false;   // the response went into the cache
  bool remote = false;   // another instance ran it
  double upstream_ms = 0;  // time the upstream took (0 when remote)
  double queue_ms = 0;     // time the run waited for the budget
  // Never started: the organisation's queue refused it, or (NotCached, never
  // sent to another instance) only only-if-cached waiters were left.
  enum class Rejected { No, RateLimited, ShuttingDown, NotCached } rejected = Rejected::No;
  int retry_after_s = 0;
};

std::string encodeOutcome(const FlightOutcome& outcome);
std::optional<FlightOutcome> decodeOutcome(std::string_view message);

}  // namespace wfp

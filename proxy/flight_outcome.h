// The outcome of a flight (one upstream run for a cache key), and its wire
// form on the flight's Redis channel, where the leading instance announces it
// to the instances that follow (docs/http.md, "across instances").
//
// A message read from Redis is untrusted input (docs/security.md): anyone who can
// PUBLISH can send one. decodeOutcome() rejects anything malformed or out of
// range (nullopt: the follower ignores it and keeps polling), never trusts a
// length or a number it reads, and returns a response that passed every
// check of a cached entry's (see decodeCachedResponse).
#pragma once

#include <cstdint>
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

// The largest Retry-After an outcome carries (a day); the encoder clamps to
// 0..this, the decoder refuses anything else.
inline constexpr int kMaxOutcomeRetryAfterS = 86400;

std::string encodeOutcome(const FlightOutcome& outcome);
// Exactly "T", "U", "Q" + 1..5 digits (<= kMaxOutcomeRetryAfterS), or "R",
// then 'S' or '-', then a value decodeCachedResponse(…, now_ms) accepts;
// anything else is nullopt. `now_ms`: unix time; without it, the wall clock.
std::optional<FlightOutcome> decodeOutcome(std::string_view message, int64_t now_ms);
std::optional<FlightOutcome> decodeOutcome(std::string_view message);

}  // namespace wfp

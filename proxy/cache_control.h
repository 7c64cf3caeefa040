// A request's Cache-Control (docs/http.md): the directives of RFC 9111
// §5.2.1 the proxy gives meaning to, and what they make a waiter accept in
// place of a run of its own.
#pragma once

#include <cstdint>
#include <optional>

#include "proxy/coalescer.h"
#include "proxy/http_types.h"

namespace wfp {

struct CacheControl {
  bool no_cache = false;
  bool no_store = false;
  bool only_if_cached = false;
  std::optional<int64_t> max_age;  // seconds
};

CacheControl parseCacheControl(const HttpHeaders& headers);

// What a request that came at `now_ms` (unix ms) accepts from the fleet: an
// answer stored within its TTL and max-age, nothing stored before it came
// under no-cache, nothing at all when it bypasses the cache.
WaiterNeeds waiterNeeds(const CacheControl& cc, int64_t ttl_ms, bool bypass, int64_t now_ms);

}  // namespace wfp

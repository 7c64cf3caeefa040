// Budgets held in Redis by every instance together (docs/rate-limits.md,
// `rate_limit.shared: true`): the sliding-window start log and the in-flight
// count of each organisation live in Redis and are updated by one Lua script
// per admission decision, so N instances together stay under the limit.
//
// Each instance also writes a heartbeat key; instancesAlive() is the number
// of instances seen alive, used for the 1/N fallback when Redis is down.
//
// Callbacks run exactly once, on the loop, never inside the call.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "proxy/runtime.h"

namespace wfp {

class RedisLink;
struct RedisReply;

struct SharedDecision {
  bool reachable = false;  // false: Redis did not answer; use the local 1/N fallback
  bool admitted = false;   // a start was recorded (window + in flight)
  int64_t wait_ms = 0;     // not admitted: when to ask again (0: wait for a release)
  int64_t remaining = 0;   // admitted: budget left in the window after this start
  std::string member;      // admitted: this start's name, for sent()
};

class SharedBudget {
 public:
  SharedBudget(Runtime& runtime, RedisLink& redis, std::string key_prefix);
  ~SharedBudget();
  SharedBudget(const SharedBudget&) = delete;
  SharedBudget& operator=(const SharedBudget&) = delete;

  // One atomic decision for `budget` (an organisation name or "pt:<sha>"):
  // admit iff fewer than `limit` starts in the last `window_ms` (+ margin),
  // fewer than `max_concurrent` in flight, and no shared pause in force.
  void tryStart(const std::string& budget, int limit, int64_t window_ms, int max_concurrent,
                std::function<void(SharedDecision)> done);
  // The admitted start `member` is being written upstream now: it counts
  // from now (Redis' time when this lands), not from the decision — the
  // reply's way back and our loop lie between the two. Fire and forget.
  // `window_ms` as given to tryStart (it sets the starts' time to live).
  void sent(const std::string& budget, const std::string& member, int64_t window_ms);
  // A started request ended (or was abandoned): in flight − 1.
  void finish(const std::string& budget);
  // An upstream 429 / remaining: 0 pauses every instance's starts for the budget.
  void pause(const std::string& budget, int64_t pause_ms);

  // Instances whose heartbeat is fresh (≥ 1; this one included).
  int instancesAlive() const { return instances_alive_; }

  // Decoders of the scripts' replies. What Redis returns is untrusted
  // (docs/security.md: a flushed, restarted or tampered Redis, another version of the
  // scripts): a reply the script could not have sent is rejected, never
  // believed. Pure; public for tests.
  //
  // tryStart's {admitted 0|1, wait_ms, remaining} for `limit` and `span_ms`:
  // admitted with 0 ≤ remaining < limit; refused with wait_ms ≥ 0, a wait
  // beyond kMaxWaitMs (or the span, if longer) cut to it. Anything else:
  // nullopt (the decision then counts as unreachable: 1/N for a while).
  static std::optional<SharedDecision> decodeDecision(const RedisReply& reply, int limit, int64_t span_ms);
  // The heartbeat's live-instance count: 1..kMaxInstances, else nullopt
  // (the last count stays).
  static std::optional<int> decodeInstances(const RedisReply& reply);
  // SCRIPT LOAD's digest: 40 hex digits, else nullopt (EVAL stays in use).
  static std::optional<std::string> decodeDigest(const RedisReply& reply);

  // The longest pause an instance sets (Retry-After is capped at 1 h).
  static constexpr int64_t kMaxWaitMs = 3'600'000;
  static constexpr int kMaxInstances = 10'000;

 private:
  // Lifetime: `redis` and `loop` must outlive this object. The destructor
  // cancels every command it waits for (a pending tryStart's callback is
  // dropped, not called, like RedisClient's), stops the heartbeat, and
  // releases, best effort, this instance's leases and heartbeat in Redis.
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int instances_alive_ = 1;
  friend struct Impl;
};

}  // namespace wfp

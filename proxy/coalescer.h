// One input, one upstream run (docs/http.md, "Coalescing").
//
// A flight is the one upstream run for a cache key. Requests join it as
// waiters; when it completes every waiter still attached gets the same
// outcome. The coalescer decides who runs, not how: the owner is told to
// lead a flight (onLead) and reports the outcome with complete().
//
// Across instances (with Redis): the instance that creates a flight first
// takes a lock (SET key NX PX, renewed while the run lasts). If another
// instance holds it, this flight follows: it subscribes to the flight's
// channel and waits for the leader's PUBLISH of the outcome, re-checking the
// shared cache every second in case a message is lost, and takes over when
// the lock expires without a result (the leader died). When Redis is down
// or slow, a flight simply leads locally.
//
// Cache-Control (docs/http.md): each waiter says which stored answer it would
// accept (WaiterNeeds); a stored entry found after taking the lock or while
// following answers the flight only if every waiter accepts it, and a flight
// whose waiters are all only-if-cached never leads a run.
//
// Lifetime: waiters are ids; leave(id) detaches one, and its callback will
// not run afterwards. A flight whose last waiter leaves before its upstream
// run started is abandoned; one already running completes and stores its
// result for the next request. However a flight ends, on_end tells the owner
// once, so nothing prepared for it outlives it (a follower's prepared run
// included).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "proxy/cache.h"
#include "proxy/runtime.h"
#include "proxy/flight_outcome.h"
#include "proxy/handle.h"
#include "proxy/upstream_client.h"

namespace wfp {

class RedisLink;


struct FlightHooks {
  // This instance runs the flight: start the upstream exchange (possibly via
  // the queue) and call complete() when done. (Its key, if needed: keyOf().)
  std::function<void(uint64_t flight)> on_lead;  // may complete the flight at once
  // The flight is over, however it ended (completed here, answered by another
  // instance or by the cache, abandoned): drop whatever was prepared for it.
  // Runs once per flight, after the flight left the coalescer's maps and
  // before its waiters are called.
  std::function<void(uint64_t flight)> on_end;
  // Re-check: look the key up in the shared cache (after taking the lock,
  // and while following another instance), for an entry stored at or after
  // `min_stored_at_ms` (unix ms) if there is one. May answer synchronously.
  std::function<void(const std::string& key, int64_t min_stored_at_ms, std::function<void(CachedResponsePtr)>)>
      lookup_shared;
};

// What a waiter accepts instead of a run of its own (docs/http.md: the
// request's Cache-Control holds at every point where a stored answer could
// be found, including the look after taking the fleet lock).
struct WaiterNeeds {
  // A stored answer is acceptable only if stored at or after this time (unix
  // ms): now − TTL, raised by max-age, and by no-cache to the request's own
  // arrival; INT64_MAX (no-store): none. 0: any.
  int64_t min_stored_at_ms = 0;
  // false (only-if-cached): this waiter never makes the flight run upstream;
  // a flight that would run for such waiters alone answers them NotCached.
  bool may_run = true;
};

class Coalescer {
 public:
  using WaiterFn = std::function<void(const FlightOutcome&)>;

  Coalescer(Runtime& runtime, RedisLink* redis, std::string key_prefix, FlightHooks hooks);
  ~Coalescer();
  Coalescer(const Coalescer&) = delete;
  Coalescer& operator=(const Coalescer&) = delete;

  struct Joined {
    uint64_t waiter = 0;
    uint64_t flight = 0;
    bool created = false;  // this waiter created the flight (it is the MISS)
  };
  // Joins the flight for `key`, creating it if there is none; `on_create`
  // (when given) runs for a new flight before anything else happens to it,
  // so the owner can prepare the run that on_lead may ask for at once.
  // `owner` (optional) names the waiter's request for leader(). A caller
  // done with `key` moves it in: a new flight keeps it.
  Joined join(std::string key, WaiterFn fn, WaiterNeeds needs = {},
              const std::function<void(uint64_t flight)>& on_create = {}, uint64_t owner = 0);
  // The owner of the flight's first waiter still waiting (0: none): the
  // request that leads its run now (docs/http.md), whoever created it.
  uint64_t leader(uint64_t flight) const;
  bool inFlight(const std::string& key) const { return by_key_.count(key) != 0; }
  // The cache key of a flight (null once it is over).
  const std::string* keyOf(uint64_t flight) const;
  void leave(uint64_t waiter);

  // The owner marks the moment the upstream run starts (after that the
  // flight is never abandoned), and reports its outcome.
  void markStarted(uint64_t flight);
  void complete(uint64_t flight, FlightOutcome outcome);

  size_t flights() const { return flights_.size(); }
  size_t waiters() const { return waiters_.size(); }

 private:
  struct Flight;
  void lead(Flight& f);
  void leadUnlessStored(Flight& f);
  void follow(Flight& f);
  void tryLock(uint64_t flight_id);
  void renew(uint64_t flight_id);
  void poll(uint64_t flight_id);
  void onMessage(uint64_t flight_id, const std::string& message);
  // Answers the waiters not in `refusing` with `outcome`, and runs the
  // flight again for the others.
  void answerSome(uint64_t flight_id, const FlightOutcome& outcome, const std::vector<uint64_t>& refusing);
  void deliver(uint64_t flight_id, const FlightOutcome& outcome);
  // Would every waiter accept `entry` in place of a run?
  int64_t minStoredAt(const Flight& f) const;  // the strictest waiter's floor
  bool acceptable(const Flight& f, const CachedResponse& entry) const;
  bool anyMayRun(const Flight& f) const;
  void deliverStored(uint64_t flight_id, CachedResponsePtr entry);
  void releaseRedis(Flight& f);
  Flight* find(uint64_t flight_id);

  Runtime& runtime_;
  RedisLink* redis_;
  std::string prefix_;
  FlightHooks hooks_;
  std::string instance_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Flight>> flights_;
  // Keyed by a view of Flight::key (the flight is on the heap and its key
  // never changes: the view is valid while the entry exists).
  std::unordered_map<std::string_view, uint64_t> by_key_;
  struct Waiter {
    uint64_t flight;
    WaiterFn fn;
    WaiterNeeds needs;
    uint64_t owner = 0;
  };
  std::unordered_map<uint64_t, Waiter> waiters_;
  bool joining_ = false;  // inside join(): no waiter is answered
  Lifeline life_;  // timers' work runs on a turn of its own (a flight's timer is never destroyed in its callback)
};

// A waiter's place in its flight: leaves the flight when destroyed.
using CoalescerWaiter = IdHandle<Coalescer, &Coalescer::leave>;

}  // namespace wfp

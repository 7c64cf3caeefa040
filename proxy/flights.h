// The run path (docs/http.md): the life of an input, for a run
// and for a shared stream alike —
//
//   generation → cache key → look-up under the request's Cache-Control
//     → HIT (fresh, young enough)             → the stored answer
//     → only-if-cached with nothing in flight → 504 not_cached
//     → join the input's flight:
//         run:    Coalescer (local waiters, the fleet's lock and channel)
//                 → a RunFlight led here: UpstreamAttempt (queue, key in
//                   force, 429 retry) → store → publish → every waiter
//         stream: StreamFanout (token fetch → stream → every subscriber,
//                 late joiners replayed) → store when complete
//     → deliver: the answer, a stale one when the run failed, or the error.
//
// A stream that is neither shared nor stored is the Forwarder's (its own
// token, its own transfer).
//
// A request holds its place (CoalescerWaiter, StreamSubscription); the run a
// flight leads is owned here, not by any request, so that it completes (and
// is stored) even when every waiter has left. It lives exactly as long as
// its coalescer flight (on_end).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "proxy/cache_store.h"
#include "proxy/client_request.h"
#include "proxy/coalescer.h"
#include "proxy/forwarder.h"
#include "proxy/replies.h"
#include "proxy/stream_fanout.h"
#include "proxy/upstream_attempt.h"

namespace wfp {

class RedisLink;

// What the run path needs of the table of requests (RunHandler).
struct RequestTable {
  std::function<ClientRequest*(uint64_t id)> find;
  // A streamed answer cut short: end the request (logged, counted, freed).
  std::function<void(uint64_t id)> end_request;
};

class Flights {
 public:
  Flights(const UpstreamPorts& ports, CacheStore& cache, RedisLink* redis, Forwarder& forwarder, ClientQuotas& quotas,
          RequestTable requests);
  ~Flights();
  Flights(const Flights&) = delete;
  Flights& operator=(const Flights&) = delete;

  // A run or stream request, authenticated, its canonical body hashed.
  void serve(const RequestPtr& r);

  RateLimitMemory& rateLimits() { return ratelimits_; }
  const RateLimitMemory& rateLimits() const { return ratelimits_; }
  size_t runsInFlight() const;  // runs sent upstream and not finished
  size_t coalescerFlights() const { return coalescer_->flights(); }
  size_t coalescerWaiters() const { return coalescer_->waiters(); }
  size_t preparedRuns() const { return runs_.size(); }
  size_t streamFlights() const { return fanout_->flights(); }

 private:
  struct RunFlight;
  void onLookup(const RequestPtr& r, CachedResponsePtr entry);
  void joinRun(const RequestPtr& r);
  void joinStream(const RequestPtr& r);
  void ownStream(const RequestPtr& r);
  // A request that would start a run asks its client's quota first, then
  // goes on to `next`; over quota it is answered 429 quota_exceeded.
  void withQuota(const RequestPtr& r, void (Flights::*next)(const RequestPtr&));
  void prepareRun(ClientRequest& r, uint64_t flight);
  void leadRun(uint64_t flight);
  void onRunDone(uint64_t flight, const AttemptEnd& end);
  void deliver(ClientRequest& r, const FlightOutcome& outcome);
  StreamSubscriber subscriber(const RequestPtr& r);

  UpstreamPorts ports_;
  CacheStore& cache_;
  Forwarder& forwarder_;
  ClientQuotas& quotas_;
  RequestTable requests_;
  RateLimitMemory ratelimits_;
  std::unique_ptr<Coalescer> coalescer_;
  std::unique_ptr<StreamFanout> fanout_;
  // The run of each flight this instance created, by flight id, whoever
  // leads it (a follower's is dropped unused).
  std::unordered_map<uint64_t, std::unique_ptr<RunFlight>> runs_;
};

}  // namespace wfp

// Shared streams (docs/http.md, `cache.streams: true`): identical in-flight
// streams of one organisation fan out from one upstream stream. A late joiner
// first receives the bytes so far, then the live bytes. A completed 200
// stream is stored and replayed on a hit; a stream cut short is not.
//
// A stream flight owns its upstream work — the token fetch (queued, spends
// quota) and the stream itself — independently of its subscribers: when the
// last subscriber leaves before the stream started, the work is dropped and
// spends nothing; once streaming, it runs to the end and is stored.
//
// Memory: the bytes are kept for late joiners and for storage up to
// kMaxStoredStream; beyond that the stream is no longer stored or joinable,
// bytes every subscriber has received are released, and the upstream is
// paused while the slowest subscriber is behind (back-pressure).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "proxy/cache_store.h"
#include "proxy/handle.h"
#include "proxy/scheduler.h"
#include "proxy/upstream_attempt.h"

namespace wfp {

struct StreamSubscriber {
  // The upstream's head: start the client's response (chunked).
  std::function<void(const UpstreamHead&)> begin;
  // Bytes for the client; false when its backlog is high (call resume()).
  std::function<bool(std::string_view)> write;
  // The stream ended: complete (true) or cut (false).
  std::function<void(bool complete)> end;
  // No stream came: the token route refused (its whole answer), or the
  // upstream failed before any head.
  std::function<void(const UpstreamHead& head, const std::string& body)> refused;
  std::function<void(UpstreamFailure failure)> failed;
  std::function<void(RejectReason why, int retry_after_s)> rejected;
  // only-if-cached (may_run false): such a subscriber never makes a stream
  // start; left alone with a flight that has not started streaming, it is
  // answered not_cached instead.
  bool may_run = true;
  std::function<void()> not_cached;
};

// What a new flight needs to run: built from the request that creates it.
struct StreamWork {
  std::string key;          // the stream's cache key
  // GET /api/v1/token?ttl=60: queued (it spends quota), with the key in
  // force at its start.
  AttemptSpec token;
  UpstreamRequest stream;   // POST .../stream; "?token=" is appended per attempt
  bool store = false;       // store when complete
  int64_t keep_ms = 0;
};

class StreamFanout {
 public:
  static constexpr size_t kMaxStoredStream = 8 * 1024 * 1024;
  static constexpr size_t kBehindHighWater = 1024 * 1024;

  // The token fetch and the stream each go upstream as an UpstreamAttempt
  // (queue and 429 retry for the fetch, the key in force at its start).
  StreamFanout(const UpstreamPorts& ports, CacheStore& cache);
  ~StreamFanout();

  bool joinable(const std::string& key) const { return by_key_.count(key) != 0; }
  // Joins the flight for work.key (creating it from `work` when there is
  // none). Returns a subscriber id, and whether this call created the flight.
  uint64_t join(const StreamWork& work, StreamSubscriber subscriber, bool* created);
  void leave(uint64_t subscriber);
  void resume(uint64_t subscriber);  // the client drained

  size_t flights() const { return flights_.size(); }

 private:
  struct Flight;
  struct Sub;
  Flight* flightOf(uint64_t flight_id);
  void startToken(Flight& f);
  void onTokenDone(uint64_t flight_id, const AttemptEnd& end);
  void startStream(uint64_t flight_id, const std::string& token);
  void onHead(uint64_t flight_id, const UpstreamHead& head);
  bool onData(uint64_t flight_id, std::string_view data);
  void onDone(uint64_t flight_id, const AttemptEnd& end);
  void pump(Flight& f, Sub& s);
  void trim(Flight& f);
  void maybeFinish(uint64_t flight_id);
  void drop(uint64_t flight_id);
  // Drops the flight, then tells each of its subscribers (removed first).
  void dropAndTell(uint64_t flight_id, const std::function<void(StreamSubscriber&)>& tell);
  bool anyMayRun(const Flight& f) const;

  UpstreamPorts ports_;
  CacheStore& cache_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Flight>> flights_;
  std::unordered_map<std::string, uint64_t> by_key_;
  std::unordered_map<uint64_t, std::unique_ptr<Sub>> subs_;
};

// A subscriber's place in its stream flight: leaves it when destroyed.
using StreamSubscription = IdHandle<StreamFanout, &StreamFanout::leave>;

}  // namespace wfp

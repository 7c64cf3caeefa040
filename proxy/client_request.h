// One client request on its way through the proxy, from the exchange the
// HTTP server hands over to the response. RunHandler owns it (by exchange
// id); the run path (Flights) and the forwarded path (Forwarder) work on it.
//
// What it starts, it holds: its upstream attempt (queue ticket and
// transfer), its place in a run flight, its stream subscription. Destroying
// the request cancels them all — a client that leaves leaves nothing behind.
// Continuations that no handle owns (a cache look-up, a purge) hold a
// std::weak_ptr to it and do nothing once it is gone.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "proxy/cache.h"
#include "proxy/cache_control.h"
#include "proxy/client_quotas.h"
#include "proxy/clock.h"
#include "proxy/coalescer.h"
#include "proxy/config.h"
#include "proxy/http_server.h"
#include "proxy/key_store.h"
#include "proxy/routes.h"
#include "proxy/stream_fanout.h"
#include "proxy/trace_context.h"
#include "proxy/upstream_attempt.h"

namespace wfp {

enum class Delivery {
  Buffered,  // the whole body, then respond() (runs, the token route)
  Streamed,  // begin() on the head, write() per chunk, with back-pressure
};

struct ClientRequest : std::enable_shared_from_this<ClientRequest> {
  uint64_t id = 0;                   // the exchange id
  HttpExchange* exchange = nullptr;  // null once the exchange is over
  ConfigPtr config;                  // the snapshot it started with
  std::shared_ptr<const KeyStore> keys;
  Route route;
  Principal principal;
  std::string request_id;
  Clock::time_point started;
  double queue_ms = 0;
  double upstream_ms = 0;
  int upstream_status = 0;  // the upstream's status for what answered it (0: none), as logged
  TraceId trace_id;         // from traceparent, as logged (the headers may be freed while it waits)
  std::string cache = "-";  // X-Cache, as logged

  // The run path.
  std::string body_sha;  // the input digest (key_rules.h inputDigest), until it is in the key
  std::string cache_key;
  CacheControl cc;
  double ttl_s = 0;
  double stale_s = 0;
  bool bypass = false;      // the cache is neither read nor written
  bool may_store = false;
  CachedResponsePtr stale;  // expired entry still within stale_if_error_s

  // The forwarded path.
  Delivery delivery = Delivery::Buffered;
  UpstreamHead head;
  std::string body;            // Buffered: the whole upstream body
  bool paused = false;         // Streamed: the transfer waits for the client to drain
  bool timed = false;          // the attempt's times are in queue_ms/upstream_ms
  bool fetching_token = false; // a stream's own token, before the stream

  // What it started (declared last: destroyed first, while the rest is intact).
  QuotaTicket quota;  // a run granted, until its flight holds it
  std::unique_ptr<UpstreamAttempt> attempt;
  CoalescerWaiter waiter;
  StreamSubscription subscription;

  // Still waiting for its response?
  bool live() const { return exchange && !exchange->responseStarted(); }
};

using RequestPtr = std::shared_ptr<ClientRequest>;
using RequestRef = std::weak_ptr<ClientRequest>;

// The request behind `ref`, if it still waits for its response.
inline RequestPtr liveRequest(const RequestRef& ref) {
  RequestPtr r = ref.lock();
  return r && r->live() ? r : nullptr;
}

}  // namespace wfp

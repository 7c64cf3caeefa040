// Dispatch and the end of a client request (see the diagram at the top of
// run_handler.cc): routes, authenticates, hands the request to the run path
// (Flights) or the forwarded path (Forwarder), and when the exchange is over
// logs and counts it and frees it — with everything it started.
//
// Owns one ClientRequest per exchange, keyed by the exchange id; the request
// holds handles on what it started (client_request.h), so freeing it cancels
// them. Continuations no handle owns look the request up by id.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "proxy/access_log.h"
#include "proxy/cache_store.h"
#include "proxy/client_request.h"
#include "proxy/config.h"
#include "proxy/flights.h"
#include "proxy/forwarder.h"
#include "proxy/http_server.h"
#include "proxy/key_store.h"
#include "proxy/metrics.h"
#include "proxy/routes.h"
#include "proxy/scheduler.h"
#include "proxy/upstream_attempt.h"
#include "proxy/upstream_client.h"

namespace wfp {

class RedisLink;

class RunHandler {
 public:
  // `redis` (may be null) carries cross-instance coalescing.
  // `shared_quotas`: Redis when rate_limit.shared makes client quotas
  // fleet-wide (null: each instance counts its own); `key_prefix` its keys'.
  RunHandler(Runtime& runtime, UpstreamTransport& upstream, Scheduler& scheduler, AccessLog& access_log,
             Metrics& metrics, CacheStore& cache, RedisLink* redis, RedisLink* shared_quotas = nullptr,
             std::string key_prefix = "wfp:");
  ~RunHandler();
  RunHandler(const RunHandler&) = delete;
  RunHandler& operator=(const RunHandler&) = delete;

  // Requests keep the snapshot they started with. Configures the scheduler
  // too, after the handler (a queued run it starts sends the new key).
  void setConfig(ConfigPtr config);
  void handleClient(HttpExchange& exchange);
  // The server's head hook (HttpServer::setHeadHandler): answers 401 before
  // the body is read when the request cannot authenticate; false otherwise.
  bool handleHead(HttpExchange& exchange);
  void handleAdmin(HttpExchange& exchange);
  // A request the HTTP server refused before it reached a handler (malformed,
  // too large, too slow): access-logged and counted like any other request.
  void recordServerError(const HttpServerError& error);

  // New requests get 503 shutting_down from now on; running ones finish.
  void beginDrain() { draining_ = true; }
  // Open client connections, for the workflow_proxy_client_connections gauge.
  void setConnectionCounter(std::function<int64_t()> fn) { connections_ = std::move(fn); }
  bool draining() const { return draining_; }
  size_t activeRequests() const { return requests_.size(); }
  // Runs this instance has sent upstream and not finished (they complete and
  // are stored even when every client left).
  size_t runsInFlight() const;
  // Answers everything still running with 503 (drain grace over).
  void cancelAll();
  // The per-key maps of the run path and their sizes (docs/security.md), as the
  // workflow_proxy_tracked_entries gauge reports them.
  std::vector<std::pair<const char*, size_t>> trackedEntries() const;

 private:
  ClientRequest& adopt(HttpExchange& exchange);  // a new request for the exchange
  ClientRequest* find(uint64_t id);
  void dispatch(ClientRequest& r);
  void dispatchAdmin(ClientRequest& r);
  void handlePurge(ClientRequest& r);
  void handleUsage(ClientRequest& r);
  bool adminAuthorized(const ClientRequest& r) const;
  // Authorization → principal, remembered per connection (see AuthMemo).
  static AuthResult authenticate(HttpExchange& ex, const std::shared_ptr<const KeyStore>& keys,
                                 const std::string* authorization);
  // Does the route carry a key of ours (so the request must authenticate)?
  static bool needsKey(const Route& route, const HttpExchange& ex);
  // The request is over: access log, metrics, and it goes — with everything
  // it started (its handles cancel).
  void finish(uint64_t id, bool aborted);
  std::string readyBody() const;
  void reportTracked();

  Scheduler& scheduler_;
  AccessLog& access_log_;
  Metrics& metrics_;
  CacheStore& cache_;
  RedisLink* redis_;
  Runtime& runtime_;
  ConfigPtr config_;
  std::shared_ptr<const KeyStore> keys_;
  KeysInForce keys_in_force_;
  UpstreamPorts ports_;
  ClientQuotas quotas_;  // before the flights: their runs hold its tickets
  Forwarder forwarder_;
  Flights flights_;
  bool draining_ = false;
  std::function<int64_t()> connections_;
  // Last: requests hold handles into the flights, destroyed first.
  std::unordered_map<uint64_t, RequestPtr> requests_;
};

}  // namespace wfp

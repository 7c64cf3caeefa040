// The life of a client request, from the exchange the HTTP server hands over
// to the response (see the diagram at the top of run_handler.cc).
//
// Owns one Request per exchange, keyed by the exchange id. The exchange
// pointer is cleared when the exchange completes or aborts; every async
// continuation (upstream callbacks) looks the request up by id, so a client
// that leaves never leaves a dangling pointer behind.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "proxy/access_log.h"
#include "proxy/cache_store.h"
#include "proxy/coalescer.h"
#include "proxy/config.h"
#include "proxy/http_server.h"
#include "proxy/key_store.h"
#include "proxy/metrics.h"
#include "proxy/routes.h"
#include "proxy/scheduler.h"
#include "proxy/stream_fanout.h"
#include "proxy/upstream_client.h"

namespace wfp {

struct ProxyError;
class RedisLink;

class RunHandler {
 public:
  // `redis` (may be null) carries cross-instance coalescing.
  RunHandler(Runtime& runtime, UpstreamTransport& upstream, Scheduler& scheduler, AccessLog& access_log,
             Metrics& metrics, CacheStore& cache, RedisLink* redis);
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
  // The per-key maps of the run path and their sizes (SPEC §10.2), as the
  // workflow_proxy_tracked_entries gauge reports them.
  std::vector<std::pair<const char*, size_t>> trackedEntries() const;

 private:
  struct Request;
  struct RunWork;
  enum class Delivery { Buffered, Streamed };

  Request& adopt(HttpExchange& exchange);  // a new Request for the exchange
  UpstreamRequest tokenRequest(const Request& r) const;
  Request* find(uint64_t id);
  // The request if it is still waiting for its response.
  Request* live(uint64_t id);
  void dispatch(Request& r);
  void dispatchAdmin(Request& r);
  // The run path: generation → cache lookup → flight → upstream → store.
  void startRun(Request& r);
  void onLookup(uint64_t id, CachedResponsePtr entry);
  void joinFlight(Request& r);
  WaiterNeeds waiterNeeds(const Request& r) const;
  void joinStream(Request& r);
  void leadRun(uint64_t flight);
  void onRunDone(uint64_t flight, const UpstreamResult& result);
  void onFlightOutcome(uint64_t id, const FlightOutcome& outcome);
  void replyCached(Request& r, const CachedResponsePtr& entry, const std::string& x_cache, const std::string& status);
  void rememberRateLimit(const std::string& org, const HttpHeaders& headers);
  void handlePurge(Request& r);
  // Authorization → principal, remembered per connection (see AuthMemo).
  static AuthResult authenticate(HttpExchange& ex, const std::shared_ptr<const KeyStore>& keys,
                                 const std::string* authorization);
  // Does the route carry a key of ours (so the request must authenticate)?
  static bool needsKey(const Route& route, const HttpExchange& ex);
  void replyUnauthorized(Request& r);
  void startStream(Request& r);
  void fetchStreamToken(Request& r);
  void forward(Request& r, std::string target, Delivery delivery);

  void onHead(uint64_t id, const UpstreamHead& head);
  bool onData(uint64_t id, std::string_view data);
  void onDone(uint64_t id, const UpstreamResult& result);
  void onTokenDone(Request& r);
  void admit(Request& r, UpstreamRequest request, Delivery delivery, bool queued);
  void startUpstream(uint64_t id);
  void onRejected(uint64_t id, RejectReason why, int retry_after_s);
  Admission admissionFor(const Principal& p) const;
  void startRunUpstream(uint64_t flight);
  // Puts the key `org` has in the configuration in force now into `request`
  // (nothing for org ""). False when the organisation no longer exists.
  bool authorizeNow(UpstreamRequest& request, const std::string& org) const;
  CachedResponsePtr unauthorizedResponse() const;

  void replyError(Request& r, const ProxyError& error, HttpHeaders extra = {});
  void replyJson(Request& r, int status, std::string_view reason, std::string_view body, HttpHeaders extra = {});
  void replyUpstream(Request& r);
  HttpHeaders responseHeaders(Request& r, const HttpHeaders& upstream_headers);
  void finish(uint64_t id, bool aborted);

  std::string readyBody() const;
  void reportTracked();

  Runtime& runtime_;
  UpstreamTransport& upstream_;
  Scheduler& scheduler_;
  AccessLog& access_log_;
  Metrics& metrics_;
  CacheStore& cache_;
  RedisLink* redis_;
  std::unique_ptr<Coalescer> coalescer_;
  std::unique_ptr<StreamFanout> fanout_;
  ConfigPtr config_;
  std::shared_ptr<const KeyStore> keys_;
  // The prepared run of each flight this instance created, by flight id: it
  // lives as long as the flight (Coalescer's on_end), whoever led it.
  std::unordered_map<uint64_t, std::unique_ptr<RunWork>> runs_;
  // Latest x-ratelimit-* values per organisation, replayed on cache hits.
  std::unordered_map<std::string, std::pair<std::string, std::string>> ratelimit_seen_;
  bool draining_ = false;
  std::function<int64_t()> connections_;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> requests_;
};

}  // namespace wfp

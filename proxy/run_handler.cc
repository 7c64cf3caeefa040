// The life of a request
// ---------------------
//
//   HttpServer ──exchange──► handleClient
//        │                      │ route (raw path) ── 404 / 405 / admin routes
//        │                      │ draining? ───────── 503 shutting_down
//        │                      │ OPTIONS ─────────── forward, no authentication
//        │                      │ authenticate ────── 401 (upstream's exact body)
//        │                      │ run: body → canonical JSON ── 400 invalid_json
//        │                      │ stream without ?token= → GET /api/v1/token with
//        │                      │     the organisation key, then the stream with it
//        │                      ▼
//        │               forward ──► UpstreamClient (libcurl multi on the loop)
//        │                      │  Buffered (run, token): whole body, then respond()
//        │                      │  Streamed (stream, other paths, OPTIONS):
//        │                      │     begin() on head, write() per chunk, pause the
//        │                      │     transfer while the client's backlog is high
//        │                      ▼
//        └── onComplete / onAbort ──► finish: access log, metrics, Request freed
//
// A client that leaves (onAbort) cancels the upstream transfer it alone needed.
// Every continuation finds its Request by id; none holds the exchange pointer
// beyond onComplete/onAbort.
#include "proxy/run_handler.h"

#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "proxy/canonical_json.h"
#include "proxy/errors.h"
#include "proxy/headers.h"

namespace wfp {

namespace {

using Clock = std::chrono::steady_clock;

double millisSince(Clock::time_point start, Clock::time_point end = Clock::now()) {
  return std::chrono::duration<double, std::milli>(end - start).count();
}

const char* routeLabel(RouteKind kind) {
  switch (kind) {
    case RouteKind::Run: return "run";
    case RouteKind::Stream: return "stream";
    case RouteKind::Token: return "token";
    case RouteKind::Options: return "options";
    case RouteKind::PassThrough: return "other";
    case RouteKind::Health:
    case RouteKind::Ready:
    case RouteKind::Metrics:
    case RouteKind::Purge: return "admin";
    case RouteKind::NotFound:
    case RouteKind::MethodNotAllowed: return "invalid";
  }
  return "invalid";
}

std::string formatMs(double ms) {
  char buf[32];
  snprintf(buf, sizeof buf, "%.3f", ms);
  return buf;
}

// The client's X-Request-Id when it is a sane token, else a new one.
std::string requestIdFor(const HttpHeaders& headers) {
  const std::string* given = findHeader(headers, "x-request-id");
  if (given && !given->empty() && given->size() <= 128) {
    bool ok = true;
    for (unsigned char c : *given) ok &= (c > 0x20 && c < 0x7f);
    if (ok) return *given;
  }
  return newRequestId();
}

bool queryHasToken(std::string_view query) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    if (param.substr(0, 6) == "token=" && param.size() > 6) return true;
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

bool isTokenChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

}  // namespace

struct RunHandler::Request {
  uint64_t id = 0;
  HttpExchange* exchange = nullptr;  // null once the exchange is over
  ConfigPtr config;
  std::shared_ptr<const KeyStore> keys;
  Route route;
  Principal principal;
  std::string request_id;
  std::string method;
  std::string path;
  Clock::time_point started = Clock::now();
  double queue_ms = 0;
  double upstream_ms = 0;
  std::string cache = "-";

  // The upstream exchange in progress (0: none).
  uint64_t upstream_id = 0;
  Delivery delivery = Delivery::Buffered;
  Clock::time_point upstream_started;
  UpstreamHead head;
  std::string body;      // Buffered: the whole upstream body
  bool paused = false;   // Streamed: upstream paused for client back-pressure
  bool fetching_token = false;
};

RunHandler::RunHandler(EventLoop& loop, UpstreamClient& upstream, AccessLog& access_log, Metrics& metrics)
    : loop_(loop), upstream_(upstream), access_log_(access_log), metrics_(metrics) {}

RunHandler::~RunHandler() {
  for (auto& [id, r] : requests_) {
    if (r->upstream_id) upstream_.cancel(r->upstream_id);
  }
}

void RunHandler::setConfig(ConfigPtr config) {
  keys_ = std::make_shared<const KeyStore>(config);
  config_ = std::move(config);
}

RunHandler::Request* RunHandler::find(uint64_t id) {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

// --- entry points -------------------------------------------------------------

void RunHandler::handleClient(HttpExchange& ex) {
  auto owned = std::make_unique<Request>();
  Request& r = *owned;
  r.id = ex.id();
  r.exchange = &ex;
  r.config = config_;
  r.keys = keys_;
  r.request_id = requestIdFor(ex.headers());
  r.method = ex.method();
  r.path = std::string(ex.path());
  bool admin_here = !r.config->admin_listen.has_value();
  r.route = ex.target().empty() || ex.target()[0] != '/' ? Route{}
                                                           : routeClient(ex.method(), ex.path(), admin_here);
  uint64_t id = r.id;
  ex.setOnAbort([this, id] { finish(id, true); });
  ex.setOnComplete([this, id] { finish(id, false); });
  requests_.emplace(id, std::move(owned));
  dispatch(r);
}

void RunHandler::handleAdmin(HttpExchange& ex) {
  auto owned = std::make_unique<Request>();
  Request& r = *owned;
  r.id = ex.id();
  r.exchange = &ex;
  r.config = config_;
  r.keys = keys_;
  r.request_id = requestIdFor(ex.headers());
  r.method = ex.method();
  r.path = std::string(ex.path());
  r.route = routeAdmin(ex.method(), ex.path());
  uint64_t id = r.id;
  ex.setOnAbort([this, id] { finish(id, true); });
  ex.setOnComplete([this, id] { finish(id, false); });
  requests_.emplace(id, std::move(owned));
  dispatchAdmin(r);
}

// --- routing ------------------------------------------------------------------

void RunHandler::dispatchAdmin(Request& r) {
  switch (r.route.kind) {
    case RouteKind::Health:
      return replyJson(r, 200, "OK", R"({"status":"ok"})");
    case RouteKind::Ready:
      return replyJson(r, draining_ ? 503 : 200, draining_ ? "Service Unavailable" : "OK", readyBody());
    case RouteKind::Metrics: {
      std::string body = metrics_.render();
      HttpHeaders headers{{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"},
                          {"X-Request-Id", r.request_id}};
      r.exchange->respond(200, "OK", headers, body);
      return;
    }
    case RouteKind::MethodNotAllowed:
      return replyError(r, methodNotAllowed(), {{"Allow", r.route.allow}});
    default:
      return replyError(r, notFound());
  }
}

void RunHandler::dispatch(Request& r) {
  HttpExchange& ex = *r.exchange;
  switch (r.route.kind) {
    case RouteKind::NotFound:
      return replyError(r, notFound());
    case RouteKind::MethodNotAllowed:
      return replyError(r, methodNotAllowed(), {{"Allow", r.route.allow}});
    case RouteKind::Health:
    case RouteKind::Ready:
    case RouteKind::Metrics:
    case RouteKind::Purge:
      return dispatchAdmin(r);
    default:
      break;
  }
  if (draining_) return replyError(r, shuttingDown());

  for (const auto& h : ex.headers()) {
    // Header injection: nothing with CR/LF/NUL goes upstream.
    if (!isSafeHeaderValue(h.value)) return replyError(r, ProxyError{400, "Bad Request", "bad_request", "Bad request: invalid header value"});
  }

  if (r.route.kind == RouteKind::Options) {
    r.principal.org_label = "-";
    return forward(r, ex.target(), Delivery::Streamed);
  }
  if (r.route.kind == RouteKind::Stream && queryHasToken(ex.query())) {
    // A client token: its quota was spent when the client got it, and it
    // cannot be tied to an organisation. Forward at once, never cached.
    r.principal.org_label = "-";
    r.cache = "BYPASS";
    return forward(r, ex.target(), Delivery::Streamed);
  }

  AuthResult auth = r.keys->authenticate(findHeader(ex.headers(), "authorization"));
  if (auth.outcome != AuthOutcome::Authenticated) {
    HttpHeaders headers{{"Content-Type", "application/json"}, {"X-Request-Id", r.request_id}};
    r.exchange->respond(401, "Unauthorized", headers, kUnauthorizedBody);
    return;
  }
  r.principal = std::move(auth.principal);

  switch (r.route.kind) {
    case RouteKind::Run: {
      CanonicalJson canonical = canonicalizeJson(ex.body());
      if (!canonical.ok) return replyError(r, invalidJson(canonical.error));
      r.cache = "MISS";
      return forward(r, ex.target(), Delivery::Buffered);
    }
    case RouteKind::Stream:
      return startStream(r);
    case RouteKind::Token:
      return forward(r, ex.target(), Delivery::Buffered);
    default:
      return forward(r, ex.target(), Delivery::Streamed);
  }
}

void RunHandler::startStream(Request& r) {
  CanonicalJson canonical = canonicalizeJson(r.exchange->body());
  if (!canonical.ok) return replyError(r, invalidJson(canonical.error));
  r.cache = "MISS";
  fetchStreamToken(r);
}

// --- upstream -----------------------------------------------------------------

void RunHandler::fetchStreamToken(Request& r) {
  const Config& cfg = *r.config;
  UpstreamHeaderOptions opts;
  opts.request_id = r.request_id;
  if (!r.principal.pass_through) opts.authorization = "Bearer " + r.principal.org->api_key;
  // Only what the token route needs: the key, the request id and the client's
  // x-user-id (the upstream's per-user bucket for this route).
  HttpHeaders client_subset;
  for (const auto& h : r.exchange->headers()) {
    if (equalsIgnoreCase(h.name, "authorization") || equalsIgnoreCase(h.name, "x-user-id") ||
        equalsIgnoreCase(h.name, "user-agent")) {
      client_subset.push_back(h);
    }
  }
  UpstreamRequest req;
  req.method = "GET";
  req.url = cfg.upstream.base_url + "/api/v1/token?ttl=60";
  req.headers = upstreamRequestHeaders(client_subset, opts);
  r.fetching_token = true;
  r.delivery = Delivery::Buffered;
  r.body.clear();
  r.upstream_started = Clock::now();
  uint64_t id = r.id;
  UpstreamCallbacks cb;
  cb.on_head = [this, id](const UpstreamHead& head) { onHead(id, head); };
  cb.on_data = [this, id](std::string_view data) { return onData(id, data); };
  cb.on_done = [this, id](const UpstreamResult& result) { onTokenDone(id, result); };
  r.upstream_id = upstream_.start(std::move(req), std::move(cb));
}

void RunHandler::onTokenDone(uint64_t id, const UpstreamResult& result) {
  Request* r = find(id);
  if (!r || !r->exchange) return;
  r->upstream_id = 0;
  r->fetching_token = false;
  r->upstream_ms += millisSince(r->upstream_started);
  metrics_.countUpstream(r->principal.org_label, result.head_received ? r->head.status : 0);
  if (result.failure == UpstreamFailure::Timeout) return replyError(*r, upstreamTimeout());
  if (result.failure != UpstreamFailure::None) return replyError(*r, upstreamUnavailable());
  std::string token;
  if (r->head.status == 200) {
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    if (j.is_object() && j.contains("token") && j["token"].is_string()) token = j["token"].get<std::string>();
    for (char c : token) {
      if (!isTokenChar(c)) token.clear();
    }
  }
  if (token.empty()) {
    // The upstream refused the token (401/402/429/500...): that answer is the
    // client's answer, unchanged.
    return replyUpstream(*r);
  }
  std::string target = std::string(r->exchange->target());
  target += target.find('?') == std::string::npos ? "?token=" : "&token=";
  target += token;
  forward(*r, std::move(target), Delivery::Streamed);
}

void RunHandler::forward(Request& r, std::string target, Delivery delivery) {
  const Config& cfg = *r.config;
  HttpExchange& ex = *r.exchange;
  UpstreamHeaderOptions opts;
  opts.request_id = r.request_id;
  HttpHeaders client_headers = ex.headers();
  bool is_run = r.route.kind == RouteKind::Run || r.route.kind == RouteKind::Stream;
  opts.identity_encoding = is_run;
  if (r.route.kind == RouteKind::Options || r.route.kind == RouteKind::Stream) {
    // Preflights and token-authenticated streams carry no key of ours, and a
    // client key has no business upstream.
    removeHeader(client_headers, "authorization");
  } else if (!r.principal.pass_through) {
    opts.authorization = "Bearer " + r.principal.org->api_key;
  }

  UpstreamRequest req;
  req.method = ex.method();
  req.url = cfg.upstream.base_url + target;
  req.headers = upstreamRequestHeaders(client_headers, opts);
  req.body = ex.body();
  r.delivery = delivery;
  r.body.clear();
  r.head = UpstreamHead{};
  r.upstream_started = Clock::now();
  uint64_t id = r.id;
  UpstreamCallbacks cb;
  cb.on_head = [this, id](const UpstreamHead& head) { onHead(id, head); };
  cb.on_data = [this, id](std::string_view data) { return onData(id, data); };
  cb.on_done = [this, id](const UpstreamResult& result) { onDone(id, result); };
  r.upstream_id = upstream_.start(std::move(req), std::move(cb));
}

void RunHandler::onHead(uint64_t id, const UpstreamHead& head) {
  Request* r = find(id);
  if (!r || !r->exchange) return;
  r->head = head;
  if (r->delivery != Delivery::Streamed) return;
  int64_t length = -1;
  if (const std::string* cl = findHeader(head.headers, "content-length")) {
    char* end = nullptr;
    long long v = strtoll(cl->c_str(), &end, 10);
    if (end && *end == '\0' && v >= 0) length = v;
  }
  r->upstream_ms = millisSince(r->upstream_started);
  HttpHeaders headers = responseHeaders(*r, head.headers);
  r->exchange->begin(head.status, head.reason, headers, head.status == 204 || head.status == 304 ? -1 : length);
  uint64_t upstream_id = r->upstream_id;
  r->exchange->setOnDrain([this, id, upstream_id] {
    Request* rr = find(id);
    if (rr && rr->paused) {
      rr->paused = false;
      upstream_.resume(upstream_id);
    }
  });
}

bool RunHandler::onData(uint64_t id, std::string_view data) {
  Request* r = find(id);
  if (!r || !r->exchange) return true;  // nobody to give it to: let it drain
  if (r->delivery == Delivery::Buffered) {
    r->body.append(data);
    return true;
  }
  // Back-pressure: once the client's backlog is above the high-water mark,
  // leave further bytes in libcurl (the transfer pauses) until the client has
  // drained; onDrain resumes it.
  if (r->paused) return false;
  if (!r->exchange->write(data)) r->paused = true;
  return true;
}

void RunHandler::onDone(uint64_t id, const UpstreamResult& result) {
  Request* r = find(id);
  if (!r) return;
  r->upstream_id = 0;
  if (!r->exchange) return;
  if (r->delivery == Delivery::Buffered) r->upstream_ms += millisSince(r->upstream_started);
  metrics_.countUpstream(r->principal.org_label, result.head_received ? r->head.status : 0);
  metrics_.observeUpstreamSeconds(std::chrono::duration<double>(result.elapsed).count());
  if (result.failure != UpstreamFailure::None) {
    spdlog::warn("upstream {} {} failed: {} (request {})", r->method, r->path, result.detail, r->request_id);
  }
  if (r->delivery == Delivery::Streamed && r->exchange->responseStarted()) {
    if (result.failure == UpstreamFailure::None) {
      r->exchange->end();
    } else {
      // The client sees the stream cut, as the upstream cut it. abortResponse()
      // runs no callback: finish first, while the exchange is still readable.
      HttpExchange* ex = r->exchange;
      finish(id, false);
      ex->abortResponse();
    }
    return;
  }
  if (result.failure == UpstreamFailure::Timeout) return replyError(*r, upstreamTimeout());
  if (result.failure != UpstreamFailure::None) return replyError(*r, upstreamUnavailable());
  replyUpstream(*r);
}

// --- replies ------------------------------------------------------------------

HttpHeaders RunHandler::responseHeaders(Request& r, const HttpHeaders& upstream_headers) {
  HttpHeaders headers = clientResponseHeaders(upstream_headers);
  removeHeader(headers, "x-request-id");
  removeHeader(headers, "server-timing");
  headers.push_back({"X-Request-Id", r.request_id});
  headers.push_back({"Server-Timing", "queue;dur=" + formatMs(r.queue_ms) + ", upstream;dur=" + formatMs(r.upstream_ms)});
  return headers;
}

void RunHandler::replyUpstream(Request& r) {
  HttpHeaders headers = responseHeaders(r, r.head.headers);
  std::string body = std::move(r.body);
  r.exchange->respond(r.head.status, r.head.reason, headers, body);
}

void RunHandler::replyJson(Request& r, int status, std::string_view reason, std::string_view body, HttpHeaders extra) {
  HttpHeaders headers{{"Content-Type", "application/json"}};
  for (auto& h : extra) headers.push_back(std::move(h));
  headers.push_back({"X-Request-Id", r.request_id});
  r.exchange->respond(status, reason, headers, body);
}

void RunHandler::replyError(Request& r, const ProxyError& error, HttpHeaders extra) {
  replyJson(r, error.status, error.reason, errorJson(error), std::move(extra));
}

std::string RunHandler::readyBody() const {
  nlohmann::ordered_json j;
  j["status"] = draining_ ? "draining" : "ready";
  j["redis"] = config_ && config_->redis ? "down" : "off";
  nlohmann::ordered_json queues = nlohmann::ordered_json::object();
  if (config_) {
    for (const auto& org : config_->organisations) queues[org.name] = 0;
  }
  j["queues"] = queues;
  return j.dump();
}

void RunHandler::cancelAll() {
  std::vector<uint64_t> ids;
  for (auto& [id, r] : requests_) ids.push_back(id);
  for (uint64_t id : ids) {
    Request* r = find(id);
    if (!r) continue;
    if (r->upstream_id) {
      upstream_.cancel(r->upstream_id);
      r->upstream_id = 0;
    }
    if (!r->exchange) continue;
    if (r->exchange->responseStarted()) {
      HttpExchange* ex = r->exchange;
      finish(id, false);
      ex->abortResponse();
    } else {
      replyError(*r, shuttingDown());
    }
  }
}

// --- the end ------------------------------------------------------------------

void RunHandler::finish(uint64_t id, bool aborted) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  std::unique_ptr<Request> r = std::move(it->second);
  requests_.erase(it);
  if (r->upstream_id) {
    // The client left: the transfer only it needed stops here.
    upstream_.cancel(r->upstream_id);
    r->upstream_id = 0;
  }
  HttpExchange* ex = r->exchange;
  r->exchange = nullptr;
  int status = aborted ? 499 : (ex ? ex->status() : 0);
  double total_ms = millisSince(r->started);
  AccessRecord rec;
  rec.request_id = r->request_id;
  rec.org = r->principal.org_label.empty() ? "-" : r->principal.org_label;
  rec.client = r->principal.client.empty() ? "-" : r->principal.client;
  rec.method = r->method;
  rec.path = r->path;
  rec.status = status;
  rec.cache = r->cache;
  rec.queue_ms = r->queue_ms;
  rec.upstream_ms = r->upstream_ms;
  rec.bytes_in = ex ? ex->bytesIn() : 0;
  rec.bytes_out = ex ? ex->bytesOut() : 0;
  access_log_.write(rec);
  metrics_.countRequest(rec.org, routeLabel(r->route.kind), status, rec.cache);
  double overhead_ms = total_ms - r->queue_ms - r->upstream_ms;
  if (overhead_ms < 0) overhead_ms = 0;
  metrics_.observeOverheadSeconds(overhead_ms / 1000.0);
}

}  // namespace wfp

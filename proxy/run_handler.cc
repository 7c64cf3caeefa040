// The life of a request
// ---------------------
//
//   HttpServer ──head──► handleHead: 404/405, 503 while draining, 401 — before
//        │               the body is read (docs/http.md)
//        ├─exchange──► handleClient ─► dispatch (this file)
//        │                 │ route (raw path) ── 404 / 405 / admin routes
//        │                 │ draining? ───────── 503 shutting_down
//        │                 │ OPTIONS, client-token stream ─► Forwarder
//        │                 │ authenticate ────── 401 (upstream's exact body)
//        │                 │ run/stream: body → canonical JSON ── 400 invalid_json
//        │                 │   → input digest (the workflow's key rules, key_rules.h)
//        │                 ▼
//        │   run, stream ─► Flights (flights.cc): generation → key → look-up
//        │                 under Cache-Control → hit | join the input's flight
//        │                 (Coalescer / StreamFanout) → UpstreamAttempt (queue,
//        │                 key in force, 429 retry) → store → every waiter
//        │   token, other ─► Forwarder (forwarder.cc): UpstreamAttempt → the
//        │                 answer, whole or streamed with back-pressure
//        │                 ▼
//        │              replies.cc: the client's answer and its headers
//        └── onComplete / onAbort ──► finish: access log, metrics, request freed
//                                     (and with it whatever it still waits on)
//
// Requests the HttpServer refuses itself (malformed, too large, too slow)
// never become a request: recordServerError logs and counts them.
#include "proxy/run_handler.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include "proxy/canonical_json.h"
#include "proxy/errors.h"
#include "proxy/hash.h"
#include "proxy/headers.h"
#include "proxy/key_rules.h"
#include "proxy/redis_client.h"
#include "proxy/replies.h"
#include "proxy/stream_token.h"
#include "proxy/text.h"
#include "proxy/trace_context.h"

namespace wfp {

namespace {

const std::string kDash = "-";

double millisSince(Clock::time_point start, Clock::time_point end) {
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
    case RouteKind::Purge:
    case RouteKind::Usage: return "admin";
    case RouteKind::NotFound:
    case RouteKind::MethodNotAllowed: return "invalid";
  }
  return "invalid";
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

}  // namespace

RunHandler::RunHandler(Runtime& runtime, UpstreamTransport& upstream, Scheduler& scheduler, AccessLog& access_log,
                       Metrics& metrics, CacheStore& cache, RedisLink* redis, RedisLink* shared_quotas,
                       std::string key_prefix)
    : scheduler_(scheduler),
      access_log_(access_log),
      metrics_(metrics),
      cache_(cache),
      redis_(redis),
      runtime_(runtime),
      ports_{runtime, upstream, scheduler, metrics, keys_in_force_},
      quotas_(runtime, shared_quotas, std::move(key_prefix)),
      forwarder_(ports_, [this](uint64_t id) { finish(id, false); }),
      flights_(ports_, cache, redis, forwarder_, quotas_,
               RequestTable{[this](uint64_t id) { return find(id); }, [this](uint64_t id) { finish(id, false); }}) {}

RunHandler::~RunHandler() {
  // One by one, each out of the table first: a request's handles may call
  // back into other requests as they cancel.
  while (!requests_.empty()) {
    RequestPtr r = std::move(requests_.begin()->second);
    requests_.erase(requests_.begin());
    r->exchange = nullptr;
  }
}

void RunHandler::setConfig(ConfigPtr config) {
  keys_ = std::make_shared<const KeyStore>(config);
  keys_in_force_.setConfig(config);
  // Remembered per configured organisation: one removed by a reload goes.
  flights_.rateLimits().forgetRemoved(*config);
  quotas_.forgetRemoved(*config);  // the rest keep what they used
  config_ = std::move(config);
  // Then the budgets: configure() may start queued requests at once (a
  // limit went up), and they must carry the keys in force from now on
  // (docs/http.md) — a rotated key is revoked upstream.
  scheduler_.configure(config_);
}

ClientRequest* RunHandler::find(uint64_t id) {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

// --- entry points -------------------------------------------------------------

ClientRequest& RunHandler::adopt(HttpExchange& ex) {
  auto owned = std::make_shared<ClientRequest>();
  ClientRequest& r = *owned;
  r.id = ex.id();
  r.exchange = &ex;
  r.config = config_;
  r.keys = keys_;
  r.started = runtime_.now();
  r.request_id = requestIdFor(ex.headers());
  if (access_log_.enabled()) r.trace_id = traceIdOf(ex.headers());
  uint64_t id = r.id;
  ex.setOnAbort([this, id] { finish(id, true); });
  ex.setOnComplete([this, id] { finish(id, false); });
  if (!requests_.emplace(id, std::move(owned)).second) {
    // Exchange ids are unique in the process; anything else is a broken invariant.
    spdlog::critical("duplicate exchange id {}", id);
    std::abort();
  }
  return r;
}

void RunHandler::handleClient(HttpExchange& ex) {
  ClientRequest& r = adopt(ex);
  bool admin_here = !r.config->admin_listen.has_value();
  // Any target form: routing refuses what is not an origin-form path (404,
  // or 405 for CONNECT's authority-form).
  r.route = routeClient(ex.method(), ex.path(), admin_here);
  dispatch(r);
}

// docs/http.md: authenticate on the head. A request whose answer does not
// depend on its body is answered before the body is read (no 100 Continue,
// nothing buffered): one that needs a key and has none (without
// default_organisation) or an unknown one (reject) gets its 401; a route
// that does not exist or a refused method its 404/405; a forwarded request
// while draining its 503. Everything else is left to handleClient once the
// body is in.
bool RunHandler::handleHead(HttpExchange& ex) {
  bool admin_here = !config_->admin_listen.has_value();
  Route route = routeClient(ex.method(), ex.path(), admin_here);
  bool forwarded = route.kind == RouteKind::Run || route.kind == RouteKind::Stream ||
                   route.kind == RouteKind::Token || route.kind == RouteKind::PassThrough ||
                   route.kind == RouteKind::Options;
  if (route.kind == RouteKind::NotFound || route.kind == RouteKind::MethodNotAllowed || (forwarded && draining_)) {
    ClientRequest& r = adopt(ex);
    r.route = std::move(route);
    dispatch(r);  // answers at once, from the head alone
    return true;
  }
  if (!needsKey(route, ex)) return false;
  AuthResult auth = authenticate(ex, keys_, findHeader(ex.headers(), "authorization"));
  if (auth.outcome == AuthOutcome::Authenticated) return false;
  ClientRequest& r = adopt(ex);
  r.route = std::move(route);
  replyUnauthorized(r);
  return true;
}

bool RunHandler::needsKey(const Route& route, const HttpExchange& ex) {
  switch (route.kind) {
    case RouteKind::Run:
    case RouteKind::Token:
    case RouteKind::PassThrough:
      return true;
    case RouteKind::Stream:
      return !queryHasToken(ex.query());  // a client token is the stream's credential
    default:
      return false;
  }
}

void RunHandler::handleAdmin(HttpExchange& ex) {
  ClientRequest& r = adopt(ex);
  r.route = routeAdmin(ex.method(), ex.path());
  dispatchAdmin(r);
}

void RunHandler::recordServerError(const HttpServerError& error) {
  AccessRecord rec;
  rec.request_id = newRequestId();
  rec.org = "-";
  rec.client = "-";
  rec.method = error.method.empty() ? "-" : std::string(error.method);
  rec.path = error.path.empty() ? "-" : std::string(error.path);
  rec.status = error.status;
  rec.cache = "-";
  rec.bytes_in = error.bytes_in;
  rec.bytes_out = error.bytes_out;
  rec.remote_addr = std::string(error.peer);
  access_log_.write(rec);
  // No route was chosen: labelled like a request for an unknown path.
  metrics_.countRequest(rec.org, routeLabel(RouteKind::NotFound), error.status, rec.cache);
}

// --- routing ------------------------------------------------------------------

void RunHandler::dispatchAdmin(ClientRequest& r) {
  if (isAdminAction(r.route.kind) && !adminAuthorized(r)) {
    return replyError(r, adminUnauthorized(), {{"WWW-Authenticate", R"(Bearer realm="workflow-proxy admin")"}});
  }
  switch (r.route.kind) {
    case RouteKind::Health:
      return replyJson(r, 200, "OK", R"({"status":"ok"})");
    case RouteKind::Ready:
      return replyJson(r, draining_ ? 503 : 200, draining_ ? "Service Unavailable" : "OK", readyBody());
    case RouteKind::Metrics: {
      if (connections_) metrics_.setConnections(connections_());
      reportTracked();
      std::string body = metrics_.render();
      HttpHeaders headers{{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"},
                          {"X-Request-Id", r.request_id}};
      r.exchange->respond(200, "OK", headers, body);
      return;
    }
    case RouteKind::Purge:
      return handlePurge(r);
    case RouteKind::Usage:
      return handleUsage(r);
    case RouteKind::MethodNotAllowed:
      return replyError(r, methodNotAllowed(), {{"Allow", r.route.allow}});
    default:
      return replyError(r, notFound());
  }
}

void RunHandler::dispatch(ClientRequest& r) {
  HttpExchange& ex = *r.exchange;
  switch (r.route.kind) {
    case RouteKind::NotFound:
      return replyError(r, r.route.bad_workflow ? workflowNotFound() : notFound());
    case RouteKind::MethodNotAllowed:
      return replyError(r, methodNotAllowed(), {{"Allow", r.route.allow}});
    case RouteKind::Health:
    case RouteKind::Ready:
    case RouteKind::Metrics:
    case RouteKind::Purge:
    case RouteKind::Usage:
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
    return forwarder_.forward(r.shared_from_this(), ex.target(), Delivery::Streamed);
  }
  if (!needsKey(r.route, ex)) {
    // A client token: its quota was spent when the client got it, and it
    // cannot be tied to an organisation. Forward at once, never cached —
    // so never an answer for only-if-cached (docs/http.md: 504, no upstream call).
    r.principal.org_label = "-";
    r.cache = "BYPASS";
    if (parseCacheControl(ex.headers()).only_if_cached) return replyError(r, notCached());
    return forwarder_.forward(r.shared_from_this(), ex.target(), Delivery::Streamed);
  }

  AuthResult auth = authenticate(ex, r.keys, findHeader(ex.headers(), "authorization"));
  if (auth.outcome != AuthOutcome::Authenticated) return replyUnauthorized(r);
  r.principal = std::move(auth.principal);

  switch (r.route.kind) {
    case RouteKind::Run:
    case RouteKind::Stream: {
      CanonicalJson canonical = canonicalizeJson(ex.body());
      if (!canonical.ok) return replyError(r, invalidJson(canonical.error));
      // The workflow's key rules (docs/http.md, "Cache keys that ignore
      // noise") shape the key only; the body sent upstream is the client's.
      r.body_sha = inputDigest(canonical.canonical, r.config->cache.keyRulesFor(r.route.workflow_id));
      return flights_.serve(r.shared_from_this());
    }
    case RouteKind::Token:
      return forwarder_.forward(r.shared_from_this(), ex.target(), Delivery::Buffered);
    default:
      return forwarder_.forward(r.shared_from_this(), ex.target(), Delivery::Streamed);
  }
}

namespace {
// The last successful authentication on a connection. A keep-alive client
// sends the same Authorization header on every request: comparing it with
// the previous one costs less than hashing it again. Held only while the
// connection is open, wiped when dropped; never logged.
struct AuthMemo {
  std::shared_ptr<const KeyStore> keys;  // the key set it was checked against
  std::string authorization;
  AuthResult result;
  ~AuthMemo() { OPENSSL_cleanse(authorization.data(), authorization.size()); }
};
}  // namespace

// docs/security.md: an Authorization header decides on its own (a wrong key
// is 401 whatever certificate the connection has). Without one, the
// connection's verified client certificate names the client through its
// subject CN (clients[].tls_subject); a CN that names no client counts as no
// key at all: default_organisation, else 401.
AuthResult RunHandler::authenticate(HttpExchange& ex, const std::shared_ptr<const KeyStore>& keys,
                                    const std::string* authorization) {
  if (!authorization) {
    if (!ex.peerSubject().empty()) {
      AuthResult by_certificate = keys->authenticateSubject(ex.peerSubject());
      if (by_certificate.outcome == AuthOutcome::Authenticated) return by_certificate;
    }
    return keys->authenticate(nullptr);
  }
  std::shared_ptr<void>& slot = ex.connectionData();
  auto* memo = static_cast<AuthMemo*>(slot.get());
  if (memo && memo->keys == keys && memo->authorization.size() == authorization->size() &&
      CRYPTO_memcmp(memo->authorization.data(), authorization->data(), authorization->size()) == 0) {
    return memo->result;
  }
  AuthResult result = keys->authenticate(authorization);
  if (result.outcome == AuthOutcome::Authenticated) {
    auto fresh = std::make_shared<AuthMemo>();
    fresh->keys = keys;
    fresh->authorization = *authorization;
    fresh->result = result;
    slot = std::move(fresh);
  } else {
    slot.reset();
  }
  return result;
}

// admin.token_file set: the request's `Authorization: Bearer <token>` must
// name it. Compared as SHA-256 digests, in constant time: neither the
// token's length nor a matching prefix shows in the time taken.
bool RunHandler::adminAuthorized(const ClientRequest& r) const {
  const auto& expected = r.config->admin.token_sha256;
  if (!expected) return true;
  const std::string* authorization = findHeader(r.exchange->headers(), "authorization");
  if (!authorization) return false;
  std::string_view value = *authorization;
  constexpr std::string_view kScheme = "bearer ";
  if (value.size() < kScheme.size() || !equalsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) return false;
  value.remove_prefix(kScheme.size());
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  return constantTimeEqual(sha256(value), *expected);
}

void RunHandler::handlePurge(ClientRequest& r) {
  // Canonical first, as a run's body is: the input to purge is then found in
  // it byte for byte (canonicalMember), with every digit the client sent. One
  // level deeper than a run body may nest: the envelope.
  // (No second parser reads the envelope: nlohmann refuses numbers a double
  // cannot hold, which the body may carry.)
  CanonicalJson request = canonicalizeJson(r.exchange->body(), kDefaultMaxJsonDepth + 1);
  if (!request.ok) return replyError(r, invalidJson(request.error));
  auto text = [&](std::string_view name) -> std::optional<std::string> {
    std::optional<std::string_view> value = canonicalMember(request.canonical, name);
    if (!value || value->empty() || value->front() != '"') return std::nullopt;
    auto s = nlohmann::json::parse(*value, nullptr, false);  // one string literal
    if (!s.is_string()) return std::nullopt;
    return s.get<std::string>();
  };
  std::optional<std::string> org_field = text("organisation"), wf_field = text("workflow_id");
  if (!org_field || !wf_field) {
    return replyError(r, ProxyError{400, "Bad Request", "invalid_json",
                                    R"(Expected {"organisation": "...", "workflow_id": "..."[, "body": {...}]})"});
  }
  std::string org = std::move(*org_field);
  std::string wf = std::move(*wf_field);
  if (!r.config->findOrganisation(org) || !isValidWorkflowId(wf)) return replyError(r, notFound());
  uint64_t id = r.id;
  auto done = [this, id](bool ok) {
    ClientRequest* rq = find(id);
    if (!rq || !rq->live()) return;
    if (!ok) spdlog::warn("purge: Redis unreachable, purged this instance only");
    replyJson(*rq, 200, "OK", R"({"success":true})");
  };
  if (std::optional<std::string_view> body = canonicalMember(request.canonical, "body")) {
    if (body->empty() || body->front() != '{') {
      return replyError(r, ProxyError{400, "Bad Request", "invalid_json", "\"body\" must be a JSON object"});
    }
    auto keep_ms = static_cast<int64_t>((r.config->cache.ttlFor(wf) + r.config->cache.staleIfErrorFor(wf)) * 1000.0);
    // Keyed as a run of this body is, under the same rules.
    return cache_.purgeInput(org, wf, inputDigest(*body, r.config->cache.keyRulesFor(wf)), keep_ms, done);
  }
  cache_.purgeWorkflow(org, wf, done);
}

// GET /admin/usage (docs/operations.md, "Usage"): every configured client of
// every organisation, and whoever else was counted (an organisation's
// "default" client, pass_through's "-"). A quota's `used` may need Redis:
// the answer waits for every count, each of which falls back to this
// instance's own.
void RunHandler::handleUsage(ClientRequest& r) {
  struct Report {
    nlohmann::ordered_json organisations = nlohmann::ordered_json::object();
    size_t waiting = 1;  // the counts asked for, and this function
  };
  auto report = std::make_shared<Report>();
  auto counts = [](const UsageCounts* c) {
    nlohmann::ordered_json j;
    j["runs"] = c ? c->runs : 0;
    j["hits"] = c ? c->hits : 0;
    j["coalesced"] = c ? c->coalesced : 0;
    j["stale"] = c ? c->stale : 0;
    j["errors"] = c ? c->errors : 0;
    j["quota"] = nullptr;
    return j;
  };
  uint64_t id = r.id;
  auto reply = [this, id, report] {
    if (--report->waiting != 0) return;
    ClientRequest* rq = find(id);
    if (!rq || !rq->live()) return;
    nlohmann::ordered_json body;
    body["organisations"] = std::move(report->organisations);
    replyJson(*rq, 200, "OK", body.dump());
  };
  const ClientUsage& usage = metrics_.clientUsage();
  for (const auto& org : r.config->organisations) {
    nlohmann::ordered_json& clients = report->organisations[org.name]["clients"];
    clients = nlohmann::ordered_json::object();
    for (const auto& c : org.clients) clients[c.name] = counts(usage.find(org.name, c.name));
  }
  for (const auto& [key, c] : usage.table()) {
    nlohmann::ordered_json& clients = report->organisations[key.first]["clients"];
    if (!clients.is_object()) clients = nlohmann::ordered_json::object();
    if (!clients.contains(key.second)) clients[key.second] = counts(&c);
  }
  for (const auto& org : r.config->organisations) {
    for (const auto& c : org.clients) {
      if (!c.quota) continue;
      ++report->waiting;
      ClientQuota quota = *c.quota;
      quotas_.used(org.name, c.name, quota, [report, reply, org = org.name, client = c.name, quota](int64_t used) {
        nlohmann::ordered_json q;
        q["runs"] = quota.runs;
        if (quota.window_s == std::floor(quota.window_s) && quota.window_s < 1e15) {
          q["window_s"] = static_cast<int64_t>(quota.window_s);
        } else {
          q["window_s"] = quota.window_s;
        }
        q["used"] = used;
        report->organisations[org]["clients"][client]["quota"] = std::move(q);
        reply();
      });
    }
  }
  reply();
}

std::string RunHandler::readyBody() const {
  nlohmann::ordered_json j;
  j["status"] = draining_ ? "draining" : "ready";
  j["redis"] = !redis_ ? "off" : (redis_->up() ? "up" : "down");
  nlohmann::ordered_json queues = nlohmann::ordered_json::object();
  if (config_) {
    for (const auto& org : config_->organisations) queues[org.name] = 0;
  }
  for (const auto& [org, depth] : scheduler_.depths()) queues[org] = depth;
  j["queues"] = queues;
  return j.dump();
}

// The per-key maps of the run path (docs/security.md), read when scraped: no cost
// per request.
std::vector<std::pair<const char*, size_t>> RunHandler::trackedEntries() const {
  return {{"generations", cache_.generationsTracked()},    {"flights", flights_.coalescerFlights()},
          {"waiters", flights_.coalescerWaiters()},         {"prepared_runs", flights_.preparedRuns()},
          {"stream_flights", flights_.streamFlights()},     {"ratelimit_seen", flights_.rateLimits().size()},
          {"requests", requests_.size()},                    {"quota_windows", quotas_.size()}};
}

void RunHandler::reportTracked() {
  for (const auto& [map, n] : trackedEntries()) metrics_.setTracked(map, static_cast<int64_t>(n));
}

size_t RunHandler::runsInFlight() const { return flights_.runsInFlight(); }

void RunHandler::cancelAll() {
  scheduler_.rejectAll(RejectReason::ShuttingDown);
  std::vector<uint64_t> ids;
  for (auto& [id, r] : requests_) ids.push_back(id);
  for (uint64_t id : ids) {
    ClientRequest* r = find(id);
    if (!r) continue;
    r->attempt.reset();
    r->waiter.reset();
    r->subscription.reset();
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
  // Out of the table first; freed at the end of this function, and with it
  // what it started: its own transfer stops (the client left), a queued
  // attempt leaves the queue spending nothing, its place in a flight goes (a
  // run already started goes on and is stored).
  RequestPtr r = std::move(it->second);
  requests_.erase(it);
  HttpExchange* ex = r->exchange;
  r->exchange = nullptr;
  int status = aborted ? 499 : (ex ? ex->status() : 0);
  double total_ms = millisSince(r->started, runtime_.now());
  const std::string& org = r->principal.org_label.empty() ? kDash : r->principal.org_label;
  if (access_log_.enabled()) {
    AccessRecord rec;
    rec.request_id = r->request_id;
    rec.org = org;
    rec.client = r->principal.client.empty() ? "-" : r->principal.client;
    rec.method = ex ? ex->method() : "-";  // the exchange is still readable in its callbacks
    rec.path = ex ? std::string(ex->path()) : "-";
    rec.status = status;
    rec.cache = r->cache;
    rec.queue_ms = r->queue_ms;
    rec.upstream_ms = r->upstream_ms;
    rec.bytes_in = ex ? ex->bytesIn() : 0;
    rec.bytes_out = ex ? ex->bytesOut() : 0;
    rec.remote_addr = ex ? ex->peer() : std::string();
    // From the complete head: the upload, then the request's own time.
    rec.duration_ms = total_ms + (ex ? ex->receiveMs() : 0);
    rec.upstream_status = r->upstream_status;
    rec.trace_id = r->trace_id.hex();
    access_log_.write(rec);
  }
  metrics_.countRequest(org, routeLabel(r->route.kind), status, r->cache);
  if (!r->principal.org_label.empty() && !r->principal.client.empty()) {
    metrics_.clientUsage().countAnswer(r->principal.org_label, r->principal.client, r->cache, status);
  }
  metrics_.setCacheEntries(static_cast<int64_t>(cache_.entries()));
  double overhead_ms = total_ms - r->queue_ms - r->upstream_ms;
  if (overhead_ms < 0) overhead_ms = 0;
  metrics_.observeOverheadSeconds(overhead_ms / 1000.0);
}

}  // namespace wfp

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
// Requests the HttpServer refuses itself (malformed, too large, too slow)
// never become a Request: recordServerError logs and counts them.
//
// A client that leaves (onAbort) cancels the upstream transfer it alone needed.
// Every continuation finds its Request by id; none holds the exchange pointer
// beyond onComplete/onAbort.
#include "proxy/run_handler.h"

#include <charconv>
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
#include "proxy/redis_client.h"
#include "proxy/stream_token.h"

namespace wfp {

namespace {

using SteadyClock = std::chrono::steady_clock;

const std::string kDash = "-";
// The most an upstream Content-Length makes us reserve up front.
constexpr uint64_t kMaxBodyReserve = 256u << 20;

double millisSince(SteadyClock::time_point start, SteadyClock::time_point end) {
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

// Milliseconds with three decimals ("12.345"), as "%.3f" would print them,
// without printf's floating-point path (a tenth of a cache hit's time).
void appendMs(std::string& out, double ms) {
  if (!(ms > 0)) ms = 0;  // negative clock skew, NaN
  if (ms > 1e12) ms = 1e12;
  auto us = static_cast<uint64_t>(std::llround(ms * 1000.0));
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, us / 1000);
  (void)ec;  // 32 bytes always hold a uint64_t
  *end++ = '.';
  uint64_t frac = us % 1000;
  *end++ = static_cast<char>('0' + frac / 100);
  *end++ = static_cast<char>('0' + frac / 10 % 10);
  *end++ = static_cast<char>('0' + frac % 10);
  out.append(buf, end);
}

// The Server-Timing value: "queue;dur=Q, upstream;dur=U".
void appendServerTiming(std::string& out, double queue_ms, double upstream_ms) {
  out.append("queue;dur=");
  appendMs(out, queue_ms);
  out.append(", upstream;dur=");
  appendMs(out, upstream_ms);
}

std::string serverTiming(double queue_ms, double upstream_ms) {
  std::string out;
  appendServerTiming(out, queue_ms, upstream_ms);
  return out;
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

struct CacheControl {
  bool no_cache = false;
  bool no_store = false;
  bool only_if_cached = false;
  std::optional<int64_t> max_age;  // seconds
};

// Request directives of RFC 9111 §5.2.1 that SPEC §4.3 gives meaning to.
CacheControl parseCacheControl(const HttpHeaders& headers) {
  CacheControl cc;
  for (const auto& h : headers) {
    if (!equalsIgnoreCase(h.name, "cache-control")) continue;
    std::string_view rest = h.value;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view d = rest.substr(0, comma);
      while (!d.empty() && (d.front() == ' ' || d.front() == '\t')) d.remove_prefix(1);
      while (!d.empty() && (d.back() == ' ' || d.back() == '\t')) d.remove_suffix(1);
      if (equalsIgnoreCase(d, "no-cache")) {
        cc.no_cache = true;
      } else if (equalsIgnoreCase(d, "no-store")) {
        cc.no_store = true;
      } else if (equalsIgnoreCase(d, "only-if-cached")) {
        cc.only_if_cached = true;
      } else if (d.size() > 8 && equalsIgnoreCase(d.substr(0, 8), "max-age=")) {
        std::string_view v = d.substr(8);
        if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
        int64_t n = 0;
        bool ok = !v.empty() && v.size() <= 12;
        for (char c : v) {
          if (c < '0' || c > '9') ok = false;
          n = n * 10 + (c - '0');
        }
        if (ok) cc.max_age = cc.max_age ? std::min(*cc.max_age, n) : n;
      }
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return cc;
}

// Stored only when the upstream said so: 200 with "success": true.
bool isStorable(int status, const std::string& body) { return status == 200 && isSuccessObject(body); }

int64_t toMillis(double seconds) { return static_cast<int64_t>(seconds * 1000.0); }

}  // namespace

struct RunHandler::Request {
  uint64_t id = 0;
  HttpExchange* exchange = nullptr;  // null once the exchange is over
  ConfigPtr config;
  std::shared_ptr<const KeyStore> keys;
  Route route;
  Principal principal;
  std::string request_id;
  SteadyClock::time_point started;
  double queue_ms = 0;
  double upstream_ms = 0;
  std::string cache = "-";

  // The upstream exchange in progress (0: none).
  uint64_t upstream_id = 0;
  Delivery delivery = Delivery::Buffered;
  SteadyClock::time_point upstream_started;
  UpstreamHead head;
  std::string body;      // Buffered: the whole upstream body
  bool paused = false;   // Streamed: upstream paused for client back-pressure
  bool fetching_token = false;
  std::unique_ptr<UpstreamRequest> pending;  // what goes upstream (again, on a 429 retry)
  // The organisation whose key `pending` carries, set when it starts (empty:
  // no key of ours, e.g. pass_through, a preflight, a token stream).
  std::string key_org;
  uint64_t ticket = 0;       // scheduler ticket while queued or running
  SteadyClock::time_point queued_at{};
  bool got_429 = false;      // the current exchange answered 429

  // The run path.
  std::string body_sha;   // hex SHA-256 of the canonical body
  std::string cache_key;
  CacheControl cc;
  double ttl_s = 0;
  double stale_s = 0;
  bool bypass = false;      // the cache is neither read nor written
  bool may_store = false;
  CachedResponsePtr stale;  // expired entry still within stale_if_error_s
  uint64_t waiter = 0;      // coalescer waiter id
  uint64_t stream_sub = 0;  // stream fan-out subscriber id
  bool flight_creator = false;
};

// A run this instance leads: owned here, not by any request, so that it
// completes (and is stored) even when every waiter has left.
struct RunHandler::RunWork {
  uint64_t flight = 0;
  std::string key;  // the cache key it stores under
  Admission admission;
  uint64_t ticket = 0;
  SteadyClock::time_point queued_at;
  double queue_ms = 0;
  bool got_429 = false;
  std::string org_label;
  // The organisation whose key the run carries, looked up when it starts
  // (empty in pass_through: the client's own key is in the request).
  std::string org;
  UpstreamRequest request;
  bool may_store = false;
  int64_t keep_ms = 0;
  uint64_t upstream_id = 0;
  SteadyClock::time_point started;
  // What the upstream sent, from the start of the exchange on (a queued run
  // has none yet).
  struct Received {
    UpstreamHead head;
    std::string body;
  };
  std::unique_ptr<Received> got;
};

RunHandler::RunHandler(Runtime& runtime, UpstreamTransport& upstream, Scheduler& scheduler, AccessLog& access_log,
                       Metrics& metrics, CacheStore& cache, RedisLink* redis)
    : runtime_(runtime),
      upstream_(upstream),
      scheduler_(scheduler),
      access_log_(access_log),
      metrics_(metrics),
      cache_(cache),
      redis_(redis) {
  FlightHooks hooks;
  hooks.on_lead = [this](uint64_t flight, std::string) { leadRun(flight); };
  hooks.on_end = [this](uint64_t flight) {
    // However the flight ended (abandoned while queued, answered by another
    // instance or by the cache), what was prepared for it goes with it.
    auto it = runs_.find(flight);
    if (it == runs_.end()) return;
    std::unique_ptr<RunWork> w = std::move(it->second);
    runs_.erase(it);
    if (w->upstream_id) upstream_.cancel(w->upstream_id);
    if (w->ticket) scheduler_.cancel(w->ticket);  // still queued: spends nothing
  };
  hooks.lookup_shared = [this](const std::string& key, int64_t min_stored_at_ms,
                               std::function<void(CachedResponsePtr)> fn) {
    cache_.lookup(key, toMillis(3600), std::move(fn), min_stored_at_ms);
  };
  coalescer_ = std::make_unique<Coalescer>(runtime, redis, cache.prefix(), std::move(hooks));
  fanout_ = std::make_unique<StreamFanout>(
      runtime, upstream, scheduler, cache,
      [this](UpstreamRequest& request, const std::string& org) { return authorizeNow(request, org); });
}

RunHandler::~RunHandler() {
  for (auto& [id, r] : requests_) {
    if (r->upstream_id) upstream_.cancel(r->upstream_id);
  }
  for (auto& [flight, w] : runs_) {
    if (w->upstream_id) upstream_.cancel(w->upstream_id);
  }
}

void RunHandler::setConfig(ConfigPtr config) {
  keys_ = std::make_shared<const KeyStore>(config);
  // Remembered per configured organisation: one removed by a reload goes.
  std::erase_if(ratelimit_seen_, [&](const auto& kv) { return !config->findOrganisation(kv.first); });
  config_ = std::move(config);
  // Then the budgets: configure() may start queued requests at once (a
  // limit went up), and they must carry the keys in force from now on
  // (SPEC §10.1) — a rotated key is revoked upstream.
  scheduler_.configure(config_);
}

RunHandler::Request* RunHandler::find(uint64_t id) {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

RunHandler::Request* RunHandler::live(uint64_t id) {
  Request* r = find(id);
  return r && r->exchange && !r->exchange->responseStarted() ? r : nullptr;
}

// --- entry points -------------------------------------------------------------

RunHandler::Request& RunHandler::adopt(HttpExchange& ex) {
  auto owned = std::make_unique<Request>();
  Request& r = *owned;
  r.id = ex.id();
  r.exchange = &ex;
  r.config = config_;
  r.keys = keys_;
  r.started = runtime_.now();
  r.request_id = requestIdFor(ex.headers());
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
  Request& r = adopt(ex);
  bool admin_here = !r.config->admin_listen.has_value();
  // Any target form: routing refuses what is not an origin-form path (404,
  // or 405 for CONNECT's authority-form).
  r.route = routeClient(ex.method(), ex.path(), admin_here);
  dispatch(r);
}

// SPEC §10.1: authenticate on the head. A request whose answer does not
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
    Request& r = adopt(ex);
    r.route = std::move(route);
    dispatch(r);  // answers at once, from the head alone
    return true;
  }
  if (!needsKey(route, ex)) return false;
  AuthResult auth = authenticate(ex, keys_, findHeader(ex.headers(), "authorization"));
  if (auth.outcome == AuthOutcome::Authenticated) return false;
  Request& r = adopt(ex);
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

void RunHandler::replyUnauthorized(Request& r) {
  HttpHeaders headers{{"Content-Type", "application/json"}, {"X-Request-Id", r.request_id}};
  r.exchange->respond(401, "Unauthorized", headers, kUnauthorizedBody);
}

void RunHandler::handleAdmin(HttpExchange& ex) {
  Request& r = adopt(ex);
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
  access_log_.write(rec);
  // No route was chosen: labelled like a request for an unknown path.
  metrics_.countRequest(rec.org, routeLabel(RouteKind::NotFound), error.status, rec.cache);
}

// --- routing ------------------------------------------------------------------

void RunHandler::dispatchAdmin(Request& r) {
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
  if (!needsKey(r.route, ex)) {
    // A client token: its quota was spent when the client got it, and it
    // cannot be tied to an organisation. Forward at once, never cached —
    // so never an answer for only-if-cached (SPEC §4.3: 504, no upstream call).
    r.principal.org_label = "-";
    r.cache = "BYPASS";
    if (parseCacheControl(ex.headers()).only_if_cached) return replyError(r, notCached());
    return forward(r, ex.target(), Delivery::Streamed);
  }

  AuthResult auth = authenticate(ex, r.keys, findHeader(ex.headers(), "authorization"));
  if (auth.outcome != AuthOutcome::Authenticated) return replyUnauthorized(r);
  r.principal = std::move(auth.principal);

  switch (r.route.kind) {
    case RouteKind::Run: {
      CanonicalJson canonical = canonicalizeJson(ex.body());
      if (!canonical.ok) return replyError(r, invalidJson(canonical.error));
      r.body_sha = sha256Hex(canonical.canonical);
      return startRun(r);
    }
    case RouteKind::Stream:
      return startStream(r);
    case RouteKind::Token:
      return forward(r, ex.target(), Delivery::Buffered);
    default:
      return forward(r, ex.target(), Delivery::Streamed);
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

AuthResult RunHandler::authenticate(HttpExchange& ex, const std::shared_ptr<const KeyStore>& keys,
                                    const std::string* authorization) {
  if (!authorization) return keys->authenticate(nullptr);
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

void RunHandler::startStream(Request& r) {
  CanonicalJson canonical = canonicalizeJson(r.exchange->body());
  if (!canonical.ok) return replyError(r, invalidJson(canonical.error));
  r.body_sha = sha256Hex(canonical.canonical);
  startRun(r);
}

// --- the run path: cache, coalescing ----------------------------------------------

void RunHandler::startRun(Request& r) {
  const Config& cfg = *r.config;
  const std::string& wf = r.route.workflow_id;
  r.cc = parseCacheControl(r.exchange->headers());
  r.ttl_s = cfg.cache.ttlFor(wf);
  r.stale_s = cfg.cache.staleIfErrorFor(wf);
  bool stream = r.route.kind == RouteKind::Stream;
  r.bypass = cfg.cache.backend == CacheConfig::Backend::Off || r.ttl_s <= 0 || r.cc.no_store ||
             (stream && !cfg.cache.streams);
  r.may_store = !r.bypass;
  r.cache = r.bypass ? "BYPASS" : "MISS";
  if (stream && r.bypass) {
    // Not shared, not stored: there is no stream in flight to attach to, so
    // only-if-cached is a miss, answered without an upstream call (SPEC §4.3).
    if (r.cc.only_if_cached) return replyError(r, notCached());
    // Otherwise this client's own stream, relayed with back-pressure on the
    // upstream transfer.
    return fetchStreamToken(r);
  }
  uint64_t id = r.id;
  cache_.generation(r.principal.namespace_id, wf, [this, id](uint64_t generation) {
    Request* rq = live(id);
    if (!rq) return;
    const char* route = rq->route.kind == RouteKind::Stream ? "stream" : "run";
    rq->cache_key =
        cacheKey(cache_.prefix(), rq->principal.namespace_id, route, rq->route.workflow_id, generation, rq->body_sha);
    std::string().swap(rq->body_sha);  // in the key now; a queued request keeps only that
    if (rq->bypass || rq->cc.no_cache) {
      // Not read; still coalesced with an identical run in flight.
      onLookup(id, nullptr);
      return;
    }
    cache_.lookup(rq->cache_key, toMillis(rq->ttl_s + rq->stale_s),
                  [this, id](CachedResponsePtr entry) { onLookup(id, std::move(entry)); },
                  waiterNeeds(*rq).min_stored_at_ms);
  });
}

void RunHandler::onLookup(uint64_t id, CachedResponsePtr entry) {
  Request* r = live(id);
  if (!r) return;
  if (r->route.kind == RouteKind::Stream && !r->bypass && !r->cc.no_cache && !fanout_->joinable(r->cache_key)) {
    // The look went to Redis while a stream of this instance ended and was
    // stored (it was joinable when the look began): look here once more,
    // or the input streams twice. (Runs have the coalescer's look after
    // the lock for this.)
    CachedResponsePtr local = cache_.peekLocal(r->cache_key);
    if (local && (!entry || local->stored_at_ms > entry->stored_at_ms)) entry = std::move(local);
  }
  if (entry) {
    int64_t age_ms = runtime_.unixMillis() - entry->stored_at_ms;
    if (age_ms < 0) age_ms = 0;
    bool fresh = age_ms < toMillis(r->ttl_s);
    bool young_enough = !r->cc.max_age || age_ms <= *r->cc.max_age * 1000;
    if (fresh && young_enough && entry->stream == (r->route.kind == RouteKind::Stream)) {
      int64_t ttl_left = (toMillis(r->ttl_s) - age_ms) / 1000;
      r->cache = "HIT";
      return replyCached(*r, entry, "HIT", "workflow-proxy; hit; ttl=" + std::to_string(ttl_left));
    }
    // Served if the upstream fails, unless the request refused an entry
    // that old (max-age): what it asked for is not what it would get.
    if (young_enough && age_ms < toMillis(r->ttl_s + r->stale_s) && r->route.kind == RouteKind::Run) r->stale = entry;
  }
  bool stream = r->route.kind == RouteKind::Stream;
  bool in_flight = stream ? fanout_->joinable(r->cache_key) : coalescer_->inFlight(r->cache_key);
  if (r->cc.only_if_cached && !in_flight) {
    return replyError(*r, notCached());
  }
  if (stream) return joinStream(*r);
  joinFlight(*r);
}

void RunHandler::joinFlight(Request& r) {
  uint64_t id = r.id;
  const std::string key = r.cache_key;
  auto prepare = [this, &r, &key](uint64_t flight) {
    // The run this request leads if the flight runs here; it lives exactly
    // as long as the flight (on_end), on a leader and a follower alike.
    auto work = std::make_unique<RunWork>();
    UpstreamHeaderOptions opts;
    opts.request_id = r.request_id;
    opts.identity_encoding = true;
    if (!r.principal.pass_through) {
      work->org = r.principal.org->name;
      opts.authorization = std::string();  // its place; the key in force is set at the start
    }
    work->flight = flight;
    work->key = key;
    work->org_label = r.principal.org_label;
    work->admission = admissionFor(r.principal);
    work->request.method = "POST";
    work->request.url = r.config->upstream.base_url + r.exchange->target();
    work->request.headers = upstreamRequestHeaders(r.exchange->headers(), opts);
    work->request.body = r.exchange->takeBody();  // canonicalised already; the run owns the bytes now
    work->may_store = r.may_store;
    work->keep_ms = toMillis(r.ttl_s + r.stale_s);
    runs_.emplace(flight, std::move(work));
  };
  Coalescer::Joined joined = coalescer_->join(
      key, [this, id](const FlightOutcome& outcome) { onFlightOutcome(id, outcome); }, waiterNeeds(r), prepare, id);
  Request* again = find(id);  // join() may have run the whole flight already
  if (!again) return;
  if (!joined.created && again->may_store) {
    // Stored if any waiter may store it.
    if (auto w = runs_.find(joined.flight); w != runs_.end()) {
      w->second->may_store = true;
      w->second->keep_ms = std::max(w->second->keep_ms, toMillis(again->ttl_s + again->stale_s));
    }
  }
  if (!again->exchange || again->exchange->responseStarted()) return;  // answered inside join()
  again->waiter = joined.waiter;
  again->flight_creator = joined.created;
  // Everything the run and the reply need is copied out by now; a request
  // that waits (queued, or for another's run) keeps no parsed headers.
  again->exchange->releaseHeaders();
  if (!joined.created) {
    again->cache = "COALESCED";
    metrics_.countCoalesced(again->principal.org_label);
  }
}

WaiterNeeds RunHandler::waiterNeeds(const Request& r) const {
  WaiterNeeds needs;
  int64_t now = runtime_.unixMillis();
  // Fresh (within the TTL) ...
  needs.min_stored_at_ms = now - toMillis(r.ttl_s);
  // ... young enough for max-age ...
  if (r.cc.max_age) needs.min_stored_at_ms = std::max(needs.min_stored_at_ms, now - *r.cc.max_age * 1000);
  // ... and, under no-cache, nothing stored before the request came (the
  // result of a run that ends after it came is as fresh as its own run).
  // no-store reads nothing at all.
  // (+1: an entry stored in the millisecond the request came may be older
  // than the request.)
  if (r.cc.no_cache) needs.min_stored_at_ms = std::max(needs.min_stored_at_ms, now + 1);
  if (r.bypass) needs.min_stored_at_ms = INT64_MAX;
  needs.may_run = !r.cc.only_if_cached;
  return needs;
}

void RunHandler::joinStream(Request& r) {
  const Config& cfg = *r.config;
  uint64_t id = r.id;
  StreamWork work;
  work.key = r.cache_key;
  work.admission = admissionFor(r.principal);
  work.store = r.may_store;
  work.keep_ms = toMillis(r.ttl_s + r.stale_s);
  work.token = tokenRequest(r);
  if (!r.principal.pass_through) work.org = r.principal.org->name;
  // The stream itself carries no key: the token is its credential.
  HttpHeaders client_headers = r.exchange->headers();
  removeHeader(client_headers, "authorization");
  UpstreamHeaderOptions stream_opts;
  stream_opts.request_id = r.request_id;
  stream_opts.identity_encoding = true;
  work.stream.method = "POST";
  work.stream.url = cfg.upstream.base_url + r.exchange->target();
  work.stream.headers = upstreamRequestHeaders(client_headers, stream_opts);
  work.stream.body = r.exchange->takeBody();

  if (fanout_->joinable(work.key)) {
    r.cache = "COALESCED";
    metrics_.countCoalesced(r.principal.org_label);
  }
  r.upstream_started = runtime_.now();
  StreamSubscriber sub;
  sub.begin = [this, id](const UpstreamHead& head) {
    Request* rr = live(id);
    if (!rr) return;
    rr->upstream_ms += millisSince(rr->upstream_started, runtime_.now());
    HttpHeaders headers = responseHeaders(*rr, head.headers);
    headers.push_back({"X-Cache", rr->cache});
    headers.push_back({"Cache-Status", rr->cache == "COALESCED" ? "workflow-proxy; fwd=miss; collapsed"
                                                                : "workflow-proxy; fwd=miss"});
    rr->exchange->begin(head.status, head.reason, headers);
    rr->exchange->setOnDrain([this, id] {
      Request* q = find(id);
      if (q && q->stream_sub) fanout_->resume(q->stream_sub);
    });
  };
  sub.write = [this, id](std::string_view data) {
    Request* rr = find(id);
    if (!rr || !rr->exchange) return true;
    return rr->exchange->write(data);
  };
  sub.end = [this, id](bool complete) {
    Request* rr = find(id);
    if (!rr || !rr->exchange) return;
    rr->stream_sub = 0;
    if (complete) {
      rr->exchange->end();
    } else {
      HttpExchange* ex = rr->exchange;
      finish(id, false);
      ex->abortResponse();
    }
  };
  sub.refused = [this, id](const UpstreamHead& head, const std::string& body) {
    Request* rr = live(id);
    if (!rr) return;
    rr->stream_sub = 0;
    rr->head = head;
    rr->body = body;
    replyUpstream(*rr);
  };
  sub.failed = [this, id](UpstreamFailure failure) {
    Request* rr = live(id);
    if (!rr) return;
    rr->stream_sub = 0;
    replyError(*rr, failure == UpstreamFailure::Timeout ? upstreamTimeout() : upstreamUnavailable());
  };
  sub.may_run = !r.cc.only_if_cached;
  sub.not_cached = [this, id] {
    Request* rr = live(id);
    if (!rr) return;
    rr->stream_sub = 0;
    replyError(*rr, notCached());
  };
  sub.rejected = [this, id](RejectReason why, int retry_after) {
    Request* rr = live(id);
    if (!rr) return;
    rr->stream_sub = 0;
    if (why == RejectReason::ShuttingDown) return replyError(*rr, shuttingDown());
    replyError(*rr, rateLimited(), {{"Retry-After", std::to_string(retry_after)}});
  };
  bool created = false;
  uint64_t sub_id = fanout_->join(work, std::move(sub), &created);
  // join() may have answered already (a full queue).
  if (Request* again = find(id); again && again->exchange) again->stream_sub = sub_id;
}

void RunHandler::leadRun(uint64_t flight) {
  auto it = runs_.find(flight);
  if (it == runs_.end()) {
    // Nothing was prepared for this flight: cannot happen (on_create runs
    // first), but a flight must never hang.
    FlightOutcome failed;
    failed.failure = UpstreamFailure::Unavailable;
    coalescer_->complete(flight, failed);
    return;
  }
  RunWork& w = *it->second;
  w.queued_at = runtime_.now();
  AdmissionCallbacks cb;
  cb.start = [this, flight] { startRunUpstream(flight); };
  cb.reject = [this, flight](RejectReason why, int retry_after) {
    auto wit = runs_.find(flight);
    if (wit == runs_.end()) return;
    wit->second->ticket = 0;
    FlightOutcome o;
    o.rejected = why == RejectReason::ShuttingDown ? FlightOutcome::Rejected::ShuttingDown
                                                   : FlightOutcome::Rejected::RateLimited;
    o.retry_after_s = retry_after;
    coalescer_->complete(flight, o);  // on_end drops the work
  };
  uint64_t ticket = scheduler_.submit(w.admission, std::move(cb));
  // submit() may have started or rejected it already.
  if (auto again = runs_.find(flight); again != runs_.end()) again->second->ticket = ticket;
}

void RunHandler::startRunUpstream(uint64_t flight) {
  auto it = runs_.find(flight);
  if (it == runs_.end()) return;
  RunWork& w = *it->second;
  w.queue_ms += millisSince(w.queued_at, runtime_.now());
  if (!authorizeNow(w.request, w.org)) {
    // The organisation was removed by a reload while the run waited: no key
    // of ours may be sent for it any more.
    spdlog::warn("run for a removed organisation dropped before its start");
    uint64_t ticket = w.ticket;
    w.ticket = 0;
    if (ticket) scheduler_.finish(ticket, UpstreamSignals{});
    FlightOutcome o;
    o.response = unauthorizedResponse();
    coalescer_->complete(flight, o);
    return;
  }
  // SPEC §10.1: the X-Request-Id of the request that leads the run now — the
  // one that created the flight may have left, or been answered by another
  // instance's run while this one waited to run again.
  if (Request* leader = find(coalescer_->leader(flight)); leader && leader->exchange) {
    setHeader(w.request.headers, "X-Request-Id", leader->request_id);
  }
  w.started = runtime_.now();
  w.got = std::make_unique<RunWork::Received>();
  w.got_429 = false;
  coalescer_->markStarted(flight);  // from now on it completes even if every waiter leaves
  UpstreamCallbacks cb;
  cb.on_head = [this, flight](const UpstreamHead& head) {
    auto wit = runs_.find(flight);
    if (wit == runs_.end()) return;
    wit->second->got->head = head;
    // One allocation of the announced size, not a doubling string (whose
    // peak is twice the body while it grows).
    if (const std::string* length = findHeader(head.headers, "content-length")) {
      uint64_t n = 0;
      auto [end, ec] = std::from_chars(length->data(), length->data() + length->size(), n);
      if (ec == std::errc() && end == length->data() + length->size() && n <= kMaxBodyReserve) {
        wit->second->got->body.reserve(n);
      }
    }
  };
  cb.on_data = [this, flight](std::string_view data) {
    auto wit = runs_.find(flight);
    if (wit != runs_.end()) wit->second->got->body.append(data);
    return true;
  };
  cb.on_done = [this, flight](const UpstreamResult& result) { onRunDone(flight, result); };
  cb.on_sending = [this, flight] {
    if (auto wit = runs_.find(flight); wit != runs_.end() && wit->second->ticket) {
      scheduler_.sending(wit->second->ticket);
    }
  };
  w.upstream_id = upstream_.start(w.request, std::move(cb));
}

void RunHandler::onRunDone(uint64_t flight, const UpstreamResult& result) {
  auto it = runs_.find(flight);
  if (it == runs_.end()) return;
  RunWork& cur = *it->second;
  cur.upstream_id = 0;
  const UpstreamHead& got_head = cur.got->head;
  metrics_.countUpstream(cur.org_label, result.head_received ? got_head.status : 0);
  metrics_.observeUpstreamSeconds(millisSince(cur.started, runtime_.now()) / 1000.0);
  if (cur.ticket) {
    UpstreamSignals signals =
        result.head_received ? signalsFrom(got_head.status, got_head.headers) : UpstreamSignals{};
    uint64_t ticket = cur.ticket;
    if (result.failure == UpstreamFailure::None && got_head.status == 429) {
      cur.queued_at = runtime_.now();
      if (scheduler_.retry(ticket, signals)) return;  // runs again after the pause
    } else {
      scheduler_.finish(ticket, signals);
    }
    it = runs_.find(flight);
    if (it == runs_.end()) return;
    it->second->ticket = 0;
  }
  std::unique_ptr<RunWork> w = std::move(it->second);
  runs_.erase(it);
  FlightOutcome outcome;
  outcome.upstream_ms = millisSince(w->started, runtime_.now());
  outcome.queue_ms = w->queue_ms;
  if (result.failure != UpstreamFailure::None) {
    spdlog::warn("upstream run failed: {}", result.detail);
    outcome.failure = result.failure;
    coalescer_->complete(flight, outcome);
    return;
  }
  rememberRateLimit(w->org, w->got->head.headers);
  auto entry = std::make_shared<CachedResponse>(
      storedResponse(w->got->head.status, w->got->head.reason, w->got->head.headers, std::move(w->got->body), false,
                     runtime_.unixMillis()));
  if (w->may_store && isStorable(entry->status, entry->body)) {
    cache_.store(w->key, entry, w->keep_ms);
    outcome.stored = true;
  }
  outcome.response = std::move(entry);
  coalescer_->complete(flight, outcome);
}

void RunHandler::onFlightOutcome(uint64_t id, const FlightOutcome& o) {
  Request* r = live(id);
  if (!r) return;
  r->waiter = 0;
  if (o.rejected == FlightOutcome::Rejected::NotCached) return replyError(*r, notCached());
  r->upstream_ms = o.upstream_ms;
  r->queue_ms = o.queue_ms;
  if (o.remote && r->cache != "COALESCED") {
    // Another instance ran it for us.
    r->cache = "COALESCED";
    metrics_.countCoalesced(r->principal.org_label);
  }
  // Upstream failed (5xx, timeout, unreachable) or the queue was full.
  bool upstream_failed = (!o.response && o.rejected != FlightOutcome::Rejected::ShuttingDown) ||
                         (o.response && o.response->status >= 500);
  if (upstream_failed && r->stale) {
    r->cache = "STALE";
    return replyCached(*r, r->stale, "STALE", "workflow-proxy; hit; fwd=stale");
  }
  if (o.rejected == FlightOutcome::Rejected::ShuttingDown) return replyError(*r, shuttingDown());
  if (o.rejected == FlightOutcome::Rejected::RateLimited) {
    return replyError(*r, rateLimited(), {{"Retry-After", std::to_string(o.retry_after_s)}});
  }
  if (!o.response) {
    return replyError(*r, o.failure == UpstreamFailure::Timeout ? upstreamTimeout() : upstreamUnavailable());
  }
  std::string status;
  if (r->cache == "COALESCED") {
    status = "workflow-proxy; fwd=miss; collapsed";
  } else if (r->bypass) {
    status = "workflow-proxy; fwd=bypass";
  } else {
    status = std::string("workflow-proxy; fwd=") + (r->cc.no_cache ? "request" : "miss") + (o.stored ? "; stored" : "");
  }
  HttpHeaders headers = responseHeaders(*r, o.response->headers);
  headers.push_back({"X-Cache", r->cache});
  headers.push_back({"Cache-Status", status});
  // By reference: a thousand coalesced clients of a large body share one copy.
  r->exchange->respond(o.response->status, o.response->reason, {}, headers, o.response->body, o.response);
}

void RunHandler::replyCached(Request& r, const CachedResponsePtr& shared, const std::string& x_cache,
                             const std::string& cache_status) {
  const CachedResponse& entry = *shared;
  // The entry's headers were checked and formatted once (clientHead); a hit
  // only adds its own lines.
  const CachedResponse::ClientHead& stored = entry.clientHead();
  thread_local std::string head;
  head.assign(stored.lines);
  // A hit spends no quota: report the latest budget the upstream announced.
  const std::string* limit = stored.ratelimit_limit ? &*stored.ratelimit_limit : nullptr;
  const std::string* remaining = stored.ratelimit_remaining ? &*stored.ratelimit_remaining : nullptr;
  // (Per configured organisation: a pass_through key's budget is its own,
  // and one key's figures are not another's.)
  auto seen = r.principal.pass_through ? ratelimit_seen_.end() : ratelimit_seen_.find(r.principal.org_label);
  if (seen != ratelimit_seen_.end()) {
    if (limit) limit = &seen->second.first;
    if (remaining) remaining = &seen->second.second;
  }
  if (limit) appendHeaderLine(head, "x-ratelimit-limit", *limit);
  if (remaining) appendHeaderLine(head, "x-ratelimit-remaining", *remaining);
  appendHeaderLine(head, "X-Request-Id", r.request_id);
  head.append("Server-Timing: ");
  appendServerTiming(head, r.queue_ms, r.upstream_ms);
  head.append("\r\nX-Cache: ");
  head.append(x_cache);
  head.append("\r\nCache-Status: ");
  head.append(cache_status);
  head.append("\r\nAge: ");
  int64_t age = std::max<int64_t>(0, (runtime_.unixMillis() - entry.stored_at_ms) / 1000);
  char digits[24];
  head.append(digits, std::to_chars(digits, digits + sizeof digits, age).ptr);
  head.append("\r\n");
  if (entry.stream) {
    // Replayed as a stream: chunked, the same bytes and headers.
    HttpExchange* ex = r.exchange;
    ex->begin(entry.status, entry.reason, head, {});
    ex->write(entry.body);  // never dropped; the server flushes it as the client reads
    ex->end();
    return;
  }
  r.exchange->respond(entry.status, entry.reason, head, {}, entry.body, shared);
}

void RunHandler::rememberRateLimit(const std::string& org, const HttpHeaders& headers) {
  if (org.empty()) return;  // pass_through: nothing shared to remember
  const std::string* limit = findHeader(headers, "x-ratelimit-limit");
  const std::string* remaining = findHeader(headers, "x-ratelimit-remaining");
  if (!limit || !remaining) return;
  ratelimit_seen_[org] = {*limit, *remaining};
  metrics_.setRatelimitRemaining(org, std::strtoll(remaining->c_str(), nullptr, 10));
}

void RunHandler::handlePurge(Request& r) {
  auto j = nlohmann::json::parse(r.exchange->body(), nullptr, false);
  if (!j.is_object() || !j.contains("organisation") || !j["organisation"].is_string() ||
      !j.contains("workflow_id") || !j["workflow_id"].is_string()) {
    return replyError(r, ProxyError{400, "Bad Request", "invalid_json",
                                    R"(Expected {"organisation": "...", "workflow_id": "..."[, "body": {...}]})"});
  }
  std::string org = j["organisation"];
  std::string wf = j["workflow_id"];
  if (!r.config->findOrganisation(org) || !isValidWorkflowId(wf)) return replyError(r, notFound());
  uint64_t id = r.id;
  auto done = [this, id](bool ok) {
    Request* rq = live(id);
    if (!rq) return;
    if (!ok) spdlog::warn("purge: Redis unreachable, purged this instance only");
    replyJson(*rq, 200, "OK", R"({"success":true})");
  };
  if (j.contains("body")) {
    if (!j["body"].is_object()) {
      return replyError(r, ProxyError{400, "Bad Request", "invalid_json", "\"body\" must be a JSON object"});
    }
    CanonicalJson canonical = canonicalizeJson(j["body"].dump());
    if (!canonical.ok) return replyError(r, invalidJson(canonical.error));
    int64_t keep_ms = toMillis(r.config->cache.ttlFor(wf) + r.config->cache.staleIfErrorFor(wf));
    return cache_.purgeInput(org, wf, sha256Hex(canonical.canonical), keep_ms, done);
  }
  cache_.purgeWorkflow(org, wf, done);
}

// --- upstream: one request, one exchange ----------------------------------------

// SPEC §10.1: a run is sent as it is at its start — with the key of the
// configuration in force then, not the one of when it was queued (a key
// rotated by SIGHUP meanwhile must not be sent).
bool RunHandler::authorizeNow(UpstreamRequest& request, const std::string& org) const {
  if (org.empty()) return true;
  const Organisation* o = config_ ? config_->findOrganisation(org) : nullptr;
  if (!o) return false;
  std::string value = "Bearer " + o->api_key;
  for (auto& h : request.headers) {
    if (equalsIgnoreCase(h.name, "authorization")) {
      OPENSSL_cleanse(h.value.data(), h.value.size());
      h.value = std::move(value);
      return true;
    }
  }
  request.headers.push_back({"Authorization", std::move(value)});
  return true;
}

CachedResponsePtr RunHandler::unauthorizedResponse() const {
  auto e = std::make_shared<CachedResponse>();
  e->status = 401;
  e->reason = "Unauthorized";
  e->headers = {{"Content-Type", "application/json"}};
  e->body = std::string(kUnauthorizedBody);
  e->stored_at_ms = runtime_.unixMillis();
  return e;
}

Admission RunHandler::admissionFor(const Principal& p) const {
  Admission a;
  a.budget = p.namespace_id;
  a.org_label = p.org_label;
  a.client = p.client;
  a.weight = p.weight;
  return a;
}

UpstreamRequest RunHandler::tokenRequest(const Request& r) const {
  UpstreamHeaderOptions opts;
  opts.request_id = r.request_id;
  if (!r.principal.pass_through) opts.authorization = std::string();  // set at the start (authorizeNow)
  // Only what the token route needs: the key, the request id and the client's
  // x-user-id (the upstream's per-user bucket for this route).
  HttpHeaders subset;
  for (const auto& h : r.exchange->headers()) {
    if (equalsIgnoreCase(h.name, "authorization") || equalsIgnoreCase(h.name, "x-user-id") ||
        equalsIgnoreCase(h.name, "user-agent")) {
      subset.push_back(h);
    }
  }
  UpstreamRequest req;
  req.method = "GET";
  req.url = r.config->upstream.base_url + "/api/v1/token?ttl=60";
  req.headers = upstreamRequestHeaders(subset, opts);
  return req;
}

void RunHandler::fetchStreamToken(Request& r) {
  r.fetching_token = true;
  r.key_org = r.principal.pass_through ? std::string() : r.principal.org->name;
  admit(r, tokenRequest(r), Delivery::Buffered, true);
}

void RunHandler::onTokenDone(Request& r) {
  r.fetching_token = false;
  std::string token = tokenFromAnswer(r.head.status, r.body);
  if (token.empty()) {
    // The upstream refused the token (401/402/429/500...): that answer is the
    // client's answer, unchanged.
    return replyUpstream(r);
  }
  // Used once, right now: never stored, never replayed on a retry.
  forward(r, withToken(r.exchange->target(), token), Delivery::Streamed);
}

void RunHandler::forward(Request& r, std::string target, Delivery delivery) {
  const Config& cfg = *r.config;
  HttpExchange& ex = *r.exchange;
  UpstreamHeaderOptions opts;
  opts.request_id = r.request_id;
  HttpHeaders client_headers = ex.headers();
  bool is_run = r.route.kind == RouteKind::Run || r.route.kind == RouteKind::Stream;
  opts.identity_encoding = is_run;
  bool spends_quota = true;
  r.key_org.clear();
  if (r.route.kind == RouteKind::Options || r.route.kind == RouteKind::Stream) {
    // Preflights and token-authenticated streams carry no key of ours, and a
    // client key has no business upstream. Neither spends quota: the
    // stream's token did when it was issued.
    removeHeader(client_headers, "authorization");
    spends_quota = false;
  } else if (!r.principal.pass_through) {
    opts.authorization = std::string();  // its place; the key in force is set at the start
    r.key_org = r.principal.org->name;
  }

  UpstreamRequest req;
  req.method = ex.method();
  req.url = cfg.upstream.base_url + target;
  req.headers = upstreamRequestHeaders(client_headers, opts);
  req.body = ex.takeBody();
  // libcurl may send a safe method again after a reused connection died (the
  // upstream possibly saw it), as nginx retries an idempotent request; never
  // a run, a stream (single-use token), a token fetch or any other method.
  const std::string& m = req.method;
  req.replayable = (m == "GET" || m == "HEAD" || m == "OPTIONS") &&
                   (r.route.kind == RouteKind::PassThrough || r.route.kind == RouteKind::Options);
  admit(r, std::move(req), delivery, spends_quota);
}

void RunHandler::admit(Request& r, UpstreamRequest request, Delivery delivery, bool queued) {
  r.pending = std::make_unique<UpstreamRequest>(std::move(request));
  r.delivery = delivery;
  uint64_t id = r.id;
  if (!queued) {
    startUpstream(id);
    return;
  }
  r.queued_at = runtime_.now();
  AdmissionCallbacks cb;
  cb.start = [this, id] { startUpstream(id); };
  cb.reject = [this, id](RejectReason why, int retry_after) { onRejected(id, why, retry_after); };
  uint64_t ticket = scheduler_.submit(admissionFor(r.principal), std::move(cb));
  // submit() may have started or rejected it already.
  if (Request* again = find(id); again && again->exchange) again->ticket = ticket;
}

void RunHandler::startUpstream(uint64_t id) {
  Request* r = find(id);
  if (!r || !r->exchange) return;
  if (r->queued_at != SteadyClock::time_point{}) {
    r->queue_ms += millisSince(r->queued_at, runtime_.now());
    r->queued_at = {};
  }
  if (!authorizeNow(*r->pending, r->key_org)) {
    // The organisation was removed by a reload while the request waited.
    if (r->ticket) {
      uint64_t ticket = r->ticket;
      r->ticket = 0;
      scheduler_.finish(ticket, UpstreamSignals{});
      r = find(id);
      if (!r || !r->exchange) return;
    }
    HttpHeaders headers{{"Content-Type", "application/json"}, {"X-Request-Id", r->request_id}};
    r->exchange->respond(401, "Unauthorized", headers, kUnauthorizedBody);
    return;
  }
  r->head = UpstreamHead{};
  r->body.clear();
  r->got_429 = false;
  r->upstream_started = runtime_.now();
  UpstreamCallbacks cb;
  cb.on_head = [this, id](const UpstreamHead& head) { onHead(id, head); };
  cb.on_data = [this, id](std::string_view data) { return onData(id, data); };
  cb.on_done = [this, id](const UpstreamResult& result) { onDone(id, result); };
  cb.on_sending = [this, id] {
    if (Request* q = find(id); q && q->ticket) scheduler_.sending(q->ticket);
  };
  r->upstream_id = upstream_.start(*r->pending, std::move(cb));
}

void RunHandler::onRejected(uint64_t id, RejectReason why, int retry_after_s) {
  Request* r = live(id);
  if (!r) return;
  r->ticket = 0;
  if (why == RejectReason::ShuttingDown) return replyError(*r, shuttingDown());
  replyError(*r, rateLimited(), {{"Retry-After", std::to_string(retry_after_s)}});
}

void RunHandler::onHead(uint64_t id, const UpstreamHead& head) {
  Request* r = find(id);
  if (!r || !r->exchange) return;
  r->head = head;
  if (head.status == 429 && r->ticket) {
    // Maybe retried after a pause: nothing reaches the client yet.
    r->got_429 = true;
    return;
  }
  if (r->delivery != Delivery::Streamed) return;
  int64_t length = -1;
  if (const std::string* cl = findHeader(head.headers, "content-length")) {
    char* end = nullptr;
    long long v = strtoll(cl->c_str(), &end, 10);
    if (end && *end == '\0' && v >= 0) length = v;
  }
  r->upstream_ms += millisSince(r->upstream_started, runtime_.now());
  HttpHeaders headers = responseHeaders(*r, head.headers);
  if (r->route.kind == RouteKind::Stream) {
    headers.push_back({"X-Cache", r->cache});
    headers.push_back({"Cache-Status", "workflow-proxy; fwd=bypass"});
  }
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
  if (r->delivery == Delivery::Buffered || r->got_429) {
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
  bool streaming = r->delivery == Delivery::Streamed && r->exchange->responseStarted();
  if (!streaming) r->upstream_ms += millisSince(r->upstream_started, runtime_.now());
  metrics_.countUpstream(r->principal.org_label, result.head_received ? r->head.status : 0);
  metrics_.observeUpstreamSeconds(std::chrono::duration<double>(result.elapsed).count());
  if (result.failure != UpstreamFailure::None) {
    spdlog::warn("upstream {} {} failed: {} (request {})", r->exchange->method(), r->exchange->path(), result.detail,
                 r->request_id);
  }
  if (r->ticket) {
    UpstreamSignals signals =
        result.head_received ? signalsFrom(r->head.status, r->head.headers) : UpstreamSignals{};
    uint64_t ticket = r->ticket;
    if (result.failure == UpstreamFailure::None && r->got_429) {
      // Back to the head of the queue after the organisation's pause.
      if (scheduler_.retry(ticket, signals)) return;
    } else {
      scheduler_.finish(ticket, signals);
    }
    r = find(id);  // the scheduler may have started other work meanwhile
    if (!r || !r->exchange) return;
    r->ticket = 0;
  }
  if (streaming) {
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
  if (r->fetching_token) return onTokenDone(*r);
  replyUpstream(*r);
}

// --- replies ------------------------------------------------------------------

HttpHeaders RunHandler::responseHeaders(Request& r, const HttpHeaders& upstream_headers) {
  HttpHeaders headers = clientResponseHeaders(upstream_headers);
  removeHeader(headers, "x-request-id");
  removeHeader(headers, "server-timing");
  headers.push_back({"X-Request-Id", r.request_id});
  headers.push_back({"Server-Timing", serverTiming(r.queue_ms, r.upstream_ms)});
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
  j["redis"] = !redis_ ? "off" : (redis_->up() ? "up" : "down");
  nlohmann::ordered_json queues = nlohmann::ordered_json::object();
  if (config_) {
    for (const auto& org : config_->organisations) queues[org.name] = 0;
  }
  for (const auto& [org, depth] : scheduler_.depths()) queues[org] = depth;
  j["queues"] = queues;
  return j.dump();
}

// The per-key maps of the run path (SPEC §10.2), read when scraped: no cost
// per request.
std::vector<std::pair<const char*, size_t>> RunHandler::trackedEntries() const {
  return {{"generations", cache_.generationsTracked()}, {"flights", coalescer_->flights()},
          {"waiters", coalescer_->waiters()},           {"prepared_runs", runs_.size()},
          {"stream_flights", fanout_->flights()},       {"ratelimit_seen", ratelimit_seen_.size()},
          {"requests", requests_.size()}};
}

void RunHandler::reportTracked() {
  for (const auto& [map, n] : trackedEntries()) metrics_.setTracked(map, static_cast<int64_t>(n));
}

size_t RunHandler::runsInFlight() const {
  size_t n = 0;
  for (const auto& [flight, w] : runs_) n += w->upstream_id != 0;
  return n;
}

void RunHandler::cancelAll() {
  scheduler_.rejectAll(RejectReason::ShuttingDown);
  std::vector<uint64_t> ids;
  for (auto& [id, r] : requests_) ids.push_back(id);
  for (uint64_t id : ids) {
    Request* r = find(id);
    if (!r) continue;
    if (r->upstream_id) {
      upstream_.cancel(r->upstream_id);
      r->upstream_id = 0;
    }
    if (r->waiter) {
      coalescer_->leave(r->waiter);
      r->waiter = 0;
    }
    if (r->stream_sub) {
      fanout_->leave(r->stream_sub);
      r->stream_sub = 0;
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
  if (r->ticket) scheduler_.cancel(r->ticket);  // still queued: spends nothing
  if (r->waiter) coalescer_->leave(r->waiter);  // a run already started goes on
  if (r->stream_sub) fanout_->leave(r->stream_sub);
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
    access_log_.write(rec);
  }
  metrics_.countRequest(org, routeLabel(r->route.kind), status, r->cache);
  metrics_.setCacheEntries(static_cast<int64_t>(cache_.entries()));
  double overhead_ms = total_ms - r->queue_ms - r->upstream_ms;
  if (overhead_ms < 0) overhead_ms = 0;
  metrics_.observeOverheadSeconds(overhead_ms / 1000.0);
}

}  // namespace wfp

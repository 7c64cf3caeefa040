#include "proxy/flights.h"

#include <charconv>

#include <spdlog/spdlog.h>

#include "proxy/errors.h"
#include "proxy/hash.h"
#include "proxy/headers.h"

namespace wfp {

namespace {

// The most an upstream Content-Length makes us reserve up front.
constexpr uint64_t kMaxBodyReserve = 256u << 20;

int64_t toMillis(double seconds) { return static_cast<int64_t>(seconds * 1000.0); }

// Stored only when the upstream said so: 200 with "success": true.
bool isStorable(int status, const std::string& body) { return status == 200 && isSuccessObject(body); }

}  // namespace

// A run this instance prepared for a flight it created: sent if the flight
// is led here, dropped unused if another instance's run or the cache
// answers it.
struct Flights::RunFlight {
  uint64_t flight = 0;  // the coalescer's, which knows its cache key
  uint64_t creator = 0;  // the request whose body the run took
  std::string org;  // whose key it carries ("" in pass_through: the client's own)
  bool may_store = false;
  int64_t keep_ms = 0;
  // Its way upstream, started when the flight is led here (the head it got
  // is the attempt's).
  std::unique_ptr<UpstreamAttempt> attempt;
  std::string body;
  // Whose run it is (the request that created the flight): counted once,
  // when first sent, and its quota's place kept from then on.
  std::string org_label;
  std::string client;
  bool counted = false;
  QuotaTicket quota;
};

Flights::Flights(const UpstreamPorts& ports, CacheStore& cache, RedisLink* redis, Forwarder& forwarder,
                 ClientQuotas& quotas, RequestTable requests)
    : ports_(ports),
      cache_(cache),
      forwarder_(forwarder),
      quotas_(quotas),
      requests_(std::move(requests)),
      ratelimits_(ports.metrics) {
  FlightHooks hooks;
  hooks.on_lead = [this](uint64_t flight) { leadRun(flight); };
  // However the flight ended (abandoned while queued, answered by another
  // instance or by the cache), its run goes with it: out of the queue, or
  // its transfer cancelled.
  hooks.on_end = [this](uint64_t flight) { runs_.erase(flight); };
  hooks.lookup_shared = [this](const std::string& key, int64_t min_stored_at_ms,
                               std::function<void(CachedResponsePtr)> fn) {
    cache_.lookup(key, toMillis(3600), std::move(fn), min_stored_at_ms);
  };
  coalescer_ = std::make_unique<Coalescer>(ports.runtime, redis, cache.prefix(), std::move(hooks));
  fanout_ = std::make_unique<StreamFanout>(ports, cache);
}

Flights::~Flights() {
  runs_.clear();  // their attempts cancel while the coalescer still exists
}

size_t Flights::runsInFlight() const {
  size_t n = 0;
  for (const auto& [flight, w] : runs_) n += w->attempt && w->attempt->transferring();
  return n;
}

namespace {

WaiterNeeds needsOf(const ClientRequest& r, int64_t now_ms) {
  return waiterNeeds(r.cc, toMillis(r.ttl_s), r.bypass, now_ms);
}

}  // namespace

// --- look-up --------------------------------------------------------------------

void Flights::serve(const RequestPtr& rp) {
  ClientRequest& r = *rp;
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
    // only-if-cached is a miss, answered without an upstream call (docs/http.md).
    if (r.cc.only_if_cached) return replyError(r, notCached());
    // Otherwise this client's own stream, relayed with back-pressure.
    if (r.principal.quota) return withQuota(rp, &Flights::ownStream);
    return ownStream(rp);
  }
  uint64_t id = r.id;
  cache_.generation(r.principal.namespace_id, wf, [this, id](uint64_t generation) {
    ClientRequest* found = requests_.find(id);
    if (!found || !found->live()) return;
    RequestPtr rq = found->shared_from_this();
    const char* route = rq->route.kind == RouteKind::Stream ? "stream" : "run";
    rq->cache_key =
        cacheKey(cache_.prefix(), rq->principal.namespace_id, route, rq->route.workflow_id, generation, rq->body_sha);
    std::string().swap(rq->body_sha);  // in the key now; a queued request keeps only that
    if (rq->bypass || rq->cc.no_cache) return onLookup(rq, nullptr);  // not read; still coalesced
    cache_.lookup(
        rq->cache_key, toMillis(rq->ttl_s + rq->stale_s),
        [this, id](CachedResponsePtr entry) {
          ClientRequest* q = requests_.find(id);
          if (q && q->live()) onLookup(q->shared_from_this(), std::move(entry));
        },
        needsOf(*rq, ports_.runtime.unixMillis()).min_stored_at_ms);
  });
}

void Flights::onLookup(const RequestPtr& rp, CachedResponsePtr entry) {
  ClientRequest& r = *rp;
  bool stream = r.route.kind == RouteKind::Stream;
  if (stream && !r.bypass && !r.cc.no_cache && !fanout_->joinable(r.cache_key)) {
    // The look went to Redis while a stream of this instance ended and was
    // stored (it was joinable when the look began): look here once more,
    // or the input streams twice. (Runs have the coalescer's look after
    // the lock for this.)
    CachedResponsePtr local = cache_.peekLocal(r.cache_key);
    if (local && (!entry || local->stored_at_ms > entry->stored_at_ms)) entry = std::move(local);
  }
  if (entry) {
    int64_t now_ms = ports_.runtime.unixMillis();
    int64_t age_ms = std::max<int64_t>(0, now_ms - entry->stored_at_ms);
    bool fresh = age_ms < toMillis(r.ttl_s);
    bool young_enough = !r.cc.max_age || age_ms <= *r.cc.max_age * 1000;
    if (fresh && young_enough && entry->stream == stream) {
      int64_t ttl_left = (toMillis(r.ttl_s) - age_ms) / 1000;
      r.cache = "HIT";
      return replyCached(r, entry, "HIT", "workflow-proxy; hit; ttl=" + std::to_string(ttl_left), ratelimits_,
                         now_ms);
    }
    // Served if the upstream fails, unless the request refused an entry
    // that old (max-age): what it asked for is not what it would get.
    if (young_enough && age_ms < toMillis(r.ttl_s + r.stale_s) && !stream) r.stale = entry;
  }
  bool in_flight = stream ? fanout_->joinable(r.cache_key) : coalescer_->inFlight(r.cache_key);
  if (r.cc.only_if_cached && !in_flight) return replyError(r, notCached());
  auto next = stream ? &Flights::joinStream : &Flights::joinRun;
  // Joining a run in flight costs no quota; starting one does.
  if (r.principal.quota && !in_flight) return withQuota(rp, next);
  (this->*next)(rp);
}

void Flights::withQuota(const RequestPtr& rp, void (Flights::*next)(const RequestPtr&)) {
  const ClientRequest& r = *rp;
  uint64_t id = r.id;
  quotas_.acquire(r.principal.org_label, r.principal.client, *r.principal.quota,
                  [this, id, next](QuotaDecision d) {
                    ClientRequest* q = requests_.find(id);
                    if (!q || !q->live()) return;  // the place goes back with d.ticket
                    if (!d.allowed) return replyQuotaExceeded(*q, d.retry_after_s);
                    q->quota = std::move(d.ticket);
                    (this->*next)(q->shared_from_this());
                  });
}

// --- runs -----------------------------------------------------------------------

void Flights::joinRun(const RequestPtr& rp) {
  ClientRequest& r = *rp;
  uint64_t id = r.id;
  Coalescer::Joined joined = coalescer_->join(
      std::move(r.cache_key),  // the flight's now: a request that waits keeps no key
      [this, id](const FlightOutcome& outcome) {
        ClientRequest* q = requests_.find(id);
        if (!q) return;
        q->waiter.forget();
        if (q->live()) deliver(*q, outcome);
      },
      needsOf(r, ports_.runtime.unixMillis()), [this, &r](uint64_t flight) { prepareRun(r, flight); }, id);
  // Its quota's place went to the flight it created; otherwise it goes back.
  QuotaTicket unused = std::move(r.quota);
  r.waiter = CoalescerWaiter(*coalescer_, joined.waiter);
  if (!joined.created && r.may_store) {
    // Stored if any waiter may store it.
    if (auto w = runs_.find(joined.flight); w != runs_.end()) {
      w->second->may_store = true;
      w->second->keep_ms = std::max(w->second->keep_ms, toMillis(r.ttl_s + r.stale_s));
    }
  }
  if (!r.live()) return;  // answered inside join()
  // Everything the run and the reply need is copied out by now; a request
  // that waits (queued, or for another's run) keeps no parsed headers, and
  // not its key (the flight has it).
  r.exchange->releaseHeaders();
  std::string().swap(r.cache_key);  // (moved from: its memory too)
  if (!joined.created) {
    r.cache = "COALESCED";
    ports_.metrics.countCoalesced(r.principal.org_label);
  }
}

void Flights::prepareRun(ClientRequest& r, uint64_t flight) {
  auto owned = std::make_unique<RunFlight>();
  RunFlight& w = *owned;
  w.org_label = r.principal.org_label;
  w.client = r.principal.client;
  w.quota = std::move(r.quota);
  UpstreamHeaderOptions opts;
  opts.request_id = r.request_id;
  opts.identity_encoding = true;
  if (!r.principal.pass_through) {
    w.org = r.principal.org->name;
    opts.authorization = std::string();  // its place; the key in force is set at the start
  }
  w.flight = flight;
  w.creator = r.id;
  w.may_store = r.may_store;
  w.keep_ms = toMillis(r.ttl_s + r.stale_s);
  AttemptSpec spec;
  spec.admission = Forwarder::admissionFor(r.principal);
  spec.org = w.org;
  spec.org_label = r.principal.org_label;
  spec.request.method = "POST";
  spec.request.url = r.config->upstream.base_url + r.exchange->target();
  // The client's headers become the run's (the request keeps none once it waits).
  spec.request.headers = upstreamRequestHeaders(r.exchange->takeHeaders(), opts);
  spec.request.body = r.exchange->takeBody();  // the client's bytes, not the canonical text; the run owns them now
  // (The callbacks hold &w: they run only while the run holds its attempt;
  // two words each, held in std::function without an allocation.)
  AttemptCallbacks cb;
  cb.before_send = [this, &w](UpstreamRequest& request) {
    // docs/http.md: the X-Request-Id of the request that leads the run now —
    // the one that created the flight may have left, or been answered by
    // another instance's run while this one waited to run again.
    if (ClientRequest* leader = requests_.find(coalescer_->leader(w.flight)); leader && leader->exchange) {
      // (On the first try the creator leads: its id is in already.)
      const std::string* sent = findHeader(request.headers, "x-request-id");
      if (!sent || *sent != leader->request_id) setHeader(request.headers, "X-Request-Id", leader->request_id);
      // Its body too, byte for byte: requests of one flight may differ in
      // what the workflow's key rules ignore (docs/http.md, "Cache keys that
      // ignore noise"). The creator's bytes are the run's already; a later
      // leader, one that waited, still holds its own.
      if (leader->id != w.creator) request.body = leader->exchange->body();
    }
    w.body.clear();
    coalescer_->markStarted(w.flight);  // from now on it completes even if every waiter leaves
    w.quota.use();
    if (!w.counted) {
      w.counted = true;  // a 429 retry is the same run
      ports_.metrics.clientUsage().countRun(w.org_label, w.client);
    }
  };
  cb.on_head = [&w](const UpstreamHead& head) {
    // One allocation of the announced size, not a doubling string (whose
    // peak is twice the body while it grows).
    if (const std::string* length = findHeader(head.headers, "content-length")) {
      uint64_t n = 0;
      auto [end, ec] = std::from_chars(length->data(), length->data() + length->size(), n);
      if (ec == std::errc() && end == length->data() + length->size() && n <= kMaxBodyReserve) w.body.reserve(n);
    }
  };
  cb.on_data = [&w](std::string_view data) {
    w.body.append(data);
    return true;
  };
  cb.on_done = [this, &w](const AttemptEnd& end) { onRunDone(w.flight, end); };
  w.attempt = std::make_unique<UpstreamAttempt>(ports_, std::move(spec), std::move(cb));
  runs_.emplace(flight, std::move(owned));
}

void Flights::leadRun(uint64_t flight) {
  auto it = runs_.find(flight);
  if (it == runs_.end()) {
    // Nothing was prepared for this flight: cannot happen (it is prepared
    // when created), but a flight must never hang.
    FlightOutcome failed;
    failed.failure = UpstreamFailure::Unavailable;
    coalescer_->complete(flight, failed);
    return;
  }
  it->second->attempt->start();  // a flight is led once
}

void Flights::onRunDone(uint64_t flight, const AttemptEnd& end) {
  auto it = runs_.find(flight);
  if (it == runs_.end()) return;
  // Kept to the end of this function (its attempt is the caller).
  std::unique_ptr<RunFlight> w = std::move(it->second);
  runs_.erase(it);
  FlightOutcome outcome;
  outcome.upstream_ms = w->attempt->upstreamMs();
  outcome.queue_ms = w->attempt->queueMs();
  if (end.rejected) {
    outcome.rejected = end.why == RejectReason::ShuttingDown ? FlightOutcome::Rejected::ShuttingDown
                                                             : FlightOutcome::Rejected::RateLimited;
    outcome.retry_after_s = end.retry_after_s;
  } else if (end.failure != UpstreamFailure::None) {
    outcome.failure = end.failure;
  } else {
    UpstreamHead head = w->attempt->takeHead();  // the entry's now: moved, not copied
    ratelimits_.remember(w->org, head.headers);
    auto entry = std::make_shared<CachedResponse>(storedResponse(head.status, std::move(head.reason),
                                                                 std::move(head.headers), std::move(w->body),
                                                                 false, ports_.runtime.unixMillis()));
    const std::string* key = coalescer_->keyOf(flight);
    if (key && w->may_store && isStorable(entry->status, entry->body)) {
      cache_.store(*key, entry, w->keep_ms);
      outcome.stored = true;
    }
    outcome.response = std::move(entry);
  }
  coalescer_->complete(flight, outcome);
}

void Flights::deliver(ClientRequest& r, const FlightOutcome& o) {
  if (o.rejected == FlightOutcome::Rejected::NotCached) return replyError(r, notCached());
  r.upstream_ms = o.upstream_ms;
  r.queue_ms = o.queue_ms;
  // A run of this instance's (this request's or one it joined); another
  // instance's answer came from Redis, not from the upstream.
  if (o.response && !o.remote) r.upstream_status = o.response->status;
  if (o.remote && r.cache != "COALESCED") {
    // Another instance ran it for us.
    r.cache = "COALESCED";
    ports_.metrics.countCoalesced(r.principal.org_label);
  }
  // Upstream failed (5xx, timeout, unreachable) or the queue was full.
  bool upstream_failed = (!o.response && o.rejected != FlightOutcome::Rejected::ShuttingDown) ||
                         (o.response && o.response->status >= 500);
  if (upstream_failed && r.stale) {
    r.cache = "STALE";
    return replyCached(r, r.stale, "STALE", "workflow-proxy; hit; fwd=stale", ratelimits_,
                       ports_.runtime.unixMillis());
  }
  if (o.rejected == FlightOutcome::Rejected::ShuttingDown) return replyRejected(r, RejectReason::ShuttingDown, 0);
  if (o.rejected == FlightOutcome::Rejected::RateLimited) {
    return replyRejected(r, RejectReason::QueueFull, o.retry_after_s);
  }
  if (!o.response) return replyFailure(r, o.failure);
  // The head's lines written at once (responseHeaders' fields, in order), no
  // header list built for them.
  thread_local std::string head;
  head.clear();
  appendResponseHead(head, r, o.response->headers);
  appendHeaderLine(head, "X-Cache", r.cache);
  head.append("Cache-Status: ");
  appendForwardCacheStatus(head, r, o.stored, "");
  head.append("\r\n");
  // By reference: a thousand coalesced clients of a large body share one copy.
  r.exchange->respond(o.response->status, o.response->reason, head, {}, o.response->body, o.response);
}

// --- streams --------------------------------------------------------------------

void Flights::joinStream(const RequestPtr& rp) {
  ClientRequest& r = *rp;
  StreamWork work;
  work.key = r.cache_key;
  work.store = r.may_store;
  work.keep_ms = toMillis(r.ttl_s + r.stale_s);
  work.token.request = Forwarder::tokenRequest(r);
  work.token.admission = Forwarder::admissionFor(r.principal);
  if (!r.principal.pass_through) work.token.org = r.principal.org->name;
  work.token.org_label = r.principal.org_label;
  // The stream itself carries no key: the token is its credential.
  HttpHeaders client_headers = r.exchange->headers();
  removeHeader(client_headers, "authorization");
  UpstreamHeaderOptions stream_opts;
  stream_opts.request_id = r.request_id;
  stream_opts.identity_encoding = true;
  work.stream.method = "POST";
  work.stream.url = r.config->upstream.base_url + r.exchange->target();
  work.stream.headers = upstreamRequestHeaders(std::move(client_headers), stream_opts);
  work.stream.body = r.exchange->takeBody();
  if (fanout_->joinable(work.key)) {
    r.cache = "COALESCED";
    ports_.metrics.countCoalesced(r.principal.org_label);
  }
  bool created = false;
  uint64_t sub = fanout_->join(work, subscriber(rp), &created);
  if (created) {
    // A stream started is a run (its token asked for at once): counted,
    // its quota's place kept.
    r.quota.use();
    ports_.metrics.clientUsage().countRun(r.principal.org_label, r.principal.client);
  }
  QuotaTicket unused = std::move(r.quota);
  // join() may have answered already (a late joiner of a stream that ended).
  if (r.exchange) r.subscription = StreamSubscription(*fanout_, sub);
}

// A stream that is neither shared nor stored: the client's own, relayed with
// back-pressure.
void Flights::ownStream(const RequestPtr& rp) {
  ClientRequest& r = *rp;
  r.quota.use();
  ports_.metrics.clientUsage().countRun(r.principal.org_label, r.principal.client);
  forwarder_.streamWithOwnToken(rp);
}

StreamSubscriber Flights::subscriber(const RequestPtr& rp) {
  uint64_t id = rp->id;
  Clock::time_point joined = ports_.runtime.now();
  // Each callback but write() ends the subscription: the request forgets it.
  auto over = [this](uint64_t id) -> ClientRequest* {
    ClientRequest* q = requests_.find(id);
    if (q) q->subscription.forget();
    return q && q->live() ? q : nullptr;
  };
  StreamSubscriber sub;
  sub.begin = [this, id, joined](const UpstreamHead& head) {
    ClientRequest* q = requests_.find(id);
    if (!q || !q->live()) return;
    q->upstream_ms += std::chrono::duration<double, std::milli>(ports_.runtime.now() - joined).count();
    q->upstream_status = head.status;
    HttpHeaders headers = responseHeaders(*q, head.headers);
    headers.push_back({"X-Cache", q->cache});
    headers.push_back({"Cache-Status", q->cache == "COALESCED" ? "workflow-proxy; fwd=miss; collapsed"
                                                               : "workflow-proxy; fwd=miss"});
    q->exchange->begin(head.status, head.reason, headers);
    q->exchange->setOnDrain([this, id] {
      ClientRequest* d = requests_.find(id);
      if (d && d->subscription) fanout_->resume(d->subscription.id());
    });
  };
  sub.write = [this, id](std::string_view data) {
    ClientRequest* q = requests_.find(id);
    if (!q || !q->exchange) return true;
    return q->exchange->write(data);
  };
  sub.end = [this, id](bool complete) {
    ClientRequest* q = requests_.find(id);
    if (!q) return;
    q->subscription.forget();
    if (!q->exchange) return;
    if (complete) return q->exchange->end();
    HttpExchange* ex = q->exchange;
    requests_.end_request(id);  // then cut, as the upstream cut it
    ex->abortResponse();
  };
  sub.refused = [over, id](const UpstreamHead& head, const std::string& body) {
    if (ClientRequest* q = over(id)) {
      q->upstream_status = head.status;
      replyUpstream(*q, head, body);
    }
  };
  sub.failed = [over, id](UpstreamFailure failure) {
    if (ClientRequest* q = over(id)) replyFailure(*q, failure);
  };
  sub.rejected = [over, id](RejectReason why, int retry_after_s) {
    if (ClientRequest* q = over(id)) replyRejected(*q, why, retry_after_s);
  };
  sub.may_run = !rp->cc.only_if_cached;
  sub.not_cached = [over, id] {
    if (ClientRequest* q = over(id)) replyError(*q, notCached());
  };
  return sub;
}

}  // namespace wfp

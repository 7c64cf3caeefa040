#include "proxy/forwarder.h"

#include <cstdlib>

#include "proxy/headers.h"
#include "proxy/replies.h"
#include "proxy/stream_token.h"

namespace wfp {

Admission Forwarder::admissionFor(const Principal& p) {
  Admission a;
  a.budget = p.namespace_id;
  a.org_label = p.org_label;
  a.client = p.client;
  a.weight = p.weight;
  return a;
}

UpstreamRequest Forwarder::tokenRequest(const ClientRequest& r) {
  UpstreamHeaderOptions opts;
  opts.request_id = r.request_id;
  if (!r.principal.pass_through) opts.authorization = std::string();  // set at the start (KeysInForce)
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
  req.headers = upstreamRequestHeaders(std::move(subset), opts);
  return req;
}

void Forwarder::streamWithOwnToken(const RequestPtr& r) {
  r->fetching_token = true;
  AttemptSpec spec;
  spec.request = tokenRequest(*r);
  spec.admission = admissionFor(r->principal);
  if (!r->principal.pass_through) spec.org = r->principal.org->name;
  spec.org_label = r->principal.org_label;
  send(r, std::move(spec), Delivery::Buffered);
}

void Forwarder::forward(const RequestPtr& rp, std::string target, Delivery delivery) {
  ClientRequest& r = *rp;
  HttpExchange& ex = *r.exchange;
  UpstreamHeaderOptions opts;
  opts.request_id = r.request_id;
  HttpHeaders client_headers = ex.headers();
  opts.identity_encoding = r.route.kind == RouteKind::Run || r.route.kind == RouteKind::Stream;
  AttemptSpec spec;
  spec.org_label = r.principal.org_label;
  if (r.route.kind == RouteKind::Options || r.route.kind == RouteKind::Stream) {
    // Preflights and token-authenticated streams carry no key of ours, and a
    // client key has no business upstream. Neither spends quota: the
    // stream's token did when it was issued.
    removeHeader(client_headers, "authorization");
  } else {
    spec.admission = admissionFor(r.principal);
    if (!r.principal.pass_through) {
      opts.authorization = std::string();  // its place; the key in force is set at the start
      spec.org = r.principal.org->name;
    }
  }
  UpstreamRequest& req = spec.request;
  req.method = ex.method();
  req.url = r.config->upstream.base_url + target;
  req.headers = upstreamRequestHeaders(std::move(client_headers), opts);
  req.body = ex.takeBody();
  // The transport may send a safe method again after a reused connection died (the
  // upstream possibly saw it), as nginx retries an idempotent request; never
  // a run, a stream (single-use token), a token fetch or any other method.
  const std::string& m = req.method;
  req.replayable = (m == "GET" || m == "HEAD" || m == "OPTIONS") &&
                   (r.route.kind == RouteKind::PassThrough || r.route.kind == RouteKind::Options);
  send(rp, std::move(spec), delivery);
}

void Forwarder::send(const RequestPtr& rp, AttemptSpec spec, Delivery delivery) {
  ClientRequest& r = *rp;
  r.delivery = delivery;
  r.head = UpstreamHead{};
  r.body.clear();
  r.paused = false;
  r.timed = false;
  // The request holds the attempt: its callbacks run only while the request
  // exists (two words, held in std::function without an allocation).
  ClientRequest* q = rp.get();
  AttemptCallbacks cb;
  cb.on_head = [this, q](const UpstreamHead& head) {
    if (q->exchange) onHead(q->shared_from_this(), head);
  };
  cb.on_data = [this, q](std::string_view data) {
    return q->exchange ? onData(*q, data) : true;  // nobody to give it to: let it drain
  };
  // (Kept alive to the end of the callback: ending the request frees it.)
  cb.on_done = [this, q](const AttemptEnd& end) {
    if (q->exchange) onDone(q->shared_from_this(), end);
  };
  // Replaces the token fetch's attempt inside its own on_done: allowed (see
  // upstream_attempt.h).
  r.attempt = std::make_unique<UpstreamAttempt>(ports_, std::move(spec), std::move(cb));
  r.attempt->start();
}

void Forwarder::takeTimes(ClientRequest& r) {
  if (r.timed || !r.attempt) return;
  r.timed = true;
  r.queue_ms += r.attempt->queueMs();
  r.upstream_ms += r.attempt->upstreamMs();
}

void Forwarder::onHead(const RequestPtr& self, const UpstreamHead& head) {
  ClientRequest& r = *self;
  r.head = head;
  r.upstream_status = head.status;
  if (r.delivery != Delivery::Streamed) return;
  int64_t length = -1;
  if (const std::string* cl = findHeader(head.headers, "content-length")) {
    char* end = nullptr;
    long long v = strtoll(cl->c_str(), &end, 10);
    if (end && *end == '\0' && v >= 0) length = v;
  }
  takeTimes(r);
  HttpHeaders headers = responseHeaders(r, head.headers);
  if (r.route.kind == RouteKind::Stream) {
    headers.push_back({"X-Cache", r.cache});
    headers.push_back({"Cache-Status", "workflow-proxy; fwd=bypass"});
  }
  r.exchange->begin(head.status, head.reason, headers, head.status == 204 || head.status == 304 ? -1 : length);
  // The exchange may outlive the request (a shutdown): a weak reference.
  r.exchange->setOnDrain([ref = RequestRef(self)] {
    RequestPtr q = ref.lock();
    if (q && q->paused && q->attempt) {
      q->paused = false;
      q->attempt->resume();
    }
  });
}

bool Forwarder::onData(ClientRequest& r, std::string_view data) {
  if (r.delivery == Delivery::Buffered) {
    r.body.append(data);
    return true;
  }
  // Back-pressure: once the client's backlog is above the high-water mark,
  // leave further bytes in the transport (the transfer pauses) until the client has
  // drained; onDrain resumes it.
  if (r.paused) return false;
  if (!r.exchange->write(data)) r.paused = true;
  return true;
}

void Forwarder::onDone(const RequestPtr& rp, const AttemptEnd& end) {
  ClientRequest& r = *rp;
  if (end.rejected) return replyRejected(r, end.why, end.retry_after_s);
  bool streaming = r.delivery == Delivery::Streamed && r.exchange->responseStarted();
  takeTimes(r);
  if (streaming) {
    if (end.failure == UpstreamFailure::None) {
      r.exchange->end();
    } else {
      // The client sees the stream cut, as the upstream cut it. abortResponse()
      // runs no callback: end the request first, while the exchange is readable.
      HttpExchange* ex = r.exchange;
      end_request_(r.id);
      ex->abortResponse();
    }
    return;
  }
  if (end.failure != UpstreamFailure::None) return replyFailure(r, end.failure);
  if (!r.fetching_token) return replyUpstream(r, r.head, std::move(r.body));
  r.fetching_token = false;
  std::string token = tokenFromAnswer(r.head.status, r.body);
  // The upstream refused the token (401/402/429/500...): that answer is the
  // client's answer, unchanged.
  if (token.empty()) return replyUpstream(r, r.head, std::move(r.body));
  // Used once, right now: never stored, never replayed on a retry.
  forward(rp, withToken(r.exchange->target(), token), Delivery::Streamed);
}

}  // namespace wfp

// The forwarded path: a request whose answer is the upstream's, unshared
// and never stored — the token route, pass-through paths, preflights,
// client-token streams, and a stream that is neither shared nor stored (its
// own token first, then the stream with it).
//
// The request holds its UpstreamAttempt (queue, key in force, 429 retry):
// a client that leaves cancels the transfer only it needed. Buffered answers
// are relayed whole; streamed ones as they come, the transfer paused while
// the client's backlog is high.
#pragma once

#include <functional>
#include <string>

#include "proxy/client_request.h"
#include "proxy/upstream_attempt.h"

namespace wfp {

class Forwarder {
 public:
  // `end_request`: a streamed answer the upstream cut — the owner ends the
  // request (logged, counted, freed) before the exchange is aborted.
  Forwarder(const UpstreamPorts& ports, std::function<void(uint64_t id)> end_request)
      : ports_(ports), end_request_(std::move(end_request)) {}

  void forward(const RequestPtr& r, std::string target, Delivery delivery);
  // A stream with a token of its own: GET /api/v1/token with the organisation
  // key (queued: it spends quota), then the stream with that token.
  void streamWithOwnToken(const RequestPtr& r);
  // The token fetch a stream needs (also a shared stream's: StreamFanout).
  static UpstreamRequest tokenRequest(const ClientRequest& r);
  static Admission admissionFor(const Principal& p);

 private:
  void send(const RequestPtr& r, AttemptSpec spec, Delivery delivery);
  void onHead(const RequestPtr& r, const UpstreamHead& head);
  bool onData(ClientRequest& r, std::string_view data);
  void onDone(const RequestPtr& r, const AttemptEnd& end);
  void takeTimes(ClientRequest& r);

  UpstreamPorts ports_;
  std::function<void(uint64_t id)> end_request_;
};

}  // namespace wfp

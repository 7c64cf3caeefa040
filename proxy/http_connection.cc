// A connection of the client-facing server: the reader
// (http_request_reader.h) brings its requests in, the writer
// (http_response_writer.h) takes the responses out; this runs the exchange
// in between over a libevent bufferevent: the handlers, time, keep-alive and
// closing.
//
// A connection is a small state machine:
//
//   Head ──head parsed──► Body ──request complete──► Exchange
//    ▲  │                  │ │                          │
//    │  │                  │ └─ head handler answered (body unread) ─► │
//    │  └── 4xx/5xx error ─┴──► Closing ◄──────────────── close ─────────┤
//    └──────────── response flushed, keep-alive ◄──────────────────────────┘
//   Head is idle until a request's first byte (reader_.inMessage()).
//   Closing: flush the output, then (after an error, or with unread input)
//   Lingering: shutdown(SHUT_WR) and discard input until EOF or 2 s, so the
//   client reads our error response instead of a reset.
//   An exchange answered on its head (HttpServer::HeadHandler) discards its
//   input as it comes, then always closes, lingering.
//
// Lifetime: a connection is freed only through close(), which releases the
// socket at once and defers the memory to the next loop pass, so a callback
// (ours or the handler's) may close a connection from anywhere. Every user
// callback is invoked from a local copy of the std::function, so clearing the
// exchange's callbacks can never destroy a closure that is running.
//
// A response written straight to the socket (HttpResponseWriter) never
// calls the write callback: its completion is signalled through a
// per-connection "deferred" event, activated without a syscall.
//
// Over TLS (bufferevent_openssl) the connection starts with the handshake:
// BEV_EVENT_CONNECTED ends it, an error or EOF before it closes the
// connection (a plain-HTTP request among them), and the Header timer, armed
// at accept, bounds it. Responses never go straight to the socket: a small
// one goes with one SSL_write() while nothing is queued (then completed
// through the deferred event, as a direct write over TCP), anything else
// through the bufferevent's output (then the write callback completes it).
// A close after a whole response sends close_notify first.
#include "proxy/http_connection.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <new>

namespace wfp {

namespace {

// Pipelined bytes buffered while an exchange is in progress, beyond
// max_header_bytes, before reading pauses.
constexpr size_t kPipelineSlack = 4096;

}  // namespace

HttpConnection::HttpConnection(HttpServerShared& server, bufferevent* bev, evutil_socket_t fd, std::string peer,
                               bool tls)
    : server_(server),
      bev_(bev),
      in_(bufferevent_get_input(bev)),
      fd_(fd),
      timer_(server.loop.base(), &HttpConnection::onTimer, this),
      reader_(ex_, in_, server.parserLimits()),
      writer_(ex_, bufferevent_get_output(bev), tls ? -1 : fd),  // -1: never straight to the socket (TLS)
      tls_(tls) {
  reader_generation_ = server.limits_generation;
  ex_.conn_ = this;
  ex_.peer_ = std::move(peer);
}

HttpConnection::~HttpConnection() {
  if (bev_) bufferevent_free(bev_);
  if (deferred_) event_free(deferred_);
}

void HttpConnection::start() {
  bufferevent_setcb(bev_, &HttpConnection::onRead, &HttpConnection::onWrite, &HttpConnection::onEvent, this);
  applyWriteTimeout();
  bufferevent_enable(bev_, EV_READ);
  // From accept: the TLS handshake and the first request's head must come in time.
  arm(TimerKind::Header);
}

// --- libevent trampolines: an exception fails the connection ----------------------

void HttpConnection::run(void* arg, const char* what, void (HttpConnection::*handle)()) noexcept {
  auto* self = static_cast<HttpConnection*>(arg);
  if (!guarded(what, [self, handle] { (self->*handle)(); })) self->fail();
}

void HttpConnection::onRead(bufferevent*, void* arg) noexcept {
  run(arg, "read callback", &HttpConnection::handleRead);
}
void HttpConnection::onWrite(bufferevent*, void* arg) noexcept {
  run(arg, "write callback", &HttpConnection::checkOutput);
}
void HttpConnection::onTimer(evutil_socket_t, short, void* arg) noexcept {
  run(arg, "timer", &HttpConnection::handleTimer);
}
void HttpConnection::onDeferred(evutil_socket_t, short, void* arg) noexcept {
  run(arg, "deferred callback", &HttpConnection::handleDeferred);
}

void HttpConnection::onEvent(bufferevent*, short what, void* arg) noexcept {
  auto* self = static_cast<HttpConnection*>(arg);
  if (!guarded("event callback", [self, what] { self->handleEvent(what); })) self->fail();
}

// --- input ----------------------------------------------------------------------------

void HttpConnection::handleRead() {
  if (closed_) return;
  switch (state_) {
    case State::Closing:
    case State::Lingering:
      evbuffer_drain(in_, evbuffer_get_length(in_));
      return;
    case State::Exchange:
      if (body_unread_) {
        // Answered on its head: the body and anything behind it are never
        // read, only discarded as they come.
        evbuffer_drain(in_, evbuffer_get_length(in_));
        return;
      }
      // Keep reading so a client that leaves is noticed; park pipelined
      // bytes, up to a bound.
      if (!read_suspended_ && evbuffer_get_length(in_) > server_.limits.max_header_bytes + kPipelineSlack) {
        bufferevent_disable(bev_, EV_READ);
        read_suspended_ = true;
      }
      return;
    default:
      processInput();
  }
}

// Reads requests while one is being read, and acts on each step.
void HttpConnection::processInput() {
  if (reader_generation_ != server_.limits_generation) {
    reader_generation_ = server_.limits_generation;
    reader_.setLimits(server_.parserLimits());
  }
  while (!closed_ && (state_ == State::Head || state_ == State::Body)) {
    if (!reader_.inMessage()) {
      if (evbuffer_get_length(in_) == 0) return;
      if (timer_.kind() != TimerKind::Header) arm(TimerKind::Header);  // the request's clock starts
    }
    switch (reader_.read()) {
      case HttpRequestReader::Step::NeedMore:
        return;
      case HttpRequestReader::Step::Head:
        if (!onHead()) return;
        break;
      case HttpRequestReader::Step::Complete:
        dispatch();
        return;
      case HttpRequestReader::Step::Error:
        sendError(reader_.errorStatus(), reader_.errorMessage());
        return;
    }
  }
}

// The request's head is in the exchange: the head handler, 100 Continue and
// the body as the request needs. False when the head handler took it.
bool HttpConnection::onHead() {
  const HttpRequestHead& head = reader_.head();
  keep_alive_ = head.keep_alive;
  state_ = State::Body;
  if (head.framing == HttpBodyFraming::None) return true;  // the reader says Complete next
  // A body is coming: the head handler may answer now, before the body is
  // read (and before any 100 Continue). Not when the whole body is already
  // here (a small request sent in one piece): refusing it early would save
  // nothing and cost the client its keep-alive connection.
  const bool body_here =
      head.framing == HttpBodyFraming::Length && evbuffer_get_length(in_) >= head.content_length;
  const bool expect_continue = head.expect_continue;
  if (server_.head_handler && !body_here && offerHead()) return false;
  reader_.reserveBody();
  // Expect: 100-continue — tell the client to go ahead, unless its body is
  // already arriving.
  if (expect_continue && evbuffer_get_length(in_) == 0) {
    writer_.interim("HTTP/1.1 100 Continue\r\n\r\n");
    afterWrite();
  }
  return true;
}

// --- the exchange ---------------------------------------------------------------------

void HttpConnection::dispatch() {
  timer_.disarm();
  state_ = State::Exchange;
  openExchange();
  if (!guarded("request handler", [this] { server_.handler(ex_); })) fail();
}

void HttpConnection::openExchange() {
  // Unique across every HttpServer in the process: one handler serves
  // both the client and the admin listener and keys its requests by id.
  ex_.id_ = HttpExchange::nextId();
  exchange_active_ = true;
  ++server_.exchange_count;
  if (applied_generation_ != server_.limits_generation) applyWriteTimeout();
}

// The head of a request with a body is parsed: offers the exchange to the
// head handler. True when it answered (the body is then never read: the
// response says Connection: close, unread input is discarded, and the
// connection lingers and closes once the response is out) or the
// connection closed; false when the request goes on as if there were no
// head handler (that exchange is gone; the handler gets a new id).
bool HttpConnection::offerHead() {
  state_ = State::Exchange;  // the header timer stays armed: it cannot fire during the call
  body_unread_ = true;       // a response started now says Connection: close
  openExchange();
  bool answered = false;
  if (!guarded("head handler", [this, &answered] { answered = server_.head_handler(ex_); })) {
    fail();
    return true;
  }
  if (closed_) return true;  // abortResponse() in the hook
  if (!answered && !ex_.response_started_) {
    if (ex_.on_abort_ || ex_.on_complete_ || ex_.on_drain_) {
      spdlog::error("http: head handler registered callbacks on exchange {} it did not answer; dropped", ex_.id_);
    }
    exchange_active_ = false;
    --server_.exchange_count;
    ex_.id_ = 0;
    ex_.on_drain_ = nullptr;
    ex_.on_abort_ = nullptr;
    ex_.on_complete_ = nullptr;
    body_unread_ = false;
    state_ = State::Body;
    return false;
  }
  timer_.disarm();
  evbuffer_drain(in_, evbuffer_get_length(in_));
  if (!ex_.response_started_) {
    spdlog::error("http: head handler claimed exchange {} without answering it; sending 500", ex_.id_);
    respond(500, {}, {}, {{"Content-Type", "application/json"}},
            HttpServer::errorBody("Internal server error", "internal_error"), nullptr);
  }
  return true;
}

// The exchange ended by the client (or by a failure): onAbort, at most once.
void HttpConnection::abortExchange() {
  if (!exchange_active_) return;
  exchange_active_ = false;
  --server_.exchange_count;
  auto fn = std::move(ex_.on_abort_);
  ex_.on_abort_ = nullptr;
  ex_.on_complete_ = nullptr;
  ex_.on_drain_ = nullptr;
  if (fn) guarded("onAbort", fn);
}

// Our own code or a callback threw: give up on the connection.
void HttpConnection::fail() noexcept {
  if (closed_) return;
  abortExchange();
  close();
}

void HttpConnection::completeExchange() {
  exchange_active_ = false;
  --server_.exchange_count;
  auto fn = std::move(ex_.on_complete_);
  ex_.on_complete_ = nullptr;
  if (fn && !guarded("onComplete", fn)) {
    close();
    return;
  }
  if (closed_) return;
  const bool body_unread = body_unread_;  // the client may still be sending it
  resetExchange();
  if (!keep_alive_ || close_after_ || peer_eof_ || body_unread) {
    startClose(body_unread);
    return;
  }
  state_ = State::Head;
  if (read_suspended_) {
    read_suspended_ = false;
    bufferevent_enable(bev_, EV_READ);
  }
  if (evbuffer_get_length(in_) > 0) {
    arm(TimerKind::Header);
    processInput();
  } else {
    arm(TimerKind::Idle);
  }
}

// The exchange is reused for the connection's next request.
void HttpConnection::resetExchange() {
  ex_.id_ = 0;
  ex_.on_drain_ = nullptr;
  ex_.on_abort_ = nullptr;
  ex_.on_complete_ = nullptr;
  reader_.reset();
  writer_.reset();
  body_unread_ = false;
}

// --- the response ---------------------------------------------------------------------

bool HttpConnection::canRespond(const char* what) const {
  if (closed_ || !exchange_active_) return false;
  if (ex_.response_started_) {
    spdlog::error("http: {} after the response was started (exchange {})", what, ex_.id_);
    return false;
  }
  return true;
}

void HttpConnection::respond(int status, std::string_view reason, std::string_view preformatted,
                             const HttpHeaders& headers, std::string_view body,
                             const std::shared_ptr<const void>& body_owner) {
  if (!canRespond("respond()")) return;
  keep_alive_ = writer_.respond(status, reason, preformatted, headers, body, body_owner, mayKeepAlive());
  afterWrite();
  finishResponse();
}

void HttpConnection::begin(int status, std::string_view reason, std::string_view preformatted,
                           const HttpHeaders& headers, int64_t content_length) {
  if (!canRespond("begin()")) return;
  keep_alive_ = writer_.begin(status, reason, preformatted, headers, content_length, mayKeepAlive());
  afterWrite();
}

bool HttpConnection::write(std::string_view data) {
  if (closed_ || !exchange_active_) return true;  // nobody to wait for: let the caller move on
  if (!ex_.response_started_ || ex_.response_done_) {
    spdlog::error("http: write() {} (exchange {})", ex_.response_done_ ? "after end()" : "before begin()", ex_.id_);
    return true;
  }
  writer_.write(data);
  afterWrite();
  if (closed_) return true;
  const size_t high = server_.limits.output_high_water;
  if (writer_.pending() > high) {
    if (!ex_.want_drain_) {
      ex_.want_drain_ = true;
      // The write callback then runs once the backlog is at or below half.
      bufferevent_setwatermark(bev_, EV_WRITE, high / 2, 0);
    }
    return false;
  }
  return true;
}

void HttpConnection::end() {
  if (closed_ || !exchange_active_ || !ex_.response_started_ || ex_.response_done_) return;
  if (!writer_.end()) keep_alive_ = false;  // short of its Content-Length: closing tells the client
  afterWrite();
  finishResponse();
}

void HttpConnection::abortResponse() {
  if (closed_ || !exchange_active_) return;
  // The caller ends the exchange: no callback runs.
  exchange_active_ = false;
  --server_.exchange_count;
  close();
}

// After a write: one that failed (the client is gone) ends the exchange on
// this loop pass, not inside the caller.
void HttpConnection::afterWrite() {
  if (writer_.failed() && !closed_) activateDeferred();
}

void HttpConnection::finishResponse() {
  ex_.response_done_ = true;
  // Written straight to the socket: nothing will call the write callback,
  // so complete on this loop pass (never inside the caller's respond()).
  if (writer_.pending() == 0 && !closed_) activateDeferred();
}

// Runs handleDeferred() on this loop pass, after the caller returns. The
// event is made on first use: a connection whose request waits in a queue
// has not needed it yet (10 000 of them: 1.4 MB).
void HttpConnection::activateDeferred() {
  if (!deferred_) {
    deferred_ = event_new(server_.loop.base(), -1, 0, &HttpConnection::onDeferred, this);
    if (!deferred_) throw std::bad_alloc();  // the callback's guard fails the connection
  }
  event_active(deferred_, EV_TIMEOUT, 1);
}

// Output went down (write callback) or was written directly (deferred).
void HttpConnection::checkOutput() {
  if (closed_) return;
  size_t len = writer_.pending();
  if (exchange_active_ && ex_.want_drain_ && len <= server_.limits.output_high_water / 2) {
    ex_.want_drain_ = false;
    bufferevent_setwatermark(bev_, EV_WRITE, 0, 0);
    if (ex_.on_drain_) {
      // From a local copy: the callback may end the exchange.
      auto fn = std::move(ex_.on_drain_);
      ex_.on_drain_ = nullptr;
      bool ok = guarded("onDrain", fn);
      if (!ok) {
        fail();
        return;
      }
      if (closed_) return;
      if (exchange_active_ && !ex_.on_drain_) ex_.on_drain_ = std::move(fn);
    }
    len = writer_.pending();
  }
  if (len != 0) return;
  if (exchange_active_ && ex_.response_done_) {
    completeExchange();
  } else if (state_ == State::Closing) {
    flushed();
  }
}

void HttpConnection::handleDeferred() {
  if (closed_) return;
  if (writer_.failed()) {
    abortExchange();
    close();
    return;
  }
  checkOutput();
}

// --- events and timers ------------------------------------------------------------------

void HttpConnection::handleEvent(short what) {
  if (closed_) return;
  if (tls_ && !handshake_done_) {
    if (what & BEV_EVENT_CONNECTED) return handshakeDone();
    // An error, EOF or write timeout before the handshake finished.
    std::string detail;
    TlsFailure failure = (what & BEV_EVENT_TIMEOUT) ? TlsFailure::Timeout : classifyHandshakeFailure(bev_, &detail);
    return handshakeFailed(failure, detail);
  }
  if (what & BEV_EVENT_CONNECTED) return;
  if (what & BEV_EVENT_TIMEOUT) {
    // write_timeout_s: output pending, no progress.
    spdlog::debug("http: {}: write timeout", ex_.peer_);
    abortExchange();
    close();
    return;
  }
  if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_WRITING)) {
    peer_eof_ = true;
    // A response that is fully produced still gets flushed to a client
    // that only half-closed; anything less is an abort (nginx's 499).
    const bool flushing = state_ == State::Closing || (state_ == State::Exchange && exchange_active_ && ex_.response_done_);
    if (flushing) {
      // bufferevent_openssl stops writing too when it reports EOF: resume.
      if (tls_ && writer_.pending() > 0) bufferevent_enable(bev_, EV_WRITE);
      return;
    }
  }
  abortExchange();
  close();
}

void HttpConnection::handleTimer() {
  if (closed_) return;
  TimerKind kind = timer_.fired();
  if (tls_ && !handshake_done_) return handshakeFailed(TlsFailure::Timeout, "handshake timeout");
  if (kind == TimerKind::Header && (state_ == State::Head || state_ == State::Body) && reader_.inMessage()) {
    sendError(408, "Request timeout");
    return;
  }
  // Idle keep-alive, a connection that never sent a byte, or the linger
  // period ended: close without a word.
  closeGracefully();
}

void HttpConnection::arm(TimerKind kind) {
  switch (kind) {
    case TimerKind::Header: return timer_.arm(kind, server_.has_header_tv ? &server_.header_tv : nullptr);
    case TimerKind::Idle: return timer_.arm(kind, server_.has_idle_tv ? &server_.idle_tv : nullptr);
    case TimerKind::Linger: return timer_.arm(kind, &server_.linger_tv);
    case TimerKind::None: return timer_.disarm();
  }
}

void HttpConnection::applyWriteTimeout() {
  applied_generation_ = server_.limits_generation;
  bufferevent_set_timeouts(bev_, nullptr, server_.has_write_tv ? &server_.write_tv : nullptr);
}

// --- closing ----------------------------------------------------------------------------

// An error of our own: the JSON shape of docs/http.md, then close.
void HttpConnection::sendError(int status, std::string_view message) {
  const std::string_view code = HttpResponseWriter::errorCode(status);
  spdlog::debug("http: {}: {} {}", ex_.peer_, status, message);
  const size_t bytes_out = writer_.error(status, message, code);
  server_.reportError(status, code, ex_, evbuffer_get_length(in_), bytes_out);
  startClose(true);
}

// Flush what is queued, then close (lingering if the client may still be
// sending).
void HttpConnection::startClose(bool linger) {
  timer_.disarm();
  state_ = State::Closing;
  linger_ = linger || evbuffer_get_length(in_) > 0;
  evbuffer_drain(in_, evbuffer_get_length(in_));
  if (writer_.failed()) {
    close();
    return;
  }
  if (writer_.pending() == 0) flushed();
}

void HttpConnection::flushed() {
  if (!linger_ || peer_eof_) {
    closeGracefully();
    return;
  }
  sendCloseNotify();
  ::shutdown(fd_, SHUT_WR);
  state_ = State::Lingering;
  if (read_suspended_) {
    read_suspended_ = false;
    bufferevent_enable(bev_, EV_READ);
  }
  arm(TimerKind::Linger);
}

void HttpConnection::close() noexcept {
  if (closed_) return;
  closed_ = true;
  if (exchange_active_) {  // ended without a callback (abortResponse, teardown)
    exchange_active_ = false;
    --server_.exchange_count;
  }
  writer_.close();
  bufferevent_free(bev_);  // clears its callbacks; closes the socket
  bev_ = nullptr;
  timer_.stop();
  if (deferred_) event_del(deferred_);
  ex_.on_drain_ = nullptr;
  ex_.on_abort_ = nullptr;
  ex_.on_complete_ = nullptr;
  server_.unlink(this);
  try {
    server_.loop.deferDelete(std::unique_ptr<HttpConnection>(this));
  } catch (...) {
    spdlog::critical("http: out of memory while closing a connection");
    std::abort();
  }
}

void HttpConnection::closeGracefully() noexcept {
  sendCloseNotify();
  close();
}

// TLS: the close_notify alert, once, when nothing of ours is still queued
// (it would come after it). Written to the socket at once; if the socket
// will not take it, the client sees a close without it, as after a cut.
void HttpConnection::sendCloseNotify() noexcept {
  if (!tls_ || !handshake_done_ || closed_ || writer_.pending() != 0) return;
  SSL* ssl = bufferevent_openssl_get_ssl(bev_);
  if (!ssl || (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN)) return;
  SSL_shutdown(ssl);
  ERR_clear_error();
}

void HttpConnection::handshakeDone() {
  handshake_done_ = true;
  SSL* ssl = bufferevent_openssl_get_ssl(bev_);
  if (!ssl) return;
  ex_.peer_subject_ = verifiedPeerCommonName(ssl);
  writer_.setTls(ssl);  // small answers may now be written with one SSL_write()
}

// Not a request, so no access log line and no 4xx: the client gets no HTTP
// answer it could read. Counted by reason (the observer) and closed.
void HttpConnection::handshakeFailed(TlsFailure failure, std::string_view detail) {
  server_.reportTlsFailure(failure, ex_.peer_, detail);
  if (failure == TlsFailure::PlainHttp) {
    // OpenSSL read the request's first bytes only: take in what else of it
    // is here, so the close reaches the client as an orderly end (FIN), not
    // a reset for unread data.
    char discard[4096];
    for (int i = 0; i < 16 && ::recv(fd_, discard, sizeof discard, MSG_DONTWAIT) > 0; ++i) {
    }
  }
  close();
}

void HttpConnection::teardown() {
  abortExchange();
  close();
}

size_t HttpConnection::requestBytesHeld() const {
  return (closed_ ? 0 : evbuffer_get_length(in_)) + ex_.body_.capacity();
}

bool HttpConnection::idle() const {
  return state_ == State::Head && !reader_.inMessage() && !exchange_active_ && evbuffer_get_length(in_) == 0;
}

}  // namespace wfp

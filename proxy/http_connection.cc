// A connection of the client-facing server: the parser (http_parser.h) reads
// its requests; this file moves the bytes over a libevent bufferevent, keeps
// the time, hands exchanges to the handler and writes their responses.
//
// A connection is a small state machine:
//
//   Head ──head parsed──► Body ──request complete──► Exchange
//    ▲  │                  │ │                          │
//    │  │                  │ └─ head handler answered (body unread) ─► │
//    │  └── 4xx/5xx error ─┴──► Closing ◄──────────────── close ─────────┤
//    └──────────── response flushed, keep-alive ◄──────────────────────────┘
//   Head is idle until a request's first byte (parser_.inMessage()).
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
// Hot path: a response is written with one sendmsg() straight to the socket
// when nothing is queued (the common case), so a cache hit costs no
// evbuffer copy of the body and no epoll_ctl for the write event; whatever
// the kernel does not take goes to the bufferevent's output and libevent
// flushes it. Completion of a response written that way is signalled through
// a per-connection "deferred" event, activated without a syscall.
#include "proxy/http_connection.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <new>

namespace wfp {

namespace {

// Pipelined bytes buffered while an exchange is in progress, beyond
// max_header_bytes, before reading pauses.
constexpr size_t kPipelineSlack = 4096;
// Bodies whose buffer grew beyond this are released after the exchange.
constexpr size_t kKeepBodyCapacity = 64 * 1024;
// The last piece of a response at least this large, whose memory an owner
// keeps alive, is queued by reference rather than copied.
constexpr size_t kReferenceMinBytes = 64 * 1024;

void appendDecimal(std::string& out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, static_cast<size_t>(r.ptr - buf));
}

std::string_view defaultReason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

void appendStatusLine(std::string& out, int status, std::string_view reason) {
  if (status < 100 || status > 999) {
    spdlog::error("http: handler answered with invalid status {}; sending 500", status);
    status = 500;
    reason = {};
  }
  out.append("HTTP/1.1 ");
  char digits[3] = {static_cast<char>('0' + status / 100), static_cast<char>('0' + status / 10 % 10),
                    static_cast<char>('0' + status % 10)};
  out.append(digits, 3);
  out.push_back(' ');
  if (reason.empty()) reason = defaultReason(status);
  // reason-phrase = *( HTAB / SP / VCHAR / obs-text ): drop anything else, so
  // a reason taken from elsewhere cannot split the response.
  for (char c : reason) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u == '\t' || u >= 0x20) {
      if (u != 0x7F) out.push_back(c);
    }
  }
  out.append("\r\n");
}

void appendHeaders(std::string& out, const HttpHeaders& headers) {
  for (const HttpHeader& h : headers) appendHeaderLine(out, h.name, h.value);
}

// The response head buffer, reused for every response on this thread.
std::string& headScratch() {
  thread_local std::string buffer = [] {
    std::string s;
    s.reserve(2048);
    return s;
  }();
  buffer.clear();
  return buffer;
}

}  // namespace

HttpConnection::HttpConnection(HttpServerShared& server, bufferevent* bev, evutil_socket_t fd, std::string peer)
    : server_(server),
      bev_(bev),
      in_(bufferevent_get_input(bev)),
      out_(bufferevent_get_output(bev)),
      fd_(fd),
      parser_(server.parserLimits()) {
  parser_generation_ = server.limits_generation;
  ex_.conn_ = this;
  ex_.peer_ = std::move(peer);
  timer_ = event_new(server.loop.base(), -1, 0, &HttpConnection::onTimer, this);
}

HttpConnection::~HttpConnection() {
  if (bev_) bufferevent_free(bev_);
  if (timer_) event_free(timer_);
  if (deferred_) event_free(deferred_);
}

void HttpConnection::start() {
  bufferevent_setcb(bev_, &HttpConnection::onRead, &HttpConnection::onWrite, &HttpConnection::onEvent, this);
  applyWriteTimeout();
  bufferevent_enable(bev_, EV_READ);
  arm(TimerKind::Header);  // from accept: the first request's head must come in time
}

// --- libevent trampolines ---------------------------------------------------------

void HttpConnection::onRead(bufferevent*, void* arg) noexcept {
  auto* self = static_cast<HttpConnection*>(arg);
  if (!guarded("read callback", [self] { self->handleRead(); })) self->fail();
}

void HttpConnection::onWrite(bufferevent*, void* arg) noexcept {
  auto* self = static_cast<HttpConnection*>(arg);
  if (!guarded("write callback", [self] { self->checkOutput(); })) self->fail();
}

void HttpConnection::onEvent(bufferevent*, short what, void* arg) noexcept {
  auto* self = static_cast<HttpConnection*>(arg);
  if (!guarded("event callback", [self, what] { self->handleEvent(what); })) self->fail();
}

void HttpConnection::onTimer(evutil_socket_t, short, void* arg) noexcept {
  auto* self = static_cast<HttpConnection*>(arg);
  if (!guarded("timer", [self] { self->handleTimer(); })) self->fail();
}

void HttpConnection::onDeferred(evutil_socket_t, short, void* arg) noexcept {
  auto* self = static_cast<HttpConnection*>(arg);
  if (!guarded("deferred callback", [self] { self->handleDeferred(); })) self->fail();
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

// Feeds the parser while a request is being read, and acts on its events.
void HttpConnection::processInput() {
  if (parser_generation_ != server_.limits_generation) {
    parser_generation_ = server_.limits_generation;
    parser_.setLimits(server_.parserLimits());
  }
  while (!closed_ && (state_ == State::Head || state_ == State::Body)) {
    size_t len = evbuffer_get_length(in_);
    if (!parser_.inMessage()) {
      if (len == 0) return;
      if (timer_kind_ != TimerKind::Header) arm(TimerKind::Header);  // the request's clock starts
    }
    if (!onParsed(parseInput(len))) return;
  }
}

// Parses the input's first piece, as it lies in the buffer (usually all of
// a head is there); only when the parser needs more of it in one piece is
// the buffer pulled up, and then no further than the parser may look.
HttpParser::Result HttpConnection::parseInput(size_t len) {
  std::string_view view;
  evbuffer_iovec first{};
  if (len > 0 && evbuffer_peek(in_, -1, nullptr, &first, 1) >= 1) {
    view = std::string_view(static_cast<const char*>(first.iov_base), first.iov_len);
  }
  for (;;) {
    HttpParser::Result r = parser_.parse(view);
    if (r.event != HttpParser::Event::NeedMore || r.consumed != 0) return r;
    size_t want = std::min(len, parser_.lookahead());
    if (view.size() >= want) return r;  // wait for more input
    view = std::string_view(reinterpret_cast<const char*>(evbuffer_pullup(in_, static_cast<ev_ssize_t>(want))), want);
  }
}

// Acts on one parser event. False when parsing stops (the exchange is
// handed over, an error answered, or more input is needed).
bool HttpConnection::onParsed(const HttpParser::Result& r) {
  switch (r.event) {
    case HttpParser::Event::NeedMore:
      if (r.consumed == 0) return false;
      evbuffer_drain(in_, r.consumed);
      if (state_ == State::Body) ex_.bytes_in_ = parser_.messageBytes();
      return true;
    case HttpParser::Event::Head:
      return onHead(r.consumed);
    case HttpParser::Event::Body:
      ex_.body_.append(r.body);
      evbuffer_drain(in_, r.consumed);
      ex_.bytes_in_ = parser_.messageBytes();
      return true;
    case HttpParser::Event::Complete:
      evbuffer_drain(in_, r.consumed);
      ex_.bytes_in_ = parser_.messageBytes();
      dispatch();
      return false;
    case HttpParser::Event::Error:
      if (state_ == State::Head) {
        // What was parsed of the request line, for the error observer.
        ex_.method_.assign(parser_.head().method);
        ex_.target_.assign(parser_.head().target);
      }
      evbuffer_drain(in_, r.consumed);
      ex_.bytes_in_ = parser_.messageBytes();
      sendError(parser_.errorStatus(), parser_.errorMessage());
      return false;
  }
  return false;
}

// The request's head is parsed: into the exchange, then the head handler,
// 100 Continue and the body as the request needs.
bool HttpConnection::onHead(size_t consumed) {
  const HttpRequestHead& head = parser_.head();
  ex_.method_.assign(head.method);
  ex_.target_.assign(head.target);
  ex_.version_minor_ = head.version_minor;
  // The fields are assigned into the elements the previous request left,
  // reusing their capacity; a connection's first request allocates once.
  HttpHeaders& headers = ex_.headers_;
  if (headers.capacity() == 0) headers.reserve(head.headers.size());
  for (size_t i = 0; i < head.headers.size(); ++i) {
    if (i < headers.size()) {
      headers[i].name.assign(head.headers[i].name);
      headers[i].value.assign(head.headers[i].value);
    } else {
      headers.push_back(HttpHeader{std::string(head.headers[i].name), std::string(head.headers[i].value)});
    }
  }
  if (head.headers.size() < headers.size()) headers.resize(head.headers.size());
  evbuffer_drain(in_, consumed);  // the views in `head` end here
  ex_.bytes_in_ = parser_.messageBytes();
  ex_.head_request_ = ex_.method_ == "HEAD";
  keep_alive_ = head.keep_alive;
  state_ = State::Body;
  if (head.framing == HttpBodyFraming::None) return true;  // the parser says Complete next
  // A body is coming: the head handler may answer now, before the body is
  // read (and before any 100 Continue). Not when the whole body is already
  // here (a small request sent in one piece): refusing it early would save
  // nothing and cost the client its keep-alive connection.
  const bool length = head.framing == HttpBodyFraming::Length;
  const uint64_t content_length = head.content_length;
  const bool expect_continue = head.expect_continue;
  const bool body_here = length && evbuffer_get_length(in_) >= content_length;
  if (server_.head_handler && !body_here && offerHead()) return false;
  if (length) ex_.body_.reserve(static_cast<size_t>(content_length));
  // Expect: 100-continue — tell the client to go ahead, unless its body is
  // already arriving.
  if (expect_continue && evbuffer_get_length(in_) == 0) {
    static constexpr std::string_view k100 = "HTTP/1.1 100 Continue\r\n\r\n";
    iovec iov{const_cast<char*>(k100.data()), k100.size()};
    output(&iov, 1);
  }
  return true;
}

// --- the exchange ---------------------------------------------------------------------

void HttpConnection::dispatch() {
  disarm();
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
  disarm();
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

void HttpConnection::resetExchange() {
  HttpExchange& ex = ex_;
  ex.id_ = 0;
  ex.method_.clear();
  ex.target_.clear();
  ex.version_minor_ = 1;
  // headers_ keeps its elements: the next request's fields are assigned
  // into them, reusing their capacity.
  if (ex.body_.capacity() > kKeepBodyCapacity) {
    std::string().swap(ex.body_);
  } else {
    ex.body_.clear();
  }
  ex.bytes_in_ = 0;
  ex.head_request_ = false;
  ex.response_started_ = false;
  ex.response_done_ = false;
  ex.chunked_ = false;
  ex.want_drain_ = false;
  ex.status_ = 0;
  ex.bytes_out_ = 0;
  ex.on_drain_ = nullptr;
  ex.on_abort_ = nullptr;
  ex.on_complete_ = nullptr;
  framing_ = Framing::None;
  declared_length_ = -1;
  body_sent_ = 0;
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

// Decides keep-alive for the response being started and appends the
// Connection header it needs.
void HttpConnection::appendConnectionHeader(std::string& head, bool framed) {
  keep_alive_ = keep_alive_ && framed && !close_after_ && !body_unread_;
  if (!keep_alive_) {
    head.append("Connection: close\r\n");
  } else if (ex_.version_minor_ == 0) {
    head.append("Connection: keep-alive\r\n");
  }
}

void HttpConnection::respond(int status, std::string_view reason, std::string_view preformatted,
                             const HttpHeaders& headers, std::string_view body,
                             const std::shared_ptr<const void>& body_owner) {
  if (!canRespond("respond()")) return;
  const bool no_body_status = status < 200 || status == 204 || status == 304;
  std::string& head = headScratch();
  appendStatusLine(head, status, reason);
  head.append(preformatted);
  appendHeaders(head, headers);
  if (!no_body_status) {
    head.append("Content-Length: ");
    appendDecimal(head, body.size());
    head.append("\r\n");
  }
  appendConnectionHeader(head, true);
  head.append("\r\n");
  ex_.response_started_ = true;
  ex_.status_ = status;
  const bool send_body = !ex_.head_request_ && !no_body_status && !body.empty();
  iovec iov[2] = {{head.data(), head.size()}, {const_cast<char*>(body.data()), body.size()}};
  ex_.bytes_out_ = head.size() + (send_body ? body.size() : 0);
  output(iov, send_body ? 2 : 1, body_owner);
  finishResponse();
}

void HttpConnection::begin(int status, std::string_view reason, std::string_view preformatted,
                           const HttpHeaders& headers, int64_t content_length) {
  if (!canRespond("begin()")) return;
  const bool no_body_status = status < 200 || status == 204 || status == 304;
  std::string& head = headScratch();
  appendStatusLine(head, status, reason);
  head.append(preformatted);
  appendHeaders(head, headers);
  bool framed = true;
  if (no_body_status) {
    framing_ = Framing::None;
  } else if (content_length >= 0) {
    head.append("Content-Length: ");
    appendDecimal(head, static_cast<uint64_t>(content_length));
    head.append("\r\n");
    framing_ = ex_.head_request_ ? Framing::None : Framing::Length;
    declared_length_ = content_length;
  } else if (ex_.head_request_) {
    framing_ = Framing::None;  // a HEAD response has no body; its length is unknown
  } else if (ex_.version_minor_ == 1) {
    head.append("Transfer-Encoding: chunked\r\n");
    framing_ = Framing::Chunked;
  } else {
    framing_ = Framing::Close;  // HTTP/1.0: the body ends when the connection does
    framed = false;
  }
  appendConnectionHeader(head, framed);
  head.append("\r\n");
  ex_.response_started_ = true;
  ex_.chunked_ = framing_ == Framing::Chunked;
  ex_.status_ = status;
  ex_.bytes_out_ = head.size();
  body_sent_ = 0;
  iovec iov{head.data(), head.size()};
  output(&iov, 1);
}

bool HttpConnection::write(std::string_view data) {
  if (closed_ || !exchange_active_) return true;  // nobody to wait for: let the caller move on
  if (!ex_.response_started_ || ex_.response_done_) {
    spdlog::error("http: write() {} (exchange {})", ex_.response_done_ ? "after end()" : "before begin()", ex_.id_);
    return true;
  }
  if (!data.empty()) {
    switch (framing_) {
      case Framing::None:
        break;  // HEAD, 204, 304: no body on the wire
      case Framing::Length: {
        uint64_t room = static_cast<uint64_t>(declared_length_) - body_sent_;
        if (data.size() > room) {
          spdlog::error("http: response body longer than its Content-Length {} (exchange {}); truncated",
                        declared_length_, ex_.id_);
          data = data.substr(0, static_cast<size_t>(room));
        }
        if (data.empty()) break;
        iovec iov{const_cast<char*>(data.data()), data.size()};
        output(&iov, 1);
        body_sent_ += data.size();
        ex_.bytes_out_ += data.size();
        break;
      }
      case Framing::Chunked: {
        char size_line[24];
        auto r = std::to_chars(size_line, size_line + 16, data.size(), 16);
        r.ptr[0] = '\r';
        r.ptr[1] = '\n';
        size_t size_len = static_cast<size_t>(r.ptr - size_line) + 2;
        static constexpr char kCrlf[] = "\r\n";
        iovec iov[3] = {{size_line, size_len},
                        {const_cast<char*>(data.data()), data.size()},
                        {const_cast<char*>(kCrlf), 2}};
        output(iov, 3);
        body_sent_ += data.size();
        ex_.bytes_out_ += size_len + data.size() + 2;
        break;
      }
      case Framing::Close: {
        iovec iov{const_cast<char*>(data.data()), data.size()};
        output(&iov, 1);
        body_sent_ += data.size();
        ex_.bytes_out_ += data.size();
        break;
      }
    }
  }
  if (closed_) return true;
  const size_t high = server_.limits.output_high_water;
  if (evbuffer_get_length(out_) > high) {
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
  if (framing_ == Framing::Chunked) {
    static constexpr char kLast[] = "0\r\n\r\n";
    iovec iov{const_cast<char*>(kLast), 5};
    output(&iov, 1);
    ex_.bytes_out_ += 5;
  } else if (framing_ == Framing::Length && body_sent_ < static_cast<uint64_t>(declared_length_)) {
    // The client waits for bytes that will never come: closing tells it.
    spdlog::error("http: response body shorter ({}) than its Content-Length {} (exchange {}); closing", body_sent_,
                  declared_length_, ex_.id_);
    keep_alive_ = false;
  }
  finishResponse();
}

void HttpConnection::abortResponse() {
  if (closed_ || !exchange_active_) return;
  // The caller ends the exchange: no callback runs.
  exchange_active_ = false;
  --server_.exchange_count;
  close();
}

void HttpConnection::finishResponse() {
  ex_.response_done_ = true;
  // Written straight to the socket: nothing will call the write callback,
  // so complete on this loop pass (never inside the caller's respond()).
  if (evbuffer_get_length(out_) == 0 && !closed_) activateDeferred();
}

size_t HttpConnection::pendingOutput() const { return closed_ ? 0 : evbuffer_get_length(out_); }

// --- output ---------------------------------------------------------------------------

// Appends bytes in order: straight to the socket while nothing is queued,
// the rest to the bufferevent's output.
// What the socket does not take at once is queued: copied, or for a large
// last piece whose memory `owner` keeps alive (a cached body), referenced.
void HttpConnection::output(iovec* iov, int n, const std::shared_ptr<const void>& owner) {
  if (closed_ || write_failed_) return;
  int i = 0;
  if (evbuffer_get_length(out_) == 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(n);
    ssize_t w;
    do {
      w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        // The client is gone; abort on this loop pass, not inside the caller.
        write_failed_ = true;
        activateDeferred();
        return;
      }
      w = 0;
    }
    auto written = static_cast<size_t>(w);
    while (i < n && written >= iov[i].iov_len) {
      written -= iov[i].iov_len;
      ++i;
    }
    if (i < n) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + written;
      iov[i].iov_len -= written;
    }
  }
  for (; i < n; ++i) {
    if (!iov[i].iov_len) continue;
    if (owner && i == n - 1 && iov[i].iov_len >= kReferenceMinBytes) {
      auto* hold = new std::shared_ptr<const void>(owner);
      if (evbuffer_add_reference(out_, iov[i].iov_base, iov[i].iov_len, &releaseOwner, hold) == 0) continue;
      delete hold;
    }
    evbuffer_add(out_, iov[i].iov_base, iov[i].iov_len);
  }
}

void HttpConnection::releaseOwner(const void*, size_t, void* hold) noexcept {
  delete static_cast<std::shared_ptr<const void>*>(hold);
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
  size_t len = evbuffer_get_length(out_);
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
    len = evbuffer_get_length(out_);
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
  if (write_failed_) {
    abortExchange();
    close();
    return;
  }
  checkOutput();
}

// --- events and timers ------------------------------------------------------------------

void HttpConnection::handleEvent(short what) {
  if (closed_) return;
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
    if (state_ == State::Closing) return;  // flushing our last response
    if (state_ == State::Exchange && exchange_active_ && ex_.response_done_) return;
  }
  abortExchange();
  close();
}

void HttpConnection::handleTimer() {
  if (closed_) return;
  TimerKind kind = timer_kind_;
  timer_kind_ = TimerKind::None;
  if (kind == TimerKind::Header && (state_ == State::Head || state_ == State::Body) && parser_.inMessage()) {
    sendError(408, "Request timeout");
    return;
  }
  // Idle keep-alive, a connection that never sent a byte, or the linger
  // period ended: close without a word.
  close();
}

void HttpConnection::arm(TimerKind kind) {
  const timeval* tv = nullptr;
  switch (kind) {
    case TimerKind::Header: tv = server_.has_header_tv ? &server_.header_tv : nullptr; break;
    case TimerKind::Idle: tv = server_.has_idle_tv ? &server_.idle_tv : nullptr; break;
    case TimerKind::Linger: tv = &server_.linger_tv; break;
    case TimerKind::None: break;
  }
  if (!tv) {
    disarm();
    return;
  }
  timer_kind_ = kind;
  event_add(timer_, tv);
}

void HttpConnection::disarm() {
  if (timer_kind_ != TimerKind::None) {
    timer_kind_ = TimerKind::None;
    event_del(timer_);
  }
}

void HttpConnection::applyWriteTimeout() {
  applied_generation_ = server_.limits_generation;
  bufferevent_set_timeouts(bev_, nullptr, server_.has_write_tv ? &server_.write_tv : nullptr);
}

// --- closing ----------------------------------------------------------------------------

// An error of our own: the JSON shape of SPEC §3.2, then close.
void HttpConnection::sendError(int status, std::string_view message) {
  const char* code = "bad_request";
  switch (status) {
    case 408: code = "request_timeout"; break;
    case 413: code = "payload_too_large"; break;
    case 431: code = "request_header_too_large"; break;
    case 501: code = "not_implemented"; break;
    case 505: code = "http_version_not_supported"; break;
    default: break;
  }
  spdlog::debug("http: {}: {} {}", ex_.peer_, status, message);
  std::string body = HttpServer::errorBody(message, code);
  std::string& head = headScratch();
  appendStatusLine(head, status, {});
  head.append("Content-Type: application/json\r\nContent-Length: ");
  appendDecimal(head, body.size());
  head.append("\r\nConnection: close\r\n\r\n");
  iovec iov[2] = {{head.data(), head.size()}, {body.data(), body.size()}};
  const size_t bytes_out = head.size() + body.size();
  output(iov, 2);
  if (server_.on_error) {
    HttpServerError e;
    e.status = status;
    e.code = code;
    e.method = ex_.method_;  // set once the request line parsed; cleared between requests
    e.path = ex_.path();
    // Until the head is parsed (and counted), what was read of it is buffered.
    e.bytes_in = ex_.bytes_in_ != 0 ? ex_.bytes_in_ : evbuffer_get_length(in_);
    e.bytes_out = bytes_out;
    e.peer = ex_.peer_;
    guarded("error observer", [&] { server_.on_error(e); });
  }
  startClose(true);
}

// Flush what is queued, then close (lingering if the client may still be
// sending).
void HttpConnection::startClose(bool linger) {
  disarm();
  state_ = State::Closing;
  linger_ = linger || evbuffer_get_length(in_) > 0;
  evbuffer_drain(in_, evbuffer_get_length(in_));
  if (write_failed_) {
    close();
    return;
  }
  if (evbuffer_get_length(out_) == 0) flushed();
}

void HttpConnection::flushed() {
  if (!linger_ || peer_eof_) {
    close();
    return;
  }
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
  bufferevent_free(bev_);  // clears its callbacks; closes the socket
  bev_ = nullptr;
  event_del(timer_);
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

void HttpConnection::teardown() {
  abortExchange();
  close();
}

size_t HttpConnection::requestBytesHeld() const {
  return (closed_ ? 0 : evbuffer_get_length(in_)) + ex_.body_.capacity();
}

bool HttpConnection::idle() const {
  return state_ == State::Head && !parser_.inMessage() && !exchange_active_ && evbuffer_get_length(in_) == 0;
}

// --- HttpExchange: the response side writes to its connection ---------------------------

std::shared_ptr<void>& HttpExchange::connectionData() {
  if (conn_) return conn_->data();
  thread_local std::shared_ptr<void> detached;
  detached.reset();
  return detached;
}

void HttpExchange::respond(int status, std::string_view reason, const HttpHeaders& headers, std::string_view body) {
  if (conn_) conn_->respond(status, reason, {}, headers, body, nullptr);
}

void HttpExchange::respond(int status, std::string_view reason, std::string_view preformatted,
                           const HttpHeaders& headers, std::string_view body,
                           const std::shared_ptr<const void>& body_owner) {
  if (conn_) conn_->respond(status, reason, preformatted, headers, body, body_owner);
}

void HttpExchange::begin(int status, std::string_view reason, const HttpHeaders& headers, int64_t content_length) {
  if (conn_) conn_->begin(status, reason, {}, headers, content_length);
}

void HttpExchange::begin(int status, std::string_view reason, std::string_view preformatted,
                         const HttpHeaders& headers, int64_t content_length) {
  if (conn_) conn_->begin(status, reason, preformatted, headers, content_length);
}

bool HttpExchange::write(std::string_view data) { return conn_ ? conn_->write(data) : true; }

void HttpExchange::end() {
  if (conn_) conn_->end();
}

void HttpExchange::abortResponse() {
  if (conn_) conn_->abortResponse();
}

size_t HttpExchange::pendingOutput() const { return conn_ ? conn_->pendingOutput() : 0; }

}  // namespace wfp

// The client-facing HTTP/1.1 server: our own parser and connection state
// machine over libevent bufferevents (see http_server.h for why not evhttp).
//
// A connection is a small state machine:
//
//   Idle ──first byte──► Head ──head parsed──► Body ──body complete──► Exchange
//    ▲                     │  │                  │                        │
//    │                     │  └─ head handler answered (body unread) ───► │
//    │                     └──── 4xx/5xx error ──┴──► Closing ◄── close ──┤
//    └──────────── response flushed, keep-alive ◄─────────────────────────┘
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
#include "proxy/http_server.h"

#include <atomic>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>

#include <spdlog/spdlog.h>

namespace wfp {

namespace {
std::atomic<uint64_t> g_next_exchange_id{0};
}  // namespace


namespace {

// After an error response (or a close with unread input) we keep reading and
// discarding for this long, so the client sees the response, not a reset.
constexpr double kLingerSeconds = 2.0;
// Pipelined bytes buffered while an exchange is in progress, beyond
// max_header_bytes, before reading pauses.
constexpr size_t kPipelineSlack = 4096;
// A chunk-size line (with extensions) longer than this is rejected.
constexpr size_t kMaxChunkLine = 4096;
// Bodies whose buffer grew beyond this are released after the exchange.
constexpr size_t kKeepBodyCapacity = 64 * 1024;
// Backoff after accept() fails for lack of descriptors/memory.
constexpr double kAcceptRetrySeconds = 0.1;

// RFC 9112 §3.2.3: uri-host ":" port, the host a reg-name or an IP literal
// (RFC 3986 §3.2.2).
bool isAuthorityForm(std::string_view s) {
  size_t colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  std::string_view host = s.substr(0, colon);
  std::string_view port = s.substr(colon + 1);
  if (port.empty() || port.size() > 5) return false;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
  }
  auto alnum = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return false;
    for (char c : host.substr(1, host.size() - 2)) {
      bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
      if (!hex && c != ':' && c != '.') return false;
    }
    return true;
  }
  for (char c : host) {
    if (!alnum(c) && std::string_view("-._~%!$&'()*+,;=").find(c) == std::string_view::npos) return false;
  }
  return true;
}

// Calls fn on each comma-separated, OWS-trimmed, non-empty element.
template <typename Fn>
void forEachListElement(std::string_view value, Fn&& fn) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = trimOws(value.substr(0, comma));
    if (!item.empty()) fn(item);
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
}

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

template <typename Fn>
bool guarded(const char* what, Fn&& fn) noexcept {
  try {
    fn();
    return true;
  } catch (const std::exception& e) {
    spdlog::error("http: exception in {}: {}", what, e.what());
  } catch (...) {
    spdlog::error("http: unknown exception in {}", what);
  }
  return false;
}

timeval toTimeval(double seconds) {
  if (seconds > 1e8) seconds = 1e8;
  auto us = static_cast<int64_t>(std::llround(seconds * 1e6));
  if (us < 1000) us = 1000;
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(us / 1000000);
  tv.tv_usec = static_cast<suseconds_t>(us % 1000000);
  return tv;
}

std::string formatPeer(const sockaddr* sa) {
  char ip[INET6_ADDRSTRLEN] = {0};
  switch (sa->sa_family) {
    case AF_INET: {
      auto* in = reinterpret_cast<const sockaddr_in*>(sa);
      inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
      return std::string(ip) + ":" + std::to_string(ntohs(in->sin_port));
    }
    case AF_INET6: {
      auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
      inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
      return "[" + std::string(ip) + "]:" + std::to_string(ntohs(in6->sin6_port));
    }
    case AF_UNIX: return "unix";
    default: return "unknown";
  }
}

}  // namespace

std::string HttpServer::errorBody(std::string_view message, std::string_view code) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(message.size() + code.size() + 48);
  auto escape = [&](std::string_view s) {
    for (char c : s) {
      auto u = static_cast<unsigned char>(c);
      switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        case '\b': out.append("\\b"); break;
        case '\f': out.append("\\f"); break;
        default:
          if (u < 0x20 || u == 0x7F) {
            out.append("\\u00");
            out.push_back(kHex[u >> 4]);
            out.push_back(kHex[u & 0xF]);
          } else {
            out.push_back(c);
          }
      }
    }
  };
  out.append("{\"error\":\"");
  escape(message);
  out.append("\",\"success\":false,\"code\":\"");
  escape(code);
  out.append("\"}");
  return out;
}

// --- server state -------------------------------------------------------------

struct HttpServer::Impl {
  Impl(EventLoop& l, HttpServerLimits lim, Handler h) : loop(l), limits(lim), handler(std::move(h)) {}

  struct Listener {
    evconnlistener* listener = nullptr;
    std::string unix_path;  // unlinked when the listener closes
  };

  EventLoop& loop;
  HttpServerLimits limits;
  Handler handler;
  HeadHandler head_handler;
  ErrorObserver on_error;
  std::vector<Listener> listeners;
  HttpConnection* connections = nullptr;  // intrusive list of open connections
  size_t connection_count = 0;
  size_t exchange_count = 0;
  uint64_t limits_generation = 1;
  bool at_capacity = false;     // max_connections reached: listeners disabled
  bool accept_backoff = false;  // accept() failed with EMFILE & co: retry later
  event* accept_retry = nullptr;

  // Timeouts as libevent "common timeouts" (O(1) add/remove, every connection
  // uses the same few durations); `has_*` false → disabled.
  timeval header_tv{}, idle_tv{}, write_tv{}, linger_tv{};
  bool has_header_tv = false, has_idle_tv = false, has_write_tv = false;

  timeval commonTimeout(double seconds) const {
    timeval tv = toTimeval(seconds);
    const timeval* common = event_base_init_common_timeout(loop.base(), &tv);
    return common ? *common : tv;
  }

  void computeTimeouts() {
    has_header_tv = limits.header_timeout_s > 0;
    has_idle_tv = limits.idle_timeout_s > 0;
    has_write_tv = limits.write_timeout_s > 0;
    if (has_header_tv) header_tv = commonTimeout(limits.header_timeout_s);
    if (has_idle_tv) idle_tv = commonTimeout(limits.idle_timeout_s);
    if (has_write_tv) write_tv = commonTimeout(limits.write_timeout_s);
    linger_tv = commonTimeout(kLingerSeconds);
  }

  void updateAccepting() {
    bool want = !at_capacity && !accept_backoff;
    for (Listener& l : listeners) {
      if (want) {
        evconnlistener_enable(l.listener);
      } else {
        evconnlistener_disable(l.listener);
      }
    }
  }

  void checkCapacity() {
    bool full = limits.max_connections > 0 && connection_count >= static_cast<size_t>(limits.max_connections);
    if (full != at_capacity) {
      at_capacity = full;
      if (full) spdlog::warn("http: {} connections open: not accepting until one closes", connection_count);
      updateAccepting();
    }
  }

  void closeListeners() {
    for (Listener& l : listeners) {
      evconnlistener_free(l.listener);
      if (!l.unix_path.empty()) ::unlink(l.unix_path.c_str());
    }
    listeners.clear();
  }

  void accept(evutil_socket_t fd, const sockaddr* sa);
  void link(HttpConnection* c);
  void unlink(HttpConnection* c);

  static void onAccept(evconnlistener*, evutil_socket_t fd, sockaddr* sa, int, void* arg) noexcept;
  static void onAcceptError(evconnlistener*, void* arg) noexcept;
  static void onAcceptRetry(evutil_socket_t, short, void* arg) noexcept;
};

// --- a connection -------------------------------------------------------------

class HttpConnection {
 public:
  enum class State : uint8_t { Idle, Head, Body, Exchange, Closing, Lingering };
  enum class TimerKind : uint8_t { None, Header, Idle, Linger };
  enum class Framing : uint8_t { None, Length, Chunked, Close };
  enum class Chunk : uint8_t { Size, Data, DataEnd, Trailer };

  HttpConnection(HttpServer::Impl& server, bufferevent* bev, evutil_socket_t fd, std::string peer)
      : server_(server), bev_(bev), in_(bufferevent_get_input(bev)), out_(bufferevent_get_output(bev)), fd_(fd) {
    ex_.conn_ = this;
    ex_.peer_ = std::move(peer);
    timer_ = event_new(server.loop.base(), -1, 0, &HttpConnection::onTimer, this);
  }
  ~HttpConnection() {
    if (bev_) bufferevent_free(bev_);
    if (timer_) event_free(timer_);
    if (deferred_) event_free(deferred_);
  }
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  bool valid() const { return timer_ != nullptr; }
  std::shared_ptr<void>& data() { return data_; }

  void start() {
    bufferevent_setcb(bev_, &HttpConnection::onRead, &HttpConnection::onWrite, &HttpConnection::onEvent, this);
    applyWriteTimeout();
    bufferevent_enable(bev_, EV_READ);
    arm(TimerKind::Header);  // from accept: the first request's head must come in time
  }

  // --- libevent trampolines ---
  static void onRead(bufferevent*, void* arg) noexcept {
    auto* self = static_cast<HttpConnection*>(arg);
    if (!guarded("read callback", [self] { self->handleRead(); })) self->fail();
  }
  static void onWrite(bufferevent*, void* arg) noexcept {
    auto* self = static_cast<HttpConnection*>(arg);
    if (!guarded("write callback", [self] { self->checkOutput(); })) self->fail();
  }
  static void onEvent(bufferevent*, short what, void* arg) noexcept {
    auto* self = static_cast<HttpConnection*>(arg);
    if (!guarded("event callback", [self, what] { self->handleEvent(what); })) self->fail();
  }
  static void onTimer(evutil_socket_t, short, void* arg) noexcept {
    auto* self = static_cast<HttpConnection*>(arg);
    if (!guarded("timer", [self] { self->handleTimer(); })) self->fail();
  }
  static void onDeferred(evutil_socket_t, short, void* arg) noexcept {
    auto* self = static_cast<HttpConnection*>(arg);
    if (!guarded("deferred callback", [self] { self->handleDeferred(); })) self->fail();
  }

  // --- input --------------------------------------------------------------------

  void handleRead() {
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
        if (!read_suspended_ &&
            evbuffer_get_length(in_) > server_.limits.max_header_bytes + kPipelineSlack) {
          bufferevent_disable(bev_, EV_READ);
          read_suspended_ = true;
        }
        return;
      default:
        processInput();
    }
  }

  void processInput() {
    while (!closed_) {
      switch (state_) {
        case State::Idle:
          if (!startRequest()) return;
          break;
        case State::Head:
          if (!readHead()) return;
          break;
        case State::Body:
          if (!readBody()) return;
          break;
        default:
          return;
      }
    }
  }

  // Idle → Head once a request's first byte is here. Empty lines before a
  // request line are skipped (RFC 9112 §2.2).
  bool startRequest() {
    size_t len = evbuffer_get_length(in_);
    if (len == 0) return false;
    if (timer_kind_ != TimerKind::Header) arm(TimerKind::Header);  // the request's clock starts
    size_t n = std::min<size_t>(len, 64);
    const auto* p = reinterpret_cast<const char*>(evbuffer_pullup(in_, static_cast<ev_ssize_t>(n)));
    size_t skip = 0;
    while (skip < n) {
      if (p[skip] == '\n') {
        ++skip;
      } else if (p[skip] == '\r' && skip + 1 < n && p[skip + 1] == '\n') {
        skip += 2;
      } else {
        break;
      }
    }
    const bool lone_cr = skip < n && skip + 1 == len && p[skip] == '\r';  // wait for its LF
    if (skip) {
      evbuffer_drain(in_, skip);
      if (skip == n) return true;  // maybe more blank lines, or nothing: look again
    }
    if (lone_cr) return false;
    state_ = State::Head;
    head_scan_ = 0;
    return true;
  }

  // Offset just past the empty line that ends the head, or 0 if not found in
  // p[0, n). `scan` remembers where to resume, so a head that trickles in is
  // scanned once overall.
  static size_t findHeadEnd(const char* p, size_t n, size_t& scan) {
    size_t i = scan;
    while (i < n) {
      const void* nl = std::memchr(p + i, '\n', n - i);
      if (!nl) break;
      size_t k = static_cast<size_t>(static_cast<const char*>(nl) - p);
      if (k + 1 >= n) {
        scan = k;
        return 0;
      }
      if (p[k + 1] == '\n') return k + 2;
      if (p[k + 1] == '\r') {
        if (k + 2 >= n) {
          scan = k;
          return 0;
        }
        if (p[k + 2] == '\n') return k + 3;
      }
      i = k + 1;
    }
    scan = n;
    return 0;
  }

  bool readHead() {
    const size_t max_head = std::max<size_t>(server_.limits.max_header_bytes, 64);
    size_t len = evbuffer_get_length(in_);
    size_t limit = std::min(len, max_head);
    // Usually the whole head is in the first chunk: look there before
    // pulling up (which would copy body bytes along).
    evbuffer_iovec first{};
    const char* p = nullptr;
    size_t head_len = 0;
    if (evbuffer_peek(in_, -1, nullptr, &first, 1) >= 1 && first.iov_len > 0) {
      p = static_cast<const char*>(first.iov_base);
      head_len = findHeadEnd(p, std::min(first.iov_len, limit), head_scan_);
    }
    if (!head_len && first.iov_len < limit) {
      p = reinterpret_cast<const char*>(evbuffer_pullup(in_, static_cast<ev_ssize_t>(limit)));
      head_len = findHeadEnd(p, limit, head_scan_);
    }
    if (!head_len) {
      if (len >= max_head) sendError(431, "Request header too large");
      return false;
    }
    Head info;
    if (!parseHead(p, head_len, info)) return false;
    evbuffer_drain(in_, head_len);
    ex_.bytes_in_ = head_len;
    ex_.head_request_ = ex_.method_ == "HEAD";
    keep_alive_ = ex_.version_minor_ == 1 ? !info.conn_close : (info.conn_keep_alive && !info.conn_close);
    // What follows a CONNECT is tunnel data sent ahead of the answer, not a
    // request: the connection ends with the (refusing) response.
    if (ex_.method_ == "CONNECT") keep_alive_ = false;

    const HttpServerLimits& limits = server_.limits;
    request_chunked_ = info.chunked;
    if (info.chunked) {
      chunk_ = Chunk::Size;
      line_scan_ = 0;
      body_remaining_ = 0;
      trailer_bytes_ = 0;
      trailer_count_ = 0;
    } else if (info.content_length > 0) {
      if (static_cast<uint64_t>(info.content_length) > limits.max_body_bytes) {
        sendError(413, "Request body too large");
        return false;
      }
      body_remaining_ = static_cast<uint64_t>(info.content_length);
    } else {
      dispatch();
      return false;
    }
    // A body is coming: the head handler may answer now, before the body is
    // read (and before any 100 Continue). Not when the whole body is already
    // here (a small request sent in one piece): refusing it early would save
    // nothing and cost the client its keep-alive connection.
    const bool body_here = !request_chunked_ && evbuffer_get_length(in_) >= body_remaining_;
    if (server_.head_handler && !body_here && offerHead()) return false;
    if (!request_chunked_) ex_.body_.reserve(static_cast<size_t>(body_remaining_));
    state_ = State::Body;
    // Expect: 100-continue — tell the client to go ahead, unless its body is
    // already arriving.
    if (info.expect_continue && ex_.version_minor_ == 1 && evbuffer_get_length(in_) == 0) {
      static constexpr std::string_view k100 = "HTTP/1.1 100 Continue\r\n\r\n";
      iovec iov{const_cast<char*>(k100.data()), k100.size()};
      output(&iov, 1);
    }
    return true;
  }

  struct Head {
    int64_t content_length = -1;
    bool chunked = false;
    bool conn_close = false;
    bool conn_keep_alive = false;
    bool expect_continue = false;
  };

  // Parses p[0, n) (a complete head ending in an empty line) into the
  // exchange. On failure sends the error response and returns false.
  bool parseHead(const char* p, size_t n, Head& info) {
    const char* end = p + n;
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', n));
    const char* le = (nl > p && nl[-1] == '\r') ? nl - 1 : nl;
    std::string_view line(p, static_cast<size_t>(le - p));
    if (std::memchr(line.data(), '\r', line.size())) return badRequest("invalid line ending");

    size_t sp1 = line.find(' ');
    size_t sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp1 == 0 || sp2 == sp1) return badRequest("invalid request line");
    std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = line.substr(sp2 + 1);
    if (!isToken(method)) return badRequest("invalid method");
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || !digit(version[5]) || version[6] != '.' ||
        !digit(version[7])) {
      return badRequest("invalid HTTP version");
    }
    if (version[5] != '1' || (version[7] != '0' && version[7] != '1')) {
      sendError(505, "HTTP version not supported");
      return false;
    }
    if (target.empty()) return badRequest("invalid request target");
    for (char c : target) {
      auto u = static_cast<unsigned char>(c);
      if (u <= 0x20 || u == 0x7F) return badRequest("invalid request target");
    }
    if (target[0] != '/') {
      if (target == "*" && method == "OPTIONS") {
        // asterisk-form
      } else if (method == "CONNECT" && isAuthorityForm(target)) {
        // authority-form, CONNECT's only form (RFC 9112 §3.2.3): handed on
        // so that routing refuses it like any CONNECT (405, SPEC §10.1).
      } else if (target.find("://") != std::string_view::npos) {
        return badRequest("absolute-form request target not supported");
      } else {
        return badRequest("invalid request target");
      }
    }
    ex_.method_.assign(method);
    ex_.target_.assign(target);
    ex_.version_minor_ = version[7] - '0';

    HttpHeaders& headers = ex_.headers_;
    size_t count = 0;
    bool seen_host = false;
    bool seen_cl = false;
    int te_count = 0;
    std::string_view te;
    const size_t max_headers = server_.limits.max_headers;
    const char* q = nl + 1;
    if (headers.capacity() == 0) {
      // A connection's first request: one allocation of the right size (the
      // vector is reused by later requests), not push_back's doubling.
      auto lines = static_cast<size_t>(std::count(q, end, '\n'));
      headers.reserve(std::min(lines > 0 ? lines - 1 : 0, max_headers));
    }
    while (q < end) {
      const char* e = static_cast<const char*>(std::memchr(q, '\n', static_cast<size_t>(end - q)));
      if (!e) break;  // cannot happen: the head ends with an empty line
      const char* lend = (e > q && e[-1] == '\r') ? e - 1 : e;
      if (lend == q) break;  // the empty line
      if (*q == ' ' || *q == '\t') return badRequest("obsolete line folding");
      std::string_view field(q, static_cast<size_t>(lend - q));
      q = e + 1;
      if (std::memchr(field.data(), '\r', field.size())) return badRequest("invalid header");
      size_t colon = field.find(':');
      if (colon == std::string_view::npos || colon == 0) return badRequest("invalid header");
      std::string_view name = field.substr(0, colon);
      if (!isToken(name)) return badRequest("invalid header name");
      std::string_view value = trimOws(field.substr(colon + 1));
      if (std::memchr(value.data(), '\0', value.size())) return badRequest("invalid header value");
      if (++count > max_headers) {
        sendError(431, "Request header too large");
        return false;
      }
      if (count <= headers.size()) {
        headers[count - 1].name.assign(name);
        headers[count - 1].value.assign(value);
      } else {
        headers.push_back(HttpHeader{std::string(name), std::string(value)});
      }
      switch (name.size()) {
        case 4:
          if (equalsIgnoreCase(name, "host")) {
            if (seen_host) return badRequest("multiple Host headers");
            seen_host = true;
          }
          break;
        case 6:
          if (equalsIgnoreCase(name, "expect") && equalsIgnoreCase(value, "100-continue")) info.expect_continue = true;
          break;
        case 10:
          if (equalsIgnoreCase(name, "connection")) {
            forEachListElement(value, [&](std::string_view token) {
              if (equalsIgnoreCase(token, "close")) info.conn_close = true;
              if (equalsIgnoreCase(token, "keep-alive")) info.conn_keep_alive = true;
            });
          }
          break;
        case 14:
          if (equalsIgnoreCase(name, "content-length")) {
            if (value.empty()) return badRequest("invalid Content-Length");
            int64_t v = 0;
            for (char c : value) {
              if (!digit(c)) return badRequest("invalid Content-Length");
              if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) return badRequest("invalid Content-Length");
              v = v * 10 + (c - '0');
            }
            if (seen_cl && v != info.content_length) return badRequest("conflicting Content-Length");
            seen_cl = true;
            info.content_length = v;
          }
          break;
        case 17:
          if (equalsIgnoreCase(name, "transfer-encoding")) {
            ++te_count;
            te = value;
          }
          break;
        default:
          break;
      }
    }
    if (count < headers.size()) headers.resize(count);
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400 (HTTP/1.0
    // predates the header).
    if (!seen_host && ex_.version_minor_ == 1) return badRequest("missing Host header");

    if (te_count > 0) {
      // Request smuggling defences (RFC 9112 §6.1, §6.3).
      if (seen_cl) return badRequest("Content-Length with Transfer-Encoding");
      if (ex_.version_minor_ == 0) return badRequest("Transfer-Encoding in an HTTP/1.0 request");
      if (te_count > 1) return badRequest("multiple Transfer-Encoding headers");
      if (!equalsIgnoreCase(te, "chunked")) {
        bool codings = !te.empty();
        forEachListElement(te, [&](std::string_view coding) { codings = codings && isToken(coding); });
        if (!codings) return badRequest("invalid Transfer-Encoding");
        sendError(501, "Not implemented: Transfer-Encoding other than chunked");
        return false;
      }
      info.chunked = true;
    }
    return true;
  }

  bool badRequest(std::string_view why) {
    sendError(400, std::string("Bad request: ").append(why));
    return false;
  }

  // Finds the next line of the input (chunk-size or trailer line), scanning
  // at most `bound` bytes. Returns the line without its terminator, through
  // `line`, and its length with the terminator; 0 when more input is needed;
  // SIZE_MAX when no line ends within `bound`.
  size_t nextLine(size_t bound, std::string_view& line) {
    size_t len = evbuffer_get_length(in_);
    size_t limit = std::min(len, bound);
    if (limit == 0) return 0;
    const auto* p = reinterpret_cast<const char*>(evbuffer_pullup(in_, static_cast<ev_ssize_t>(limit)));
    size_t from = std::min(line_scan_, limit);
    const void* nl = std::memchr(p + from, '\n', limit - from);
    if (!nl) {
      line_scan_ = limit;
      return limit >= bound ? SIZE_MAX : 0;
    }
    size_t k = static_cast<size_t>(static_cast<const char*>(nl) - p);
    line_scan_ = 0;
    size_t content = (k > 0 && p[k - 1] == '\r') ? k - 1 : k;
    line = std::string_view(p, content);
    return k + 1;
  }

  void consume(size_t n) {
    evbuffer_drain(in_, n);
    ex_.bytes_in_ += n;
  }

  void takeBody(size_t n) {
    std::string& body = ex_.body_;
    size_t old = body.size();
    body.resize(old + n);
    evbuffer_remove(in_, body.data() + old, n);
    ex_.bytes_in_ += n;
  }

  bool readBody() {
    if (!request_chunked_) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(evbuffer_get_length(in_), body_remaining_));
      if (n) {
        takeBody(n);
        body_remaining_ -= n;
      }
      if (body_remaining_ == 0) {
        dispatch();
      }
      return false;
    }
    const HttpServerLimits& limits = server_.limits;
    for (;;) {
      switch (chunk_) {
        case Chunk::Size: {
          std::string_view line;
          size_t used = nextLine(kMaxChunkLine, line);
          if (used == 0) return false;
          if (used == SIZE_MAX) return badRequest("invalid chunk size");
          uint64_t size = 0;
          size_t i = 0;
          for (; i < line.size(); ++i) {
            char c = line[i];
            int d;
            if (c >= '0' && c <= '9') {
              d = c - '0';
            } else if (c >= 'a' && c <= 'f') {
              d = c - 'a' + 10;
            } else if (c >= 'A' && c <= 'F') {
              d = c - 'A' + 10;
            } else {
              break;
            }
            if (i >= 15) return badRequest("invalid chunk size");  // > 2^60: no body is that big
            size = size * 16 + static_cast<uint64_t>(d);
          }
          if (i == 0) return badRequest("invalid chunk size");
          std::string_view rest = line.substr(i);
          while (!rest.empty() && isOws(rest.front())) rest.remove_prefix(1);
          if (!rest.empty() && rest.front() != ';') return badRequest("invalid chunk size");
          // Extensions are ignored, but a CR or NUL in them is an attack.
          if (rest.find('\r') != std::string_view::npos || rest.find('\0') != std::string_view::npos) {
            return badRequest("invalid chunk extension");
          }
          consume(used);
          if (size == 0) {
            chunk_ = Chunk::Trailer;
            break;
          }
          if (size > limits.max_body_bytes || ex_.body_.size() + size > limits.max_body_bytes) {
            sendError(413, "Request body too large");
            return false;
          }
          body_remaining_ = size;
          chunk_ = Chunk::Data;
          break;
        }
        case Chunk::Data: {
          size_t n = static_cast<size_t>(std::min<uint64_t>(evbuffer_get_length(in_), body_remaining_));
          if (n == 0) return false;
          takeBody(n);
          body_remaining_ -= n;
          if (body_remaining_ == 0) chunk_ = Chunk::DataEnd;
          break;
        }
        case Chunk::DataEnd: {
          size_t len = evbuffer_get_length(in_);
          if (len == 0) return false;
          const auto* p = reinterpret_cast<const char*>(evbuffer_pullup(in_, std::min<ev_ssize_t>(2, len)));
          if (p[0] == '\n') {
            consume(1);
          } else if (p[0] == '\r') {
            if (len < 2) return false;
            if (p[1] != '\n') return badRequest("invalid chunk terminator");
            consume(2);
          } else {
            return badRequest("invalid chunk terminator");
          }
          chunk_ = Chunk::Size;
          break;
        }
        case Chunk::Trailer: {
          // Trailer fields are read and discarded, within the head limits.
          size_t budget = server_.limits.max_header_bytes > trailer_bytes_
                              ? server_.limits.max_header_bytes - trailer_bytes_
                              : 0;
          std::string_view line;
          size_t used = nextLine(std::max<size_t>(budget, 2), line);
          if (used == 0) return false;
          if (used == SIZE_MAX || ++trailer_count_ > server_.limits.max_headers + 1) {
            sendError(431, "Request header too large");
            return false;
          }
          bool last = line.empty();
          if (!last && (line.find('\r') != std::string_view::npos || line.find('\0') != std::string_view::npos)) {
            return badRequest("invalid trailer");
          }
          trailer_bytes_ += used;
          consume(used);
          if (last) {
            dispatch();
            return false;
          }
          break;
        }
      }
    }
  }

  // --- the exchange ---------------------------------------------------------------

  void dispatch() {
    disarm();
    state_ = State::Exchange;
    openExchange();
    if (!guarded("request handler", [this] { server_.handler(ex_); })) fail();
  }

  void openExchange() {
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
  bool offerHead() {
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
  void abortExchange() {
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
  void fail() noexcept {
    if (closed_) return;
    abortExchange();
    close();
  }

  void completeExchange() {
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
    state_ = State::Idle;
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

  void resetExchange() {
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
    body_remaining_ = 0;
    body_unread_ = false;
  }

  bool canRespond(const char* what) const {
    if (closed_ || !exchange_active_) return false;
    if (ex_.response_started_) {
      spdlog::error("http: {} after the response was started (exchange {})", what, ex_.id_);
      return false;
    }
    return true;
  }

  // Decides keep-alive for the response being started and appends the
  // Connection header it needs.
  void appendConnectionHeader(std::string& head, bool framed) {
    keep_alive_ = keep_alive_ && framed && !close_after_ && !body_unread_;
    if (!keep_alive_) {
      head.append("Connection: close\r\n");
    } else if (ex_.version_minor_ == 0) {
      head.append("Connection: keep-alive\r\n");
    }
  }

  void respond(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
               std::string_view body, const std::shared_ptr<const void>& body_owner) {
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

  void begin(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
             int64_t content_length) {
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

  bool write(std::string_view data) {
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

  void end() {
    if (closed_ || !exchange_active_ || !ex_.response_started_ || ex_.response_done_) return;
    if (framing_ == Framing::Chunked) {
      static constexpr char kLast[] = "0\r\n\r\n";
      iovec iov{const_cast<char*>(kLast), 5};
      output(&iov, 1);
      ex_.bytes_out_ += 5;
    } else if (framing_ == Framing::Length && body_sent_ < static_cast<uint64_t>(declared_length_)) {
      // The client waits for bytes that will never come: closing tells it.
      spdlog::error("http: response body shorter ({}) than its Content-Length {} (exchange {}); closing",
                    body_sent_, declared_length_, ex_.id_);
      keep_alive_ = false;
    }
    finishResponse();
  }

  void abortResponse() {
    if (closed_ || !exchange_active_) return;
    // The caller ends the exchange: no callback runs.
    exchange_active_ = false;
    --server_.exchange_count;
    close();
  }

  void finishResponse() {
    ex_.response_done_ = true;
    // Written straight to the socket: nothing will call the write callback,
    // so complete on this loop pass (never inside the caller's respond()).
    if (evbuffer_get_length(out_) == 0 && !closed_) activateDeferred();
  }

  // --- output ---------------------------------------------------------------------

  // Appends bytes in order: straight to the socket while nothing is queued,
  // the rest to the bufferevent's output.
  // What the socket does not take at once is queued: copied, or for a large
  // last piece whose memory `owner` keeps alive (a cached body), referenced.
  void output(iovec* iov, int n, const std::shared_ptr<const void>& owner = nullptr) {
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
  // Runs handleDeferred() on this loop pass, after the caller returns. The
  // event is made on first use: a connection whose request waits in a queue
  // has not needed it yet (10 000 of them: 1.4 MB).
  void activateDeferred() {
    if (!deferred_) {
      deferred_ = event_new(server_.loop.base(), -1, 0, &HttpConnection::onDeferred, this);
      if (!deferred_) throw std::bad_alloc();  // the callback's guard fails the connection
    }
    event_active(deferred_, EV_TIMEOUT, 1);
  }

  static constexpr size_t kReferenceMinBytes = 64 * 1024;
  static void releaseOwner(const void*, size_t, void* hold) noexcept {
    delete static_cast<std::shared_ptr<const void>*>(hold);
  }

  // Output went down (write callback) or was written directly (deferred).
  void checkOutput() {
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

  void handleDeferred() {
    if (closed_) return;
    if (write_failed_) {
      abortExchange();
      close();
      return;
    }
    checkOutput();
  }

  // --- events and timers ------------------------------------------------------------

  void handleEvent(short what) {
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

  void handleTimer() {
    if (closed_) return;
    TimerKind kind = timer_kind_;
    timer_kind_ = TimerKind::None;
    if (kind == TimerKind::Header && (state_ == State::Head || state_ == State::Body)) {
      sendError(408, "Request timeout");
      return;
    }
    // Idle keep-alive, a connection that never sent a byte, or the linger
    // period ended: close without a word.
    close();
  }

  void arm(TimerKind kind) {
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

  void disarm() {
    if (timer_kind_ != TimerKind::None) {
      timer_kind_ = TimerKind::None;
      event_del(timer_);
    }
  }

  void applyWriteTimeout() {
    applied_generation_ = server_.limits_generation;
    bufferevent_set_timeouts(bev_, nullptr, server_.has_write_tv ? &server_.write_tv : nullptr);
  }

  // --- closing ------------------------------------------------------------------------

  // An error of our own: the JSON shape of SPEC §3.2, then close.
  void sendError(int status, std::string_view message) {
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
  void startClose(bool linger) {
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

  void flushed() {
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

  // Releases the socket now; the memory goes on the next loop pass, since a
  // callback of this connection may be on the stack.
  void close() noexcept {
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

  // HttpServer is going away: abort and close.
  void teardown() {
    abortExchange();
    close();
  }

  size_t requestBytesHeld() const {
    return (closed_ ? 0 : evbuffer_get_length(in_)) + ex_.body_.capacity();
  }

  bool idle() const { return state_ == State::Idle && !exchange_active_ && evbuffer_get_length(in_) == 0; }

  HttpServer::Impl& server_;
  bufferevent* bev_;
  evbuffer* in_;
  evbuffer* out_;
  evutil_socket_t fd_;
  event* timer_ = nullptr;
  event* deferred_ = nullptr;
  HttpConnection* prev_ = nullptr;
  HttpConnection* next_ = nullptr;

  HttpExchange ex_;  // reused for every request on this connection
  std::shared_ptr<void> data_;  // HttpExchange::connectionData()
  State state_ = State::Idle;
  TimerKind timer_kind_ = TimerKind::None;
  Framing framing_ = Framing::None;
  Chunk chunk_ = Chunk::Size;
  bool closed_ = false;
  bool exchange_active_ = false;  // handed to the handler, not yet complete/aborted
  bool keep_alive_ = true;
  bool close_after_ = false;  // closeIdleConnections(): close after the current response
  bool peer_eof_ = false;
  bool read_suspended_ = false;
  bool write_failed_ = false;
  bool linger_ = false;
  bool request_chunked_ = false;
  bool body_unread_ = false;  // the head handler answered: the request's body is never read
  uint64_t applied_generation_ = 0;
  size_t head_scan_ = 0;
  size_t line_scan_ = 0;
  uint64_t body_remaining_ = 0;  // of a Content-Length body or of the current chunk
  size_t trailer_bytes_ = 0;
  size_t trailer_count_ = 0;
  int64_t declared_length_ = -1;  // begin() with a Content-Length
  uint64_t body_sent_ = 0;
};

// --- HttpServer::Impl ---------------------------------------------------------------

void HttpServer::Impl::link(HttpConnection* c) {
  c->next_ = connections;
  if (connections) connections->prev_ = c;
  connections = c;
  ++connection_count;
}

void HttpServer::Impl::unlink(HttpConnection* c) {
  if (c->prev_) {
    c->prev_->next_ = c->next_;
  } else {
    connections = c->next_;
  }
  if (c->next_) c->next_->prev_ = c->prev_;
  c->prev_ = c->next_ = nullptr;
  --connection_count;
  checkCapacity();
}

void HttpServer::Impl::accept(evutil_socket_t fd, const sockaddr* sa) {
  if (sa->sa_family != AF_UNIX) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  bufferevent* bev = bufferevent_socket_new(loop.base(), fd, BEV_OPT_CLOSE_ON_FREE);
  if (!bev) {
    ::close(fd);
    return;
  }
  auto conn = std::make_unique<HttpConnection>(*this, bev, fd, formatPeer(sa));
  if (!conn->valid()) {
    spdlog::error("http: out of memory accepting a connection");
    return;  // the destructor frees the bufferevent and closes the socket
  }
  HttpConnection* c = conn.release();
  link(c);
  c->start();
  checkCapacity();
}

void HttpServer::Impl::onAccept(evconnlistener*, evutil_socket_t fd, sockaddr* sa, int, void* arg) noexcept {
  auto* self = static_cast<Impl*>(arg);
  guarded("accept", [&] { self->accept(fd, sa); });
}

void HttpServer::Impl::onAcceptError(evconnlistener*, void* arg) noexcept {
  auto* self = static_cast<Impl*>(arg);
  int err = errno;
  if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
    // The pending connection stays in the backlog and the listener would
    // fire again at once: pause accepting for a moment.
    if (!self->accept_backoff) {
      spdlog::warn("http: accept: {}; pausing accept for {} s", std::strerror(err), kAcceptRetrySeconds);
      self->accept_backoff = true;
      self->updateAccepting();
      timeval tv = toTimeval(kAcceptRetrySeconds);
      event_add(self->accept_retry, &tv);
    }
    return;
  }
  spdlog::warn("http: accept: {}", std::strerror(err));
}

void HttpServer::Impl::onAcceptRetry(evutil_socket_t, short, void* arg) noexcept {
  auto* self = static_cast<Impl*>(arg);
  self->accept_backoff = false;
  self->updateAccepting();
}

// --- HttpServer -------------------------------------------------------------------------

HttpServer::HttpServer(EventLoop& loop, HttpServerLimits limits, Handler handler)
    : impl_(std::make_unique<Impl>(loop, limits, std::move(handler))) {
  // libevent writes with writev(); a client that resets must not kill us.
  struct sigaction current{};
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
    signal(SIGPIPE, SIG_IGN);
  }
  impl_->accept_retry = event_new(loop.base(), -1, 0, &Impl::onAcceptRetry, impl_.get());
  if (!impl_->accept_retry) throw std::bad_alloc();
  impl_->computeTimeouts();
}

HttpServer::~HttpServer() {
  impl_->closeListeners();
  // Each teardown unlinks the connection from the list (and onAbort may
  // close others), so always take the head.
  while (impl_->connections) impl_->connections->teardown();
  event_free(impl_->accept_retry);
}

bool HttpServer::listen(const ListenAddress& address, BoundListener* bound, std::string* error) {
  auto fail = [&](std::string message) {
    if (error) *error = std::move(message);
    return false;
  };
  constexpr int kBacklog = 4096;  // the kernel caps it at net.core.somaxconn
  int fd = -1;
  BoundListener result;
  std::string unix_path;
  if (address.kind == ListenAddress::Kind::Unix) {
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    if (address.path.empty() || address.path.size() >= sizeof sun.sun_path) {
      return fail("unix socket path empty or too long: " + address.path);
    }
    std::memcpy(sun.sun_path, address.path.c_str(), address.path.size() + 1);
    struct stat st{};
    if (::lstat(address.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) return fail(address.path + " exists and is not a socket");
      // A socket file left by a previous run is stale: nobody accepts on it.
      // Anything else (live, or not ours to probe) is left alone.
      int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (probe < 0) return fail(std::string("socket: ") + std::strerror(errno));
      int rc = ::connect(probe, reinterpret_cast<sockaddr*>(&sun), sizeof sun);
      int err = errno;
      ::close(probe);
      if (rc == 0) return fail(address.path + ": another process is listening on it");
      if (err != ECONNREFUSED) return fail(address.path + ": " + std::strerror(err));
      ::unlink(address.path.c_str());
    }
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail(std::string("socket: ") + std::strerror(errno));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0 || ::listen(fd, kBacklog) != 0) {
      std::string message = address.path + ": " + std::strerror(errno);
      ::close(fd);
      return fail(message);
    }
    ::chmod(address.path.c_str(), 0660);
    unix_path = address.path;
    result.address = "unix:" + address.path;
  } else {
    // Resolved as --check-config resolves it (config.h).
    std::string resolve_error;
    AddrinfoList res = resolveListenAddress(address, &resolve_error);
    if (!res) return fail(resolve_error);
    std::string port = std::to_string(address.port);
    std::string last_error = "no address";
    for (addrinfo* ai = res.get(); ai; ai = ai->ai_next) {
      int s = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
      if (s < 0) {
        last_error = std::strerror(errno);
        continue;
      }
      int one = 1;
      ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(s, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(s, kBacklog) != 0) {
        last_error = std::strerror(errno);
        ::close(s);
        continue;
      }
      fd = s;
      break;
    }
    std::string where = address.text.empty() ? address.host + ":" + port : address.text;
    if (fd < 0) return fail("listen " + where + ": " + last_error);
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    result.address = formatPeer(reinterpret_cast<sockaddr*>(&ss));
    result.port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                           : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  }
  evconnlistener* listener = evconnlistener_new(impl_->loop.base(), &Impl::onAccept, impl_.get(),
                                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
  if (!listener) {
    ::close(fd);
    if (!unix_path.empty()) ::unlink(unix_path.c_str());
    return fail("evconnlistener_new failed");
  }
  evconnlistener_set_error_cb(listener, &Impl::onAcceptError);
  impl_->listeners.push_back(Impl::Listener{listener, unix_path});
  if (impl_->at_capacity || impl_->accept_backoff) evconnlistener_disable(listener);
  if (bound) *bound = result;
  return true;
}

void HttpServer::stopAccepting() { impl_->closeListeners(); }

void HttpServer::closeIdleConnections() {
  HttpConnection* c = impl_->connections;
  while (c) {
    HttpConnection* next = c->next_;
    if (c->idle()) {
      c->close();
    } else {
      c->close_after_ = true;
    }
    c = next;
  }
}

void HttpServer::setLimits(const HttpServerLimits& limits) {
  impl_->limits = limits;
  ++impl_->limits_generation;
  impl_->computeTimeouts();
  impl_->checkCapacity();
}

void HttpServer::setErrorObserver(ErrorObserver observer) { impl_->on_error = std::move(observer); }

void HttpServer::setHeadHandler(HeadHandler handler) { impl_->head_handler = std::move(handler); }

size_t HttpServer::connectionCount() const { return impl_->connection_count; }
size_t HttpServer::exchangeCount() const { return impl_->exchange_count; }

size_t HttpServer::requestBytesHeld() const {
  size_t total = 0;
  for (const HttpConnection* c = impl_->connections; c; c = c->next_) total += c->requestBytesHeld();
  return total;
}

// --- HttpExchange ---------------------------------------------------------------------

uint64_t HttpExchange::nextId() { return ++g_next_exchange_id; }

std::string_view HttpExchange::path() const {
  std::string_view t = target_;
  size_t q = t.find('?');
  return q == std::string_view::npos ? t : t.substr(0, q);
}

std::string_view HttpExchange::query() const {
  std::string_view t = target_;
  size_t q = t.find('?');
  return q == std::string_view::npos ? std::string_view() : t.substr(q + 1);
}

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

size_t HttpExchange::pendingOutput() const {
  return conn_ && !conn_->closed_ ? evbuffer_get_length(conn_->out_) : 0;
}

}  // namespace wfp

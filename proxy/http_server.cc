// The client-facing HTTP/1.1 server (see http_server.h for why not evhttp):
// its listeners and the connections it accepts. A connection and its
// exchanges are in http_connection.cc, the request parser in http_parser.cc.
#include "proxy/http_server.h"

#include <atomic>

#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <new>

#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include "proxy/http_connection.h"

namespace wfp {

namespace {
std::atomic<uint64_t> g_next_exchange_id{0};
}  // namespace


namespace {

// After an error response (or a close with unread input) we keep reading and
// discarding for this long, so the client sees the response, not a reset.
constexpr double kLingerSeconds = 2.0;
// Backoff after accept() fails for lack of descriptors/memory.
constexpr double kAcceptRetrySeconds = 0.1;

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

void HttpServerShared::reportError(int status, std::string_view code, const HttpExchange& ex, size_t buffered,
                                   size_t bytes_out) {
  if (!on_error) return;
  HttpServerError e;
  e.status = status;
  e.code = code;
  e.method = ex.method();  // set once the request line parsed; cleared between requests
  e.path = ex.path();
  // Until the head is parsed (and counted), what was read of it is buffered.
  e.bytes_in = ex.bytesIn() != 0 ? ex.bytesIn() : buffered;
  e.bytes_out = bytes_out;
  e.peer = ex.peer();
  guarded("error observer", [&] { on_error(e); });
}

void HttpServerShared::reportTlsFailure(TlsFailure failure, std::string_view peer, std::string_view detail) {
  spdlog::debug("tls: {}: handshake failed ({}): {}", peer, tlsFailureLabel(failure), detail);
  if (!on_tls_failure) return;
  guarded("TLS failure observer", [&] { on_tls_failure(failure, peer, detail); });
}

// What its connections share (HttpServerShared), its listeners and the list
// of its open connections.
struct HttpServer::Impl final : HttpServerShared {
  Impl(EventLoop& l, const HttpServerLimits& lim, Handler h) : HttpServerShared(l, lim, std::move(h)) {}

  struct Listener {
    evconnlistener* listener = nullptr;
    std::string unix_path;  // unlinked when the listener closes
  };

  std::vector<Listener> listeners;
  HttpConnection* connections = nullptr;  // intrusive list of open connections
  size_t connection_count = 0;
  bool at_capacity = false;     // max_connections reached: listeners disabled
  bool accept_backoff = false;  // accept() failed with EMFILE & co: retry later
  event* accept_retry = nullptr;

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
  void unlink(HttpConnection* c) override;

  static void onAccept(evconnlistener*, evutil_socket_t fd, sockaddr* sa, int, void* arg) noexcept;
  static void onAcceptError(evconnlistener*, void* arg) noexcept;
  static void onAcceptRetry(evutil_socket_t, short, void* arg) noexcept;
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
  bufferevent* bev = nullptr;
  if (tls) {
    SSL* ssl = tls->newSession();
    if (!ssl) {
      spdlog::error("http: out of memory accepting a TLS connection");
      ::close(fd);
      return;
    }
    // With BEV_OPT_CLOSE_ON_FREE the bufferevent owns the SSL (freed with
    // it, or by this call when it fails) and closes the socket when freed.
    bev = bufferevent_openssl_socket_new(loop.base(), fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    // A client that closes without close_notify (most HTTP clients) is an
    // EOF, not an error: the half-close rules below then hold for TLS too.
    if (bev) bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
  } else {
    bev = bufferevent_socket_new(loop.base(), fd, BEV_OPT_CLOSE_ON_FREE);
  }
  if (!bev) {
    ::close(fd);
    return;
  }
  auto conn = std::make_unique<HttpConnection>(*this, bev, fd, formatPeer(sa), tls != nullptr);
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
      c->closeGracefully();
    } else {
      c->closeAfterResponse();
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

void HttpServer::setTlsFailureObserver(TlsFailureObserver observer) { impl_->on_tls_failure = std::move(observer); }

void HttpServer::setTls(std::shared_ptr<const TlsContext> tls) { impl_->tls = std::move(tls); }

bool HttpServer::tls() const { return impl_->tls != nullptr; }

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

// The response side writes to the exchange's connection (a simulated
// exchange overrides it).

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

// Http1Upstream: how a transfer goes (upstream_http1.h says what it keeps).
//
//   start() ─► pending ─(kick)─► an idle connection of the origin, or a new
//   one (lookup, connect) ─► on_sending, the request written ─► the response
//   parsed and relayed ─► the connection back to the pool, or closed ─► on_done
//
// Lifetimes: every event handler of this file runs inside Scope. A callback
// into the owner may cancel() any transfer, but the memory of a transfer
// cancelled while a Scope is open is only freed when the outermost Scope
// ends, so the code that called out can still look at `cancelled`; a
// connection is only closed by this file's own code. Work for later (a new
// transfer, a resumed one) goes through one event, `kick`, so nothing runs
// inside start() or resume().
#include "proxy/upstream_http1.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/util.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <vector>

#include <spdlog/spdlog.h>

#include "proxy/http_response_parser.h"
#include "proxy/text.h"

namespace wfp {

namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr size_t kReadChunk = 16 * 1024;
constexpr auto kMaxIdleAge = std::chrono::seconds(118);  // libcurl's CURLOPT_MAXAGE_CONN default

// Where an http:// URL goes: the authority as written (the Host header and
// the pool's key), the host without brackets, the port, the target.
struct Origin {
  std::string_view authority;
  std::string_view host;
  uint16_t port = 80;
  std::string_view target;  // path and query; "/" goes before it when it does not start with one
};

bool splitUrl(std::string_view url, Origin& out) {
  if (!startsWithIgnoreCase(url, "http://")) return false;
  std::string_view rest = url.substr(7);
  size_t end = rest.find_first_of("/?#");
  out.authority = rest.substr(0, end);
  out.target = end == std::string_view::npos ? std::string_view() : rest.substr(end);
  // A fragment is the client's own business and never sent (as libcurl never
  // sent one): RFC 9110 §4.2.4 leaves it out of the request target.
  out.target = out.target.substr(0, out.target.find('#'));
  std::string_view a = out.authority;
  std::string_view port;
  if (!a.empty() && a.front() == '[') {
    size_t close = a.find(']');
    if (close == std::string_view::npos) return false;
    out.host = a.substr(1, close - 1);
    std::string_view after = a.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return false;
      port = after.substr(1);
    }
  } else {
    size_t colon = a.find(':');
    out.host = a.substr(0, colon);
    if (colon != std::string_view::npos) port = a.substr(colon + 1);
  }
  if (out.host.empty()) return false;
  if (!port.empty()) {
    unsigned v = 0;
    for (char c : port) {
      if (!isDigit(c) || v > 6553) return false;
      v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v == 0 || v > 65535) return false;
    out.port = static_cast<uint16_t>(v);
  }
  return true;
}

std::string errnoText(int err) {
  char buf[128];
  return strerror_r(err, buf, sizeof buf);  // GNU: returns the message
}

timeval toTimeval(double seconds) {
  auto us = static_cast<int64_t>(std::llround(seconds * 1e6));
  return timeval{static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
}

}  // namespace

// What a name lookup's callback gets. evdns runs the callback of a cancelled
// lookup later, with EVUTIL_EAI_CANCEL; the ticket is freed then, and
// `impl` is only read when the lookup was not cancelled (a live connection
// cancels its lookup before it goes, and so does the client).
struct LookupTicket {
  void* impl = nullptr;
  uint64_t serial = 0;
  // Tickets whose callback has not run yet, in the process: an evdns base is
  // freed only when none is (a cancelled lookup's callback still reads it).
  static inline int outstanding = 0;
};

struct Http1Upstream::Impl {
  struct Conn;

  struct Transfer {
    Impl* owner = nullptr;
    uint64_t id = 0;
    UpstreamRequest request;
    UpstreamCallbacks cb;
    Origin origin;  // views into request.url
    std::string origin_key;
    Conn* conn = nullptr;
    HttpResponseParser parser;
    std::string held;  // body bytes on_data refused, given again after resume()
    bool cancelled = false;
    bool paused = false;
    bool head_delivered = false;
    bool fresh_only = false;  // being sent again: not on a pooled connection
    bool delivering = false;  // inside on_data
    bool resume_asked = false;  // resume() from inside on_data
    uint64_t body_bytes = 0;
    SteadyClock::time_point started;
    event timeout{};
  };

  struct Conn {
    Impl* owner = nullptr;
    uint64_t serial = 0;
    std::string key;       // the origin's authority
    std::string host;      // for the lookup and messages
    uint16_t port = 0;
    int fd = -1;
    bool connecting = true;
    bool reused = false;   // carried an exchange before the current one
    bool eof = false;      // the upstream closed its side (seen while paused)
    bool write_failed = false;  // the request was not written whole
    bool got_bytes = false;     // a byte came since the request was sent
    int read_error = 0;
    Transfer* transfer = nullptr;
    SteadyClock::time_point idle_since;
    event rev{};
    event wev{};
    event connect_timer{};
    // Output: the head in `out` from out_off, then the body from body_off.
    std::string out;
    size_t out_off = 0;
    const std::string* body = nullptr;
    size_t body_off = 0;
    // Input: bytes [begin, end) of buf not consumed yet.
    std::unique_ptr<char[]> buf;
    size_t cap = 0, begin = 0, end = 0;
    // Connecting: the addresses to try, in order.
    std::vector<sockaddr_storage> addrs;
    std::vector<socklen_t> addr_lens;
    size_t next_addr = 0;
    evdns_getaddrinfo_request* lookup = nullptr;
    struct LookupTicket* ticket = nullptr;  // the pending lookup's
    std::string connect_error;

    bool writing() const { return body != nullptr; }
  };

  // Inside an event handler; see the top of the file.
  class Scope {
   public:
    explicit Scope(Impl& impl) : impl_(impl) { ++impl_.depth; }
    ~Scope() {
      if (--impl_.depth == 0) impl_.reap();
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Impl& impl_;
  };

  EventLoop& loop;
  UpstreamOptions options;
  std::unordered_map<uint64_t, std::unique_ptr<Transfer>> transfers;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns;
  std::vector<Conn*> idle;          // most recently used last
  std::deque<uint64_t> pending;     // transfers waiting for a connection, in order
  std::vector<uint64_t> resumed;
  std::vector<uint64_t> doomed;     // cancelled inside a Scope
  std::vector<uint64_t> doomedUrl;  // started with a URL this client cannot carry
  uint64_t next_id = 1;
  uint64_t next_serial = 1;
  int depth = 0;
  bool closing = false;
  event kick{};
  // upstream.timeout_s: a libevent common timeout (O(1) to add and delete),
  // or total_tv when the base has no more of those (256; one per value).
  const timeval* total_timeout = nullptr;
  timeval total_tv{};
  evdns_base* dns = nullptr;

  Impl(EventLoop& l, UpstreamOptions o) : loop(l), options(o) {
    event_assign(&kick, loop.base(), -1, 0, &Impl::onKick, this);
    applyOptions();
  }

  ~Impl() {
    closing = true;
    event_del(&kick);
    std::vector<Conn*> all;
    for (auto& [serial, c] : conns) all.push_back(c.get());
    for (Conn* c : all) closeConn(c);
    for (auto& [id, t] : transfers) event_del(&t->timeout);
    transfers.clear();
    // A cancelled lookup's callback is still to come (deferred by evdns):
    // then the base is left to the process's end rather than freed under it.
    if (dns && LookupTicket::outstanding == 0) evdns_base_free(dns, 0);
  }

  void applyOptions() {
    if (options.timeout_s > 0) {
      total_tv = toTimeval(options.timeout_s);
      total_timeout = event_base_init_common_timeout(loop.base(), &total_tv);
      if (!total_timeout) total_timeout = &total_tv;
    } else {
      total_timeout = nullptr;
    }
  }

  // --- transfers ------------------------------------------------------------

  uint64_t start(UpstreamRequest request, UpstreamCallbacks callbacks) {
    auto t = std::make_unique<Transfer>();
    t->id = next_id++;
    t->request = std::move(request);
    t->cb = std::move(callbacks);
    t->started = SteadyClock::now();
    t->owner = this;
    uint64_t id = t->id;
    event_assign(&t->timeout, loop.base(), -1, 0, &Impl::onTimeout, t.get());
    bool ok = splitUrl(t->request.url, t->origin);
    if (ok) t->origin_key.assign(t->origin.authority);
    if (total_timeout) event_add(&t->timeout, total_timeout);
    transfers.emplace(id, std::move(t));
    if (!ok) {
      // Reported on a later turn, like every other failure.
      doomedUrl.push_back(id);
    } else {
      pending.push_back(id);
    }
    event_active(&kick, 0, 0);
    return id;
  }

  Transfer* find(uint64_t id) {
    auto it = transfers.find(id);
    return it == transfers.end() ? nullptr : it->second.get();
  }

  void cancel(uint64_t id) {
    Transfer* t = find(id);
    if (!t || t->cancelled) return;
    t->cancelled = true;
    if (depth > 0) {
      doomed.push_back(id);
    } else {
      drop(t);
    }
  }

  // Frees a transfer without callbacks; a connection in the middle of its
  // exchange cannot carry another one and is closed.
  void drop(Transfer* t) {
    if (Conn* c = t->conn) {
      c->transfer = nullptr;
      t->conn = nullptr;
      closeConn(c);
    }
    event_del(&t->timeout);
    transfers.erase(t->id);
    servePending();
  }

  void reap() {
    while (!doomed.empty()) {
      std::vector<uint64_t> ids;
      ids.swap(doomed);
      for (uint64_t id : ids) {
        if (Transfer* t = find(id)) drop(t);
      }
    }
  }

  void resume(uint64_t id) {
    Transfer* t = find(id);
    if (!t || t->cancelled) return;
    if (!t->paused) {
      if (t->delivering) t->resume_asked = true;
      return;
    }
    t->paused = false;
    resumed.push_back(id);
    event_active(&kick, 0, 0);
  }

  void servePending() {
    if (!pending.empty() && !closing) event_active(&kick, 0, 0);
  }

  static void onKick(evutil_socket_t, short, void* arg) noexcept {
    auto* self = static_cast<Impl*>(arg);
    Scope scope(*self);
    self->guard("kick", [self] { self->kicked(); });
  }

  void kicked() {
    // Each piece of work on its own: an owner's on_done that throws loses
    // none of the others.
    for (uint64_t id : std::exchange(doomedUrl, {})) {
      guard("kick", [&] {
        if (Transfer* t = find(id); t && !t->cancelled) fail(t, UpstreamFailure::Unavailable, "URL not carried");
      });
    }
    for (uint64_t id : std::exchange(resumed, {})) {
      guard("kick", [&] {
        Transfer* t = find(id);
        if (!t || t->cancelled || t->paused || !t->conn) return;
        Conn* c = t->conn;
        event_add(&c->rev, nullptr);
        if (!t->held.empty()) {
          std::string held = std::move(t->held);
          t->held.clear();
          if (!deliver(t, held)) return;
        }
        input(c);
      });
    }
    while (!pending.empty()) {
      Transfer* t = find(pending.front());
      if (!t || t->cancelled || t->conn) {
        pending.pop_front();
        continue;
      }
      Conn* c = acquire(*t);
      if (!c && atLimit()) break;  // waits
      pending.pop_front();
      if (c) {
        attach(t, c);
        send(c);
      } else {
        connect(t);
      }
    }
  }

  // No new connection may be made (busy, idle and connecting count).
  bool atLimit() const { return conns.size() >= static_cast<size_t>(std::max(1, options.max_connections)); }

  // An idle connection of t's origin, or nullptr (then a new one may be
  // made: one idle connection of another origin is closed if at the limit).
  Conn* acquire(const Transfer& t) {
    auto now = SteadyClock::now();
    if (!t.fresh_only) {
      for (size_t i = idle.size(); i-- > 0;) {
        Conn* c = idle[i];
        if (c->key != t.origin_key) continue;
        idle.erase(idle.begin() + static_cast<std::ptrdiff_t>(i));
        if (now - c->idle_since > kMaxIdleAge || !quiet(c)) {
          closeConn(c);
          continue;
        }
        return c;
      }
    }
    if (atLimit() && !idle.empty()) {
      closeConn(idle.front());  // the least recently used
    }
    return nullptr;
  }

  // Nothing came on an idle connection since the loop last looked: no
  // close, no reset, no stray bytes (a stale answer would be taken for the
  // next request's). Its read event says so too, but only once the loop
  // gets to it: a close that arrived with the request that is about to use
  // the connection would cost that request its one send. libcurl checks the
  // same way before it reuses a connection.
  static bool quiet(const Conn* c) {
    char byte;
    ssize_t n = ::recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  void attach(Transfer* t, Conn* c) {
    t->conn = c;
    c->transfer = t;
  }

  // --- connecting -----------------------------------------------------------

  void connect(Transfer* t) {
    auto owned = std::make_unique<Conn>();
    Conn* c = owned.get();
    c->owner = this;
    c->serial = next_serial++;
    c->key = t->origin_key;
    c->host.assign(t->origin.host);
    c->port = t->origin.port;
    conns.emplace(c->serial, std::move(owned));
    attach(t, c);
    event_assign(&c->connect_timer, loop.base(), -1, 0, &Impl::onConnectTimeout, c);
    event_assign(&c->rev, loop.base(), -1, 0, &Impl::onReadable, c);  // set up properly once connected
    event_assign(&c->wev, loop.base(), -1, 0, &Impl::onWritable, c);
    if (options.connect_timeout_s > 0) {
      timeval tv = toTimeval(options.connect_timeout_s);
      event_add(&c->connect_timer, &tv);
    }
    sockaddr_storage ss{};
    if (numericAddress(c->host, c->port, ss)) {
      c->addrs.push_back(ss);
      c->addr_lens.push_back(ss.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
      tryConnect(c);
      return;
    }
    if (!dns) {
      dns = evdns_base_new(loop.base(), EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
      if (!dns) {
        connectFailed(c, "cannot set up name lookups", false);
        return;
      }
    }
    evutil_addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
    std::string port = std::to_string(c->port);
    auto* ticket = new LookupTicket{this, c->serial};
    ++LookupTicket::outstanding;
    // The callback may run inside this call (/etc/hosts, a numeric form
    // evdns knows): then evdns returns null and c may be gone already.
    evdns_getaddrinfo_request* req =
        evdns_getaddrinfo(dns, c->host.c_str(), port.c_str(), &hints, &Impl::onResolved, ticket);
    if (req) {
      c->lookup = req;
      c->ticket = ticket;
    }
  }

  static bool numericAddress(const std::string& host, uint16_t port, sockaddr_storage& ss) {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
      v4->sin_family = AF_INET;
      v4->sin_port = htons(port);
      return true;
    }
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
      v6->sin6_family = AF_INET6;
      v6->sin6_port = htons(port);
      return true;
    }
    return false;
  }

  static void onResolved(int err, evutil_addrinfo* res, void* arg) noexcept {
    std::unique_ptr<LookupTicket> ticket(static_cast<LookupTicket*>(arg));
    --LookupTicket::outstanding;
    std::unique_ptr<evutil_addrinfo, void (*)(evutil_addrinfo*)> addresses(res, &evutil_freeaddrinfo);
    if (err == EVUTIL_EAI_CANCEL) return;
    auto* self = static_cast<Impl*>(ticket->impl);
    Scope scope(*self);
    self->guard("lookup", [&] {
      auto it = self->conns.find(ticket->serial);
      if (it == self->conns.end()) return;
      Conn* c = it->second.get();
      c->lookup = nullptr;
      c->ticket = nullptr;
      for (evutil_addrinfo* ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
        sockaddr_storage ss{};
        std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        c->addrs.push_back(ss);
        c->addr_lens.push_back(static_cast<socklen_t>(ai->ai_addrlen));
      }
      if (c->addrs.empty()) {
        self->connectFailed(c, "could not resolve host " + c->host + ": " + evutil_gai_strerror(err), false);
        return;
      }
      self->tryConnect(c);
    });
  }

  void tryConnect(Conn* c) {
    while (c->next_addr < c->addrs.size()) {
      size_t i = c->next_addr++;
      const auto* sa = reinterpret_cast<const sockaddr*>(&c->addrs[i]);
      int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        c->connect_error = errnoText(errno);
        continue;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
      c->fd = fd;
      event_assign(&c->rev, loop.base(), fd, EV_READ | EV_PERSIST, &Impl::onReadable, c);
      event_assign(&c->wev, loop.base(), fd, EV_WRITE | EV_PERSIST, &Impl::onWritable, c);
      if (::connect(fd, sa, c->addr_lens[i]) == 0) {
        connected(c);
        return;
      }
      if (errno == EINPROGRESS) {
        event_add(&c->wev, nullptr);  // writable: connected or failed
        return;
      }
      c->connect_error = errnoText(errno);
      ::close(fd);
      c->fd = -1;
    }
    connectFailed(c, "failed to connect to " + c->host + " port " + std::to_string(c->port) + ": " + c->connect_error,
                  false);
  }

  void connected(Conn* c) {
    c->connecting = false;
    event_del(&c->connect_timer);
    event_del(&c->wev);
    event_add(&c->rev, nullptr);
    if (c->transfer) send(c);
  }

  // Closes c and fails its transfer.
  void connectFailed(Conn* c, std::string detail, bool timed_out) {
    Transfer* t = c->transfer;
    if (t) {
      t->conn = nullptr;
      c->transfer = nullptr;
    }
    closeConn(c);
    if (t) fail(t, timed_out ? UpstreamFailure::Timeout : UpstreamFailure::Unavailable, std::move(detail));
  }

  static void onConnectTimeout(evutil_socket_t, short, void* arg) noexcept {
    auto* c = static_cast<Conn*>(arg);
    Impl* self = c->owner;
    Scope scope(*self);
    self->guard("connect timeout", [&] {
      self->connectFailed(c, "connection timed out after " + std::to_string(std::llround(self->options.connect_timeout_s * 1000)) + " ms", true);
    });
  }

  void closeConn(Conn* c) {
    if (c->transfer) {
      c->transfer->conn = nullptr;
      c->transfer = nullptr;
    }
    for (size_t i = 0; i < idle.size(); ++i) {
      if (idle[i] == c) {
        idle.erase(idle.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
    if (c->lookup) {
      evdns_getaddrinfo_request* req = c->lookup;
      c->lookup = nullptr;
      c->ticket = nullptr;
      evdns_getaddrinfo_cancel(req);  // its callback runs later, with EVUTIL_EAI_CANCEL
    }
    event_del(&c->rev);
    event_del(&c->wev);
    event_del(&c->connect_timer);
    if (c->fd >= 0) ::close(c->fd);
    c->fd = -1;
    conns.erase(c->serial);
    servePending();
  }

  // --- writing --------------------------------------------------------------

  void send(Conn* c) {
    Transfer* t = c->transfer;
    const UpstreamRequest& r = t->request;
    c->eof = false;
    c->read_error = 0;
    c->write_failed = false;
    c->got_bytes = false;
    t->parser.begin(r.method == "HEAD");
    if (t->cb.on_sending) guard("send hook", [&] { t->cb.on_sending(); });
    std::string& out = c->out;
    out.clear();
    out.append(r.method).append(" ");
    if (t->origin.target.empty() || t->origin.target.front() != '/') out += '/';
    out.append(t->origin.target).append(" HTTP/1.1\r\nHost: ");
    out.append(t->origin.authority).append("\r\n");
    for (const auto& h : r.headers) {
      // The framing is this client's: a Host, Content-Length or
      // Transfer-Encoding given by the caller would be a second one.
      if (equalsIgnoreCase(h.name, "host") || equalsIgnoreCase(h.name, "content-length") ||
          equalsIgnoreCase(h.name, "transfer-encoding")) {
        continue;
      }
      out.append(h.name).append(": ").append(h.value).append("\r\n");
    }
    if (!r.body.empty() || r.method == "POST" || r.method == "PUT" || r.method == "PATCH") {
      out.append("Content-Length: ").append(std::to_string(r.body.size())).append("\r\n");
    }
    out.append("\r\n");
    c->out_off = 0;
    c->body = &r.body;
    c->body_off = 0;
    flush(c);
  }

  // Writes what is left of the request; waits for the socket when it is full.
  void flush(Conn* c) {
    while (c->writing()) {
      iovec iov[2];
      int n = 0;
      if (c->out_off < c->out.size()) iov[n++] = {c->out.data() + c->out_off, c->out.size() - c->out_off};
      if (c->body_off < c->body->size()) {
        iov[n++] = {const_cast<char*>(c->body->data()) + c->body_off, c->body->size() - c->body_off};
      }
      if (n == 0) {
        c->body = nullptr;
        event_del(&c->wev);
        return;
      }
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<size_t>(n);
      ssize_t w = ::sendmsg(c->fd, &msg, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          event_add(&c->wev, nullptr);
          return;
        }
        // The upstream is gone: stop writing; reading tells what it said
        // before it went (an answer, a reset, or nothing).
        c->write_failed = true;
        c->body = nullptr;
        event_del(&c->wev);
        return;
      }
      auto left = static_cast<size_t>(w);
      size_t from_head = std::min(left, c->out.size() - c->out_off);
      c->out_off += from_head;
      c->body_off += left - from_head;
    }
  }

  static void onWritable(evutil_socket_t, short, void* arg) noexcept {
    auto* c = static_cast<Conn*>(arg);
    Impl* self = c->owner;
    Scope scope(*self);
    self->guard("write", [&] {
      if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err == 0) {
          self->connected(c);
          return;
        }
        c->connect_error = errnoText(err);
        event_del(&c->wev);
        ::close(c->fd);
        c->fd = -1;
        self->tryConnect(c);
        return;
      }
      self->flush(c);
    });
  }

  // --- reading --------------------------------------------------------------

  static void onReadable(evutil_socket_t, short, void* arg) noexcept {
    auto* c = static_cast<Conn*>(arg);
    Impl* self = c->owner;
    Scope scope(*self);
    self->guard("read", [&] { self->readable(c); });
  }

  void readable(Conn* c) {
    if (!c->transfer) {
      // Idle: the upstream closed it, or sent what nobody asked for.
      closeConn(c);
      return;
    }
    if (c->begin == c->end) c->begin = c->end = 0;
    if (c->cap - c->end < kReadChunk / 4) {
      if (c->begin > 0) {
        std::memmove(c->buf.get(), c->buf.get() + c->begin, c->end - c->begin);
        c->end -= c->begin;
        c->begin = 0;
      }
      if (c->cap - c->end < kReadChunk / 4) {
        size_t cap = c->cap == 0 ? kReadChunk : c->cap * 2;
        auto grown = std::make_unique<char[]>(cap);
        if (c->end > 0) std::memcpy(grown.get(), c->buf.get(), c->end);
        c->buf = std::move(grown);
        c->cap = cap;
      }
    }
    ssize_t n = ::recv(c->fd, c->buf.get() + c->end, c->cap - c->end, 0);
    if (n > 0) {
      c->end += static_cast<size_t>(n);
      c->got_bytes = true;
    } else if (n == 0) {
      c->eof = true;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      return;
    } else {
      c->read_error = errno;
    }
    input(c);
  }

  // Parses and relays what c holds, then acts on the end of the input.
  void input(Conn* c) {
    Transfer* t = c->transfer;
    while (t && !t->paused) {
      std::string_view in(c->buf.get() + c->begin, c->end - c->begin);
      HttpResponseParser::Result r = t->parser.parse(in);
      c->begin += r.consumed;
      switch (r.event) {
        case HttpResponseParser::Event::NeedMore:
          if (r.consumed > 0) continue;
          if (c->eof || c->read_error) {
            closed(c, t);
          } else if (c->cap > 0 && c->end - c->begin > HttpResponseParser::kMaxHeadBytes + kReadChunk) {
            fail(t, UpstreamFailure::Unavailable, "response head too large");
          }
          return;
        case HttpResponseParser::Event::Head:
          t->head_delivered = true;
          if (t->cb.on_head && !owned(t, "head", [&] { t->cb.on_head(t->parser.head()); })) return;
          if (t->cancelled) return;
          continue;
        case HttpResponseParser::Event::Body:
          if (!deliver(t, r.body)) return;
          continue;
        case HttpResponseParser::Event::Complete:
          complete(c, t);
          return;
        case HttpResponseParser::Event::Error:
          fail(t, UpstreamFailure::Unavailable, "malformed response: " + t->parser.error());
          return;
      }
    }
  }

  // Gives body bytes to the owner; false when they were refused (held, and
  // reading stops) or the transfer was cancelled meanwhile.
  bool deliver(Transfer* t, std::string_view data) {
    bool taken = true;
    if (t->cb.on_data) {
      t->delivering = true;
      if (!owned(t, "body", [&] { taken = t->cb.on_data(data); })) return false;  // t may be gone
      t->delivering = false;
    }
    if (taken) {
      t->body_bytes += data.size();
      return !t->cancelled;
    }
    if (t->cancelled) return false;
    t->paused = true;
    t->held.assign(data);
    if (t->conn) event_del(&t->conn->rev);
    if (t->resume_asked) {
      // resume() came from inside on_data, before it said no.
      t->resume_asked = false;
      resume(t->id);
    }
    return false;
  }

  // Runs one of the owner's callbacks for t. One that throws fails t (and
  // t is gone when this returns false, unless it was cancelled), as
  // libcurl aborted a transfer whose callback failed: a relayed answer
  // must not go on with bytes missing. False when it threw.
  template <typename Fn>
  bool owned(Transfer* t, const char* what, Fn&& fn) {
    try {
      fn();
      return true;
    } catch (const std::exception& e) {
      spdlog::error("upstream http1: the {} callback failed: {}", what, e.what());
    } catch (...) {
      spdlog::error("upstream http1: the {} callback failed", what);
    }
    if (!t->cancelled) fail(t, UpstreamFailure::Unavailable, std::string("the ") + what + " callback failed");
    return false;
  }

  // The upstream closed the connection (or reset it) with t's response not
  // whole, or not begun.
  void closed(Conn* c, Transfer* t) {
    bool nothing_read = !c->got_bytes;
    // Only an orderly close (FIN) ends a body that runs until close: after
    // a reset the upstream may have sent more than arrived.
    if (!c->read_error && t->parser.finish().event == HttpResponseParser::Event::Complete) {
      complete(c, t);
      return;
    }
    std::string detail = c->read_error ? "recv failure: " + errnoText(c->read_error) : t->parser.error();
    if (nothing_read && c->reused) {
      // The pooled connection died before any response byte: the upstream
      // may have received the request and run it.
      if (t->request.replayable && !t->fresh_only) {
        t->fresh_only = true;
        t->conn = nullptr;
        c->transfer = nullptr;
        closeConn(c);
        pending.push_front(t->id);
        event_active(&kick, 0, 0);
        return;
      }
      detail += " on a reused connection after the request was sent; not sent again";
    }
    fail(t, UpstreamFailure::Unavailable, std::move(detail));
  }

  // t's response is whole: the connection goes back to the pool if it can
  // carry another exchange, and t ends.
  void complete(Conn* c, Transfer* t) {
    t->conn = nullptr;
    c->transfer = nullptr;
    if (t->parser.keepAlive() && !c->writing() && !c->write_failed && c->begin == c->end && !c->eof &&
        !c->read_error) {
      c->reused = true;
      c->begin = c->end = 0;
      c->idle_since = SteadyClock::now();
      idle.push_back(c);
      servePending();
    } else {
      closeConn(c);
    }
    finish(t, UpstreamFailure::None, {});
  }

  // Ends t with a failure; its connection, if any, is closed.
  void fail(Transfer* t, UpstreamFailure failure, std::string detail) {
    if (Conn* c = t->conn) {
      t->conn = nullptr;
      c->transfer = nullptr;
      closeConn(c);
    }
    finish(t, failure, std::move(detail));
  }

  void finish(Transfer* t, UpstreamFailure failure, std::string detail) {
    event_del(&t->timeout);
    UpstreamResult result;
    result.failure = failure;
    result.detail = std::move(detail);
    result.head_received = t->head_delivered;
    result.elapsed = SteadyClock::now() - t->started;
    if (failure == UpstreamFailure::None && !t->head_delivered) {
      t->head_delivered = result.head_received = true;  // never: Complete follows Head
    }
    auto on_done = std::move(t->cb.on_done);
    bool cancelled = t->cancelled;
    transfers.erase(t->id);  // t is gone
    if (!cancelled && on_done) on_done(result);
  }

  static void onTimeout(evutil_socket_t, short, void* arg) noexcept {
    auto* t = static_cast<Transfer*>(arg);
    Impl* self = t->owner;
    Scope scope(*self);
    self->guard("timeout", [&] {
      if (t->cancelled) return;
      self->fail(t, UpstreamFailure::Timeout,
                 "operation timed out after " + std::to_string(std::llround(self->options.timeout_s * 1000)) +
                     " ms with " + std::to_string(t->body_bytes) + " bytes received");
    });
  }

  template <typename Fn>
  void guard(const char* what, Fn&& fn) noexcept {
    try {
      fn();
    } catch (const std::exception& e) {
      spdlog::error("upstream http1: exception in {}: {}", what, e.what());
    } catch (...) {
      spdlog::error("upstream http1: unknown exception in {}", what);
    }
  }
};

Http1Upstream::Http1Upstream(EventLoop& loop, UpstreamOptions options)
    : impl_(std::make_unique<Impl>(loop, options)) {}

Http1Upstream::~Http1Upstream() = default;

bool Http1Upstream::carries(std::string_view url) { return startsWithIgnoreCase(url, "http://"); }

uint64_t Http1Upstream::start(UpstreamRequest request, UpstreamCallbacks callbacks) {
  return impl_->start(std::move(request), std::move(callbacks));
}

void Http1Upstream::cancel(uint64_t id) { impl_->cancel(id); }
void Http1Upstream::resume(uint64_t id) { impl_->resume(id); }
size_t Http1Upstream::active() const { return impl_->transfers.size(); }
size_t Http1Upstream::connections() const { return impl_->conns.size(); }

void Http1Upstream::setOptions(const UpstreamOptions& options) {
  impl_->options = options;
  impl_->applyOptions();
  impl_->servePending();  // a higher max_connections lets waiting transfers go now
}

}  // namespace wfp

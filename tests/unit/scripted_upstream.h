// A raw TCP upstream on 127.0.0.1 that answers by a script, for the tests of
// the proxy's own HTTP/1.1 client (upstream_http1_test.cc).
//
// A thread accepts; each connection gets a thread that reads whole requests
// (the head up to the empty line, then a Content-Length body) and hands each
// to the script, an Exchange: send bytes (at once or slowly), close, reset,
// hang until the client goes. What came is recorded: every request's bytes,
// the connections accepted, how many the client closed. The destructor wakes
// and joins every thread it started.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace wfp::test_upstream {

struct SeenRequest {
  size_t conn = 0;     // the accepted connection, counted from 0
  size_t on_conn = 0;  // the request's place on its connection, from 0
  std::string head;    // up to and with the empty line
  std::string body;
  std::string raw() const { return head + body; }
  std::string method() const { return head.substr(0, head.find(' ')); }
  std::string target() const {
    size_t sp = head.find(' ');
    return head.substr(sp + 1, head.find(' ', sp + 1) - sp - 1);
  }
};

struct ServerOptions {
  // The request body is read in pieces of this size with a pause after
  // each (a slow reader); 0: at full speed.
  size_t read_piece = 0;
  std::chrono::microseconds read_pause{0};
  // SO_RCVBUF of the accepted sockets (small: the client's writes are partial); 0: the default.
  int rcvbuf = 0;
  // The body is not read before the script runs (an early answer).
  bool skip_bodies = false;
};

class ScriptedUpstream;

// One request on one connection, on that connection's thread.
class Exchange {
 public:
  Exchange(ScriptedUpstream& server, int fd, SeenRequest request, size_t index)
      : server_(server), fd_(fd), request_(std::move(request)), index_(index) {}

  const SeenRequest& request() const { return request_; }
  size_t index() const { return index_; }  // among every request the server read, from 0

  // Writes all of `bytes` (false if the client is gone).
  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // In pieces of `piece` bytes with `pause` after each.
  bool sendSlowly(std::string_view bytes, size_t piece, std::chrono::microseconds pause) {
    while (!bytes.empty()) {
      size_t n = std::min(piece, bytes.size());
      if (!send(bytes.substr(0, n))) return false;
      bytes.remove_prefix(n);
      std::this_thread::sleep_for(pause);
    }
    return true;
  }
  // FIN after what was sent; the connection ends.
  void close() { ended_ = true; }
  // RST: SO_LINGER 0 and close; the connection ends.
  void reset() {
    linger l{1, 0};
    setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ended_ = true;
  }
  // Reads (and drops) until the client closes the connection or the server
  // stops; then the connection ends.
  void hang();
  // Waits (bounded) for `done`, polling; false if it did not come.
  static bool waitFor(const std::function<bool()>& done, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  }
  bool ended() const { return ended_; }

 private:
  ScriptedUpstream& server_;
  int fd_;
  SeenRequest request_;
  size_t index_;
  bool ended_ = false;
};

class ScriptedUpstream {
 public:
  using Script = std::function<void(Exchange&)>;

  explicit ScriptedUpstream(Script script, ServerOptions options = {})
      : script_(std::move(script)), options_(options) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (options_.rcvbuf > 0) setsockopt(listen_fd_, SOL_SOCKET, SO_RCVBUF, &options_.rcvbuf, sizeof options_.rcvbuf);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 64) != 0) {
      std::abort();
    }
    socklen_t len = sizeof addr;
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    if (::pipe2(wake_, O_CLOEXEC) != 0) std::abort();
    acceptor_ = std::thread([this] { acceptLoop(); });
  }

  ~ScriptedUpstream() { stop(); }
  ScriptedUpstream(const ScriptedUpstream&) = delete;
  ScriptedUpstream& operator=(const ScriptedUpstream&) = delete;

  // Wakes every thread (blocked reads and writes fail) and joins them.
  void stop() {
    if (stopped_.exchange(true)) return;
    char b = 1;
    (void)!::write(wake_[1], &b, 1);
    acceptor_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [i, c] : conns_) {
        if (c.fd >= 0) ::shutdown(c.fd, SHUT_RDWR);
      }
    }
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  uint16_t port() const { return port_; }
  std::string authority() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string url(std::string_view target) const { return "http://" + authority() + std::string(target); }

  size_t accepted() const {
    std::lock_guard<std::mutex> lock(mu_);
    return accepted_;
  }
  size_t openNow() const {
    std::lock_guard<std::mutex> lock(mu_);
    return open_;
  }
  // Connections whose end the client made (the server read EOF or a reset).
  size_t closedByClient() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_by_client_;
  }
  std::vector<SeenRequest> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  size_t requestCount() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_.size();
  }
  // Bytes read on a connection so far (heads and bodies).
  size_t bytesRead(size_t conn) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = conns_.find(conn);
    return it == conns_.end() ? 0 : it->second.bytes_read;
  }
  size_t totalBytesRead() const {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const auto& [i, c] : conns_) n += c.bytes_read;
    return n;
  }

  // Acts on a connection waiting for its next request (an idle one for the
  // client): sends bytes on it, or closes it (FIN).
  bool sendOn(size_t conn, std::string_view bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = conns_.find(conn);
    if (it == conns_.end() || it->second.fd < 0) return false;
    return ::send(it->second.fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  bool closeConn(size_t conn) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = conns_.find(conn);
    if (it == conns_.end() || it->second.fd < 0) return false;
    it->second.close_requested = true;
    ::shutdown(it->second.fd, SHUT_RDWR);  // the FIN; the connection's thread wakes and closes
    return true;
  }

 private:
  friend class Exchange;

  struct ConnState {
    int fd = -1;
    size_t bytes_read = 0;
    bool close_requested = false;
  };

  enum class ReadEnd { Request, ClientClosed, Stopped };

  void acceptLoop() {
    for (;;) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents != 0 || stopped_) return;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      size_t index;
      {
        std::lock_guard<std::mutex> lock(mu_);
        index = accepted_++;
        ++open_;
        conns_[index].fd = fd;
      }
      threads_.emplace_back([this, fd, index] { serve(fd, index); });
    }
  }

  // Reads into buf until `want` bytes or more are there; false at EOF/error.
  bool readMore(int fd, size_t index, std::string& buf, size_t limit) {
    char tmp[64 * 1024];
    size_t n = limit == 0 ? sizeof tmp : std::min(limit, sizeof tmp);
    ssize_t got;
    do {
      got = ::recv(fd, tmp, n, 0);
    } while (got < 0 && errno == EINTR);
    if (got <= 0) return false;
    buf.append(tmp, static_cast<size_t>(got));
    std::lock_guard<std::mutex> lock(mu_);
    conns_[index].bytes_read += static_cast<size_t>(got);
    return true;
  }

  ReadEnd readRequest(int fd, size_t index, std::string& buf, SeenRequest& req) {
    size_t end;
    while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
      if (!readMore(fd, index, buf, 0)) return stopped_ ? ReadEnd::Stopped : ReadEnd::ClientClosed;
    }
    req.head = buf.substr(0, end + 4);
    buf.erase(0, end + 4);
    size_t length = 0;
    std::string lower = req.head;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    size_t at = lower.find("\r\ncontent-length:");
    if (at != std::string::npos) length = std::stoul(lower.substr(at + 17));
    if (options_.skip_bodies) return ReadEnd::Request;
    while (buf.size() < length) {
      size_t piece = options_.read_piece == 0 ? 0 : std::min(options_.read_piece, length - buf.size());
      if (!readMore(fd, index, buf, piece)) return stopped_ ? ReadEnd::Stopped : ReadEnd::ClientClosed;
      if (options_.read_pause.count() > 0) std::this_thread::sleep_for(options_.read_pause);
    }
    req.body = buf.substr(0, length);
    buf.erase(0, length);
    return ReadEnd::Request;
  }

  void serve(int fd, size_t index) {
    std::string buf;
    bool by_client = false;
    for (size_t on_conn = 0;; ++on_conn) {
      SeenRequest req;
      req.conn = index;
      req.on_conn = on_conn;
      ReadEnd got = readRequest(fd, index, buf, req);
      if (got != ReadEnd::Request) {
        std::lock_guard<std::mutex> lock(mu_);
        by_client = got == ReadEnd::ClientClosed && !conns_[index].close_requested;
        break;
      }
      size_t number;
      {
        std::lock_guard<std::mutex> lock(mu_);
        number = requests_.size();
        requests_.push_back(req);
      }
      Exchange ex(*this, fd, std::move(req), number);
      script_(ex);
      if (ex.ended()) break;
      if (hung_up_) {
        by_client = true;
        break;
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (by_client || hung_up_) ++closed_by_client_;
    hung_up_ = false;
    --open_;
    conns_[index].fd = -1;
    ::close(fd);
  }

  Script script_;
  ServerOptions options_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::thread acceptor_;
  std::vector<std::thread> threads_;  // joined by stop(); only the acceptor adds to it
  std::atomic<bool> stopped_{false};
  mutable std::mutex mu_;
  std::map<size_t, ConnState> conns_;
  std::vector<SeenRequest> requests_;
  size_t accepted_ = 0, open_ = 0, closed_by_client_ = 0;
  static inline thread_local bool hung_up_ = false;  // the current connection's hang() was ended by the client
};

inline void Exchange::hang() {
  char tmp[4096];
  for (;;) {
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
  }
  ended_ = true;
  // Woken by the client (EOF or reset), not by stop(): recorded as the client's close.
  if (!server_.stopped_) ScriptedUpstream::hung_up_ = true;
}

}  // namespace wfp::test_upstream

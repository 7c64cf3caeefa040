// HttpServer over real sockets: the server runs on an EventLoop in the test's
// thread, a client thread talks to it with blocking sockets and exact bytes.
#include "proxy/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

namespace wfp {
namespace {

using namespace std::chrono_literals;
using namespace std::string_literals;
using Clock = std::chrono::steady_clock;

// --- a blocking test client ----------------------------------------------------

class Client {
 public:
  explicit Client(uint16_t port, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0;
    setTimeout();
  }
  explicit Client(const std::string& unix_path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strncpy(sun.sun_path, unix_path.c_str(), sizeof sun.sun_path - 1);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0;
    setTimeout();
  }
  ~Client() { close(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }

  void send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        ADD_FAILURE() << "send failed: " << std::strerror(errno);
        return;
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
  }

  // One complete response (1xx included), as raw bytes. Empty on EOF/timeout.
  std::string response(bool head_request = false) {
    size_t head_end;
    while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill()) return take(buf_.size());
    }
    head_end += 4;
    std::string head = lower(buf_.substr(0, head_end));
    int status = std::atoi(head.c_str() + 9);
    if (status < 200 || status == 204 || status == 304 || head_request) return take(head_end);
    size_t cl = head.find("\r\ncontent-length: ");
    if (cl != std::string::npos) {
      size_t length = std::strtoull(head.c_str() + cl + 18, nullptr, 10);
      while (buf_.size() < head_end + length) {
        if (!fill()) break;
      }
      return take(std::min(buf_.size(), head_end + length));
    }
    if (head.find("\r\ntransfer-encoding: chunked\r\n") != std::string::npos) {
      size_t pos = head_end;
      for (;;) {
        size_t eol;
        while ((eol = buf_.find("\r\n", pos)) == std::string::npos) {
          if (!fill()) return take(buf_.size());
        }
        size_t size = std::strtoull(buf_.c_str() + pos, nullptr, 16);
        size_t need = eol + 2 + size + 2;
        while (buf_.size() < need) {
          if (!fill()) return take(buf_.size());
        }
        pos = need;
        if (size == 0) return take(pos);
      }
    }
    while (fill()) {
    }
    return take(buf_.size());
  }

  // Everything until the server closes (or the read timeout).
  std::string readAll() {
    while (fill()) {
    }
    return take(buf_.size());
  }

  // True when the server closed the connection (EOF or reset) within `ms`
  // with no more data.
  bool closedWithin(int ms) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms) <= 0) return false;
    char c;
    ssize_t n = ::recv(fd_, &c, 1, 0);
    if (n > 0) buf_.push_back(c);
    return n <= 0;
  }

  bool readableWithin(int ms) {
    if (!buf_.empty()) return true;
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, ms) > 0;
  }

  void shutdownWrite() { ::shutdown(fd_, SHUT_WR); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }

 private:
  void setTimeout() {
    timeval tv{3, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  bool fill() {
    char tmp[65536];
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }
  std::string take(size_t n) {
    std::string out = buf_.substr(0, n);
    buf_.erase(0, n);
    return out;
  }
  static std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
};

std::string errorResponse(int status, std::string_view reason, std::string_view message, std::string_view code) {
  std::string body = HttpServer::errorBody(message, code);
  return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

// Decodes a chunked body (after the head); returns the payload.
std::string dechunk(std::string_view raw) {
  size_t pos = raw.find("\r\n\r\n");
  if (pos == std::string_view::npos) return {};
  pos += 4;
  std::string out;
  for (;;) {
    size_t eol = raw.find("\r\n", pos);
    if (eol == std::string_view::npos) return out;
    size_t size = std::strtoull(std::string(raw.substr(pos, eol - pos)).c_str(), nullptr, 16);
    if (size == 0) return out;
    out.append(raw.substr(eol + 2, size));
    pos = eol + 2 + size + 2;
  }
}

// --- the fixture ----------------------------------------------------------------

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override { spdlog::set_level(spdlog::level::warn); }

  void start(HttpServer::Handler handler, HttpServerLimits limits = {}) {
    server_ = std::make_unique<HttpServer>(loop_, limits, std::move(handler));
    ListenAddress address;
    address.host = "127.0.0.1";
    address.port = 0;
    BoundListener bound;
    std::string error;
    ASSERT_TRUE(server_->listen(address, &bound, &error)) << error;
    ASSERT_NE(bound.port, 0);
    EXPECT_EQ(bound.address, "127.0.0.1:" + std::to_string(bound.port));
    port_ = bound.port;
  }

  // Runs the loop here while `client` runs in its own thread; returns once
  // the client is done and `until` holds (or after `timeout`: failure).
  void run(std::function<void()> client, std::function<bool()> until = nullptr,
           std::chrono::milliseconds timeout = 5000ms) {
    std::atomic<bool> done{false};
    bool timed_out = false;
    auto deadline = Clock::now() + timeout;
    Timer* self = nullptr;
    Timer poll(loop_, [&] {
      if (done && (!until || until())) {
        loop_.stop();
      } else if (Clock::now() > deadline) {
        timed_out = true;
        loop_.stop();
      } else {
        self->start(1ms);
      }
    });
    self = &poll;
    std::thread thread([&] {
      client();
      done = true;
    });
    poll.start(1ms);
    loop_.run();
    thread.join();
    EXPECT_FALSE(timed_out) << "the test did not finish in time";
  }

  // Runs the loop for a while (to let deferred work happen).
  void spin(std::chrono::milliseconds duration) {
    Timer stop(loop_, [&] { loop_.stop(); });
    stop.start(duration);
    loop_.run();
  }

  static void textReply(HttpExchange& ex, std::string_view body) {
    ex.respond(200, "OK", {{"Content-Type", "text/plain"}}, body);
  }

  EventLoop loop_;  // first: destroyed last
  std::unique_ptr<HttpServer> server_;
  uint16_t port_ = 0;
};

// --- basics -----------------------------------------------------------------------

TEST_F(HttpServerTest, SimpleGetExactBytes) {
  std::string method, target, path, query, peer, host;
  int minor = -1;
  HttpHeaders headers;
  start([&](HttpExchange& ex) {
    method = ex.method();
    target = ex.target();
    path = std::string(ex.path());
    query = std::string(ex.query());
    minor = ex.versionMinor();
    headers = ex.headers();
    peer = ex.peer();
    if (const std::string* h = findHeader(ex.headers(), "HOST")) host = *h;
    // Framing headers from the handler are the server's business: dropped.
    ex.respond(200, "OK",
               {{"Content-Type", "text/plain"}, {"Content-Length", "99"}, {"Connection", "close"},
                {"X-Upstream", "a, b"}},
               "hello");
  });
  run([&] {
    Client c(port_);
    c.send("GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.test\r\nX-Custom:   spaced value \t\r\n\r\n");
    EXPECT_EQ(c.response(),
              "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Upstream: a, b\r\nContent-Length: 5\r\n\r\nhello");
  });
  EXPECT_EQ(method, "GET");
  EXPECT_EQ(target, "/a/b?x=1&y=2");
  EXPECT_EQ(path, "/a/b");
  EXPECT_EQ(query, "x=1&y=2");
  EXPECT_EQ(minor, 1);
  EXPECT_EQ(host, "example.test");
  ASSERT_EQ(headers.size(), 2u);
  EXPECT_EQ(headers[0].name, "Host");
  EXPECT_EQ(headers[1].name, "X-Custom");
  EXPECT_EQ(headers[1].value, "spaced value");
  EXPECT_EQ(peer.rfind("127.0.0.1:", 0), 0u) << peer;
}

TEST_F(HttpServerTest, PostBodyAndCompletionAccounting) {
  std::string body;
  size_t bytes_in = 0;
  int completed_status = 0;
  size_t completed_bytes_out = 0;
  int completions = 0;
  start([&](HttpExchange& ex) {
    body = ex.body();
    bytes_in = ex.bytesIn();
    HttpExchange* e = &ex;
    ex.setOnComplete([&, e] {
      ++completions;
      completed_status = e->status();
      completed_bytes_out = e->bytesOut();
    });
    ex.respond(201, "Created", {{"Content-Type", "application/json"}}, R"({"ok":true})");
  });
  const std::string request = "POST /api/v1/run/x HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\n\r\n{\"a\":\"hello\"}";
  const std::string expected =
      "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
  run([&] {
        Client c(port_);
        c.send(request);
        EXPECT_EQ(c.response(), expected);
      },
      [&] { return completions == 1; });
  EXPECT_EQ(body, "{\"a\":\"hello\"}");
  EXPECT_EQ(bytes_in, request.size());
  EXPECT_EQ(completed_status, 201);
  EXPECT_EQ(completed_bytes_out, expected.size());
  EXPECT_EQ(server_->exchangeCount(), 0u);
}

TEST_F(HttpServerTest, KeepAliveThreeRequests) {
  std::vector<uint64_t> ids;
  size_t connections_seen = 0;
  start([&](HttpExchange& ex) {
    ids.push_back(ex.id());
    connections_seen = std::max(connections_seen, server_->connectionCount());
    textReply(ex, ex.target());
  });
  run([&] {
    Client c(port_);
    for (int i = 0; i < 3; ++i) {
      std::string target = "/r" + std::to_string(i);
      c.send("GET " + target + " HTTP/1.1\r\nHost: h\r\n\r\n");
      EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n" + target);
    }
    EXPECT_FALSE(c.closedWithin(20));
  });
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_NE(ids[0], ids[1]);
  EXPECT_NE(ids[1], ids[2]);
  EXPECT_EQ(connections_seen, 1u);
}

TEST_F(HttpServerTest, PipelinedRequestsAnsweredInOrderOneAtATime) {
  // The first answer is deferred, the others immediate: order must still hold.
  size_t max_in_flight = 0;
  std::map<uint64_t, HttpExchange*> waiting;
  std::vector<std::unique_ptr<Timer>> timers;
  start([&](HttpExchange& ex) {
    max_in_flight = std::max(max_in_flight, server_->exchangeCount());
    if (ex.target() == "/1") {
      uint64_t id = ex.id();
      waiting[id] = &ex;
      ex.setOnAbort([&, id] { waiting.erase(id); });
      ex.setOnComplete([&, id] { waiting.erase(id); });
      timers.push_back(std::make_unique<Timer>(loop_, [&, id] {
        auto it = waiting.find(id);
        if (it != waiting.end()) textReply(*it->second, "one");
      }));
      timers.back()->start(30ms);
      return;
    }
    textReply(ex, ex.target() == "/2" ? "two" : "three");
  });
  run([&] {
    Client c(port_);
    c.send(
        "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\none");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\ntwo");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nthree");
  });
  EXPECT_EQ(max_in_flight, 1u);
}

TEST_F(HttpServerTest, Http10ClosesAndKeepAliveOptIn) {
  start([&](HttpExchange& ex) { textReply(ex, "x"); });
  run([&] {
    {
      Client c(port_);
      c.send("GET / HTTP/1.0\r\n\r\n");  // no Host: HTTP/1.0 needs none
      EXPECT_EQ(c.readAll(),
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
    }
    {
      Client c(port_);
      for (int i = 0; i < 2; ++i) {
        c.send("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        EXPECT_EQ(c.response(),
                  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: "
                  "keep-alive\r\n\r\nx");
      }
    }
    {
      Client c(port_);  // HTTP/1.1 with Connection: close (among other tokens)
      c.send("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, CLOSE\r\n\r\n");
      EXPECT_EQ(c.readAll(),
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
    }
  });
}

TEST_F(HttpServerTest, HeadResponseHasLengthButNoBody) {
  start([&](HttpExchange& ex) { textReply(ex, "hello"); });
  run([&] {
    Client c(port_);
    c.send("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(c.response(true), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n");
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");  // the connection is still in sync
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello");
  });
}

TEST_F(HttpServerTest, LenientLineEndingsAndLeadingBlankLines) {
  std::vector<std::string> seen;
  start([&](HttpExchange& ex) {
    seen.push_back(ex.target() + "|" + ex.body());
    textReply(ex, "k");
  });
  run([&] {
    Client c(port_);
    c.send("\r\n\nGET /lf HTTP/1.1\nHost: h\n\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nk");
    c.send("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab\r\n");  // stray CRLF after a body
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nk");
    c.send("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nk");
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"/lf|", "/p|ab", "*|"}));
}

// --- request bodies ---------------------------------------------------------------

TEST_F(HttpServerTest, ChunkedRequestBodyReassembled) {
  std::string body;
  size_t bytes_in = 0;
  start([&](HttpExchange& ex) {
    body = ex.body();
    bytes_in = ex.bytesIn();
    textReply(ex, "ok");
  });
  const std::string head = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n";
  const std::string chunks = "5;name=value\r\nhello\r\n6 \r\n world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n";
  run([&] {
    Client c(port_);
    c.send(head);
    // Dribble the body so every parser state sees a partial buffer.
    for (size_t i = 0; i < chunks.size(); i += 3) {
      c.send(chunks.substr(i, 3));
      std::this_thread::sleep_for(200us);
    }
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
  });
  EXPECT_EQ(body, "hello world0123456789");
  EXPECT_EQ(bytes_in, head.size() + chunks.size());
}

TEST_F(HttpServerTest, ChunkedWithoutTrailersAndBareLf) {
  std::vector<std::string> bodies;
  start([&](HttpExchange& ex) {
    bodies.push_back(ex.body());
    textReply(ex, "ok");
  });
  run([&] {
    Client c(port_);
    c.send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
    c.send("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n2\nde\n0\n\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
  });
  EXPECT_EQ(bodies, (std::vector<std::string>{"abc", "de"}));
}

TEST_F(HttpServerTest, EofInsideABodyClosesWithoutCallingTheHandler) {
  int handled = 0;
  start([&](HttpExchange&) { ++handled; });
  run([&] {
        Client c(port_);
        c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a part");
        c.shutdownWrite();
        EXPECT_EQ(c.readAll(), "");
      },
      [&] { return server_->connectionCount() == 0; });
  EXPECT_EQ(handled, 0);
}

TEST_F(HttpServerTest, PipelineFloodIsThrottledNotDropped) {
  // Far more pipelined requests than the server buffers while one is in
  // progress: reading pauses, and every request is still answered in order.
  HttpServerLimits limits;
  limits.max_header_bytes = 4096;
  int handled = 0;
  bool held = true;
  HttpExchange* first = nullptr;
  Timer release(loop_, [&] {
    held = false;
    textReply(*first, "0");
  });
  start([&](HttpExchange& ex) {
    if (handled++ == 0) {
      first = &ex;
      release.start(30ms);
      return;
    }
    textReply(ex, ex.target().substr(1));
  }, limits);
  constexpr int kRequests = 2000;
  run([&] {
    Client c(port_);
    std::string flood;
    for (int i = 0; i < kRequests; ++i) flood += "GET /" + std::to_string(i) + " HTTP/1.1\r\nHost: h\r\n\r\n";
    std::thread sender([&] { c.send(flood); });
    for (int i = 0; i < kRequests; ++i) {
      std::string r = c.response();
      std::string want = std::to_string(i);
      ASSERT_EQ(r.substr(r.size() - want.size()), want) << r;
    }
    sender.join();
  });
  EXPECT_EQ(handled, kRequests);
  EXPECT_FALSE(held);
}

TEST_F(HttpServerTest, Expect100Continue) {
  std::string body;
  start([&](HttpExchange& ex) {
    body = ex.body();
    textReply(ex, "got it");
  });
  run([&] {
    Client c(port_);
    c.send("PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 100 Continue\r\n\r\n");
    c.send("hello");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\ngot it");
  });
  EXPECT_EQ(body, "hello");
}

// --- the head handler (docs/http.md: refuse a request before reading its body) ---------

const std::string kUnauthorizedJson = R"({"error":"Unauthorized. Please provide a valid secret key.","success":false})";

void answer401(HttpExchange& ex) {
  ex.respond(401, "Unauthorized", {{"Content-Type", "application/json"}}, kUnauthorizedJson);
}

const std::string kExpected401 = "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: " +
                                 std::to_string(kUnauthorizedJson.size()) + "\r\nConnection: close\r\n\r\n" +
                                 kUnauthorizedJson;

TEST_F(HttpServerTest, HeadHandlerAnswersBeforeContinueAndTheBody) {
  int handled = 0, heads = 0, completions = 0, aborts = 0;
  size_t count_in_hook = 0, bytes_in = 0, body_size = 99, body_capacity = 0;
  std::string method, target, auth;
  start([&](HttpExchange&) { ++handled; });
  server_->setHeadHandler([&](HttpExchange& ex) {
    ++heads;
    count_in_hook = server_->exchangeCount();
    method = ex.method();
    target = ex.target();
    if (const std::string* h = findHeader(ex.headers(), "authorization")) auth = *h;
    HttpExchange* e = &ex;
    ex.setOnAbort([&] { ++aborts; });
    ex.setOnComplete([&, e] {
      ++completions;
      bytes_in = e->bytesIn();
      body_size = e->body().size();
      body_capacity = e->body().capacity();
    });
    answer401(ex);
    EXPECT_EQ(completions, 0);  // never inside respond()
    return true;
  });
  const std::string head =
      "POST /api/v1/run/wf_x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer nope\r\nExpect: 100-continue\r\n"
      "Content-Length: 1048576\r\n\r\n";
  run([&] {
        Client c(port_);
        c.send(head);
        // No 100 Continue: the refusal comes first, and the connection closes.
        EXPECT_EQ(c.response(), kExpected401);
        EXPECT_EQ(c.readAll(), "");
      },
      [&] { return server_->connectionCount() == 0; });
  EXPECT_EQ(heads, 1);
  EXPECT_EQ(handled, 0);
  EXPECT_EQ(completions, 1);
  EXPECT_EQ(aborts, 0);
  EXPECT_EQ(count_in_hook, 1u);
  EXPECT_EQ(method, "POST");
  EXPECT_EQ(target, "/api/v1/run/wf_x");
  EXPECT_EQ(auth, "Bearer nope");
  EXPECT_EQ(bytes_in, head.size());
  EXPECT_EQ(body_size, 0u);
  EXPECT_LT(body_capacity, 4096u);  // no room was made for the 1 MiB either
  EXPECT_EQ(server_->exchangeCount(), 0u);
}

// The client does not wait for a 100: its 1 MiB body and a pipelined request
// follow the head at once. The server answers, discards what comes (never
// holding the body), serves nothing else and closes cleanly (no reset: the
// client reads the whole answer).
TEST_F(HttpServerTest, HeadHandlerAnswerNeverHoldsTheBodyNorServesWhatFollows) {
  for (bool chunked : {false, true}) {
    SCOPED_TRACE(chunked ? "chunked" : "Content-Length");
    int handled = 0, heads = 0, completions = 0;
    size_t held = 0;
    // Sampled when a request is handled or completes, and on every pass of
    // the test's poll.
    start([&](HttpExchange& ex) {
      ++handled;
      held = std::max(held, server_->requestBytesHeld());
      textReply(ex, "served");
    });
    server_->setHeadHandler([&](HttpExchange& ex) {
      ++heads;
      ex.setOnComplete([&] {
        ++completions;
        held = std::max(held, server_->requestBytesHeld());
      });
      answer401(ex);
      return true;
    });
    const std::string body(1 << 20, 'b');
    run([&] {
          Client c(port_);
          c.send(chunked ? "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         : "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n");
          for (size_t off = 0; off < body.size(); off += 64 * 1024) {
            std::string piece = body.substr(off, 64 * 1024);
            c.send(chunked ? "10000\r\n" + piece + "\r\n" : piece);
          }
          if (chunked) c.send("0\r\n\r\n");
          c.send("GET /second HTTP/1.1\r\nHost: h\r\n\r\n");
          c.shutdownWrite();
          EXPECT_EQ(c.readAll(), kExpected401);
        },
        [&] {
          held = std::max(held, server_->requestBytesHeld());
          return server_->connectionCount() == 0;
        });
    EXPECT_EQ(heads, 1);
    EXPECT_EQ(handled, 0);
    EXPECT_EQ(completions, 1);
    EXPECT_LT(held, 256u * 1024) << "the server held the body";
    EXPECT_EQ(server_->exchangeCount(), 0u);
    server_.reset();
  }
}

// An answer on the head that is still being written when the body arrives:
// the body is discarded as it comes (reading is never suspended for it) and
// the connection closes after end().
TEST_F(HttpServerTest, HeadHandlerStreamedAnswerDiscardsTheBodyMeanwhile) {
  int handled = 0, completions = 0;
  size_t held = 0;
  std::atomic<bool> sent{false};
  HttpExchange* open = nullptr;
  start([&](HttpExchange&) { ++handled; });
  server_->setHeadHandler([&](HttpExchange& ex) {
    open = &ex;
    ex.setOnComplete([&] {
      ++completions;
      open = nullptr;
    });
    ex.begin(403, "Forbidden", {{"Content-Type", "text/plain"}});
    ex.write("no");
    return true;
  });
  Timer* self = nullptr;
  Timer finish(loop_, [&] {
    held = std::max(held, server_->requestBytesHeld());
    if (sent && open) {
      open->write(" body");
      open->end();
    } else {
      self->start(1ms);
    }
  });
  self = &finish;
  finish.start(1ms);
  const std::string body(1 << 20, 'b');
  run([&] {
        Client c(port_);
        c.send("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n");
        c.send(body);
        c.send("GET /second HTTP/1.1\r\nHost: h\r\n\r\n");
        sent = true;
        std::string r = c.response();
        EXPECT_EQ(r.substr(0, r.find("\r\n\r\n") + 4),
                  "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                  "Connection: close\r\n\r\n");
        EXPECT_EQ(dechunk(r), "no body");
        c.shutdownWrite();
        EXPECT_EQ(c.readAll(), "");
      },
      [&] {
        held = std::max(held, server_->requestBytesHeld());
        return server_->connectionCount() == 0;
      });
  EXPECT_EQ(handled, 0);
  EXPECT_EQ(completions, 1);
  EXPECT_LT(held, 256u * 1024) << "the server held the body";
}

TEST_F(HttpServerTest, HeadHandlerDeclinesAndTheRequestGoesOnUnchanged) {
  std::vector<uint64_t> hook_ids, handler_ids;
  std::vector<std::string> bodies;
  size_t count_in_hook = 0, count_after_hook = 99;
  bool body_empty_in_hook = false;
  start([&](HttpExchange& ex) {
    handler_ids.push_back(ex.id());
    bodies.push_back(ex.body());
    textReply(ex, "got " + ex.body());
  });
  server_->setHeadHandler([&](HttpExchange& ex) {
    hook_ids.push_back(ex.id());
    count_in_hook = server_->exchangeCount();
    body_empty_in_hook = ex.body().empty();
    // The first request waits for its 100: the next loop pass is while its body is read.
    if (hook_ids.size() == 1) loop_.post([&] { count_after_hook = server_->exchangeCount(); });
    return false;
  });
  run([&] {
    Client c(port_);
    c.send("PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 100 Continue\r\n\r\n");
    c.send("hello");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\ngot hello");
    // Keep-alive as before; chunked too; a request without a body never
    // meets the hook.
    c.send("POST /y HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\ngot abc");
    c.send("GET /z HTTP/1.1\r\nHost: h\r\n\r\nPOST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\ngot ");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\ngot ");
  });
  ASSERT_EQ(hook_ids.size(), 2u);
  ASSERT_EQ(handler_ids.size(), 4u);
  EXPECT_EQ(bodies[0], "hello");
  EXPECT_EQ(bodies[1], "abc");
  EXPECT_EQ(count_in_hook, 1u);
  EXPECT_EQ(count_after_hook, 0u);  // while the body is read, nothing is counted
  EXPECT_TRUE(body_empty_in_hook);
  // The handler's exchange is a new one.
  EXPECT_NE(hook_ids[0], handler_ids[0]);
  EXPECT_NE(hook_ids[1], handler_ids[1]);
  EXPECT_EQ(server_->exchangeCount(), 0u);
}

TEST_F(HttpServerTest, HeadHandlerIsNotAskedAboutABodyOverTheLimit) {
  HttpServerLimits limits;
  limits.max_body_bytes = 10;
  int heads = 0;
  start([&](HttpExchange& ex) { textReply(ex, "x"); }, limits);
  server_->setHeadHandler([&](HttpExchange&) {
    ++heads;
    return false;
  });
  run([&] {
    Client c(port_);
    c.send("POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n");
    EXPECT_EQ(c.readAll(), errorResponse(413, "Payload Too Large", "Request body too large", "payload_too_large"));
  });
  EXPECT_EQ(heads, 0);
}

// Contract breaches: the server does not hang or leak the exchange.
TEST_F(HttpServerTest, HeadHandlerMisuseIsContained) {
  std::atomic<int> mode{0};
  int handled = 0, stray = 0;
  start([&](HttpExchange& ex) {
    ++handled;
    textReply(ex, "ok");
  });
  server_->setHeadHandler([&](HttpExchange& ex) {
    switch (mode) {
      case 0:  // true without an answer
        return true;
      case 1:  // false, but with callbacks: dropped
        ex.setOnComplete([&] { ++stray; });
        ex.setOnAbort([&] { ++stray; });
        return false;
      default:
        throw std::runtime_error("boom");
    }
  });
  spdlog::set_level(spdlog::level::off);
  // Heads sent without their bodies: the hook is offered a body still to come.
  run([&] {
        Client c(port_);
        c.send("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n");
        std::string r = c.readAll();
        EXPECT_EQ(r.substr(0, 13), "HTTP/1.1 500 ") << r;
        EXPECT_NE(r.find("\r\nConnection: close\r\n"), std::string::npos) << r;
        mode = 1;
      },
      [&] { return server_->connectionCount() == 0; });
  run([&] {
        Client c(port_);
        c.send("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
        EXPECT_EQ(c.response(), "HTTP/1.1 100 Continue\r\n\r\n");
        c.send("ab");
        EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
        mode = 2;
      },
      [&] { return handled == 1; });
  run([&] {
        Client c(port_);
        c.send("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n");
        EXPECT_EQ(c.readAll(), "");
      },
      [&] { return server_->connectionCount() == 0; });
  EXPECT_EQ(handled, 1);
  EXPECT_EQ(stray, 0);
  EXPECT_EQ(server_->exchangeCount(), 0u);
}

// A body that arrived whole with its head is read as usual: refusing it on the
// head would save nothing and cost the client its keep-alive connection.
TEST_F(HttpServerTest, ABodyAlreadyHereIsNotOfferedToTheHeadHandler) {
  int offered = 0, handled = 0;
  start([&](HttpExchange& ex) {
    ++handled;
    textReply(ex, "ok");
  });
  server_->setHeadHandler([&](HttpExchange&) {
    ++offered;
    return false;
  });
  run([&] {
        Client c(port_);
        c.send("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
               "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\ncd");
        EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
        EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
      },
      [&] { return handled == 2; });
  EXPECT_EQ(offered, 0);
}

// --- CONNECT and TRACE: handed to routing, which refuses them ----------------------

TEST_F(HttpServerTest, ConnectAuthorityFormReachesTheHandler) {
  std::vector<std::string> seen;
  start([&](HttpExchange& ex) {
    seen.push_back(ex.method() + " " + ex.target() + " " + std::string(ex.path()));
    ex.respond(405, "Method Not Allowed", {{"Allow", ""}}, "");
  });
  run([&] {
    for (const char* target : {"example.com:443", "[::1]:8443", "10.0.0.1:80"}) {
      Client c(port_);
      c.send("CONNECT "s + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n");
      // Whatever a CONNECT client sends next is tunnel data: the connection closes.
      c.send("\x16\x03\x01 a TLS ClientHello sent ahead\r\n\r\n");
      EXPECT_EQ(c.readAll(), "HTTP/1.1 405 Method Not Allowed\r\nAllow: \r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
          << target;
    }
    // Anything else in a non-origin form is still the server's 400.
    for (const char* line : {"GET example.com:443", "connect example.com:443", "CONNECT example.com",
                             "CONNECT example.com:", "CONNECT :443", "CONNECT a/b:443", "CONNECT example.com:123456",
                             "CONNECT user@example.com:443", "CONNECT [zz::1]:443",
                             "TRACE http://example.com/", "CONNECT http://example.com:443"}) {
      Client c(port_);
      c.send(std::string(line) + " HTTP/1.1\r\nHost: x\r\n\r\n");
      std::string r = c.readAll();
      EXPECT_EQ(r.substr(0, 12), "HTTP/1.1 400") << line << ": " << r;
    }
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"CONNECT example.com:443 example.com:443",
                                            "CONNECT [::1]:8443 [::1]:8443", "CONNECT 10.0.0.1:80 10.0.0.1:80"}));
}

TEST_F(HttpServerTest, ContentLengthOverLimitIs413WithoutContinue) {
  HttpServerLimits limits;
  limits.max_body_bytes = 10;
  int handled = 0;
  start([&](HttpExchange& ex) {
    ++handled;
    textReply(ex, "no");
  }, limits);
  run([&] {
    Client c(port_);
    c.send("POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n");
    EXPECT_EQ(c.readAll(),
              "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: 77\r\nConnection: "
              "close\r\n\r\n{\"error\":\"Request body too large\",\"success\":false,\"code\":\"payload_too_large\"}");
    // At the limit exactly: fine.
    Client ok(port_);
    ok.send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789");
    EXPECT_EQ(ok.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nno");
  });
  EXPECT_EQ(handled, 1);
}

TEST_F(HttpServerTest, ChunkedBodyOverLimitIs413) {
  HttpServerLimits limits;
  limits.max_body_bytes = 10;
  int handled = 0;
  start([&](HttpExchange&) { ++handled; }, limits);
  run([&] {
    Client c(port_);
    // The client keeps sending after the 413: the server must still deliver
    // its answer (lingering close), not reset the connection.
    c.send("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n");
    c.send(std::string(100000, 'z'));
    EXPECT_EQ(c.readAll(), errorResponse(413, "Payload Too Large", "Request body too large", "payload_too_large"));
  });
  EXPECT_EQ(handled, 0);
}

// --- hostile input ------------------------------------------------------------------

struct BadCase {
  const char* name;
  std::string request;
  int status;
};

TEST_F(HttpServerTest, MalformedRequestsAreRejected) {
  HttpServerLimits limits;
  limits.max_header_bytes = 1024;
  limits.max_headers = 10;
  int handled = 0;
  start([&](HttpExchange& ex) {
    ++handled;
    textReply(ex, "should not happen");
  }, limits);
  std::string many_headers = "GET / HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 11; ++i) many_headers += "X-H" + std::to_string(i) + ": v\r\n";
  many_headers += "\r\n";
  const std::vector<BadCase> cases = {
      {"CL+TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
      {"TE+CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400},
      {"CL not digits", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5a\r\n\r\n", 400},
      {"CL negative", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
      {"CL plus", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400},
      {"CL empty", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400},
      {"CL overflow", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400},
      {"CL list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", 400},
      {"CL conflicting", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400},
      {"TE gzip", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
      {"TE garbage", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400},
      {"TE twice", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
       400},
      {"TE on 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
      {"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n", 400},
      {"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : one\r\n\r\n", 400},
      {"no colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A one\r\n\r\n", 400},
      {"NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: o\0e\r\n\r\n"s, 400},
      {"bare CR in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: o\re\r\n\r\n", 400},
      {"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
      {"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
      {"no Host, with a body", "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab", 400},
      {"absolute-form", "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 400},
      {"authority-form not CONNECT", "GET example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"asterisk not OPTIONS", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", 505},
      {"HTTP/1.2", "GET / HTTP/1.2\r\n\r\n", 505},
      {"HTTP/0.9", "GET /\r\n\r\n", 400},
      {"lowercase version", "GET / http/1.1\r\n\r\n", 400},
      {"double space", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"control in target", "GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"bad method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"s, 400},
      {"header too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(2000, 'a') + "\r\n\r\n", 431},
      {"too many headers", many_headers, 431},
      {"bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
      {"chunk size overflow",
       "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", 400},
      {"bad chunk terminator",
       "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY0\r\n\r\n", 400},
  };
  run([&] {
    for (const BadCase& bad : cases) {
      Client c(port_);
      c.send(bad.request);
      std::string response = c.readAll();
      EXPECT_EQ(response.substr(0, 12), "HTTP/1.1 " + std::to_string(bad.status)) << bad.name << ": " << response;
      EXPECT_NE(response.find("\r\nContent-Type: application/json\r\n"), std::string::npos) << bad.name;
      EXPECT_NE(response.find("\r\nConnection: close\r\n"), std::string::npos) << bad.name;
      EXPECT_NE(response.find("\"success\":false"), std::string::npos) << bad.name;
    }
  });
  EXPECT_EQ(handled, 0);
}

TEST_F(HttpServerTest, ExactErrorBodies) {
  HttpServerLimits limits;
  limits.max_header_bytes = 256;
  start([&](HttpExchange& ex) { textReply(ex, "x"); }, limits);
  run([&] {
    {
      Client c(port_);
      c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
      EXPECT_EQ(c.readAll(), errorResponse(400, "Bad Request", "Bad request: Content-Length with Transfer-Encoding",
                                           "bad_request"));
    }
    {
      Client c(port_);
      c.send("GET / HTTP/1.1\r\nX-Host: x\r\n\r\n");
      EXPECT_EQ(c.readAll(), errorResponse(400, "Bad Request", "Bad request: missing Host header", "bad_request"));
    }
    {
      Client c(port_);
      c.send("GET / HTTP/2.0\r\n\r\n");
      EXPECT_EQ(c.readAll(),
                errorResponse(505, "HTTP Version Not Supported", "HTTP version not supported",
                              "http_version_not_supported"));
    }
    {
      Client c(port_);
      c.send("GET / HTTP/1.1\r\nHost: x\r\nX: " + std::string(300, 'a'));  // no end of head in sight
      EXPECT_EQ(c.readAll(), errorResponse(431, "Request Header Fields Too Large", "Request header too large",
                                           "request_header_too_large"));
    }
    {
      // The client's bytes never appear in the answer.
      Client c(port_);
      c.send("GET http://evil\"</script> HTTP/1.1\r\nHost: x\r\n\r\n");
      std::string r = c.readAll();
      EXPECT_EQ(r.find("evil"), std::string::npos) << r;
      EXPECT_EQ(r, errorResponse(400, "Bad Request", "Bad request: absolute-form request target not supported",
                                 "bad_request"));
    }
  });
}

// Errors the server answers itself reach the error observer (the proxy's
// access log and metrics), with what was parsed of the request; answers of
// the handler do not.
TEST_F(HttpServerTest, ItsOwnErrorsReachTheErrorObserver) {
  struct Seen {
    int status;
    std::string code, method, path;
    size_t bytes_in, bytes_out;
  };
  std::vector<Seen> seen;
  HttpServerLimits limits;
  limits.max_header_bytes = 256;
  limits.max_body_bytes = 10;
  limits.header_timeout_s = 0.2;
  start([&](HttpExchange& ex) { textReply(ex, "x"); }, limits);
  server_->setErrorObserver([&](const HttpServerError& e) {
    seen.push_back({e.status, std::string(e.code), std::string(e.method), std::string(e.path), e.bytes_in,
                    e.bytes_out});
  });
  std::vector<size_t> response_sizes;
  const std::string bad_header = "GET /a?q=1 HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n";
  const std::string too_large = "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n";
  const std::string partial_head = "GET /slow HTTP/1.1\r\nHo";
  run([&] {
    {
      Client c(port_);
      c.send("GET /fine HTTP/1.1\r\nHost: x\r\n\r\n");
      EXPECT_EQ(c.response().substr(0, 15), "HTTP/1.1 200 OK");
    }
    for (const std::string& request : {bad_header, too_large, partial_head, std::string("GET / HTTP/2.0\r\n\r\n")}) {
      Client c(port_);
      c.send(request);
      response_sizes.push_back(c.readAll().size());
    }
  }, [&] { return seen.size() >= 4; });
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0].status, 400);
  EXPECT_EQ(seen[0].code, "bad_request");
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[0].path, "/a");
  EXPECT_EQ(seen[0].bytes_in, bad_header.size());
  EXPECT_EQ(seen[1].status, 413);
  EXPECT_EQ(seen[1].code, "payload_too_large");
  EXPECT_EQ(seen[1].method, "POST");
  EXPECT_EQ(seen[1].path, "/b");
  EXPECT_EQ(seen[1].bytes_in, too_large.size());
  EXPECT_EQ(seen[2].status, 408);
  EXPECT_EQ(seen[2].code, "request_timeout");
  EXPECT_EQ(seen[2].method, "");
  EXPECT_EQ(seen[2].path, "");
  EXPECT_EQ(seen[2].bytes_in, partial_head.size());
  EXPECT_EQ(seen[3].status, 505);
  EXPECT_EQ(seen[3].method, "");
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].bytes_out, response_sizes[i]) << i;
}

TEST_F(HttpServerTest, SameContentLengthTwiceIsAccepted) {
  std::string body;
  start([&](HttpExchange& ex) {
    body = ex.body();
    textReply(ex, "ok");
  });
  run([&] {
    Client c(port_);
    c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 003\r\n\r\nabc");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
  });
  EXPECT_EQ(body, "abc");
}

// --- timeouts ---------------------------------------------------------------------

TEST_F(HttpServerTest, HeaderTimeoutIs408) {
  HttpServerLimits limits;
  limits.header_timeout_s = 0.2;
  start([&](HttpExchange& ex) { textReply(ex, "x"); }, limits);
  run([&] {
    Client c(port_);
    auto t0 = Clock::now();
    c.send("GET / HTTP/1.1\r\nHost: slow");
    EXPECT_EQ(c.readAll(), errorResponse(408, "Request Timeout", "Request timeout", "request_timeout"));
    auto elapsed = Clock::now() - t0;
    EXPECT_GE(elapsed, 150ms);
    EXPECT_LT(elapsed, 2s);
    // A body that does not arrive in time is a timeout too.
    Client b(port_);
    b.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    EXPECT_EQ(b.readAll(), errorResponse(408, "Request Timeout", "Request timeout", "request_timeout"));
    // A connection that never sends a byte is closed without a word.
    Client silent(port_);
    EXPECT_EQ(silent.readAll(), "");
  },
      // After a 408 the server lingers (shut down for writing, reading until
      // the client's EOF), so the connections are gone only once the server
      // has seen the clients close; the run times out if one is kept.
      [&] { return server_->connectionCount() == 0; });
  EXPECT_EQ(server_->connectionCount(), 0u);
}

TEST_F(HttpServerTest, IdleKeepAliveClosesSilently) {
  HttpServerLimits limits;
  limits.idle_timeout_s = 0.1;
  start([&](HttpExchange& ex) { textReply(ex, "x"); }, limits);
  run([&] {
    Client c(port_);
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx");
    auto t0 = Clock::now();
    EXPECT_EQ(c.readAll(), "");
    EXPECT_GE(Clock::now() - t0, 70ms);
  });
}

TEST_F(HttpServerTest, WriteTimeoutAbortsTheExchange) {
  HttpServerLimits limits;
  limits.write_timeout_s = 0.2;
  int aborted = 0;
  int completed = 0;
  start([&](HttpExchange& ex) {
    ex.setOnAbort([&] { ++aborted; });
    ex.setOnComplete([&] { ++completed; });
    ex.respond(200, "OK", {}, std::string(16 << 20, 'x'));  // far more than socket buffers hold
  }, limits);
  std::unique_ptr<Client> c;
  run([&] {
        c = std::make_unique<Client>(port_, 4096);
        c->send("GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
      },
      [&] { return aborted == 1; });
  EXPECT_EQ(completed, 0);
  EXPECT_EQ(server_->exchangeCount(), 0u);
}

// --- handlers that answer later ----------------------------------------------------

TEST_F(HttpServerTest, DeferredResponseFromTimer) {
  std::map<uint64_t, HttpExchange*> pending;
  Timer timer(loop_, [&] {
    for (auto& [id, ex] : pending) textReply(*ex, "later " + std::to_string(id));
  });
  start([&](HttpExchange& ex) {
    uint64_t id = ex.id();
    pending[id] = &ex;
    ex.setOnComplete([&, id] { pending.erase(id); });
    ex.setOnAbort([&, id] { pending.erase(id); });
    timer.start(50ms);
  });
  run([&] {
    Client c(port_);
    auto t0 = Clock::now();
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    std::string r = c.response();
    EXPECT_EQ(r.substr(0, 15), "HTTP/1.1 200 OK");
    EXPECT_NE(r.find("\r\n\r\nlater "), std::string::npos);
    EXPECT_GE(Clock::now() - t0, 40ms);
  }, [&] { return pending.empty(); });
}

TEST_F(HttpServerTest, ClientDisconnectAbortsAndLateTimerIsHarmless) {
  struct Pending {
    HttpExchange* ex;
    bool aborted = false;
  };
  std::map<uint64_t, Pending> pending;
  int aborts = 0;
  int timer_fired = 0;
  std::vector<std::unique_ptr<Timer>> timers;
  start([&](HttpExchange& ex) {
    uint64_t id = ex.id();
    pending[id] = Pending{&ex};
    ex.setOnAbort([&, id] {
      ++aborts;
      pending[id].aborted = true;
      pending[id].ex = nullptr;  // the exchange is gone after this
    });
    timers.push_back(std::make_unique<Timer>(loop_, [&, id] {
      ++timer_fired;
      Pending& p = pending[id];
      if (!p.aborted) textReply(*p.ex, "too late");
    }));
    timers.back()->start(100ms);
  });
  run([&] {
        {
          Client c(port_);
          c.send("GET /full-close HTTP/1.1\r\nHost: x\r\n\r\n");
          std::this_thread::sleep_for(10ms);
        }
        Client half(port_);
        half.send("GET /half-close HTTP/1.1\r\nHost: x\r\n\r\n");
        std::this_thread::sleep_for(10ms);
        half.shutdownWrite();  // counts as leaving (nginx 499)
        EXPECT_EQ(half.readAll(), "");
      },
      [&] { return timer_fired == 2; });
  EXPECT_EQ(aborts, 2);
  EXPECT_EQ(server_->exchangeCount(), 0u);
  EXPECT_EQ(server_->connectionCount(), 0u);
}

TEST_F(HttpServerTest, HalfCloseAfterCompleteResponseStillDelivers) {
  // The handler answered at once; a client that half-closes right after
  // sending still reads the answer.
  start([&](HttpExchange& ex) { textReply(ex, std::string(100000, 'y')); });
  run([&] {
    Client c(port_);
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    std::this_thread::sleep_for(5ms);
    c.shutdownWrite();
    std::string r = c.readAll();
    EXPECT_EQ(r.size(), std::string("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n").size() + 100000);
  });
}

// --- streaming ------------------------------------------------------------------------

TEST_F(HttpServerTest, StreamingChunkedExactBytes) {
  int completed = 0;
  size_t bytes_out = 0;
  start([&](HttpExchange& ex) {
    HttpExchange* e = &ex;
    ex.setOnComplete([&, e] {
      ++completed;
      bytes_out = e->bytesOut();
    });
    ex.begin(200, "OK", {{"Content-Type", "text/event-stream"}, {"Transfer-Encoding", "gzip"}});
    EXPECT_TRUE(ex.responseStarted());
    EXPECT_TRUE(ex.write("data: one\n\n"));
    EXPECT_TRUE(ex.write(""));  // no empty chunk (it would end the body)
    EXPECT_TRUE(ex.write(std::string(300, 'z')));
    ex.end();
  });
  const std::string expected = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "b\r\ndata: one\n\n\r\n12c\r\n" +
                               std::string(300, 'z') + "\r\n0\r\n\r\n";
  run([&] {
        Client c(port_);
        c.send("POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        EXPECT_EQ(c.response(), expected);
        EXPECT_FALSE(c.closedWithin(10));  // keep-alive after a chunked response
      },
      [&] { return completed == 1; });
  EXPECT_EQ(bytes_out, expected.size());
}

TEST_F(HttpServerTest, StreamingWithContentLengthAndHttp10) {
  start([&](HttpExchange& ex) {
    if (ex.target() == "/len") {
      ex.begin(200, "OK", {}, 6);
      ex.write("abc");
      ex.write("def");
      ex.end();
    } else {
      ex.begin(200, "OK", {});
      ex.write("close-");
      ex.write("delimited");
      ex.end();
    }
  });
  run([&] {
    Client c(port_);
    c.send("GET /len HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabcdef");
    Client old(port_);
    old.send("GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    EXPECT_EQ(old.readAll(), "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclose-delimited");
  });
}

TEST_F(HttpServerTest, BackPressureAndDrain) {
  // A producer that writes until write() says false, then resumes from
  // onDrain, until 8 MiB; the client starts reading late.
  HttpServerLimits limits;
  limits.output_high_water = 256 * 1024;
  constexpr size_t kTotal = 8u << 20;
  constexpr size_t kPiece = 64 * 1024;
  size_t written = 0;
  size_t first_false_at = 0;
  int drains = 0;
  bool ended = false;
  bool backlog_ok = true;
  auto piece = [](size_t index) { return std::string(kPiece, static_cast<char>('a' + index % 26)); };
  HttpExchange* current = nullptr;
  std::function<void()> produce = [&] {
    while (written < kTotal) {
      bool more = current->write(piece(written / kPiece));
      written += kPiece;
      if (!more) {
        if (!first_false_at) first_false_at = written;
        backlog_ok = backlog_ok && current->pendingOutput() > limits.output_high_water;
        return;  // wait for onDrain
      }
    }
    current->end();
    ended = true;
  };
  start([&](HttpExchange& ex) {
    current = &ex;
    ex.begin(200, "OK", {{"Content-Type", "application/octet-stream"}});
    ex.setOnDrain([&] {
      ++drains;
      backlog_ok = backlog_ok && current->pendingOutput() <= limits.output_high_water / 2;
      produce();
    });
    ex.setOnComplete([&] { current = nullptr; });
    produce();
  }, limits);
  std::string body;
  run([&] {
    Client c(port_);
    c.send("GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    std::this_thread::sleep_for(50ms);  // not reading: the backlog builds up
    body = dechunk(c.response());
  }, [&] { return ended && current == nullptr; });
  EXPECT_GT(first_false_at, 0u);
  EXPECT_LT(first_false_at, 16u << 20);
  EXPECT_GE(drains, 1);
  EXPECT_TRUE(backlog_ok);
  ASSERT_EQ(body.size(), kTotal);
  for (size_t i = 0; i < kTotal; i += kPiece) {
    ASSERT_EQ(body[i], static_cast<char>('a' + (i / kPiece) % 26)) << "piece " << i / kPiece;
    ASSERT_EQ(body[i + kPiece - 1], body[i]);
  }
}

TEST_F(HttpServerTest, ConnectionCloseIgnoresPipelinedRequests) {
  int handled = 0;
  start([&](HttpExchange& ex) {
    ++handled;
    textReply(ex, "last");
  });
  run([&] {
    Client c(port_);
    c.send("GET /1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(c.readAll(),
              "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlast");
  });
  EXPECT_EQ(handled, 1);
}

TEST_F(HttpServerTest, AbortResponseTruncatesWithoutCallbacks) {
  int callbacks = 0;
  start([&](HttpExchange& ex) {
    ex.setOnAbort([&] { ++callbacks; });
    ex.setOnComplete([&] { ++callbacks; });
    ex.begin(200, "OK", {});
    ex.write("partial");
    ex.abortResponse();
    ex.write("ignored");
    ex.end();
  });
  run([&] {
    Client c(port_);
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(c.readAll(), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n");
  }, [&] { return server_->connectionCount() == 0; });
  spin(10ms);
  EXPECT_EQ(callbacks, 0);
  EXPECT_EQ(server_->exchangeCount(), 0u);
}

// --- connections ------------------------------------------------------------------------

TEST_F(HttpServerTest, MaxConnectionsPausesAccepting) {
  HttpServerLimits limits;
  limits.max_connections = 2;
  start([&](HttpExchange& ex) { textReply(ex, "hi"); }, limits);
  const std::string ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi";
  run([&] {
    auto a = std::make_unique<Client>(port_);
    Client b(port_);
    a->send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    b.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(a->response(), ok);
    EXPECT_EQ(b.response(), ok);
    Client third(port_);  // completes in the kernel's backlog, not accepted
    third.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_FALSE(third.readableWithin(150));
    a.reset();  // one closes: the third is served
    EXPECT_EQ(third.response(), ok);
  }, [&] { return server_->connectionCount() == 0; });
}

TEST_F(HttpServerTest, UnixSocketListener) {
  char tmpl[] = "/tmp/wfp-http-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  std::string path = dir + "/proxy.sock";
  std::string peer;
  server_ = std::make_unique<HttpServer>(loop_, HttpServerLimits{}, [&](HttpExchange& ex) {
    peer = ex.peer();
    textReply(ex, "unix");
  });
  ListenAddress address;
  address.kind = ListenAddress::Kind::Unix;
  address.path = path;
  // A stale socket file from an earlier run does not stop us.
  {
    int stale = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strncpy(sun.sun_path, path.c_str(), sizeof sun.sun_path - 1);
    ASSERT_EQ(::bind(stale, reinterpret_cast<sockaddr*>(&sun), sizeof sun), 0);
    ::close(stale);
  }
  BoundListener bound;
  std::string error;
  ASSERT_TRUE(server_->listen(address, &bound, &error)) << error;
  EXPECT_EQ(bound.address, "unix:" + path);
  // A second server on the same live path is refused.
  HttpServer other(loop_, HttpServerLimits{}, [](HttpExchange&) {});
  EXPECT_FALSE(other.listen(address, nullptr, &error));
  run([&] {
    Client c(path);
    ASSERT_TRUE(c.connected());
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(c.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nunix");
  });
  EXPECT_EQ(peer, "unix");
  struct stat st{};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  server_->stopAccepting();
  EXPECT_NE(::stat(path.c_str(), &st), 0);  // unlinked
  std::filesystem::remove_all(dir);
}

TEST_F(HttpServerTest, Ipv6Listener) {
  server_ = std::make_unique<HttpServer>(loop_, HttpServerLimits{}, [&](HttpExchange& ex) { textReply(ex, "6"); });
  ListenAddress address;
  address.host = "::1";
  BoundListener bound;
  std::string error;
  if (!server_->listen(address, &bound, &error)) GTEST_SKIP() << "no IPv6 loopback: " << error;
  EXPECT_EQ(bound.address, "[::1]:" + std::to_string(bound.port));
  uint16_t port = bound.port;
  run([&] {
    int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    sin6.sin6_addr = in6addr_loopback;
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sin6), sizeof sin6), 0);
    const char req[] = "GET / HTTP/1.0\r\n\r\n";
    ASSERT_EQ(::send(fd, req, sizeof req - 1, 0), static_cast<ssize_t>(sizeof req - 1));
    std::string got;
    char buf[512];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) got.append(buf, static_cast<size_t>(n));
    ::close(fd);
    EXPECT_EQ(got, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\n6");
  });
}

TEST_F(HttpServerTest, CloseIdleConnectionsForDrain) {
  HttpExchange* held = nullptr;
  start([&](HttpExchange& ex) {
    if (ex.target() == "/hold") {
      held = &ex;
      ex.setOnComplete([&] { held = nullptr; });
      return;
    }
    textReply(ex, "x");
  });
  std::atomic<bool> busy_sent{false};
  std::atomic<bool> drained{false};
  std::string busy_response;
  std::string idle_rest;
  // Drain once the busy request is held and the idle one answered.
  Timer poll(loop_, [&] {
    if (held && busy_sent) {
      server_->stopAccepting();
      server_->closeIdleConnections();
      textReply(*held, "bye");
      drained = true;
    } else {
      poll.start(1ms);
    }
  });
  poll.start(1ms);
  run([&] {
    Client idle(port_);
    idle.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(idle.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx");
    Client busy(port_);
    busy.send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    busy_sent = true;
    busy_response = busy.readAll();
    idle_rest = idle.readAll();
  });
  EXPECT_TRUE(drained);
  EXPECT_EQ(busy_response,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye");
  EXPECT_EQ(idle_rest, "");
  EXPECT_EQ(server_->connectionCount(), 0u);
}

TEST_F(HttpServerTest, DestructorAbortsExchangesInProgress) {
  int aborts = 0;
  std::atomic<bool> received{false};
  start([&](HttpExchange& ex) {
    ex.setOnAbort([&] { ++aborts; });
    received = true;
  });
  std::unique_ptr<Client> c;
  run([&] {
        c = std::make_unique<Client>(port_);
        c->send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
      },
      [&] { return server_->exchangeCount() == 1; });
  server_.reset();
  EXPECT_EQ(aborts, 1);
  spin(5ms);  // libevent 2.1 finalizes a freed bufferevent (closes the socket) on the next pass
  EXPECT_EQ(c->readAll(), "");
}

TEST_F(HttpServerTest, HandlerExceptionClosesTheConnection) {
  int aborts = 0;
  start([&](HttpExchange& ex) {
    ex.setOnAbort([&] { ++aborts; });
    if (ex.target() == "/throw") throw std::runtime_error("boom");
    textReply(ex, "fine");
  });
  spdlog::set_level(spdlog::level::off);
  run([&] {
    Client c(port_);
    c.send("GET /throw HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(c.readAll(), "");
    Client d(port_);
    d.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(d.response(), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nfine");
  });
  EXPECT_EQ(aborts, 1);
}

TEST_F(HttpServerTest, SetLimitsAppliesToLaterRequests) {
  start([&](HttpExchange& ex) { textReply(ex, ex.body()); });
  run([&] {
    Client c(port_);
    c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n01234567890123456789");
    EXPECT_EQ(c.response().substr(0, 15), "HTTP/1.1 200 OK");
  });
  HttpServerLimits smaller;
  smaller.max_body_bytes = 5;
  server_->setLimits(smaller);
  run([&] {
    Client c(port_);
    c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n01234567890123456789");
    EXPECT_EQ(c.readAll().substr(0, 12), "HTTP/1.1 413");
  });
}

TEST(HttpServerErrorBody, EscapesJson) {
  EXPECT_EQ(HttpServer::errorBody("Rate limit exceeded", "rate_limited"),
            R"({"error":"Rate limit exceeded","success":false,"code":"rate_limited"})");
  EXPECT_EQ(HttpServer::errorBody("a \"q\" \\ \n\x01 é", "c"),
            "{\"error\":\"a \\\"q\\\" \\\\ \\n\\u0001 é\",\"success\":false,\"code\":\"c\"}");
}

TEST(HttpHeadersHelpers, CaseInsensitiveLookup) {
  HttpHeaders h{{"Content-Type", "a"}, {"X-Two", "1"}, {"x-two", "2"}};
  EXPECT_TRUE(equalsIgnoreCase("Content-TYPE", "content-type"));
  EXPECT_FALSE(equalsIgnoreCase("content-typ", "content-type"));
  ASSERT_NE(findHeader(h, "x-TWO"), nullptr);
  EXPECT_EQ(*findHeader(h, "x-TWO"), "1");
  EXPECT_EQ(findHeader(h, "missing"), nullptr);
}

}  // namespace
}  // namespace wfp

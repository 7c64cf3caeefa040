// libFuzzer harness for the client-facing HTTP/1.1 server (proxy/http_server.h;
// scripts/fuzz runs it).
//
// One real HttpServer and its EventLoop live for the whole run, on a Unix
// socket (thousands of TCP connections a second would leave the client's
// ports in TIME_WAIT until connect() fails). For each input a fresh client socket connects, writes the bytes after
// the first, half-closes, and reads until the server closes the connection.
// Byte 0 picks how the handler answers each request it is handed:
//   0  respond() at once, echoing the body
//   1  begin() (chunked) + write() + end()
//   2  begin() with a Content-Length + write() + end()
//   3  on the next loop pass (the client may be gone by then)
// and bits 2-3 how the head handler treats a request with a body:
//   0  declines (the body is read, the handler runs)
//   1  answers 401 at once (the body is never read)
//   2  begins a chunked answer and ends it on the next loop pass
//   3  answers when the target starts with "/deny", declines otherwise
// Small limits make the 408/413/431 paths reachable.
//
// Checks: no crash or sanitizer report; the server closes the connection
// within 3 s of the client's half-close (it never keeps a
// connection whose peer is gone); everything it writes is a sequence of
// HTTP/1.1 status lines it could have sent (the first bytes are "HTTP/1.1 ").
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include <event2/event.h>
#include <spdlog/spdlog.h>

#include "proxy/event_loop.h"
#include "proxy/http_server.h"

namespace {

[[noreturn]] void die(const char* what, std::string_view detail) {
  std::fprintf(stderr, "http_server_fuzz: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

struct Harness {
  wfp::EventLoop loop;
  std::unique_ptr<wfp::HttpServer> server;
  std::string path;  // the listener's Unix socket
  int mode = 0;
  int head_mode = 0;
  size_t handled = 0;
};

Harness* g = nullptr;

void handle(wfp::HttpExchange& ex) {
  ++g->handled;
  const std::string body = ex.method() + " " + ex.target() + " " + std::to_string(ex.body().size());
  const wfp::HttpHeaders headers{{"Content-Type", "text/plain"}};
  switch (g->mode) {
    case 0:
      ex.respond(200, "OK", headers, body);
      return;
    case 1:
      ex.begin(200, "OK", headers);
      ex.write(body);
      ex.end();
      return;
    case 2:
      ex.begin(200, "OK", headers, static_cast<int64_t>(body.size()));
      ex.write(body);
      ex.end();
      return;
    default: {
      // Answer later; the client may leave first (onAbort), after which the
      // exchange must not be touched.
      auto alive = std::make_shared<bool>(true);
      ex.setOnAbort([alive] { *alive = false; });
      ex.setOnComplete([alive] { *alive = false; });
      wfp::HttpExchange* p = &ex;
      g->loop.post([alive, p, body] {
        if (*alive) p->respond(202, "Accepted", {}, body);
      });
      return;
    }
  }
}

bool handleHead(wfp::HttpExchange& ex) {
  switch (g->head_mode) {
    case 0:
      return false;
    case 1:
      ex.respond(401, "Unauthorized", {{"Content-Type", "application/json"}}, R"({"success":false})");
      return true;
    case 2: {
      ex.begin(403, "Forbidden", {});
      ex.write("refused");
      auto alive = std::make_shared<bool>(true);
      ex.setOnAbort([alive] { *alive = false; });
      ex.setOnComplete([alive] { *alive = false; });
      wfp::HttpExchange* p = &ex;
      g->loop.post([alive, p] {
        if (*alive) p->end();
      });
      return true;
    }
    default:
      if (ex.target().rfind("/deny", 0) != 0) return false;
      ex.respond(401, "Unauthorized", {}, "");
      return true;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  g = new Harness;
  wfp::HttpServerLimits limits;
  limits.max_header_bytes = 2048;
  limits.max_headers = 16;
  limits.max_body_bytes = 4096;
  limits.header_timeout_s = 2;
  limits.idle_timeout_s = 2;
  limits.write_timeout_s = 2;
  g->server = std::make_unique<wfp::HttpServer>(g->loop, limits, handle);
  g->server->setHeadHandler(handleHead);
  wfp::ListenAddress address;
  address.kind = wfp::ListenAddress::Kind::Unix;
  address.path = "/tmp/wfp-http-server-fuzz-" + std::to_string(::getpid()) + ".sock";
  wfp::BoundListener bound;
  std::string error;
  if (!g->server->listen(address, &bound, &error)) die("listen failed", error);
  g->path = address.path;
  std::atexit([] { ::unlink(g->path.c_str()); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 64 * 1024) return 0;
  g->mode = data[0] & 3;
  g->head_mode = (data[0] >> 2) & 3;
  std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket", "");
  int big = 1 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, g->path.c_str(), g->path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) die("connect", std::strerror(errno));
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may close early (e.g. after a 400)
    off += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);

  std::string received;
  bool closed = false;
  bool timed_out = false;
  wfp::FdWatch watch(g->loop, fd, EV_READ | EV_PERSIST, [&](short) {
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        if (received.size() < (1u << 20)) received.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        closed = true;
        g->loop.stop();
      }
      return;
    }
  });
  wfp::Timer safety(g->loop, [&] {
    timed_out = true;
    g->loop.stop();
  });
  safety.start(std::chrono::seconds(3));
  g->loop.run();
  watch.cancel();
  safety.cancel();
  ::close(fd);

  if (timed_out && !closed) die("the server kept a half-closed connection open for 3 s", bytes.substr(0, 200));
  if (!received.empty() && received.rfind("HTTP/1.1 ", 0) != 0) die("response does not start with a status line", received.substr(0, 200));
  return 0;
}

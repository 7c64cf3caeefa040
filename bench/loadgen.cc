// loadgen: a small HTTP/1.1 load generator for scripts/bench (standard library + POSIX only).
//
//   g++ -std=c++20 -O2 -o loadgen bench/loadgen.cc
//
// Two modes, both single-threaded (epoll + timerfd), loopback only by intent:
//
//   --mode rate   open loop: request i is due at start + i/rate; it goes out on an idle
//                 keep-alive connection (a new one is opened when none is idle, up to
//                 --max-conns; beyond that it waits, and that wait counts in its latency).
//                 Latency is measured from the time the request was *due*, so a slow
//                 server cannot hide queueing (no coordinated omission).
//                 --deadline S stops after S seconds; whatever is unanswered is reported.
//   --mode burst  opens --count connections first (at most --connect-batch connecting at
//                 once), then sends one request on each, all at once, and waits for every
//                 answer or --timeout seconds (or SIGTERM: it then reports and exits).
//
// Bodies: {"bench":"<tag>","i":<n>} (distinct per request), or the same body for every
// request with --same-body. Output on stdout: one line of key=value pairs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <vector>

namespace {

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string path = "/";
  std::string auth;  // full header value, e.g. "Bearer x"
  std::string mode = "rate";
  double rate = 1000;
  long count = 1000;
  int conns = 4;
  int max_conns = 1024;
  int connect_batch = 256;
  double deadline = 0;  // rate mode: seconds; 0 = until all answered (+timeout)
  double timeout = 30;
  bool same_body = false;
  std::string tag = "t";
  std::string out;
};

enum class St { Connecting, Idle, Sending, Waiting, Closed };

struct Req {
  int64_t due_ns = 0;   // when it should have been sent
  int64_t sent_ns = 0;  // when its first byte was written
  int64_t done_ns = 0;
  int status = 0;       // 0 = not answered, -1 = error
  bool started = false;
};

struct Conn {
  int fd = -1;
  St st = St::Connecting;
  long req = -1;  // index into reqs
  std::string out;
  size_t out_off = 0;
  std::string in;
  bool close_after = false;
};

Options opt;
int ep = -1;
std::vector<Req> reqs;
std::vector<Conn*> conns_by_fd;
std::vector<Conn*> idle;
std::deque<long> pending;  // due but not yet on a connection
long n_open = 0, n_connecting = 0, n_done = 0, n_errors = 0, n_connect_fail = 0;
sockaddr_in addr{};

std::string body_for(long i) {
  if (opt.same_body) return "{\"bench\":\"" + opt.tag + "\",\"i\":0}";
  return "{\"bench\":\"" + opt.tag + "\",\"i\":" + std::to_string(i) + "}";
}

std::string request_for(long i) {
  std::string b = body_for(i);
  std::string r = "POST " + opt.path + " HTTP/1.1\r\nHost: " + opt.host + ":" + std::to_string(opt.port) +
                  "\r\nContent-Type: application/json\r\n";
  if (!opt.auth.empty()) r += "Authorization: " + opt.auth + "\r\n";
  r += "Content-Length: " + std::to_string(b.size()) + "\r\n\r\n" + b;
  return r;
}

void ep_mod(Conn* c, uint32_t ev) {
  epoll_event e{};
  e.events = ev;
  e.data.fd = c->fd;
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

Conn* open_conn() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ++n_connect_fail;
    return nullptr;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int r = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  if (r < 0 && errno != EINPROGRESS) {
    close(fd);
    ++n_connect_fail;
    return nullptr;
  }
  auto* c = new Conn;
  c->fd = fd;
  c->st = St::Connecting;
  if (size_t(fd) >= conns_by_fd.size()) conns_by_fd.resize(fd * 2 + 16, nullptr);
  conns_by_fd[fd] = c;
  epoll_event e{};
  e.events = EPOLLOUT;
  e.data.fd = fd;
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
  ++n_open;
  ++n_connecting;
  return c;
}

void finish_req(Conn* c, int status) {
  if (c->req < 0) return;
  Req& q = reqs[c->req];
  q.status = status;
  q.done_ns = now_ns();
  ++n_done;
  if (status < 0) ++n_errors;
  c->req = -1;
}

void close_conn(Conn* c) {
  if (c->st == St::Closed) return;
  if (c->st == St::Connecting) --n_connecting;
  if (c->req >= 0) finish_req(c, -1);
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, nullptr);
  close(c->fd);
  conns_by_fd[c->fd] = nullptr;
  c->st = St::Closed;
  idle.erase(std::remove(idle.begin(), idle.end(), c), idle.end());
  --n_open;
  delete c;
}

bool try_write(Conn* c) {
  while (c->out_off < c->out.size()) {
    ssize_t w = send(c->fd, c->out.data() + c->out_off, c->out.size() - c->out_off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        ep_mod(c, EPOLLIN | EPOLLOUT);
        return true;
      }
      if (errno == EINTR) continue;
      close_conn(c);
      return false;
    }
    c->out_off += size_t(w);
  }
  c->st = St::Waiting;
  ep_mod(c, EPOLLIN);
  return true;
}

void start_on(Conn* c, long i) {
  c->req = i;
  c->out = request_for(i);
  c->out_off = 0;
  c->in.clear();
  c->st = St::Sending;
  reqs[i].started = true;
  reqs[i].sent_ns = now_ns();
  try_write(c);
}

// Parses c->in; returns 1 when a whole response is there (status in *status), 0 when more is needed.
// eof: the peer closed (a body without length ends there).
int parse_response(Conn* c, int* status, bool eof) {
  size_t he = c->in.find("\r\n\r\n");
  if (he == std::string::npos) return 0;
  if (c->in.size() < 12) return 0;
  *status = std::atoi(c->in.c_str() + 9);
  std::string head = c->in.substr(0, he + 2);
  for (auto& ch : head) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  c->close_after = head.find("\r\nconnection: close") != std::string::npos || head.rfind("http/1.0", 0) == 0;
  size_t body = he + 4;
  if (*status == 204 || *status == 304 || (*status >= 100 && *status < 200)) return 1;
  size_t p = head.find("\r\ncontent-length:");
  if (p != std::string::npos) {
    long long cl = std::atoll(head.c_str() + p + 17);
    return c->in.size() >= body + size_t(cl) ? 1 : 0;
  }
  if (head.find("\r\ntransfer-encoding:") != std::string::npos && head.find("chunked") != std::string::npos) {
    size_t pos = body;
    for (;;) {
      size_t le = c->in.find("\r\n", pos);
      if (le == std::string::npos) return 0;
      long long sz = std::strtoll(c->in.c_str() + pos, nullptr, 16);
      if (sz == 0) {
        // no trailers expected: "0\r\n\r\n"
        return c->in.size() >= le + 4 ? 1 : 0;
      }
      pos = le + 2 + size_t(sz) + 2;
      if (c->in.size() < pos) return 0;
    }
  }
  c->close_after = true;
  return eof ? 1 : 0;
}

void on_readable(Conn* c) {
  char buf[16384];
  bool eof = false;
  for (;;) {
    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
    if (r > 0) {
      c->in.append(buf, size_t(r));
      continue;
    }
    if (r == 0) {
      eof = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    eof = true;
    break;
  }
  if (c->req < 0) {  // idle connection closed by the server, or unexpected bytes
    if (eof) close_conn(c);
    return;
  }
  int status = 0;
  if (parse_response(c, &status, eof)) {
    finish_req(c, status);
    c->in.clear();
    if (c->close_after || eof) {
      close_conn(c);
      return;
    }
    c->st = St::Idle;
    idle.push_back(c);
    return;
  }
  if (eof) close_conn(c);
}

void on_connected(Conn* c) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
  --n_connecting;
  if (err != 0) {
    c->st = St::Idle;  // so close_conn does not decrement n_connecting again
    ++n_connect_fail;
    close_conn(c);
    return;
  }
  ep_mod(c, EPOLLIN);
  if (c->req >= 0) {
    long i = c->req;
    c->req = -1;
    start_on(c, i);
  } else {
    c->st = St::Idle;
    idle.push_back(c);
  }
}

void dispatch_pending() {
  while (!pending.empty()) {
    if (!idle.empty()) {
      Conn* c = idle.back();
      idle.pop_back();
      long i = pending.front();
      pending.pop_front();
      start_on(c, i);
      continue;
    }
    if (n_open < opt.max_conns) {
      Conn* c = open_conn();
      if (!c) {
        // cannot open: the request fails
        long i = pending.front();
        pending.pop_front();
        reqs[i].status = -1;
        reqs[i].done_ns = now_ns();
        ++n_done;
        ++n_errors;
        continue;
      }
      c->req = pending.front();  // sent once connected
      pending.pop_front();
      continue;
    }
    break;
  }
}

void handle_events(int timeout_ms, int tfd, bool* timer_fired) {
  epoll_event evs[512];
  int n = epoll_wait(ep, evs, 512, timeout_ms);
  for (int k = 0; k < n; ++k) {
    int fd = evs[k].data.fd;
    if (fd == tfd) {
      uint64_t x;
      ssize_t r = read(tfd, &x, sizeof x);
      (void)r;
      *timer_fired = true;
      continue;
    }
    if (size_t(fd) >= conns_by_fd.size() || !conns_by_fd[fd]) continue;
    Conn* c = conns_by_fd[fd];
    uint32_t e = evs[k].events;
    if (c->st == St::Connecting) {
      if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
      continue;
    }
    if ((e & EPOLLOUT) && c->st == St::Sending) {
      if (!try_write(c)) continue;
    }
    if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
  }
}

void set_timer(int tfd, int64_t at_ns) {
  itimerspec its{};
  if (at_ns <= 0) at_ns = 1;
  its.it_value.tv_sec = at_ns / 1000000000LL;
  its.it_value.tv_nsec = at_ns % 1000000000LL;
  timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, nullptr);
}

void report(int64_t t_start, int64_t t_end) {
  std::vector<double> lat;
  std::map<int, long> by_status;
  long ok = 0, non200 = 0, unanswered = 0, not_sent = 0;
  for (auto& q : reqs) {
    if (q.status == 0) {
      if (q.started) ++unanswered; else ++not_sent;
      continue;
    }
    by_status[q.status]++;
    if (q.status == 200) {
      ++ok;
      int64_t from = opt.mode == "rate" ? q.due_ns : q.sent_ns;
      lat.push_back(double(q.done_ns - from) / 1000.0);
    } else {
      ++non200;
    }
  }
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) -> double {
    if (lat.empty()) return 0;
    size_t i = size_t(std::ceil(p / 100.0 * double(lat.size()))) ;
    if (i > 0) --i;
    return lat[std::min(i, lat.size() - 1)];
  };
  double mean = 0;
  for (double v : lat) mean += v;
  if (!lat.empty()) mean /= double(lat.size());
  double secs = double(t_end - t_start) / 1e9;
  std::printf("requests=%zu ok=%ld non200=%ld errors=%ld unanswered=%ld not_sent=%ld connect_fail=%ld "
              "p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f mean_us=%.1f secs=%.3f rate=%.1f",
              reqs.size(), ok, non200 - n_errors, n_errors, unanswered, not_sent, n_connect_fail, pct(50),
              pct(90), pct(99), lat.empty() ? 0.0 : lat.back(), mean, secs,
              secs > 0 ? double(ok) / secs : 0.0);
  for (auto& [s, n] : by_status)
    if (s > 0) std::printf(" status_%d=%ld", s, n);
  std::printf("\n");
  std::fflush(stdout);
  if (!opt.out.empty()) {
    FILE* f = std::fopen(opt.out.c_str(), "w");
    if (f) {
      for (auto& q : reqs) {
        int64_t from = opt.mode == "rate" ? q.due_ns : q.sent_ns;
        std::fprintf(f, "%ld %.1f %d\n", long((q.due_ns - t_start) / 1000),
                     q.status ? double(q.done_ns - from) / 1000.0 : -1.0, q.status);
      }
      std::fclose(f);
    }
  }
}

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr, "loadgen: %s\nsee the comment at the top of bench/loadgen.cc\n", msg);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--host") opt.host = val();
    else if (a == "--port") opt.port = std::atoi(val().c_str());
    else if (a == "--path") opt.path = val();
    else if (a == "--auth") opt.auth = val();
    else if (a == "--mode") opt.mode = val();
    else if (a == "--rate") opt.rate = std::atof(val().c_str());
    else if (a == "--count") opt.count = std::atol(val().c_str());
    else if (a == "--conns") opt.conns = std::atoi(val().c_str());
    else if (a == "--max-conns") opt.max_conns = std::atoi(val().c_str());
    else if (a == "--connect-batch") opt.connect_batch = std::atoi(val().c_str());
    else if (a == "--deadline") opt.deadline = std::atof(val().c_str());
    else if (a == "--timeout") opt.timeout = std::atof(val().c_str());
    else if (a == "--same-body") opt.same_body = true;
    else if (a == "--tag") opt.tag = val();
    else if (a == "--out") opt.out = val();
    else usage(("unknown option " + a).c_str());
  }
  if (opt.port <= 0 || opt.count <= 0) usage("--port and --count are required");
  if (opt.mode != "rate" && opt.mode != "burst") usage("--mode is rate or burst");

  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(opt.port));
  if (inet_pton(AF_INET, opt.host.c_str(), &addr.sin_addr) != 1) usage("--host must be an IPv4 address");

  ep = epoll_create1(EPOLL_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  {
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = tfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e);
  }
  reqs.resize(size_t(opt.count));
  bool fired = false;

  if (opt.mode == "burst") {
    // 1. connect everything (bounded number of connects in progress)
    long opened = 0;
    int64_t t_conn = now_ns();
    while (!g_stop) {
      while (opened < opt.count && n_connecting < opt.connect_batch) {
        if (!open_conn()) break;
        ++opened;
      }
      if (opened >= opt.count && n_connecting == 0) break;
      if (now_ns() - t_conn > int64_t(opt.timeout * 1e9)) break;
      handle_events(10, tfd, &fired);
    }
    std::fprintf(stderr, "loadgen: %zu connections open (%ld failed) in %.2f s\n", idle.size(), n_connect_fail,
                 double(now_ns() - t_conn) / 1e9);
    // 2. one request on each, all at once
    int64_t t_start = now_ns();
    std::vector<Conn*> ready = idle;
    idle.clear();
    long i = 0;
    for (Conn* c : ready) {
      reqs[size_t(i)].due_ns = now_ns();
      start_on(c, i++);
    }
    for (; i < opt.count; ++i) {  // connections that failed: their requests fail
      reqs[size_t(i)].status = -1;
      reqs[size_t(i)].done_ns = now_ns();
      ++n_done;
      ++n_errors;
    }
    std::fprintf(stderr, "loadgen: all %zu requests sent\n", ready.size());
    int64_t until = t_start + int64_t(opt.timeout * 1e9);
    while (!g_stop && n_done < opt.count && now_ns() < until) handle_events(50, tfd, &fired);
    report(t_start, now_ns());
    return 0;
  }

  // rate mode
  for (int k = 0; k < opt.conns; ++k) open_conn();
  {
    int64_t t0 = now_ns();
    while (n_connecting > 0 && now_ns() - t0 < 5000000000LL) handle_events(10, tfd, &fired);
  }
  const int64_t t_start = now_ns() + 1000000;  // 1 ms from now
  const double interval_ns = 1e9 / opt.rate;
  for (long i = 0; i < opt.count; ++i) reqs[size_t(i)].due_ns = t_start + int64_t(double(i) * interval_ns);
  const int64_t t_stop = opt.deadline > 0 ? t_start + int64_t(opt.deadline * 1e9)
                                          : reqs.back().due_ns + int64_t(opt.timeout * 1e9);
  long next = 0;
  set_timer(tfd, reqs[0].due_ns);
  while (!g_stop) {
    int64_t now = now_ns();
    if (now >= t_stop) break;
    if (next >= opt.count && n_done >= opt.count) break;
    bool added = false;
    while (next < opt.count && reqs[size_t(next)].due_ns <= now) {
      pending.push_back(next++);
      added = true;
    }
    if (added || !pending.empty()) dispatch_pending();
    if (added && next < opt.count) set_timer(tfd, reqs[size_t(next)].due_ns);
    fired = false;
    handle_events(100, tfd, &fired);
    if (!pending.empty()) dispatch_pending();
  }
  report(t_start, now_ns());
  return 0;
}

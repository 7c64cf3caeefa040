// Helpers shared by the fault and hostile-input suite (tests/faults): a
// private redis-server that can be killed, paused and restarted, /proc and
// /metrics readers, a steady background load, and a way to park tests that
// document a known proxy bug.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/integration/harness.h"

// A test that documents a proxy bug and fails until it is fixed. It is
// skipped (with the bug's description) so the suite stays green; run it with
// WFP_RUN_KNOWN_BUGS=1 to see it fail.
#define WFP_KNOWN_BUG(description)                                 \
  do {                                                             \
    if (!std::getenv("WFP_RUN_KNOWN_BUGS")) {                      \
      GTEST_SKIP() << "BUG: " << description;                      \
    }                                                              \
  } while (0)

namespace wfp::test::faults {

using namespace std::chrono_literals;

inline const Headers kAcme{{"Authorization", "Bearer acme-client-key"}, {"Content-Type", "application/json"}};
inline const Headers kGlobex{{"Authorization", "Bearer globex-client-key"}, {"Content-Type", "application/json"}};

inline constexpr const char* kNotFoundBody = R"({"error":"Not found","success":false,"code":"not_found"})";
// A malformed workflow id on a run or stream route: the upstream's sentence.
inline constexpr const char* kWorkflowNotFoundBody =
    R"({"error":"Workflow not found","success":false,"code":"not_found"})";
inline constexpr const char* kUnavailableBody =
    R"({"error":"The upstream API could not be reached","success":false,"code":"upstream_unavailable"})";
inline constexpr const char* kTimeoutBody =
    R"({"error":"The upstream API did not answer in time","success":false,"code":"upstream_timeout"})";
inline constexpr const char* kUnauthorizedBody =
    R"({"error":"Unauthorized. Please provide a valid secret key.","success":false})";

// True when this binary (and so, in build-sanitize, the proxy) runs under ASan:
// memory figures are then dominated by the sanitizer's quarantine and shadow.
inline bool underAsan() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

inline HttpResponse runOn(int port, const std::string& wf, const std::string& body, const Headers& h = kAcme) {
  return httpRequest(port, "POST", "/api/v1/run/" + wf, h, body);
}

inline HttpResponse streamOn(int port, const std::string& wf, const std::string& body, const Headers& h = kAcme) {
  return httpRequest(port, "POST", "/api/v1/run/" + wf + "/stream", h, body);
}

inline int simRuns(Simulator& sim) { return sim.stats()["runs"].get<int>(); }
inline int simTotal(Simulator& sim) { return sim.stats()["total"].get<int>(); }

// A loopback TCP port nobody listens on right now.
inline int freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Resident set size of a process, in KiB (VmRSS of /proc/<pid>/status); -1 if gone.
inline long rssKiB(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

// Open file descriptors of a process.
inline int openFds(pid_t pid) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  FILE* p = ::popen(("ls " + dir + " 2>/dev/null | wc -l").c_str(), "r");
  if (!p) return -1;
  int n = -1;
  if (std::fscanf(p, "%d", &n) != 1) n = -1;
  ::pclose(p);
  return n;
}

// The value of one series in Prometheus text ("name" or "name{labels}"), or nullopt.
inline std::optional<double> metricValue(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series, 0) == 0 && line.size() > series.size() && line[series.size()] == ' ') {
      return std::atof(line.c_str() + series.size() + 1);
    }
  }
  return std::nullopt;
}

// The admin port, or the client port under `admin_listen: ""`.
inline int adminPortOf(ProxyProcess& proxy) { return proxy.adminPort() ? proxy.adminPort() : proxy.port(); }

inline std::string metrics(ProxyProcess& proxy) { return httpRequest(adminPortOf(proxy), "GET", "/metrics").body; }

// A proxy that died (e.g. SIGSEGV) fails the test at teardown anyway; this
// says so at the point of the test where it matters, with the log.
inline void expectAlive(ProxyProcess& proxy) {
  EXPECT_TRUE(proxy.process().running()) << "the proxy died (exit " << proxy.process().wait(0ms).value_or(-1)
                                         << "); its log:\n"
                                         << proxy.log();
}

inline std::optional<double> metricOf(ProxyProcess& proxy, const std::string& series) {
  return metricValue(metrics(proxy), series);
}

inline size_t countOf(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string::npos; pos = haystack.find(needle, pos + 1)) ++n;
  return n;
}

inline std::string redisServerBin() {
  const char* bin = std::getenv("WFP_REDIS_SERVER");
  if (bin && *bin) return bin;
  return "/usr/bin/redis-server";
}

inline bool haveRedisServer() { return ::access(redisServerBin().c_str(), X_OK) == 0; }

// A redis-server of the test's own, on its own port, that the test may kill,
// pause (SIGSTOP), resume and restart. Extra arguments (e.g. --requirepass)
// apply to every start.
class OwnRedis {
 public:
  explicit OwnRedis(std::vector<std::string> extra_args = {}) : extra_(std::move(extra_args)), port_(freePort()) {
    start();
  }
  ~OwnRedis() {
    if (process_ && process_->running()) resume();
  }

  void start() {
    std::remove(dir_.file("redis.log").c_str());
    std::vector<std::string> argv{redisServerBin(), "--port",     std::to_string(port_), "--bind", "127.0.0.1",
                                  "--save",         "",           "--appendonly",        "no",     "--dir",
                                  dir_.path,        "--logfile",  dir_.file("redis.log")};
    for (const auto& a : extra_) argv.push_back(a);
    process_ = std::make_unique<Process>(argv, std::vector<std::string>{}, dir_.file("redis.stderr"), false);
    bool ready = eventually([&] { return readFile(dir_.file("redis.log")).find("Ready to accept") != std::string::npos; },
                            10s);
    if (!ready) ADD_FAILURE() << "redis-server did not start: " << readFile(dir_.file("redis.stderr"));
  }
  void kill() {
    process_->signal(SIGKILL);
    process_->wait(5s);
  }
  // A clean shutdown (what a restart by an operator looks like).
  void terminate() {
    process_->signal(SIGTERM);
    if (!process_->wait(5s)) kill();
  }
  void pause() {
    process_->signal(SIGSTOP);
    paused_ = true;
  }
  void resume() {
    if (paused_) process_->signal(SIGCONT);
    paused_ = false;
  }
  int port() const { return port_; }
  std::string url(const std::string& password = "") const {
    return "redis://" + (password.empty() ? "" : ":" + password + "@") + "127.0.0.1:" + std::to_string(port_) + "/0";
  }
  Process& process() { return *process_; }

 private:
  TempDir dir_;
  std::vector<std::string> extra_;
  int port_ = 0;
  bool paused_ = false;
  std::unique_ptr<Process> process_;
};

// A configuration with cache.backend redis on `url`.
inline std::string redisCacheConfig(const std::string& url, const std::string& extra = "") {
  return baseConfig("redis:\n  url: " + url + "\n  key_prefix: \"f:\"\n  timeout_ms: 200\ncache:\n  backend: redis\n" +
                    extra);
}

// A steady stream of run requests from one background thread, one at a
// time, every `interval`: mostly repeats of a few inputs (hits once stored),
// plus a unique input every `unique_every`-th request (always an upstream run).
class SteadyLoad {
 public:
  struct Result {
    int status = 0;
    std::string cache;
    std::chrono::milliseconds took{0};
    std::string body;
  };

  SteadyLoad(int port, std::chrono::milliseconds interval = 50ms, int unique_every = 4, std::string wf = "wf_load")
      : port_(port), interval_(interval), unique_every_(unique_every), wf_(std::move(wf)) {
    thread_ = std::thread([this] { loop(); });
  }
  ~SteadyLoad() { stop(); }

  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::vector<Result> results() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_;
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_.size();
  }
  int uniqueInputs() const { return unique_inputs_.load(); }
  // Waits until `n` more requests have completed.
  bool advance(size_t n, std::chrono::milliseconds timeout = 20s) {
    size_t target = count() + n;
    return eventually([&] { return count() >= target; }, timeout);
  }

 private:
  void loop() {
    int i = 0;
    std::map<std::string, bool> seen;
    while (!stop_) {
      std::string body;
      if (unique_every_ > 0 && i % unique_every_ == unique_every_ - 1) {
        body = "{\"unique\":" + std::to_string(i) + "}";
      } else {
        body = "{\"repeat\":" + std::to_string(i % 3) + "}";
      }
      if (!seen[body]) {
        seen[body] = true;
        ++unique_inputs_;
      }
      ++i;
      auto start = std::chrono::steady_clock::now();
      HttpResponse r = runOn(port_, wf_, body, kAcme);
      Result res;
      res.status = r.ok ? r.status : -1;
      res.cache = r.header("x-cache").value_or("");
      res.took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
      res.body = r.body;
      {
        std::lock_guard<std::mutex> lock(mu_);
        results_.push_back(std::move(res));
      }
      std::this_thread::sleep_for(interval_);
    }
  }

  int port_;
  std::chrono::milliseconds interval_;
  int unique_every_;
  std::string wf_;
  std::atomic<bool> stop_{false};
  std::atomic<int> unique_inputs_{0};
  std::mutex mu_;
  std::vector<Result> results_;
  std::thread thread_;
};

}  // namespace wfp::test::faults

// Operations (docs/operations.md): /metrics checked by a real exposition-format
// parser (and promtool where it is installed), the sd_notify protocol on a real
// notification socket, SIGHUP under load, the systemd unit checked by
// systemd-analyze, and the `cmake --install` layout.
//
// python3-prometheus-client, systemd-analyze (systemd) and cmake are installed
// by scripts/install-deps --test; a missing one is a failure, not a skip.
// promtool (Debian's prometheus, a server that starts itself) is not
// installed; where it is present it checks the metrics too.
#include <gtest/gtest.h>

#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "proxy/hash.h"
#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

namespace fs = std::filesystem;

const Headers kAcme{{"Authorization", "Bearer acme-client-key"}, {"Content-Type", "application/json"}};

// --- helpers -------------------------------------------------------------------

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `command` with /bin/sh, collecting stdout and stderr.
CommandResult runCommand(const std::string& command) {
  CommandResult r;
  FILE* f = ::popen((command + " 2>&1").c_str(), "r");
  if (!f) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) r.output.append(buf, n);
  int status = ::pclose(f);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return r;
}

// The full path of `name` on $PATH (plus the sbin directories), or "".
std::string findProgram(const std::string& name) {
  std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
  path += ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
  std::istringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

uint64_t monotonicMicros() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

// A bound AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("socket(AF_UNIX) failed");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) throw std::runtime_error("socket path too long");
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error(std::string("bind failed: ") + std::strerror(errno));
    }
  }
  ~NotifySocket() {
    if (fd_ >= 0) ::close(fd_);
  }
  // The next datagram within `timeout`, or nullopt.
  std::optional<std::string> receive(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0) return std::nullopt;
    std::string msg(buf, static_cast<size_t>(n));
    received_.push_back(msg);
    return msg;
  }
  // Receives until a datagram satisfies `pred` (others are kept in history).
  std::optional<std::string> waitFor(const std::function<bool(const std::string&)>& pred,
                                     std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      auto msg = receive(left);
      if (!msg) return std::nullopt;
      if (pred(*msg)) return msg;
    }
  }
  std::string history() const {
    std::string out;
    for (const auto& m : received_) out += "[" + m + "] ";
    return out;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  std::vector<std::string> received_;
};

bool hasLine(const std::string& msg, const std::string& line) {
  std::istringstream in(msg);
  std::string l;
  while (std::getline(in, l)) {
    if (l == line) return true;
  }
  return false;
}

// The directory of the CMake build that produced the proxy binary.
std::string buildDir() { return fs::path(WFP_PROXY_BIN).parent_path().string(); }

// --- metrics -------------------------------------------------------------------

TEST(Operations, MetricsMoveAndParse) {

  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());

  // A MISS, then a HIT of the same input.
  HttpResponse r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_metrics", kAcme, R"({"story":"metrics"})");
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.header("X-Cache").value_or(""), "MISS");
  r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_metrics", kAcme, R"({"story":"metrics"})");
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.header("X-Cache").value_or(""), "HIT");
  // A 401 (unknown client key) and a 404 (a workflow id the proxy refuses).
  const std::string unknown_key = "not-a-client-key-0123456789";
  r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_metrics", {{"Authorization", "Bearer " + unknown_key}}, "{}");
  EXPECT_EQ(r.status, 401) << r.raw;
  r = httpRequest(proxy.port(), "POST", "/api/v1/run/wf%2Fmetrics", kAcme, "{}");
  EXPECT_EQ(r.status, 404) << r.raw;
  EXPECT_EQ(sim.stats()["total"], 1);

  HttpResponse m;
  std::vector<Sample> samples;
  // Counters are updated when a response is complete; poll until all four are in.
  ASSERT_TRUE(eventually([&] {
    m = httpRequest(proxy.adminPort(), "GET", "/metrics");
    samples = parseSamples(m.body);
    return m.status == 200 && sampleSum(samples, "workflow_proxy_requests_total", {}) >= 4;
  }, std::chrono::seconds(5))) << m.raw;
  EXPECT_NE(m.header("Content-Type").value_or("").find("text/plain"), std::string::npos);
  EXPECT_NE(m.header("Content-Type").value_or("").find("version=0.0.4"), std::string::npos);

  EXPECT_EQ(sampleSum(samples, "workflow_proxy_requests_total",
                      {{"org", "acme"}, {"route", "run"}, {"code", "200"}, {"cache", "MISS"}}), 1) << m.body;
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_requests_total",
                      {{"org", "acme"}, {"route", "run"}, {"code", "200"}, {"cache", "HIT"}}), 1) << m.body;
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_requests_total", {{"code", "401"}}), 1) << m.body;
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_requests_total", {{"code", "404"}}), 1) << m.body;
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_requests_total", {}), 4) << m.body;
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_upstream_requests_total", {{"org", "acme"}, {"code", "200"}}), 1)
      << m.body;
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_upstream_requests_total", {}), 1) << m.body;
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_upstream_duration_seconds_count", {}), 1) << m.body;
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_cache_entries", {}), 1) << m.body;
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_redis_up", {}), 0) << m.body;
  // Every family the spec names is present.
  for (const char* family :
       {"workflow_proxy_requests_total", "workflow_proxy_upstream_requests_total",
        "workflow_proxy_upstream_duration_seconds", "workflow_proxy_queue_depth", "workflow_proxy_queue_wait_seconds",
        "workflow_proxy_cache_entries", "workflow_proxy_coalesced_total", "workflow_proxy_upstream_429_total",
        "workflow_proxy_redis_up", "workflow_proxy_ratelimit_remaining", "workflow_proxy_overhead_seconds"}) {
    EXPECT_NE(m.body.find(std::string("# TYPE ") + family + " "), std::string::npos) << family;
  }

  // No line carries a key: not the client keys, not the upstream secrets,
  // not the key a stranger sent, nor their digests.
  for (const std::string& key : {std::string("acme-client-key"), std::string("acme-other-key"),
                                 std::string("globex-client-key"), std::string("sk_sim_acme"),
                                 std::string("sk_sim_globex"), unknown_key}) {
    EXPECT_EQ(m.body.find(key), std::string::npos) << key;
    EXPECT_EQ(m.body.find(sha256Hex(key)), std::string::npos) << "digest of " << key;
  }

  // The operators' families: build, reload outcome, process.
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_config_last_reload_successful", {}), 1) << m.body;
  EXPECT_GT(sampleSum(samples, "workflow_proxy_config_last_reload_success_timestamp_seconds", {}), 1.7e9) << m.body;
  EXPECT_GT(sampleSum(samples, "process_resident_memory_bytes", {}), 1e6) << m.body;
  EXPECT_GT(sampleSum(samples, "process_open_fds", {}), 3) << m.body;
  EXPECT_GT(sampleSum(samples, "process_start_time_seconds", {}), 1.7e9) << m.body;

  // A real exposition-format parser (Debian's python3-prometheus-client),
  // fed on stdin: every family must parse, with its type.
  TempDir dir;
  dir.write("metrics.txt", m.body);
  // Debian's python3 (a python3 earlier on PATH, pyenv's say, lacks Debian's modules).
  const std::string python = ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
  CommandResult parsed = runCommand(python + " " + shellQuote(std::string(WFP_SOURCE_DIR) + "/tests/tools/parse_metrics.py") +
                                    " < " + shellQuote(dir.file("metrics.txt")));
  ASSERT_EQ(parsed.exit_code, 0) << parsed.output << "\nmetrics:\n" << m.body;
  for (const char* family : {"workflow_proxy_requests counter", "workflow_proxy_upstream_duration_seconds histogram",
                             "workflow_proxy_queue_depth gauge", "workflow_proxy_redis_up gauge",
                             "workflow_proxy_build_info gauge", "workflow_proxy_config_last_reload_successful gauge",
                             "process_cpu_seconds counter", "process_resident_memory_bytes gauge",
                             "process_max_fds gauge"}) {
    EXPECT_NE(parsed.output.find(std::string(family) + " "), std::string::npos) << family << "\n" << parsed.output;
  }
  // promtool, where it is installed: only its exit code counts (it prints
  // lint findings to stdout).
  std::string promtool = findProgram("promtool");
  if (!promtool.empty()) {
    CommandResult check =
        runCommand(shellQuote(promtool) + " check metrics < " + shellQuote(dir.file("metrics.txt")));
    EXPECT_EQ(check.exit_code, 0) << "promtool check metrics:\n" << check.output << "\nmetrics:\n" << m.body;
  }
}

// Requests the HTTP layer refuses itself (before any route or handler) are
// access-logged and counted like the others: org/client/cache "-", and
// route="invalid" as for an unknown path.
TEST(Operations, ErrorsOfTheHttpLayerAreLoggedAndCounted) {
  Simulator sim;
  ProxyProcess proxy(baseConfig("limits:\n  max_body_bytes: 1000\n"), sim.url());
  const std::string auth = "Authorization: Bearer acme-client-key\r\n";

  // 431: a head over 64 KiB, the request line never parsed.
  const std::string big_head = "GET /api/v1/balance HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(70000, 'a') +
                               "\r\n\r\n";
  HttpResponse r = parseResponse(rawExchange(proxy.port(), big_head));
  EXPECT_EQ(r.status, 431) << r.raw.substr(0, 300);
  // 400: a bad chunked body on a run (with a query, which is never logged).
  const std::string bad_chunk = "POST /api/v1/run/wf_log?token=sekrit HTTP/1.1\r\nHost: x\r\n" + auth +
                                "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n";
  r = parseResponse(rawExchange(proxy.port(), bad_chunk));
  EXPECT_EQ(r.status, 400) << r.raw;
  // 413: a declared body over limits.max_body_bytes, refused before it is read.
  const std::string too_big_head =
      "POST /api/v1/run/wf_log HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 5000\r\n\r\n";
  r = parseResponse(rawExchange(proxy.port(), too_big_head));
  EXPECT_EQ(r.status, 413) << r.raw;
  EXPECT_EQ(sim.stats()["total"], 0);

  std::vector<nlohmann::json> lines;
  ASSERT_TRUE(eventually([&] {
    lines = proxy.accessLog();
    return lines.size() >= 3;
  })) << lines.size();
  ASSERT_EQ(lines.size(), 3u);
  const std::vector<std::string> fields = {"time",        "request_id", "org",          "client",
                                           "method",      "path",       "status",       "cache",
                                           "queue_ms",    "upstream_ms", "bytes_in",    "bytes_out",
                                           "remote_addr", "duration_ms", "upstream_status", "trace_id"};
  for (const auto& line : lines) {
    ASSERT_TRUE(line.is_object()) << line;
    for (const auto& f : fields) EXPECT_TRUE(line.contains(f)) << f << " in " << line;
    EXPECT_EQ(line.size(), fields.size()) << line;
    EXPECT_FALSE(line["request_id"].get<std::string>().empty()) << line;
    EXPECT_EQ(line["org"], "-");
    EXPECT_EQ(line["client"], "-");
    EXPECT_EQ(line["cache"], "-");
    EXPECT_EQ(line["queue_ms"], 0);
    EXPECT_EQ(line["upstream_ms"], 0);
    EXPECT_TRUE(line["upstream_status"].is_null()) << line;
    EXPECT_TRUE(line["trace_id"].is_null()) << line;
    EXPECT_EQ(line["remote_addr"].get<std::string>().rfind("127.0.0.1:", 0), 0u) << line;
    EXPECT_GT(line["bytes_out"].get<uint64_t>(), 0u) << line;
  }
  EXPECT_EQ(lines[0]["status"], 431);
  EXPECT_EQ(lines[0]["method"], "-");
  EXPECT_EQ(lines[0]["path"], "-");
  EXPECT_GE(lines[0]["bytes_in"].get<uint64_t>(), 64u * 1024) << lines[0];
  EXPECT_EQ(lines[1]["status"], 400);
  EXPECT_EQ(lines[1]["method"], "POST");
  EXPECT_EQ(lines[1]["path"], "/api/v1/run/wf_log");
  EXPECT_EQ(lines[1]["bytes_in"], bad_chunk.size() - 4) << lines[1];  // all but the bad chunk-size line
  EXPECT_EQ(lines[2]["status"], 413);
  EXPECT_EQ(lines[2]["method"], "POST");
  EXPECT_EQ(lines[2]["path"], "/api/v1/run/wf_log");
  EXPECT_EQ(lines[2]["bytes_in"], too_big_head.size()) << lines[2];
  EXPECT_EQ(readFile(proxy.dir().file("access.log")).find("sekrit"), std::string::npos);

  HttpResponse m = httpRequest(proxy.adminPort(), "GET", "/metrics");
  std::vector<Sample> samples = parseSamples(m.body);
  for (const char* code : {"431", "400", "413"}) {
    EXPECT_EQ(sampleSum(samples, "workflow_proxy_requests_total",
                        {{"org", "-"}, {"route", "invalid"}, {"code", code}, {"cache", "-"}}),
              1)
        << code << "\n" << m.body;
  }
  EXPECT_EQ(sampleSum(samples, "workflow_proxy_requests_total", {}), 3) << m.body;
}

// --- sd_notify -----------------------------------------------------------------

TEST(Operations, SdNotifyReadyWatchdogReloadStopping) {
  // sd_watchdog_enabled() ignores WATCHDOG_USEC when WATCHDOG_PID names
  // another process; this test runner must not pass one on.
  ::unsetenv("WATCHDOG_PID");
  TempDir dir;
  NotifySocket notify(dir.file("notify.sock"));
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url(), {"NOTIFY_SOCKET=" + notify.path(), "WATCHDOG_USEC=200000"});

  auto is = [](const std::string& line) { return [line](const std::string& m) { return hasLine(m, line); }; };

  ASSERT_TRUE(notify.waitFor(is("READY=1"), std::chrono::seconds(5))) << notify.history();
  // Watchdog pings at half of WATCHDOG_USEC: 100 ms. Two in a row, each well within 0.5 s.
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(notify.waitFor(is("WATCHDOG=1"), std::chrono::milliseconds(500))) << notify.history();
  }

  // SIGHUP: RELOADING=1 with the monotonic time of the reload, then READY=1.
  uint64_t before = monotonicMicros();
  proxy.process().signal(SIGHUP);
  auto reloading = notify.waitFor(is("RELOADING=1"), std::chrono::seconds(5));
  uint64_t after = monotonicMicros();
  ASSERT_TRUE(reloading) << notify.history();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(*reloading, m, std::regex("(^|\n)MONOTONIC_USEC=([0-9]+)(\n|$)"))) << *reloading;
  uint64_t usec = std::stoull(m[2]);
  EXPECT_GE(usec, before);
  EXPECT_LE(usec, after);
  ASSERT_TRUE(notify.waitFor(is("READY=1"), std::chrono::seconds(5))) << notify.history();
  EXPECT_TRUE(proxy.process().running());
  EXPECT_EQ(httpRequest(proxy.port(), "POST", "/api/v1/run/wf_notify", kAcme, "{}").status, 200);
  // The watchdog keeps going after a reload.
  ASSERT_TRUE(notify.waitFor(is("WATCHDOG=1"), std::chrono::milliseconds(500))) << notify.history();

  proxy.process().signal(SIGTERM);
  ASSERT_TRUE(notify.waitFor(is("STOPPING=1"), std::chrono::seconds(5))) << notify.history();
  auto code = proxy.process().wait(std::chrono::seconds(5));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << proxy.log();
}

// --- reload under load ---------------------------------------------------------

TEST(Operations, ReloadUnderLoadLosesNoRequest) {
  // No upstream limit and a generous proxy budget: every request must be a 200.
  Simulator sim({"--key", "sk_sim_acme=acme:1000", "--key", "sk_sim_globex=globex:1000", "--quiet"});
  std::string config = baseConfig();
  const std::string anchor = "    api_key: sk_sim_acme\n";
  ASSERT_NE(config.find(anchor), std::string::npos);
  config.replace(config.find(anchor), anchor.size(),
                 anchor + "    rate_limit: {requests: 1000, window_s: 1, max_concurrent: 64}\n");
  ProxyProcess proxy(config, sim.url());
  const std::string written = readFile(proxy.configPath());  // with {{UPSTREAM}} etc. filled in
  const std::string clients_anchor = "    clients:\n      - name: billing\n";
  auto reloads = [&] {
    std::string log = proxy.log();
    size_t count = 0;
    for (size_t pos = 0; (pos = log.find("configuration reloaded", pos)) != std::string::npos; ++pos) ++count;
    return count;
  };
  ASSERT_NE(written.find(clients_anchor), std::string::npos) << written;
  const Headers probe{{"Authorization", "Bearer reload-probe-key"}};
  ASSERT_EQ(httpRequest(proxy.port(), "POST", "/api/v1/run/wf_probe", probe, "{}").status, 401);

  constexpr int kConnections = 4;
  constexpr int kPerConnection = 75;
  std::atomic<int> ok{0};
  std::atomic<bool> stop{false};
  std::mutex failures_mu;
  std::vector<std::string> failures;
  std::vector<std::thread> clients;
  for (int c = 0; c < kConnections; ++c) {
    clients.emplace_back([&, c] {
      try {
        Connection conn(proxy.port());
        for (int i = 0; i < kPerConnection && !stop; ++i) {
          std::string body = R"({"conn":)" + std::to_string(c) + R"(,"i":)" + std::to_string(i) + "}";
          conn.send("POST /api/v1/run/wf_load HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Authorization: Bearer acme-client-key\r\nContent-Type: application/json\r\n"
                    "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
          HttpResponse r = conn.readResponse(std::chrono::seconds(10));
          if (!r.ok || r.status != 200) {
            std::lock_guard<std::mutex> lock(failures_mu);
            failures.push_back("conn " + std::to_string(c) + " request " + std::to_string(i) + ": status " +
                               std::to_string(r.status) + " raw: " + r.raw.substr(0, 300));
            return;  // the connection is unusable after a failure
          }
          ++ok;
          std::this_thread::sleep_for(std::chrono::milliseconds(25));
        }
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(failures_mu);
        failures.push_back("conn " + std::to_string(c) + ": " + e.what());
      }
    });
  }

  // Ten reloads while the load runs, toggling a client entry each time. The
  // file is replaced atomically, so every reload reads a whole file.
  constexpr int kReloads = 10;
  for (int n = 0; n < kReloads; ++n) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    std::string text = written;
    if (n % 2 == 0) {
      text.replace(text.find(clients_anchor), clients_anchor.size(),
                   "    clients:\n      - name: reload-probe\n        key: reload-probe-key\n      - name: billing\n");
    }
    proxy.dir().write("proxy.yaml.next", text);
    fs::rename(proxy.dir().file("proxy.yaml.next"), proxy.configPath());
    proxy.process().signal(SIGHUP);
    // Two SIGHUPs pending at once are one signal: wait for this reload to land.
    if (!eventually([&] { return reloads() > static_cast<size_t>(n); }, std::chrono::seconds(5))) {
      ADD_FAILURE() << "reload " << n << " did not happen\n" << proxy.log();
      break;  // the clients still finish and are joined
    }
  }
  for (auto& t : clients) t.join();

  std::string all_failures;
  for (const auto& f : failures) all_failures += f + "\n";
  EXPECT_TRUE(failures.empty()) << all_failures;
  EXPECT_EQ(ok.load(), kConnections * kPerConnection);
  EXPECT_TRUE(proxy.process().running());
  // The last reload (n = 9) removed the probe client again; the one before added it.
  EXPECT_EQ(reloads(), static_cast<size_t>(kReloads)) << proxy.log();
  EXPECT_EQ(proxy.log().find("reload rejected"), std::string::npos) << proxy.log();
  EXPECT_EQ(httpRequest(proxy.port(), "POST", "/api/v1/run/wf_probe", probe, "{}").status, 401);
  // Each distinct input was one upstream run (plus none for the 401s).
  EXPECT_EQ(sim.stats()["total"], kConnections * kPerConnection);
}

// --- systemd unit --------------------------------------------------------------

// log.format: json makes every application-log line one JSON object; with
// stderr on the journal (JOURNAL_STREAM names the file), each line starts
// with its syslog priority for journald.
TEST(Operations, ApplicationLogAsJsonWithJournalPriorities) {
  Simulator sim;
  const std::string orgs = "organisations:\n  - name: acme\n    api_key: sk_sim_acme\n"
                           "upstream:\n  base_url: {{UPSTREAM}}\n";
  {
    ProxyProcess json_log("log:\n  format: json\n  access_log: off\n" + orgs, sim.url());
    EXPECT_EQ(httpRequest(json_log.adminPort(), "GET", "/healthz").status, 200);
    std::string text = json_log.log();
    std::istringstream lines(text);
    std::string line;
    int seen = 0;
    while (std::getline(lines, line)) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      ASSERT_TRUE(j.is_object()) << line;
      EXPECT_TRUE(j["time"].is_string() && j["level"].is_string() && j["msg"].is_string()) << line;
      EXPECT_EQ(j.size(), 3u) << line;
      ++seen;
    }
    EXPECT_GE(seen, 2) << text;  // "listening on ..." twice
    EXPECT_NE(text.find(R"("level":"info","msg":"listening on )"), std::string::npos) << text;
  }

  // The journal: the proxy's stderr is a file made before the start, so its
  // device and inode can be named in JOURNAL_STREAM as systemd names its
  // stream's (the harness opens stderr for appending: the same file).
  TempDir dir;
  dir.write("proxy.yaml", "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nlog:\n  access_log: off\n" +
                              std::regex_replace(orgs, std::regex("\\{\\{UPSTREAM\\}\\}"), sim.url()));
  dir.write("stderr.log", "");
  struct stat st {};
  ASSERT_EQ(::stat(dir.file("stderr.log").c_str(), &st), 0);
  std::string stream = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  Process proxy({WFP_PROXY_BIN, "--config", dir.file("proxy.yaml")}, {"JOURNAL_STREAM=" + stream},
                dir.file("stderr.log"), false);
  ASSERT_TRUE(eventually([&] { return readFile(dir.file("stderr.log")).find("(admin)") != std::string::npos; }))
      << readFile(dir.file("stderr.log"));
  proxy.signal(SIGTERM);
  auto code = proxy.wait(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
  std::string text = readFile(dir.file("stderr.log"));
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    EXPECT_EQ(line.rfind("<6>", 0), 0u) << "an info line without its journal priority: " << line;
  }
  EXPECT_NE(text.find("<6>"), std::string::npos) << text;
  EXPECT_NE(text.find(" info listening on 127.0.0.1:"), std::string::npos) << text;
}

TEST(Operations, SystemdUnitPassesVerify) {
  std::string analyze = findProgram("systemd-analyze");
  ASSERT_FALSE(analyze.empty()) << "systemd-analyze not found: install the Debian package systemd (scripts/install-deps)";

  // The unit is generated at install time for the prefix
  // (systemd/workflow-proxy.service.in): the one a staged /usr installs.
  std::string cmake = findProgram("cmake");
  ASSERT_FALSE(cmake.empty()) << "cmake not found";
  TempDir root;
  CommandResult install = runCommand("env -u DESTDIR " + shellQuote(cmake) + " --install " + shellQuote(buildDir()) +
                                     " --prefix " + shellQuote(root.file("usr")));
  ASSERT_EQ(install.exit_code, 0) << install.output;
  std::string unit = readFile(root.file("usr/lib/systemd/system/workflow-proxy.service"));
  ASSERT_FALSE(unit.empty()) << install.output;
  // What docs/operations.md requires of the unit. A reload checks the file
  // before the HUP, so that `systemctl reload` fails on a file the proxy
  // would reject.
  for (const char* line : {"Type=notify",
                           "ExecReload=/usr/bin/workflow-proxy --check-config --config /etc/workflow-proxy/workflow-proxy.yaml",
                           "ExecReload=/bin/kill -HUP $MAINPID", "EnvironmentFile=-/etc/workflow-proxy/env",
                           "DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                           "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "Restart=on-failure",
                           "#LoadCredential=acme:/etc/workflow-proxy/acme.key",
                           "ExecStart=/usr/bin/workflow-proxy --config /etc/workflow-proxy/workflow-proxy.yaml"}) {
    EXPECT_NE(unit.find(std::string("\n") + line + "\n"), std::string::npos) << line;
  }
  EXPECT_NE(unit.find("api_key_file: ${CREDENTIALS_DIRECTORY}/acme"), std::string::npos);
  EXPECT_LT(unit.find("ExecReload=/usr/bin/workflow-proxy --check-config"), unit.find("ExecReload=/bin/kill"));

  // verify insists that the Exec binaries exist: point them at the build.
  std::string local = std::regex_replace(unit, std::regex("/usr/bin/workflow-proxy"), WFP_PROXY_BIN);
  TempDir dir;
  dir.write("workflow-proxy.service", local);
  // --man=no: Documentation=man:workflow-proxy(1) is not installed here.
  CommandResult r =
      runCommand(shellQuote(analyze) + " verify --man=no " + shellQuote(dir.file("workflow-proxy.service")));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // Warnings (unknown keys, bad values) leave the exit code at 0 but name the file.
  EXPECT_EQ(r.output.find(dir.file("workflow-proxy.service")), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("workflow-proxy.service:"), std::string::npos) << r.output;
}

// --- cmake --install -----------------------------------------------------------

TEST(Operations, InstalledLayoutAndExampleConfig) {
  std::string cmake = findProgram("cmake");
  ASSERT_FALSE(cmake.empty()) << "cmake not found";
  std::string build = buildDir();
  ASSERT_TRUE(fs::exists(build + "/cmake_install.cmake")) << build;

  TempDir root;
  std::string prefix = root.file("usr");
  CommandResult install =
      runCommand("env -u DESTDIR " + shellQuote(cmake) + " --install " + shellQuote(build) + " --prefix " +
                 shellQuote(prefix));
  ASSERT_EQ(install.exit_code, 0) << install.output;

  const std::string bin = prefix + "/bin/workflow-proxy";
  const std::string unit = prefix + "/lib/systemd/system/workflow-proxy.service";
  const std::string conf = root.file("etc/workflow-proxy/workflow-proxy.yaml");
  const std::string doc = prefix + "/share/doc/workflow-proxy";
  EXPECT_EQ(::access(bin.c_str(), X_OK), 0) << bin << "\n" << install.output;
  EXPECT_TRUE(fs::exists(unit)) << install.output;
  EXPECT_TRUE(fs::exists(conf)) << install.output;
  for (const char* f : {"README.md", "examples/workflow-proxy.yaml", "examples/sidecar.yaml", "examples/fleet.yaml",
                        "examples/env.example"}) {
    EXPECT_TRUE(fs::exists(doc + "/" + f)) << f << "\n" << install.output;
  }
  // A staged /usr: the unit names the paths the package will have.
  std::string unit_text = readFile(unit);
  EXPECT_NE(unit_text.find("\nExecStart=/usr/bin/workflow-proxy --config /etc/workflow-proxy/workflow-proxy.yaml\n"),
            std::string::npos)
      << unit_text;
  EXPECT_FALSE(std::regex_search(unit_text, std::regex("@[A-Z_]+@"))) << "an unexpanded template variable:\n"
                                                                     << unit_text;
  EXPECT_EQ(readFile(conf), readFile(std::string(WFP_SOURCE_DIR) + "/conf/workflow-proxy.yaml"));
  // Nothing escaped the staged root.
  for (const auto& entry : fs::directory_iterator(root.path)) {
    std::string name = entry.path().filename().string();
    EXPECT_TRUE(name == "usr" || name == "etc") << name;
  }

  // Every variable the daemon configuration needs without a default is
  // documented in env.example.
  std::string env_example = readFile(doc + "/examples/env.example");
  std::set<std::string> needed;
  {
    std::istringstream in(readFile(conf));
    std::string line;
    std::regex var_re(R"(\$\{([A-Za-z_][A-Za-z0-9_]*)\})");
    while (std::getline(in, line)) {
      line = line.substr(0, line.find('#'));
      for (std::sregex_iterator it(line.begin(), line.end(), var_re), end; it != end; ++it) needed.insert((*it)[1]);
    }
  }
  EXPECT_FALSE(needed.empty());
  std::string env_assignments;
  for (const auto& var : needed) {
    EXPECT_NE(env_example.find("\n#" + var + "="), std::string::npos) << var << " missing from env.example";
    env_assignments += var + "=check-config-" + var + " ";
  }

  // The installed binary accepts the installed configurations.
  struct Case {
    std::string file;
    std::string env;
  };
  for (const Case& c : {Case{conf, env_assignments},
                        Case{doc + "/examples/sidecar.yaml", "AITUTOR_API_KEY=sk_check"},
                        Case{doc + "/examples/fleet.yaml", "ACME_API_KEY=sk_a GLOBEX_API_KEY=sk_g"}}) {
    CommandResult r = runCommand("env -u WORKFLOW_PROXY_CONFIG " + c.env + " " + shellQuote(bin) +
                                 " --check-config --config " + shellQuote(c.file));
    EXPECT_EQ(r.exit_code, 0) << c.file << ":\n" << r.output;
    EXPECT_EQ(r.output, "config OK\n") << c.file;
  }
  // Without its keys the daemon configuration is refused, naming the variable.
  CommandResult missing = runCommand("env -u ACME_API_KEY -u TUTOR_WEB_KEY -u GLOBEX_API_KEY " + shellQuote(bin) +
                                     " --check-config --config " + shellQuote(conf));
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("ACME_API_KEY"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace wfp::test

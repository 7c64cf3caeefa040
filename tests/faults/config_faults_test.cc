// Configuration inputs found by tests/fuzz/config_fuzz.cc, as regression
// tests: the loader must return (with errors) quickly and in bounded memory,
// at start-up (--check-config) and on a SIGHUP reload of a running proxy.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <thread>

#include "proxy/config.h"
#include "tests/faults/fault_helpers.h"

namespace wfp::test::faults {
namespace {

// yaml-cpp 0.7 (Debian 12) loops forever, allocating, in YAML::LoadAll() on a
// document whose first token is a flow entry ',' (yaml-cpp#1040, fixed
// upstream by PR #1319). The loader no longer calls LoadAll(): it drives the
// parser a bounded number of times (config.cc checkSingleDocument).

// Runs loadConfigString(yaml) in a child process watched from here: the
// child's outcome, or "killed" when it outgrew `max_rss_kib` or `timeout`.
struct ChildOutcome {
  bool finished = false;
  int errors = -1;
  long peak_rss_kib = 0;
};

ChildOutcome loadInChild(const std::string& yaml, long max_rss_kib, std::chrono::milliseconds timeout) {
  int pipefd[2];
  EXPECT_EQ(::pipe(pipefd), 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    auto no_env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
    wfp::ConfigResult r = wfp::loadConfigString(yaml, "t.yaml", no_env, "/nonexistent");
    int n = static_cast<int>(r.errors.size());
    (void)!::write(pipefd[1], &n, sizeof n);
    ::_exit(0);
  }
  ::close(pipefd[1]);
  ChildOutcome out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      out.finished = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      int n = -1;
      if (out.finished && ::read(pipefd[0], &n, sizeof n) == sizeof n) out.errors = n;
      break;
    }
    out.peak_rss_kib = std::max(out.peak_rss_kib, rssKiB(pid));
    if (out.peak_rss_kib > max_rss_kib || std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(5ms);
  }
  ::close(pipefd[0]);
  return out;
}

TEST(FuzzRegression, TheConfigLoaderReturnsOnOrdinaryBrokenYaml) {
  // The watchdog itself: ordinary bad input finishes at once with errors.
  const std::vector<std::string> inputs = {"{",          "[",          "a: [", "a: {b: c", "\"unterminated",
                                          "a: &x\nb: *y\n", "- ,\n", "organisations: [" + std::string(5000, '[')};
  for (const std::string& yaml : inputs) {
    ChildOutcome o = loadInChild(yaml, 512 * 1024, 5s);
    EXPECT_TRUE(o.finished) << "'" << yaml.substr(0, 30) << "': peak " << o.peak_rss_kib << " KiB";
    EXPECT_GT(o.errors, 0) << yaml.substr(0, 30);
  }
}

TEST(FuzzRegression, TheConfigLoaderReturnsOnALeadingComma) {
  for (const char* yaml : {",", ",\n", ", a", " ,", "# c\n,", "a: b\n---\n,", ",a: b\norganisations: []\n",
                           ",base: &b\n*c api_key: x\n"}) {
    ChildOutcome o = loadInChild(yaml, 512 * 1024, 5s);
    EXPECT_TRUE(o.finished) << "'" << yaml << "': killed at " << o.peak_rss_kib << " KiB";
    EXPECT_GT(o.errors, 0) << yaml;
  }
}

TEST(FuzzRegression, TheConfigLoaderReturnsOnACommaAfterAPropertyBomOrNul) {
  // The first two: inputs config_fuzz found.
  const std::vector<std::string> inputs = {std::string("\0,\x9d\n$b\x9d\n$", 9),
                                           "!ib,\x8ften(:\x8f\x8f\x8f\x8f\x8f\x8f" "ax",
                                           "!t ,",
                                           "!!map ,\norganisations: []\n",
                                           "!<x> ,",
                                           "&a ,",
                                           "&a\n,",
                                           "\xef\xbb\xbf,\norganisations: []\n"};
  for (const std::string& yaml : inputs) {
    ChildOutcome o = loadInChild(yaml, 512 * 1024, 5s);
    EXPECT_TRUE(o.finished) << "'" << yaml << "': killed at " << o.peak_rss_kib << " KiB";
    EXPECT_GT(o.errors, 0) << yaml;
  }
}

TEST(Faults, CheckConfigOnAStrayCommaFailsQuickly) {
  TempDir dir;
  dir.write("bad.yaml", ",\n");
  Process check({WFP_PROXY_BIN, "--check-config", "--config", dir.file("bad.yaml")}, {}, dir.file("err"), false);
  long peak = 0;
  auto exited = eventually([&] {
    peak = std::max(peak, rssKiB(check.pid()));
    if (peak > 512 * 1024) return true;
    return !check.running();
  }, 5s);
  if (check.running()) check.signal(SIGKILL);
  auto code = check.wait(5s);
  EXPECT_TRUE(exited);
  EXPECT_LT(peak, 512 * 1024) << "KiB";
  EXPECT_EQ(code.value_or(-1), 2) << readFile(dir.file("err"));
}

// --check-config opens what the start opens (docs/http.md). It must not hang
// on a FIFO nobody reads, and must not disturb a proxy already running with
// the same configuration (the check before a reload or a restart): its
// ports and its access log stay as they are.
TEST(Faults, CheckConfigOnAFifoAccessLogDoesNotHang) {
  TempDir dir;
  ASSERT_EQ(::mkfifo(dir.file("fifo").c_str(), 0600), 0);
  dir.write("c.yaml", "log: {access_log: " + dir.file("fifo") +
                          "}\norganisations:\n  - name: acme\n    api_key: sk_x\n");
  Process check({WFP_PROXY_BIN, "--check-config", "--config", dir.file("c.yaml")}, {}, dir.file("err"), true);
  auto code = check.wait(5s);
  if (!code) check.signal(SIGKILL);
  EXPECT_EQ(code.value_or(-1), 0) << readFile(dir.file("err"));
}

TEST(Faults, CheckConfigBesideARunningProxyLeavesItAlone) {
  Simulator sim;
  const int port = freePort();
  const int admin_port = freePort();
  ProxyProcess proxy("listen: 127.0.0.1:" + std::to_string(port) + "\nadmin_listen: 127.0.0.1:" +
                         std::to_string(admin_port) + "\n" + baseConfig(),
                     sim.url());
  ASSERT_EQ(runOn(proxy.port(), "wf_c", "{}").status, 200);
  ASSERT_TRUE(eventually([&] { return proxy.accessLog().size() == 1; }));
  const nlohmann::json first = proxy.accessLog().front();
  Process check({WFP_PROXY_BIN, "--check-config", "--config", proxy.configPath()}, {},
                proxy.dir().file("check.err"), true);
  auto code = check.wait(10s);
  EXPECT_EQ(code.value_or(-1), 0) << readFile(proxy.dir().file("check.err"));
  EXPECT_EQ(check.drainStdout(), "config OK\n");
  EXPECT_EQ(httpRequest(admin_port, "GET", "/healthz").status, 200);
  EXPECT_EQ(runOn(proxy.port(), "wf_c", "{}").header("x-cache"), "HIT");
  // The access log is the one the proxy had, still appended to.
  EXPECT_TRUE(eventually([&] {
    auto lines = proxy.accessLog();
    return lines.size() >= 2 && lines.front() == first && lines.back()["cache"] == "HIT";
  }));
  expectAlive(proxy);
}

// Writes `prefix` before the running proxy's configuration, sends SIGHUP, and
// expects a rejected reload within 5 s and bounded memory; restores the file.
void expectReloadRejected(ProxyProcess& proxy, const std::string& prefix) {
  const pid_t pid = proxy.process().pid();
  ASSERT_EQ(runOn(proxy.port(), "wf_r", "{}").status, 200);
  const long baseline = rssKiB(pid);
  const std::string good = readFile(proxy.configPath());
  const size_t rejected_before = countOf(proxy.log(), "reload rejected");
  proxy.dir().write("proxy.yaml", prefix + good);
  proxy.process().signal(SIGHUP);
  long peak = baseline;
  bool rejected = eventually([&] {
    peak = std::max(peak, rssKiB(pid));
    if (peak > baseline + 512 * 1024) {
      proxy.process().signal(SIGKILL);  // protect the machine
      return true;
    }
    return countOf(proxy.log(), "reload rejected") > rejected_before;
  }, 5s);
  proxy.dir().write("proxy.yaml", good);
  EXPECT_TRUE(rejected && proxy.process().running()) << "peak RSS " << peak << " KiB (baseline " << baseline << ")";
  EXPECT_LT(peak - baseline, 64 * 1024) << "KiB";
  if (!rejected || !proxy.process().running()) {
    proxy.process().signal(SIGKILL);
    proxy.process().wait(5s);
    return;
  }
  EXPECT_EQ(runOn(proxy.port(), "wf_r", "{}").header("x-cache"), "HIT");
  expectAlive(proxy);
}

TEST(Faults, AReloadOfALeadingCommaIsRejectedAndTheProxyKeepsServing) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  expectReloadRejected(proxy, ",\n");
}

TEST(Faults, AReloadOfACommaAfterAnAnchorIsRejectedAndTheProxyKeepsServing) {
  Simulator sim;
  ProxyProcess proxy(baseConfig(), sim.url());
  expectReloadRejected(proxy, "&a ,\n");
}

}  // namespace
}  // namespace wfp::test::faults

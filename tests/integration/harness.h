// Integration harness: real processes (the proxy binary, the upstream
// simulator, redis-server) on free loopback ports, each in its own temp dir,
// killed when the test ends; a raw HTTP/1.1 client that returns exact bytes.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace wfp::test {

struct TempDir {
  TempDir();
  ~TempDir();
  std::string path;
  std::string file(const std::string& name) const { return path + "/" + name; }
  void write(const std::string& name, const std::string& content) const;
};

std::string readFile(const std::string& path);

// A TCP connection to 127.0.0.1:`port` with TCP_NODELAY (throws on failure).
int connectTo(int port);
// `s` in single quotes for /bin/sh.
std::string shellQuote(const std::string& s);

class Process {
 public:
  Process(std::vector<std::string> argv, std::vector<std::string> env_extra, const std::string& stderr_path,
          bool pipe_stdout);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  // Reads one line from the child's stdout (pipe_stdout), within `timeout`.
  std::optional<std::string> readLine(std::chrono::milliseconds timeout);
  // Sends a signal (remembered: see signalled()).
  void signal(int signo);
  // Waits for exit; returns the exit code (128+signal if killed), or nullopt
  // on timeout. A returned code counts as seen by the caller (exitSeen()).
  std::optional<int> wait(std::chrono::milliseconds timeout);
  bool running();
  // Reads everything on stdout until EOF (after the process ended).
  std::string drainStdout();

  // Whether signal(signo) was called: the test asked for what followed.
  bool signalled(int signo) const;
  // Whether a wait() call returned the exit code to the test.
  bool exitSeen() const { return exit_seen_; }
  // "exit code N" or "killed by signal N (name)"; "running" before the exit.
  std::string describeExit() const;

 private:
  std::optional<int> reap(std::chrono::milliseconds timeout);

  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string stdout_buf_;
  std::optional<int> exit_code_;
  int term_signal_ = 0;  // the signal that ended it, if one did
  bool exit_seen_ = false;
  std::vector<int> signals_sent_;
};

struct HttpResponse {
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string raw;  // every byte received
  bool ok = false;  // a complete response was parsed
  std::optional<std::string> header(const std::string& name) const;  // first, case-insensitive
  size_t headerCount(const std::string& name) const;
};

using Headers = std::vector<std::pair<std::string, std::string>>;

// One request on a fresh connection (Connection: close added).
HttpResponse httpRequest(int port, const std::string& method, const std::string& target, const Headers& headers = {},
                         const std::string& body = "", std::chrono::milliseconds timeout = std::chrono::seconds(30));
// Sends raw bytes, reads until the peer closes or `timeout`.
std::string rawExchange(int port, const std::string& bytes, std::chrono::milliseconds timeout = std::chrono::seconds(10));
// Parses one response from raw bytes (used by the helpers above).
HttpResponse parseResponse(const std::string& raw, bool head_request = false);
// Parses the response at the start of `raw`: the bytes it takes, or 0 while
// it is incomplete (`eof`: no more bytes will come). For clients that read
// several responses from one stream (tls_client.h).
size_t parseResponsePrefix(const std::string& raw, HttpResponse* out, bool eof);

// Sends `requests[i]` on its own connection, all at once, and collects the
// responses (in order). Uses poll(): thousands of connections, one thread.
std::vector<HttpResponse> concurrentRequests(int port, const std::vector<std::string>& requests,
                                             std::chrono::milliseconds timeout = std::chrono::seconds(60));
// A full HTTP/1.1 request with Connection: close.
std::string buildRequest(const std::string& method, const std::string& target, const Headers& headers,
                         const std::string& body);

// A client connection kept open (keep-alive tests, disconnect tests).
class Connection {
 public:
  explicit Connection(int port);
  ~Connection();
  void send(const std::string& bytes);
  HttpResponse readResponse(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  void close();
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::string pending_;
};

// The upstream simulator (tests/upstream_sim).
class Simulator {
 public:
  explicit Simulator(std::vector<std::string> extra_args = {});
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  nlohmann::json requests(int since = 0);
  nlohmann::json stats();
  void reset();
  void configureWorkflows(const nlohmann::json& workflows);
  void fault(const nlohmann::json& fault);
  Process& process() { return *process_; }

 private:
  nlohmann::json call(const std::string& method, const std::string& target, const std::string& body = "");
  TempDir dir_;
  std::unique_ptr<Process> process_;
  int port_ = 0;
};

// The proxy binary with a generated configuration.
class ProxyProcess {
 public:
  // `config_yaml` may use {{UPSTREAM}} (replaced by upstream_url); listen and
  // admin_listen are added (127.0.0.1:0) unless the text sets them.
  ProxyProcess(const std::string& config_yaml, const std::string& upstream_url,
               std::vector<std::string> env_extra = {}, std::vector<std::string> extra_args = {});
  // Stops the proxy with SIGTERM and fails the test if it did not exit 0 or
  // if a sanitizer reported anything in its log. A proxy that already exited
  // fails the test too (a crash, the OOM killer), unless the test ended it:
  // SIGKILL through process().signal(), SIGTERM/SIGINT likewise (then it must
  // have exited 0), a process().wait() that returned its exit code to the
  // test, or expectExit().
  ~ProxyProcess();
  // The test expects the proxy to exit by itself before the end and checks
  // how on its own (if at all).
  void expectExit() { expect_exit_ = true; }
  int port() const { return port_; }
  int adminPort() const { return admin_port_; }
  Process& process() { return *process_; }
  std::string log() const;  // everything the proxy wrote to stderr
  std::string configPath() const { return dir_.file("proxy.yaml"); }
  const TempDir& dir() const { return dir_; }
  // Lines of the access log (JSON objects) written so far.
  std::vector<nlohmann::json> accessLog() const;

 private:
  TempDir dir_;
  std::unique_ptr<Process> process_;
  int port_ = 0;
  int admin_port_ = 0;
  bool expect_exit_ = false;
};

// A minimal configuration: organisations acme (api key sk_sim_acme) and
// globex (sk_sim_globex), clients with keys "acme-client-key",
// "acme-other-key" and "globex-client-key"; access log to a file.
std::string baseConfig(const std::string& extra = "");

// One sample of the Prometheus text format: name{labels} value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
std::vector<Sample> parseSamples(const std::string& text);
// Sum of the samples named `name` whose labels include all of `want`.
double sampleSum(const std::vector<Sample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& want);

// Polls `predicate` every 10 ms until true or `timeout`.
bool eventually(const std::function<bool()>& predicate,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace wfp::test

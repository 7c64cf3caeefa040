#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

namespace wfp::test {

namespace {

bool iequals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}


void sendAll(int fd, const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      throw std::runtime_error(std::string("send failed: ") + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
}

// Reads what is available within `timeout`; false on EOF/error/timeout.
bool readSome(int fd, std::string& out, std::chrono::steady_clock::time_point deadline) {
  auto now = std::chrono::steady_clock::now();
  if (now >= deadline) return false;
  pollfd p{fd, POLLIN, 0};
  int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count()) + 1;
  int r = ::poll(&p, 1, ms);
  if (r <= 0) return false;
  char buf[65536];
  ssize_t n = ::read(fd, buf, sizeof buf);
  if (n <= 0) return false;
  out.append(buf, static_cast<size_t>(n));
  return true;
}

// How many bytes of `raw` make one complete response, or 0 if incomplete.
// Fills `resp` when complete.
size_t tryParse(const std::string& raw, HttpResponse& resp, bool head_request, bool eof) {
  size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos) return 0;
  HttpResponse r;
  std::istringstream head(raw.substr(0, head_end));
  std::string line;
  std::getline(head, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.rfind("HTTP/1.", 0) != 0 || line.size() < 12) return 0;
  r.status = std::atoi(line.substr(9, 3).c_str());
  r.reason = line.size() > 13 ? line.substr(13) : "";
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    r.headers.emplace_back(line.substr(0, colon), value);
  }
  size_t pos = head_end + 4;
  bool no_body = head_request || r.status == 204 || r.status == 304 || (r.status >= 100 && r.status < 200);
  if (r.status == 100) {
    // Skip interim responses.
    HttpResponse next;
    size_t used = tryParse(raw.substr(pos), next, head_request, eof);
    if (!used) return 0;
    resp = next;
    resp.raw = raw.substr(0, pos + used);
    return pos + used;
  }
  if (no_body) {
    r.ok = true;
    r.raw = raw.substr(0, pos);
    resp = r;
    return pos;
  }
  auto te = r.header("transfer-encoding");
  auto cl = r.header("content-length");
  if (te && iequals(*te, "chunked")) {
    // Cheap test first: a complete chunked body ends with the last chunk
    // (no trailers here); avoids re-parsing a large body on every read.
    if (!eof && (raw.size() < 5 || raw.compare(raw.size() - 5, 5, "0\r\n\r\n") != 0)) return 0;
    std::string body;
    size_t p = pos;
    for (;;) {
      size_t eol = raw.find("\r\n", p);
      if (eol == std::string::npos) return 0;
      size_t size = std::strtoul(raw.substr(p, eol - p).c_str(), nullptr, 16);
      p = eol + 2;
      if (size == 0) {
        size_t end = raw.find("\r\n", p);  // trailers end with an empty line
        while (end != std::string::npos && end != p) {
          p = end + 2;
          end = raw.find("\r\n", p);
        }
        if (end == std::string::npos) return 0;
        p = end + 2;
        break;
      }
      if (raw.size() < p + size + 2) return 0;
      body.append(raw, p, size);
      p += size + 2;
    }
    r.body = body;
    r.ok = true;
    r.raw = raw.substr(0, p);
    resp = r;
    return p;
  }
  if (cl) {
    size_t len = std::strtoul(cl->c_str(), nullptr, 10);
    if (raw.size() < pos + len) return 0;
    r.body = raw.substr(pos, len);
    r.ok = true;
    r.raw = raw.substr(0, pos + len);
    resp = r;
    return pos + len;
  }
  if (!eof) return 0;
  r.body = raw.substr(pos);
  r.ok = true;
  r.raw = raw;
  resp = r;
  return raw.size();
}

}  // namespace

int connectTo(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;  // before close() can change it
    ::close(fd);
    throw std::runtime_error("connect to port " + std::to_string(port) + " failed: " + std::strerror(err));
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

std::string shellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// --- TempDir -------------------------------------------------------------------

TempDir::TempDir() {
  char tmpl[] = "/tmp/wfp-it.XXXXXX";
  char* p = mkdtemp(tmpl);
  if (!p) throw std::runtime_error("mkdtemp failed");
  path = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!std::getenv("WFP_KEEP_TMP")) std::filesystem::remove_all(path, ec);
}

void TempDir::write(const std::string& name, const std::string& content) const {
  std::ofstream f(file(name), std::ios::binary);
  f << content;
}

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// --- Process -------------------------------------------------------------------

Process::Process(std::vector<std::string> argv, std::vector<std::string> env_extra, const std::string& stderr_path,
                 bool pipe_stdout) {
  int pipefd[2] = {-1, -1};
  if (pipe_stdout && ::pipe2(pipefd, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    if (pipe_stdout) {
      ::dup2(pipefd[1], STDOUT_FILENO);
    } else {
      int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, STDOUT_FILENO);
    }
    int err = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (err >= 0) ::dup2(err, STDERR_FILENO);
    for (const auto& kv : env_extra) ::putenv(const_cast<char*>(kv.c_str()));
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    _exit(127);
  }
  if (pipe_stdout) {
    ::close(pipefd[1]);
    stdout_fd_ = pipefd[0];
  }
}

Process::~Process() {
  if (running()) {
    signal(SIGTERM);
    if (!wait(std::chrono::seconds(5))) {
      signal(SIGKILL);
      wait(std::chrono::seconds(5));
    }
  }
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
}

std::optional<std::string> Process::readLine(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    size_t nl = stdout_buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = stdout_buf_.substr(0, nl);
      stdout_buf_.erase(0, nl + 1);
      return line;
    }
    if (!readSome(stdout_fd_, stdout_buf_, deadline)) return std::nullopt;
  }
}

std::string Process::drainStdout() {
  std::string out = std::move(stdout_buf_);
  stdout_buf_.clear();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (readSome(stdout_fd_, out, deadline)) {
  }
  return out;
}

void Process::signal(int signo) {
  signals_sent_.push_back(signo);
  if (pid_ > 0 && !exit_code_) ::kill(pid_, signo);
}

bool Process::signalled(int signo) const {
  return std::find(signals_sent_.begin(), signals_sent_.end(), signo) != signals_sent_.end();
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
  auto code = reap(timeout);
  if (code) exit_seen_ = true;
  return code;
}

std::optional<int> Process::reap(std::chrono::milliseconds timeout) {
  if (exit_code_) return exit_code_;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      term_signal_ = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_code_;
    }
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

bool Process::running() {
  if (exit_code_ || pid_ <= 0) return false;
  return !reap(std::chrono::milliseconds(0)).has_value();
}

std::string Process::describeExit() const {
  if (!exit_code_) return "running";
  if (term_signal_ != 0) {
    return "killed by signal " + std::to_string(term_signal_) + " (" + ::strsignal(term_signal_) + ")";
  }
  return "exit code " + std::to_string(*exit_code_);
}

// --- HTTP ----------------------------------------------------------------------

std::optional<std::string> HttpResponse::header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (iequals(k, name)) return v;
  }
  return std::nullopt;
}

size_t HttpResponse::headerCount(const std::string& name) const {
  size_t n = 0;
  for (const auto& [k, v] : headers) n += iequals(k, name) ? 1 : 0;
  return n;
}

HttpResponse parseResponse(const std::string& raw, bool head_request) {
  HttpResponse r;
  tryParse(raw, r, head_request, true);
  return r;
}

size_t parseResponsePrefix(const std::string& raw, HttpResponse* out, bool eof) {
  return tryParse(raw, *out, false, eof);
}

std::string rawExchange(int port, const std::string& bytes, std::chrono::milliseconds timeout) {
  int fd = connectTo(port);
  std::string out;
  try {
    sendAll(fd, bytes);
  } catch (...) {
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (readSome(fd, out, deadline)) {
  }
  ::close(fd);
  return out;
}

std::string buildRequest(const std::string& method, const std::string& target, const Headers& headers,
                         const std::string& body) {
  std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (const auto& [k, v] : headers) req += k + ": " + v + "\r\n";
  req += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  return req;
}

std::vector<HttpResponse> concurrentRequests(int port, const std::vector<std::string>& requests,
                                             std::chrono::milliseconds timeout) {
  size_t n = requests.size();
  std::vector<int> fds(n, -1);
  std::vector<std::string> raw(n);
  std::vector<bool> done(n, false);
  for (size_t i = 0; i < n; ++i) {
    fds[i] = connectTo(port);
    sendAll(fds[i], requests[i]);
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  size_t remaining = n;
  std::vector<pollfd> pfds;
  while (remaining > 0 && std::chrono::steady_clock::now() < deadline) {
    pfds.clear();
    std::vector<size_t> idx;
    for (size_t i = 0; i < n; ++i) {
      if (!done[i]) {
        pfds.push_back(pollfd{fds[i], POLLIN, 0});
        idx.push_back(i);
      }
    }
    int r = ::poll(pfds.data(), pfds.size(), 100);
    if (r <= 0) continue;
    for (size_t k = 0; k < pfds.size(); ++k) {
      if (!(pfds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      size_t i = idx[k];
      char buf[65536];
      ssize_t got = ::read(fds[i], buf, sizeof buf);
      if (got > 0) {
        raw[i].append(buf, static_cast<size_t>(got));
      } else {
        done[i] = true;
        --remaining;
      }
    }
  }
  std::vector<HttpResponse> out;
  for (size_t i = 0; i < n; ++i) {
    ::close(fds[i]);
    out.push_back(parseResponse(raw[i]));
  }
  return out;
}

HttpResponse httpRequest(int port, const std::string& method, const std::string& target, const Headers& headers,
                         const std::string& body, std::chrono::milliseconds timeout) {
  Connection c(port);
  std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n";
  bool has_cl = false;
  for (const auto& [k, v] : headers) {
    req += k + ": " + v + "\r\n";
    has_cl |= iequals(k, "content-length") || iequals(k, "transfer-encoding");
  }
  if (!has_cl && (!body.empty() || method == "POST" || method == "PUT")) {
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "Connection: close\r\n\r\n" + body;
  c.send(req);
  return c.readResponse(timeout);
}

Connection::Connection(int port) : fd_(connectTo(port)) {}
Connection::~Connection() { close(); }

void Connection::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Connection::send(const std::string& bytes) { sendAll(fd_, bytes); }

HttpResponse Connection::readResponse(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    HttpResponse r;
    size_t used = tryParse(pending_, r, false, false);
    if (used) {
      pending_.erase(0, used);
      return r;
    }
    if (!readSome(fd_, pending_, deadline)) {
      HttpResponse last;
      used = tryParse(pending_, last, false, true);
      if (used) pending_.erase(0, used);
      if (!used) last.raw = pending_;
      return last;
    }
  }
}

// --- Simulator -----------------------------------------------------------------

Simulator::Simulator(std::vector<std::string> extra_args) {
  std::vector<std::string> argv{WFP_SIM_BIN, "--listen", "127.0.0.1:0"};
  for (auto& a : extra_args) argv.push_back(a);
  process_ = std::make_unique<Process>(argv, std::vector<std::string>{}, dir_.file("sim.log"), true);
  auto line = process_->readLine(std::chrono::seconds(10));
  if (!line || line->rfind("PORT ", 0) != 0) throw std::runtime_error("upstream_sim did not report its port");
  port_ = std::stoi(line->substr(5));
}

nlohmann::json Simulator::call(const std::string& method, const std::string& target, const std::string& body) {
  HttpResponse r = httpRequest(port_, method, target, {{"Content-Type", "application/json"}}, body);
  if (!r.ok) throw std::runtime_error("simulator call failed: " + target);
  return nlohmann::json::parse(r.body, nullptr, false);
}

nlohmann::json Simulator::requests(int since) {
  auto j = call("GET", "/__sim/requests" + (since ? "?since=" + std::to_string(since) : std::string()));
  return j["requests"];
}
nlohmann::json Simulator::stats() { return call("GET", "/__sim/stats"); }
void Simulator::reset() { call("POST", "/__sim/reset"); }
void Simulator::configureWorkflows(const nlohmann::json& workflows) {
  call("POST", "/__sim/workflows", workflows.dump());
}
void Simulator::fault(const nlohmann::json& fault) { call("POST", "/__sim/faults", fault.dump()); }

// --- ProxyProcess --------------------------------------------------------------

std::string baseConfig(const std::string& extra) {
  return R"(upstream:
  base_url: {{UPSTREAM}}
log:
  level: info
  access_log: {{DIR}}/access.log
organisations:
  - name: acme
    api_key: sk_sim_acme
    clients:
      - name: billing
        key: acme-client-key
      - name: tutor-web
        key: acme-other-key
  - name: globex
    api_key: sk_sim_globex
    clients:
      - name: globex-app
        key: globex-client-key
)" + extra;
}

ProxyProcess::ProxyProcess(const std::string& config_yaml, const std::string& upstream_url,
                           std::vector<std::string> env_extra, std::vector<std::string> extra_args) {
  std::string yaml = std::regex_replace(config_yaml, std::regex("\\{\\{UPSTREAM\\}\\}"), upstream_url);
  yaml = std::regex_replace(yaml, std::regex("\\{\\{DIR\\}\\}"), dir_.path);
  if (yaml.find("\nlisten:") == std::string::npos && yaml.rfind("listen:", 0) != 0) {
    yaml = "listen: 127.0.0.1:0\n" + yaml;
  }
  if (yaml.find("admin_listen:") == std::string::npos) yaml = "admin_listen: 127.0.0.1:0\n" + yaml;
  dir_.write("proxy.yaml", yaml);
  std::vector<std::string> argv{WFP_PROXY_BIN, "--config", dir_.file("proxy.yaml")};
  for (auto& a : extra_args) argv.push_back(a);
  process_ = std::make_unique<Process>(argv, env_extra, dir_.file("proxy.log"), false);
  std::regex client_re("listening on [^ ]*:([0-9]+) \\(client\\)");
  std::regex admin_re("listening on [^ ]*:([0-9]+) \\(admin\\)");
  bool want_admin = yaml.find("admin_listen: \"\"") == std::string::npos;
  bool ready = eventually([&] {
    std::string text = log();
    std::smatch m;
    if (std::regex_search(text, m, client_re)) port_ = std::stoi(m[1]);
    if (want_admin && std::regex_search(text, m, admin_re)) admin_port_ = std::stoi(m[1]);
    return port_ != 0 && (!want_admin || admin_port_ != 0);
  }, std::chrono::seconds(15));
  if (!ready) throw std::runtime_error("proxy did not start; its log:\n" + log());
}

ProxyProcess::~ProxyProcess() {
  if (process_ && process_->running()) {
    process_->signal(SIGTERM);
    auto code = process_->wait(std::chrono::seconds(15));
    if (!code) {
      ADD_FAILURE() << "the proxy did not exit within 15 s of SIGTERM";
    } else if (*code != 0) {
      ADD_FAILURE() << "the proxy exited with " << *code << "; its log:\n" << log();
    }
  } else if (process_ && !expect_exit_ && !process_->exitSeen() && !process_->signalled(SIGKILL)) {
    // It ended before the harness stopped it, and the test never looked at
    // how: a crash or a kill nobody asked for, unless the test's own SIGTERM
    // led to a clean exit.
    const bool stopped = process_->signalled(SIGTERM) || process_->signalled(SIGINT);
    const std::string how = process_->describeExit();
    if (!stopped) {
      ADD_FAILURE() << "the proxy ended before the test did (" << how << "); its log:\n" << log();
    } else if (how != "exit code 0") {
      ADD_FAILURE() << "the proxy did not exit cleanly after the test's SIGTERM (" << how << "); its log:\n"
                    << log();
    }
  }
  std::string text = log();
  for (const char* marker : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"}) {
    if (text.find(marker) != std::string::npos) ADD_FAILURE() << "sanitizer report in the proxy's log:\n" << text;
  }
}

std::string ProxyProcess::log() const { return readFile(dir_.file("proxy.log")); }

std::vector<nlohmann::json> ProxyProcess::accessLog() const {
  std::vector<nlohmann::json> out;
  std::istringstream in(readFile(dir_.file("access.log")));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line, nullptr, false));
  }
  return out;
}

std::vector<Sample> parseSamples(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  std::string line;
  static const std::regex sample_re(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( \S+)?$)");
  static const std::regex label_re(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)")re");
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::smatch m;
    if (!std::regex_match(line, m, sample_re)) continue;
    Sample s;
    s.name = m[1];
    std::string labels = m[3];
    for (std::sregex_iterator it(labels.begin(), labels.end(), label_re), end; it != end; ++it) {
      s.labels[(*it)[1]] = (*it)[2];
    }
    s.value = std::strtod(m[4].str().c_str(), nullptr);
    out.push_back(std::move(s));
  }
  return out;
}

double sampleSum(const std::vector<Sample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& want) {
  double sum = 0;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : want) {
      auto it = s.labels.find(k);
      match &= it != s.labels.end() && it->second == v;
    }
    if (match) sum += s.value;
  }
  return sum;
}

bool eventually(const std::function<bool()>& predicate, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (predicate()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace wfp::test

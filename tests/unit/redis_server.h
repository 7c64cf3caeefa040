// A redis-server of a unit test's own: a free loopback port, a temp dir,
// killed by PID at the end. The binary is $WFP_REDIS_SERVER (scripts/test
// sets it to scripts/redis-server, which runs Debian's redis-tools binary
// under the name redis-server), else redis-server on PATH.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace wfp::test_redis {

using namespace std::chrono_literals;

// The redis-server to run: $WFP_REDIS_SERVER, else the first on PATH; "" if none.
inline std::string redisServerBin() {
  if (const char* bin = std::getenv("WFP_REDIS_SERVER"); bin && *bin && ::access(bin, X_OK) == 0) return bin;
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (!dir.empty() && ::access((dir + "/redis-server").c_str(), X_OK) == 0) return dir + "/redis-server";
  }
  return "";
}

inline bool redisServerInstalled() { return !redisServerBin().empty(); }

inline int freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

inline bool canConnect(int port, const std::string& unix_path = "") {
  int fd = -1;
  int rc = -1;
  if (!unix_path.empty()) {
    fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", unix_path.c_str());
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } else {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  }
  ::close(fd);
  return rc == 0;
}

// One redis-server process in its own temp dir.
class RedisServer {
 public:
  explicit RedisServer(std::vector<std::string> extra = {}) : extra_(std::move(extra)) {
    char tmpl[] = "/tmp/wfp-redis-XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) dir_ = tmpl;
    port_ = freePort();
  }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;
  ~RedisServer() {
    kill9();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  std::string unixPath() const { return dir_ + "/redis.sock"; }
  pid_t pid() const { return pid_; }

  bool start(bool with_unix_socket = false) {
    if (dir_.empty() || port_ <= 0) return false;
    std::vector<std::string> args = {"redis-server", "--port", std::to_string(port_), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", dir_,
                                     "--logfile", dir_ + "/redis.log", "--daemonize", "no"};
    if (with_unix_socket) {
      args.insert(args.end(), {"--unixsocket", unixPath(), "--unixsocketperm", "700"});
      unix_ = true;
    }
    args.insert(args.end(), extra_.begin(), extra_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string bin = redisServerBin();
    if (bin.empty() || ::posix_spawn(&pid_, bin.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
      pid_ = -1;
      return false;
    }
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (canConnect(port_, "") && (!unix_ || canConnect(0, unixPath()))) return true;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(5ms);
    }
    return false;
  }

  void kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  void pause() { ::kill(pid_, SIGSTOP); }
  void resume() { ::kill(pid_, SIGCONT); }

 private:
  std::vector<std::string> extra_;
  std::string dir_;
  int port_ = -1;
  pid_t pid_ = -1;
  bool unix_ = false;
};

}  // namespace wfp::test_redis

#include "proxy/access_log.h"

#include <cerrno>
#include <climits>
#include <chrono>
#include <cstring>
#include <ctime>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

namespace wfp {

namespace {
std::string rfc3339(int64_t unix_micros) {
  time_t secs = static_cast<time_t>(unix_micros / 1000000);
  int millis = static_cast<int>((unix_micros % 1000000) / 1000);
  tm utc{};
  gmtime_r(&secs, &utc);
  char buf[40];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &utc);
  snprintf(buf + n, sizeof buf - n, ".%03dZ", millis);
  return buf;
}

// How the access log file is opened, by open() and check() alike: appended
// to, created (0666 less the umask, as fopen would) when missing.
constexpr int kAppendFlags = O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY;
constexpr mode_t kCreateMode = 0666;

std::string describeError(const std::string& path, int err) { return path + ": " + std::strerror(err); }

std::string parentDirectory(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// AccessLog::check() of a path; `links`: symbolic links followed so far.
bool checkPath(const std::string& destination, std::string* error, int links) {
  // O_NONBLOCK: a FIFO without a reader must not hang the check.
  int fd = ::open(destination.c_str(), kAppendFlags | O_NONBLOCK);
  if (fd >= 0) {
    ::close(fd);
    return true;
  }
  int err = errno;
  struct stat st {};
  if (err == ENXIO && ::stat(destination.c_str(), &st) == 0 && S_ISFIFO(st.st_mode)) {
    return true;  // no reader yet: the start waits for one
  }
  if (err == ENOENT && links < 8 && ::lstat(destination.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    // A dangling symbolic link: the start creates its target.
    std::string target(PATH_MAX, '\0');
    ssize_t n = ::readlink(destination.c_str(), target.data(), target.size());
    if (n > 0 && static_cast<size_t>(n) < target.size()) {
      target.resize(static_cast<size_t>(n));
      if (target.front() != '/') target = parentDirectory(destination) + "/" + target;
      return checkPath(target, error, links + 1);
    }
  }
  if (err == ENOENT) {
    // Missing: can it be created? First without a name, so that nothing ever
    // appears in the directory (a log shipper watching it sees nothing).
    fd = ::open(parentDirectory(destination).c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, kCreateMode);
    if (fd >= 0) {
      ::close(fd);
      return true;
    }
    err = errno;
    if (err == EOPNOTSUPP || err == EISDIR) {
      // The file system has no O_TMPFILE: create it and remove it again.
      // O_EXCL: only a file this check created is removed.
      fd = ::open(destination.c_str(), kAppendFlags | O_CREAT | O_EXCL, kCreateMode);
      if (fd >= 0) {
        ::close(fd);
        ::unlink(destination.c_str());
        return true;
      }
      err = errno;
      if (err == EEXIST) return true;  // created meanwhile (by a running proxy, say)
    }
  }
  if (error) *error = describeError(destination, err);
  return false;
}

double roundMs(double ms) { return static_cast<double>(static_cast<int64_t>(ms * 1000.0 + 0.5)) / 1000.0; }
}  // namespace

AccessLog::~AccessLog() { closeFile(); }

void AccessLog::closeFile() {
  if (owned_ && out_) fclose(out_);
  out_ = nullptr;
  owned_ = false;
}

bool AccessLog::isStream(std::string_view destination) {
  return destination == "stderr" || destination == "stdout" || destination == "off";
}

bool AccessLog::open(const std::string& destination, std::string* error) {
  if (destination == "off") {
    closeFile();
    return true;
  }
  if (destination == "stderr" || destination == "stdout") {
    closeFile();
    out_ = destination == "stderr" ? stderr : stdout;
    return true;
  }
  int fd = ::open(destination.c_str(), kAppendFlags | O_CREAT, kCreateMode);
  FILE* f = fd < 0 ? nullptr : fdopen(fd, "a");
  if (!f) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    if (error) *error = describeError(destination, err);
    return false;
  }
  closeFile();
  out_ = f;
  owned_ = true;
  return true;
}

bool AccessLog::check(const std::string& destination, std::string* error) {
  return isStream(destination) || checkPath(destination, error, 0);
}

std::string AccessLog::format(const AccessRecord& r, int64_t unix_micros) {
  nlohmann::ordered_json j;
  j["time"] = rfc3339(unix_micros);
  j["request_id"] = r.request_id;
  j["org"] = r.org;
  j["client"] = r.client;
  j["method"] = r.method;
  j["path"] = r.path;
  j["status"] = r.status;
  j["cache"] = r.cache;
  j["queue_ms"] = roundMs(r.queue_ms);
  j["upstream_ms"] = roundMs(r.upstream_ms);
  j["bytes_in"] = r.bytes_in;
  j["bytes_out"] = r.bytes_out;
  j["remote_addr"] = r.remote_addr.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(r.remote_addr);
  j["duration_ms"] = roundMs(r.duration_ms);
  j["upstream_status"] = r.upstream_status > 0 ? nlohmann::ordered_json(r.upstream_status) : nlohmann::ordered_json(nullptr);
  j["trace_id"] = r.trace_id.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(r.trace_id);
  // Paths come from clients: never let invalid UTF-8 break the line.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void AccessLog::write(const AccessRecord& record) {
  if (!out_) return;
  auto now = std::chrono::system_clock::now().time_since_epoch();
  std::string line = format(record, std::chrono::duration_cast<std::chrono::microseconds>(now).count());
  line += '\n';
  fwrite(line.data(), 1, line.size(), out_);
  fflush(out_);
}

}  // namespace wfp

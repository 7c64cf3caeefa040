#include "proxy/access_log.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

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

double roundMs(double ms) { return static_cast<double>(static_cast<int64_t>(ms * 1000.0 + 0.5)) / 1000.0; }
}  // namespace

AccessLog::~AccessLog() { closeFile(); }

void AccessLog::closeFile() {
  if (owned_ && out_) fclose(out_);
  out_ = nullptr;
  owned_ = false;
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
  FILE* f = fopen(destination.c_str(), "ae");
  if (!f) {
    if (error) *error = destination + ": " + std::strerror(errno);
    return false;
  }
  closeFile();
  out_ = f;
  owned_ = true;
  return true;
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

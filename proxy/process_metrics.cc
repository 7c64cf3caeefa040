#include "proxy/process_metrics.h"
#include "proxy/prometheus_text.h"

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string_view>
#include <vector>

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

namespace wfp {

namespace {

void gauge(std::string& out, const char* name, const char* type, const char* help, double value) {
  appendFamilyHead(out, name, type, help);
  out += name;
  out += ' ';
  out += formatNumber(value);
  out += '\n';
}

std::optional<std::string> readSmallFile(const char* path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// /proc/self/stat's fields after the command name, which may itself hold
// spaces and parentheses: it ends at the last ')'. fields[0] is field 3
// (state), so field N (proc(5)'s numbering) is fields[N - 3].
std::vector<std::string_view> statFields(const std::string& stat) {
  std::vector<std::string_view> fields;
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return fields;
  std::string_view rest(stat);
  rest.remove_prefix(close + 1);
  while (!rest.empty()) {
    size_t start = rest.find_first_not_of(" \n");
    if (start == std::string_view::npos) break;
    rest.remove_prefix(start);
    size_t end = rest.find_first_of(" \n");
    fields.push_back(rest.substr(0, end));
    if (end == std::string_view::npos) break;
    rest.remove_prefix(end);
  }
  return fields;
}

std::optional<double> field(const std::vector<std::string_view>& fields, size_t n) {
  if (n < 3 || n - 3 >= fields.size()) return std::nullopt;
  std::string_view f = fields[n - 3];
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(f.data(), f.data() + f.size(), v);
  if (ec != std::errc() || ptr != f.data() + f.size()) return std::nullopt;
  return static_cast<double>(v);
}

// Seconds since the epoch at boot (/proc/stat's btime).
std::optional<double> bootTime() {
  auto stat = readSmallFile("/proc/stat");
  if (!stat) return std::nullopt;
  size_t at = stat->find("\nbtime ");
  if (at == std::string::npos) return std::nullopt;
  std::string_view rest(*stat);
  rest.remove_prefix(at + 7);
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), v);
  if (ec != std::errc()) return std::nullopt;
  return static_cast<double>(v);
}

std::optional<double> openFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return std::nullopt;
  double n = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the descriptor opendir itself holds
}

}  // namespace

void renderProcessMetrics(std::string& out) {
  if (auto stat = readSmallFile("/proc/self/stat")) {
    auto fields = statFields(*stat);
    const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
    auto utime = field(fields, 14), stime = field(fields, 15);
    if (utime && stime && ticks > 0) {
      gauge(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
            (*utime + *stime) / ticks);
    }
    if (auto vsize = field(fields, 23)) {
      gauge(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", *vsize);
    }
    if (auto rss = field(fields, 24)) {
      gauge(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", *rss * page);
    }
    auto start = field(fields, 22);
    auto boot = bootTime();
    if (start && boot && ticks > 0) {
      gauge(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
            *boot + *start / ticks);
    }
  }
  if (auto fds = openFds()) {
    gauge(out, "process_open_fds", "gauge", "Number of open file descriptors.", *fds);
  }
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    double max = nofile.rlim_cur == RLIM_INFINITY ? 1e308 : static_cast<double>(nofile.rlim_cur);
    gauge(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.", max);
  }
}

}  // namespace wfp

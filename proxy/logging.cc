#include "proxy/logging.h"

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include <sys/stat.h>

#include <spdlog/details/null_mutex.h>
#include <spdlog/sinks/base_sink.h>

namespace wfp {

namespace {

std::atomic<LogConfig::Format> g_format{LogConfig::Format::Text};

const char* levelName(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace: return "trace";
    case spdlog::level::debug: return "debug";
    case spdlog::level::info: return "info";
    case spdlog::level::warn: return "warning";  // spdlog's name, as the text format always printed
    case spdlog::level::err: return "error";
    case spdlog::level::critical: return "critical";
    default: return "info";
  }
}

// syslog(3) priorities, as journald reads them from a "<N>" prefix.
int syslogPriority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug: return 7;  // LOG_DEBUG
    case spdlog::level::info: return 6;   // LOG_INFO
    case spdlog::level::warn: return 4;   // LOG_WARNING
    case spdlog::level::err: return 3;    // LOG_ERR
    case spdlog::level::critical: return 2;  // LOG_CRIT
    default: return 6;
  }
}

// Log messages may carry anything a client sent (a path, a header): escaped
// so that a line stays one JSON value, whatever the bytes (invalid UTF-8 is
// kept as \u00XX escapes of its bytes, never dropped).
void appendJsonString(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

std::string timestamp(int64_t unix_micros, bool utc_z) {
  time_t secs = static_cast<time_t>(unix_micros / 1000000);
  int millis = static_cast<int>((unix_micros % 1000000) / 1000);
  tm t{};
  if (utc_z) {
    gmtime_r(&secs, &t);
  } else {
    localtime_r(&secs, &t);
  }
  char buf[48];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
  if (utc_z) {
    std::snprintf(buf + n, sizeof buf - n, ".%03dZ", millis);
  } else {
    size_t m = static_cast<size_t>(std::snprintf(buf + n, sizeof buf - n, ".%03d", millis));
    std::strftime(buf + n + m, sizeof buf - n - m, "%z", &t);
  }
  return buf;
}

// The one sink: formats each line itself (text or JSON, with or without the
// journal's priority) and writes it to stderr in one fwrite.
class StderrLineSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  StderrLineSink() : journal_(isJournalStream(2, std::getenv("JOURNAL_STREAM"))) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    auto micros = std::chrono::duration_cast<std::chrono::microseconds>(msg.time.time_since_epoch()).count();
    std::string line = formatLogLine(g_format.load(std::memory_order_relaxed), journal_, msg.level,
                                     std::string_view(msg.payload.data(), msg.payload.size()), micros);
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
  void flush_() override { std::fflush(stderr); }

 private:
  bool journal_;
};

}  // namespace

std::optional<spdlog::level::level_enum> parseLogLevel(std::string_view name) {
  if (name == "trace") return spdlog::level::trace;
  if (name == "debug") return spdlog::level::debug;
  if (name == "info") return spdlog::level::info;
  if (name == "warn") return spdlog::level::warn;
  if (name == "error") return spdlog::level::err;
  return std::nullopt;
}

std::string formatLogLine(LogConfig::Format format, bool journal, spdlog::level::level_enum level,
                          std::string_view message, int64_t unix_micros) {
  std::string line;
  line.reserve(message.size() + 64);
  if (journal) {
    line += '<';
    line += static_cast<char>('0' + syslogPriority(level));
    line += '>';
  }
  if (format == LogConfig::Format::Json) {
    line += "{\"time\":\"";
    line += timestamp(unix_micros, true);
    line += "\",\"level\":\"";
    line += levelName(level);
    line += "\",\"msg\":";
    appendJsonString(line, message);
    line += '}';
  } else {
    line += timestamp(unix_micros, false);
    line += ' ';
    line += levelName(level);
    line += ' ';
    // One record, one line: a message with a newline in it (a client's bytes)
    // cannot start a line of its own.
    for (char c : message) line += (c == '\n' || c == '\r') ? ' ' : c;
  }
  return line;
}

bool isJournalStream(int fd, const char* journal_stream) {
  if (journal_stream == nullptr || *journal_stream == '\0') return false;
  uintmax_t dev = 0, ino = 0;
  if (std::sscanf(journal_stream, "%" SCNuMAX ":%" SCNuMAX, &dev, &ino) != 2) return false;
  struct stat st {};
  if (fstat(fd, &st) != 0) return false;
  return static_cast<uintmax_t>(st.st_dev) == dev && static_cast<uintmax_t>(st.st_ino) == ino;
}

void initLogging(LogConfig::Format format) {
  g_format.store(format, std::memory_order_relaxed);
  auto logger = std::make_shared<spdlog::logger>("workflow-proxy", std::make_shared<StderrLineSink>());
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

void setLogLevel(spdlog::level::level_enum level) { spdlog::set_level(level); }

void setLogFormat(LogConfig::Format format) { g_format.store(format, std::memory_order_relaxed); }

}  // namespace wfp

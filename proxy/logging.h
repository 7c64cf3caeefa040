// spdlog set-up: one process-wide logger on stderr ("workflow-proxy"), in
// one of two line formats (log.format):
//   text  2026-12-02T12:00:00.123+0000 info listening on 127.0.0.1:8080 (client)
//   json  {"time":"2026-12-02T12:00:00.123Z","level":"info","msg":"listening on ..."}
// Levels are named trace, debug, info, warning, error, critical in both.
// When stderr is the systemd journal (JOURNAL_STREAM names it), each line
// starts with its syslog priority, "<6>" for info (sd-daemon(3)): journald
// strips the prefix and files the line at that priority.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

#include "proxy/config.h"

namespace wfp {

// "trace" | "debug" | "info" | "warn" | "error" → level; nullopt otherwise.
std::optional<spdlog::level::level_enum> parseLogLevel(std::string_view name);
void initLogging(LogConfig::Format format = LogConfig::Format::Text);
void setLogLevel(spdlog::level::level_enum level);
// Takes effect from the next line (a reload).
void setLogFormat(LogConfig::Format format);

// One line as the logger writes it (without the newline), for tests.
// `unix_micros`: the time; `journal`: with the priority prefix.
std::string formatLogLine(LogConfig::Format format, bool journal, spdlog::level::level_enum level,
                          std::string_view message, int64_t unix_micros);
// Whether JOURNAL_STREAM ("<device>:<inode>") names the file descriptor's file.
bool isJournalStream(int fd, const char* journal_stream);

}  // namespace wfp

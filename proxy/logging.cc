#include "proxy/logging.h"

#include <spdlog/sinks/stdout_sinks.h>

namespace wfp {

std::optional<spdlog::level::level_enum> parseLogLevel(std::string_view name) {
  if (name == "trace") return spdlog::level::trace;
  if (name == "debug") return spdlog::level::debug;
  if (name == "info") return spdlog::level::info;
  if (name == "warn") return spdlog::level::warn;
  if (name == "error") return spdlog::level::err;
  return std::nullopt;
}

void initLogging() {
  auto logger = spdlog::stderr_logger_st("workflow-proxy");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %l %v");
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

void setLogLevel(spdlog::level::level_enum level) { spdlog::set_level(level); }

}  // namespace wfp

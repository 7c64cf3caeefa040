// spdlog set-up: one process-wide logger on stderr ("workflow-proxy").
#pragma once

#include <optional>
#include <string_view>

#include <spdlog/spdlog.h>

namespace wfp {

// "trace" | "debug" | "info" | "warn" | "error" → level; nullopt otherwise.
std::optional<spdlog::level::level_enum> parseLogLevel(std::string_view name);
void initLogging();
void setLogLevel(spdlog::level::level_enum level);

}  // namespace wfp

#include "proxy/redis_commands.h"

#include <algorithm>
#include <exception>

#include <spdlog/spdlog.h>

namespace wfp {

RedisCommands::RedisCommands(Runtime& runtime, std::chrono::milliseconds timeout, std::function<void()> on_timeout)
    : runtime_(runtime),
      timeout_(timeout),
      on_timeout_(std::move(on_timeout)),
      timeout_timer_(runtime, [this] { sweep(); }),
      fail_timer_(runtime, [this] { failQueued(); }),
      life_(runtime) {}

void RedisCommands::sent(uint64_t id, Callback callback) {
  pending_.emplace(id, Pending{std::move(callback), true});
  deadlines_.emplace_back(runtime_.now() + timeout_, id);
  if (!timeout_timer_.pending()) timeout_timer_.start(timeout_);
}

void RedisCommands::failSoon(uint64_t id, Callback callback) {
  pending_.emplace(id, Pending{std::move(callback), false});
  failing_.push_back(id);
  if (!fail_timer_.pending()) fail_timer_.start(std::chrono::microseconds(0));
}

void RedisCommands::complete(uint64_t id, std::optional<RedisReply> reply) {
  auto node = pending_.extract(id);
  if (node.empty()) return;
  Callback cb = std::move(node.mapped().cb);
  if (!cb) return;
  try {
    cb(std::move(reply));
  } catch (const std::exception& e) {
    spdlog::error("redis: uncaught exception in a command callback: {}", e.what());
  } catch (...) {
    spdlog::error("redis: uncaught exception in a command callback");
  }
}

void RedisCommands::failQueued() {
  auto batch = std::move(failing_);
  failing_.clear();
  auto alive = life_.token();
  for (uint64_t id : batch) {
    if (alive.expired()) return;
    complete(id, std::nullopt);
  }
}

void RedisCommands::failSent() {
  std::vector<uint64_t> ids;
  for (const auto& [id, p] : pending_) {
    if (p.sent) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  deadlines_.clear();
  timeout_timer_.cancel();
  auto alive = life_.token();
  for (uint64_t id : ids) {
    if (alive.expired()) return;
    complete(id, std::nullopt);  // a cancel() in between is honoured
  }
}

void RedisCommands::sweep() {
  auto now = runtime_.now();
  auto alive = life_.token();
  while (!alive.expired() && !deadlines_.empty()) {
    auto [deadline, id] = deadlines_.front();
    if (!pending_.contains(id)) {
      deadlines_.pop_front();
      continue;
    }
    if (deadline > now) {
      timeout_timer_.start(std::chrono::duration_cast<std::chrono::microseconds>(deadline - now));
      return;
    }
    deadlines_.pop_front();
    if (on_timeout_) on_timeout_();
    if (!alive.expired()) complete(id, std::nullopt);
  }
}

}  // namespace wfp

// The commands a Redis client has in hand, each answered exactly once: by
// its reply, by its deadline (timeout_ms), when the connection goes, or — if
// it was never sent (Redis down, too many in hand) — on the next loop pass,
// never inside the call that made it. A cancelled command is never answered.
//
// RedisClient keeps the connection; this keeps the book. Ids are handed out
// here and travel as hiredis' privdata, so a late reply for a command
// already answered finds nothing.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "proxy/redis_client.h"
#include "proxy/runtime.h"

namespace wfp {

class RedisCommands {
 public:
  using Callback = RedisLink::Callback;

  // `on_timeout` runs when a sent command passes its deadline, before that
  // command fails (the client marks Redis stalled).
  RedisCommands(Runtime& runtime, std::chrono::milliseconds timeout, std::function<void()> on_timeout);
  RedisCommands(const RedisCommands&) = delete;
  RedisCommands& operator=(const RedisCommands&) = delete;

  uint64_t nextId() { return next_id_++; }
  // Sent now: answered by complete(), or failed at its deadline.
  void sent(uint64_t id, Callback callback);
  // Not sent: failed on the next pass.
  void failSoon(uint64_t id, Callback callback);
  bool waiting(uint64_t id) const { return pending_.contains(id); }
  // Runs the callback of `id` once, if it is still in hand.
  void complete(uint64_t id, std::optional<RedisReply> reply);
  // The connection went: every sent command fails, in the order sent.
  void failSent();
  void cancel(uint64_t id) { pending_.erase(id); }
  size_t size() const { return pending_.size(); }
  void clear() { pending_.clear(); }  // callbacks dropped, not run

 private:
  struct Pending {
    Callback cb;
    bool sent = false;
  };
  void sweep();
  void failQueued();

  Runtime& runtime_;
  std::chrono::milliseconds timeout_;
  std::function<void()> on_timeout_;
  std::unordered_map<uint64_t, Pending> pending_;
  std::deque<std::pair<Clock::time_point, uint64_t>> deadlines_;  // sent commands, in deadline order
  std::vector<uint64_t> failing_;                                 // to fail on the next pass
  uint64_t next_id_ = 1;
  Timer timeout_timer_;
  Timer fail_timer_;
  // A callback may destroy the client, and this with it.
  Lifeline life_;
};

}  // namespace wfp

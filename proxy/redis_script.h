// Lua scripts run in Redis, and the commands their owners wait for.
//
// A script is sent with EVALSHA once SCRIPT LOAD told us its digest; with
// EVAL until then and again after a NOSCRIPT (Redis restarted, SCRIPT FLUSH),
// one retry. Every command whose reply the owner waits for is recorded and
// cancelled when the runner is destroyed: no reply reaches a destroyed owner.
// A command may carry `on_drop`, run then instead of its callback (e.g. to
// give back, best effort, what the command may have taken in Redis).
//
// Used by the shared budgets (shared_budget.cc) and the fleet-wide client
// quotas (client_quotas.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "proxy/redis_client.h"

namespace wfp {

class RedisScriptRunner {
 public:
  using Callback = RedisLink::Callback;

  struct Script {
    explicit Script(std::string_view text) : body(text) {}
    std::string_view body;
    std::string sha;
    bool loading = false;
  };

  // `what`: names the owner in log lines ("shared budget").
  RedisScriptRunner(RedisLink& redis, std::string what);
  ~RedisScriptRunner();
  RedisScriptRunner(const RedisScriptRunner&) = delete;
  RedisScriptRunner& operator=(const RedisScriptRunner&) = delete;

  RedisLink& redis() { return redis_; }

  // Sends a command whose reply we wait for; `cb` runs unless the runner is
  // destroyed first (then `on_drop` runs, if given). RedisClient never calls
  // back inside command(), so the entry exists by the time the reply comes.
  void send(std::vector<std::string> argv, Callback cb, std::function<void()> on_drop = {});
  // EVALSHA (or EVAL) `script` with `keys` and `args`.
  void run(Script& script, std::vector<std::string> keys, std::vector<std::string> args, Callback cb,
           std::function<void()> on_drop = {});

  // SCRIPT LOAD's digest: 40 hex digits, else nullopt (EVAL stays in use).
  // Redis' replies are untrusted. Pure; public for tests.
  static std::optional<std::string> decodeDigest(const RedisReply& reply);

 private:
  struct Pending {
    uint64_t redis_id = 0;
    std::function<void()> on_drop;
  };
  void load(Script& script);

  RedisLink& redis_;
  const std::string what_;
  uint64_t next_token_ = 0;
  std::unordered_map<uint64_t, Pending> pending_;  // token → command
};

}  // namespace wfp

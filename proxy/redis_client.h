// Redis over hiredis' async API on the proxy's libevent loop (hiredis'
// adapters/libevent.h). Redis is an optimisation, never a dependency: every
// command either gets its reply or fails fast (nullopt), within timeout_ms.
//
// * Two connections: one for commands, one for pub/sub (SUBSCRIBE puts a
//   connection in a mode where nothing else may be sent).
// * AUTH and SELECT after every connect; reconnect by itself with backoff
//   (100 ms doubling to 5 s) after a disconnect or a failed connect.
// * State: up while connected and answering. A command that times out marks
//   Redis down (a paused server keeps its TCP connection open) until a PING
//   probe is answered again. While down, commands fail on the next loop pass
//   without being sent, so an outage costs nothing per request.
// * on_state(up) runs on every transition, e.g. for the
//   workflow_proxy_redis_up gauge and for the one warning per outage.
//
// Callbacks: each command's callback runs exactly once, on the loop, never
// synchronously inside command(); with the reply, or nullopt on error,
// timeout or disconnect. After cancel(id) it does not run. hiredis frees its
// reply when our callback returns: RedisReply is a deep copy.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/config.h"
#include "proxy/event_loop.h"

namespace wfp {

// RedisUrl and parseRedisUrl(), the one grammar of redis.url, are in
// config.h: the loader parses the URL (so --check-config rejects what the
// client could not use) and the client is given RedisConfig::endpoint.

struct RedisReply {
  enum class Type { Nil, Status, Error, Integer, String, Array };
  Type type = Type::Nil;
  long long integer = 0;
  std::string str;  // Status, Error, String
  std::vector<RedisReply> elements;

  bool isError() const { return type == Type::Error; }
};

struct RedisOptions {
  RedisUrl url;
  int timeout_ms = 250;  // per command
  std::function<void(bool up)> on_state;
};

// What the run path needs of Redis: RedisClient in production, a simulated
// Redis in tests/simulation. The contract above holds for both: callbacks
// run once, never inside the call; a lost connection loses messages.
class RedisLink {
 public:
  using Callback = std::function<void(std::optional<RedisReply>)>;
  using MessageCallback = std::function<void(const std::string& channel, const std::string& message)>;
  virtual ~RedisLink() = default;

  virtual bool up() const = 0;
  // Commands sent or queued whose reply (or failure) has not come yet.
  virtual size_t pendingCommands() const = 0;
  // Writes the commands queued so far now rather than on the next loop pass
  // (a cache write that must leave before the response it belongs to). A
  // write error is left for the connection's own handling.
  virtual void flush() = 0;

  // Sends a command given as its arguments (binary-safe).
  virtual uint64_t command(std::vector<std::string> argv, Callback callback) = 0;
  virtual void cancel(uint64_t id) = 0;

  // Pub/sub on the second connection. Subscriptions survive reconnects. A
  // message published while disconnected is lost: callers re-check state.
  virtual void subscribe(const std::string& channel, MessageCallback callback) = 0;
  virtual void unsubscribe(const std::string& channel) = 0;

  // Runs after every (re)connect of the command connection, once AUTH/SELECT
  // succeeded (e.g. to reload scripts).
  virtual void setOnConnect(std::function<void()> fn) = 0;
};

class RedisClient final : public RedisLink {
 public:
  RedisClient(EventLoop& loop, RedisOptions options);
  ~RedisClient() override;  // pending callbacks are dropped, not called
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  bool up() const override;
  size_t pendingCommands() const override;
  void flush() override;
  uint64_t command(std::vector<std::string> argv, Callback callback) override;
  void cancel(uint64_t id) override;
  void subscribe(const std::string& channel, MessageCallback callback) override;
  void unsubscribe(const std::string& channel) override;
  void setOnConnect(std::function<void()> fn) override;

 private:
  // Lifetime: prefer destroying the client outside its own callbacks
  // (EventLoop::deferDelete()): they run inside hiredis' and the loop's
  // callbacks. Destruction from inside one is tolerated (hiredis defers the
  // free of a context that is in a reply callback; Impl re-checks that it is
  // alive after every user callback) and tested, but it is not the design.
  // The loop must outlive the client: freeing a hiredis context frees its
  // libevent events.
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace wfp

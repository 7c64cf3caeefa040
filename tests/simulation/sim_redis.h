// A simulated Redis for the fleet simulation: one server shared by every
// instance, and one RedisLink per instance that behaves as RedisClient does
// (replies in order, a command that outlives timeout_ms fails and marks the
// link down until a probe is answered, messages published while a link is
// down are lost, subscriptions survive reconnects).
//
// Faults: pauses (commands stall; clients time out), restarts that lose
// every key, pub/sub messages dropped at random, slow replies.
//
// The server runs the commands the proxy sends (GET, MGET, SET [NX] [PX], EXISTS,
// DEL, PEXPIRE, PUBLISH, PING) and each Lua script of proxy/redis_scripts.h
// by its meaning; anything else is an error reply.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "proxy/redis_client.h"
#include "tests/simulation/sim_rng.h"
#include "tests/simulation/sim_runtime.h"
#include "tests/simulation/sim_trace.h"

namespace wfp::sim {

class SimRedisLink;

class SimRedisServer {
 public:
  SimRedisServer(SimRuntime& rt, Rng& rng, Trace& trace) : rt_(rt), rng_(rng), trace_(trace) {}

  // Runs one command now (the server's time is the runtime's).
  RedisReply exec(const std::vector<std::string>& argv);

  // Faults.
  void restart();                    // every key lost; links reconnect
  void flush();                      // every key lost, links kept (FLUSHALL, eviction)
  void pauseFor(int64_t us);         // no command is served until then
  int64_t pausedUntilUs() const { return paused_until_us_; }
  double drop_pubsub = 0;            // chance a message is lost per subscriber
  int64_t latency_min_us = 50;       // one way
  int64_t latency_max_us = 400;
  int64_t latency() { return rng_.range(latency_min_us, latency_max_us); }

  // Every link's transitions (for the checks: a run may repeat while Redis fails).
  std::function<void(bool up)> on_link_state;

  // When each generation key (…gen:{ns}:workflow) took a new value: runs
  // of one input under two generations are two inputs.
  std::vector<std::pair<int64_t, std::string>> generation_changes;

  size_t keys() const { return data_.size(); }
  uint64_t restarts() const { return restarts_; }

 private:
  friend class SimRedisLink;
  struct Value {
    std::string data;
    int64_t expires_at_ms = 0;  // 0: never
  };
  Value* find(const std::string& key);
  void write(const std::string& key, Value value);
  int64_t publish(const std::string& channel, const std::string& message);

  SimRuntime& rt_;
  Rng& rng_;
  Trace& trace_;
  std::map<std::string, Value> data_;
  // By link number, not address: iteration order is part of the replay.
  std::map<std::string, std::set<int>> subscribers_;
  std::map<int, SimRedisLink*> links_;
  int next_link_ = 0;
  int64_t paused_until_us_ = 0;
  uint64_t restarts_ = 0;
};

class SimRedisLink final : public RedisLink {
 public:
  SimRedisLink(SimRuntime& rt, SimRedisServer& server, std::string name, int timeout_ms);
  ~SimRedisLink() override;

  bool up() const override { return up_; }
  size_t pendingCommands() const override { return pending_.size(); }
  void flush() override {}
  uint64_t command(std::vector<std::string> argv, Callback callback) override;
  void cancel(uint64_t id) override { pending_.erase(id); }
  void subscribe(const std::string& channel, MessageCallback callback) override;
  void unsubscribe(const std::string& channel) override;
  void setOnConnect(std::function<void()> fn) override { on_connect_ = std::move(fn); }

  size_t subscriptions() const { return handlers_.size(); }
  // The server restarted: the connection drops and comes back.
  void disconnect();
  void deliver(const std::string& channel, const std::string& message);

 private:
  friend class SimRedisServer;
  void serve(uint64_t id, uint64_t epoch, std::shared_ptr<std::vector<std::string>> argv);
  void goDown();
  void probe();

  SimRuntime& rt_;
  SimRedisServer& server_;
  std::string name_;
  int number_;
  int64_t timeout_us_;
  uint64_t epoch_ = 0;  // a reconnect drops what was sent before it
  bool up_ = true;
  bool probing_ = false;
  uint64_t next_id_ = 1;
  int64_t last_served_us_ = 0;  // replies keep their order
  std::map<uint64_t, Callback> pending_;
  std::map<std::string, MessageCallback> handlers_;
  std::function<void()> on_connect_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace wfp::sim

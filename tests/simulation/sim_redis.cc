#include "tests/simulation/sim_redis.h"

#include <charconv>
#include <cstring>

#include "proxy/redis_scripts.h"

namespace wfp::sim {

namespace {

RedisReply status(std::string s) {
  RedisReply r;
  r.type = RedisReply::Type::Status;
  r.str = std::move(s);
  return r;
}
RedisReply integer(long long v) {
  RedisReply r;
  r.type = RedisReply::Type::Integer;
  r.integer = v;
  return r;
}
RedisReply bulk(std::string s) {
  RedisReply r;
  r.type = RedisReply::Type::String;
  r.str = std::move(s);
  return r;
}
RedisReply error(std::string s) {
  RedisReply r;
  r.type = RedisReply::Type::Error;
  r.str = std::move(s);
  return r;
}
RedisReply nil() { return RedisReply{}; }

bool upper(const std::string& a, const char* b) {
  if (a.size() != std::strlen(b)) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::toupper(static_cast<unsigned char>(a[i])) != b[i]) return false;
  }
  return true;
}

std::optional<long long> toInt(const std::string& s) {
  long long v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// Lua's tonumber() on what our scripts store: an integer or nil.
constexpr long long kMaxLuaInt = 9007199254740990;

}  // namespace

// --- server -------------------------------------------------------------------

SimRedisServer::Value* SimRedisServer::find(const std::string& key) {
  auto it = data_.find(key);
  if (it == data_.end()) return nullptr;
  if (it->second.expires_at_ms != 0 && it->second.expires_at_ms <= rt_.unixMillis()) {
    data_.erase(it);
    return nullptr;
  }
  return &it->second;
}

void SimRedisServer::write(const std::string& key, Value value) {
  if (key.find("gen:{") != std::string::npos) {
    Value* old = find(key);
    if (!old || old->data != value.data) generation_changes.push_back({rt_.nowUs(), key});
  }
  data_[key] = std::move(value);
}

int64_t SimRedisServer::publish(const std::string& channel, const std::string& message) {
  auto it = subscribers_.find(channel);
  if (it == subscribers_.end()) return 0;
  int64_t n = 0;
  for (int number : it->second) {
    auto link = links_.find(number);
    if (link == links_.end()) continue;
    ++n;
    if (rng_.chance(drop_pubsub)) {
      trace_.add("redis: message on " + channel + " to link " + std::to_string(number) + " dropped");
      continue;
    }
    SimRedisLink* l = link->second;
    std::weak_ptr<bool> alive = l->alive_;
    uint64_t epoch = l->epoch_;
    rt_.after(latency(), [alive, l, epoch, channel, message] {
      if (alive.expired() || l->epoch_ != epoch) return;  // gone or reconnected: lost
      l->deliver(channel, message);
    });
  }
  return n;
}

RedisReply SimRedisServer::exec(const std::vector<std::string>& argv) {
  if (argv.empty()) return error("ERR empty command");
  const std::string& cmd = argv[0];
  if (upper(cmd, "PING")) return status("PONG");
  if (upper(cmd, "GET") && argv.size() == 2) {
    Value* v = find(argv[1]);
    return v ? bulk(v->data) : nil();
  }
  if (upper(cmd, "MGET") && argv.size() >= 2) {
    RedisReply r;
    r.type = RedisReply::Type::Array;
    for (size_t i = 1; i < argv.size(); ++i) {
      Value* v = find(argv[i]);
      r.elements.push_back(v ? bulk(v->data) : nil());
    }
    return r;
  }
  if (upper(cmd, "SET") && argv.size() >= 3) {
    bool nx = false;
    int64_t px = 0;
    for (size_t i = 3; i < argv.size(); ++i) {
      if (upper(argv[i], "NX")) {
        nx = true;
      } else if (upper(argv[i], "PX") && i + 1 < argv.size()) {
        auto ms = toInt(argv[++i]);
        if (!ms || *ms <= 0) return error("ERR invalid expire time in 'set' command");
        px = *ms;
      } else {
        return error("ERR syntax error");
      }
    }
    if (nx && find(argv[1])) return nil();
    write(argv[1], Value{argv[2], px ? rt_.unixMillis() + px : 0});
    return status("OK");
  }
  if ((upper(cmd, "EXISTS") || upper(cmd, "DEL")) && argv.size() >= 2) {
    long long n = 0;
    for (size_t i = 1; i < argv.size(); ++i) {
      if (find(argv[i])) {
        ++n;
        if (upper(cmd, "DEL")) data_.erase(argv[i]);
      }
    }
    return integer(n);
  }
  if (upper(cmd, "PEXPIRE") && argv.size() == 3) {
    Value* v = find(argv[1]);
    auto ms = toInt(argv[2]);
    if (!ms) return error("ERR value is not an integer or out of range");
    if (!v) return integer(0);
    v->expires_at_ms = rt_.unixMillis() + *ms;
    return integer(1);
  }
  if (upper(cmd, "PUBLISH") && argv.size() == 3) return integer(publish(argv[1], argv[2]));
  if (upper(cmd, "EVAL") && argv.size() >= 3) {
    auto numkeys = toInt(argv[2]);
    if (!numkeys || *numkeys < 0 || argv.size() < 3 + static_cast<size_t>(*numkeys)) {
      return error("ERR Number of keys can't be greater than number of args");
    }
    std::vector<std::string> keys(argv.begin() + 3, argv.begin() + 3 + *numkeys);
    std::vector<std::string> args(argv.begin() + 3 + *numkeys, argv.end());
    const std::string& script = argv[1];
    if ((script == kLockRenewScript || script == kLockReleaseScript) && keys.size() == 1 && !args.empty()) {
      Value* v = find(keys[0]);
      if (!v || v->data != args[0]) return integer(0);
      if (script == kLockReleaseScript) {
        data_.erase(keys[0]);
        return integer(1);
      }
      auto ms = args.size() > 1 ? toInt(args[1]) : std::nullopt;
      if (!ms) return error("ERR value is not an integer");
      v->expires_at_ms = rt_.unixMillis() + *ms;
      return integer(1);
    }
    if ((script == kGenerationRaiseScript || script == kGenerationPurgeScript) && keys.size() == 1 && !args.empty()) {
      Value* v = find(keys[0]);
      std::optional<long long> cur = v ? toInt(v->data) : std::optional<long long>(0);
      auto floor = toInt(args[0]);
      if (!floor) return error("ERR floor is not a number (sim)");
      if (script == kGenerationRaiseScript) {
        if (!cur || *cur < *floor || *cur > kMaxLuaInt) {
          write(keys[0], Value{args[0], 0});
          return integer(*floor);
        }
        return integer(*cur);
      }
      long long c = (!cur || *cur < 0 || *cur > kMaxLuaInt) ? 0 : *cur;
      if (c < *floor) c = *floor;
      ++c;
      auto clock = args.size() > 1 ? toInt(args[1]) : std::nullopt;
      if (clock && *clock > c && *clock <= kMaxLuaInt) c = *clock;
      write(keys[0], Value{std::to_string(c), 0});
      return integer(c);
    }
    return error("NOSCRIPT the simulated Redis does not know this script");
  }
  return error("ERR unknown command '" + cmd + "' (simulated Redis)");
}

void SimRedisServer::flush() {
  ++restarts_;
  for (const auto& [key, value] : data_) {
    if (key.find("gen:{") != std::string::npos) generation_changes.push_back({rt_.nowUs(), key});
  }
  data_.clear();
  trace_.add("redis: FLUSHALL, every key lost, connections kept");
}

void SimRedisServer::restart() {
  flush();
  trace_.add("redis: restart, every connection dropped");
  std::vector<SimRedisLink*> links;
  for (auto& [n, l] : links_) links.push_back(l);
  for (SimRedisLink* l : links) l->disconnect();
}

void SimRedisServer::pauseFor(int64_t us) {
  paused_until_us_ = std::max(paused_until_us_, rt_.nowUs() + us);
  trace_.add("redis: paused for " + std::to_string(us / 1000) + " ms");
}

// --- link ---------------------------------------------------------------------

SimRedisLink::SimRedisLink(SimRuntime& rt, SimRedisServer& server, std::string name, int timeout_ms)
    : rt_(rt), server_(server), name_(std::move(name)), number_(server.next_link_++), timeout_us_(timeout_ms * 1000ll) {
  server_.links_[number_] = this;
}

SimRedisLink::~SimRedisLink() {
  *alive_ = false;
  server_.links_.erase(number_);
  for (auto& [channel, subs] : server_.subscribers_) subs.erase(number_);
}

uint64_t SimRedisLink::command(std::vector<std::string> argv, Callback callback) {
  uint64_t id = next_id_++;
  pending_.emplace(id, std::move(callback));
  std::weak_ptr<bool> alive = alive_;
  auto fail = [this, alive, id] {
    if (alive.expired()) return;
    auto it = pending_.find(id);
    if (it == pending_.end()) return;
    Callback cb = std::move(it->second);
    pending_.erase(it);
    cb(std::nullopt);
  };
  if (!up_) {
    rt_.post(fail);  // as RedisClient: fails on the next pass, never sent
    return id;
  }
  // Served in order, after the way there, and not while the server pauses.
  int64_t served = std::max({rt_.nowUs() + server_.latency(), last_served_us_, server_.paused_until_us_});
  last_served_us_ = served;
  auto args = std::make_shared<std::vector<std::string>>(std::move(argv));
  rt_.at(served, [this, alive, id, epoch = epoch_, args] {
    if (!alive.expired()) serve(id, epoch, args);
  });
  rt_.after(timeout_us_, [this, alive, id] {
    if (alive.expired() || !pending_.count(id)) return;
    goDown();
    auto it = pending_.find(id);
    if (it == pending_.end()) return;
    Callback cb = std::move(it->second);
    pending_.erase(it);
    cb(std::nullopt);
  });
  return id;
}

void SimRedisLink::serve(uint64_t id, uint64_t epoch, std::shared_ptr<std::vector<std::string>> argv) {
  if (epoch_ != epoch) return;  // the connection dropped: never served
  if (server_.paused_until_us_ > rt_.nowUs()) {
    last_served_us_ = std::max(last_served_us_, server_.paused_until_us_);
    std::weak_ptr<bool> alive = alive_;
    rt_.at(server_.paused_until_us_, [this, alive, id, epoch, argv] {
      if (!alive.expired()) serve(id, epoch, argv);
    });
    return;
  }
  RedisReply reply = server_.exec(*argv);
  std::weak_ptr<bool> alive = alive_;
  rt_.after(server_.latency(), [this, alive, id, epoch, reply = std::move(reply)] {
    if (alive.expired() || epoch_ != epoch) return;
    auto it = pending_.find(id);
    if (it == pending_.end()) return;  // cancelled or timed out
    Callback cb = std::move(it->second);
    pending_.erase(it);
    cb(reply);
  });
}

void SimRedisLink::goDown() {
  if (!up_) return;
  up_ = false;
  server_.trace_.add("redis link " + name_ + ": down (a command timed out)");
  if (server_.on_link_state) server_.on_link_state(false);
  probe();
}

void SimRedisLink::probe() {
  if (probing_) return;
  probing_ = true;
  std::weak_ptr<bool> alive = alive_;
  rt_.after(100'000, [this, alive] {
    if (alive.expired()) return;
    probing_ = false;
    if (up_) return;
    if (server_.paused_until_us_ > rt_.nowUs()) return probe();
    up_ = true;
    server_.trace_.add("redis link " + name_ + ": up");
    if (server_.on_link_state) server_.on_link_state(true);
    if (on_connect_) on_connect_();
  });
}

void SimRedisLink::disconnect() {
  ++epoch_;
  // Every command sent and not answered fails, as on a dropped connection.
  std::map<uint64_t, Callback> failed;
  failed.swap(pending_);
  std::weak_ptr<bool> alive = alive_;
  for (auto& [id, cb] : failed) {
    rt_.post([alive, cb = std::move(cb)] {
      if (!alive.expired()) cb(std::nullopt);
    });
  }
  // Subscriptions are lost on the server and made again on reconnect.
  for (auto& [channel, subs] : server_.subscribers_) subs.erase(number_);
  if (up_ && server_.on_link_state) server_.on_link_state(false);
  up_ = false;
  probe();
  std::vector<std::string> channels;
  for (auto& [channel, fn] : handlers_) channels.push_back(channel);
  rt_.after(150'000, [this, alive, channels] {
    if (alive.expired()) return;
    for (const auto& c : channels) {
      if (handlers_.count(c)) server_.subscribers_[c].insert(number_);
    }
  });
}

void SimRedisLink::subscribe(const std::string& channel, MessageCallback callback) {
  handlers_[channel] = std::move(callback);
  // In effect once SUBSCRIBE reaches the server.
  std::weak_ptr<bool> alive = alive_;
  uint64_t epoch = epoch_;
  rt_.after(server_.latency(), [this, alive, epoch, channel] {
    if (alive.expired() || epoch_ != epoch || !handlers_.count(channel)) return;
    server_.subscribers_[channel].insert(number_);
  });
}

void SimRedisLink::unsubscribe(const std::string& channel) {
  handlers_.erase(channel);
  auto it = server_.subscribers_.find(channel);
  if (it != server_.subscribers_.end()) {
    it->second.erase(number_);
    if (it->second.empty()) server_.subscribers_.erase(it);
  }
}

void SimRedisLink::deliver(const std::string& channel, const std::string& message) {
  if (!up_) return;
  auto it = handlers_.find(channel);
  if (it == handlers_.end()) return;
  MessageCallback fn = it->second;  // the handler may unsubscribe
  fn(channel, message);
}

}  // namespace wfp::sim

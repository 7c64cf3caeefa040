#include "proxy/cache_store.h"

#include <chrono>

#include <spdlog/spdlog.h>

#include "proxy/redis_client.h"

namespace wfp {

namespace {
constexpr int64_t kGenerationFreshMs = 1000;
}

int64_t unixMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

CacheStore::CacheStore(RedisClient* redis, std::string key_prefix, size_t memory_max_bytes)
    : redis_(redis), prefix_(std::move(key_prefix)), l1_(memory_max_bytes) {
  if (redis_) {
    redis_->subscribe(prefix_ + "purge", [this](const std::string&, const std::string& m) { onPurgeMessage(m); });
  }
}

CacheStore::~CacheStore() {
  if (redis_) redis_->unsubscribe(prefix_ + "purge");
}

std::string CacheStore::generationKey(const std::string& ns, const std::string& workflow_id) const {
  return prefix_ + "gen:{" + ns + "}:" + workflow_id;
}

void CacheStore::generation(const std::string& ns, const std::string& workflow_id, GenerationFn fn) {
  std::string local = ns + '\n' + workflow_id;
  Generation& g = generations_[local];
  if (!redis_) {
    fn(g.value);
    return;
  }
  int64_t now = unixMillis();
  if (g.fetched_ms != 0 && now - g.fetched_ms < kGenerationFreshMs) {
    fn(g.value);
    return;
  }
  if (!redis_->up()) {
    fn(g.value);  // the last value we know; L2 is out of reach anyway
    return;
  }
  g.waiting.push_back(std::move(fn));
  if (g.waiting.size() > 1) return;  // one fetch serves everyone
  redis_->command({"GET", generationKey(ns, workflow_id)}, [this, local](std::optional<RedisReply> reply) {
    auto it = generations_.find(local);
    if (it == generations_.end()) return;
    Generation& gen = it->second;
    if (reply && reply->type == RedisReply::Type::String) {
      gen.value = std::max<uint64_t>(gen.value, std::strtoull(reply->str.c_str(), nullptr, 10));
      gen.fetched_ms = unixMillis();
    } else if (reply && reply->type == RedisReply::Type::Nil) {
      gen.fetched_ms = unixMillis();
    }
    auto waiting = std::move(gen.waiting);
    gen.waiting.clear();
    uint64_t value = gen.value;
    for (auto& w : waiting) w(value);
  });
}

void CacheStore::lookup(const std::string& key, int64_t keep_ms, EntryFn fn) {
  if (CachedResponsePtr hit = l1_.get(key, unixMillis())) {
    fn(std::move(hit));
    return;
  }
  if (!redis_ || !redis_->up()) {
    fn(nullptr);
    return;
  }
  redis_->command({"GET", key}, [this, key, keep_ms, fn = std::move(fn)](std::optional<RedisReply> reply) {
    if (!reply || reply->type != RedisReply::Type::String) {
      fn(nullptr);
      return;
    }
    auto entry = decodeCachedResponse(reply->str);
    if (!entry) {
      spdlog::debug("cache: undecodable value under {}: treated as a miss", key);
      fn(nullptr);
      return;
    }
    auto shared = std::make_shared<const CachedResponse>(std::move(*entry));
    // Safe to keep in L1 for its whole life: a purge moves the generation
    // (another key), and a one-input purge is announced to every instance.
    l1_.put(key, shared, shared->stored_at_ms + keep_ms);
    fn(std::move(shared));
  });
}

void CacheStore::store(const std::string& key, CachedResponsePtr entry, int64_t keep_ms) {
  if (keep_ms <= 0) return;
  l1_.put(key, entry, entry->stored_at_ms + keep_ms);
  if (redis_ && redis_->up()) {
    redis_->command({"SET", key, encodeCachedResponse(*entry), "PX", std::to_string(keep_ms)},
                    [](std::optional<RedisReply>) {});
    // Out before the response it belongs to: a client that got its answer
    // here and asks another instance next finds the entry there.
    redis_->flush();
  }
}

void CacheStore::purgeWorkflow(const std::string& ns, const std::string& workflow_id, std::function<void(bool)> done) {
  std::string local = ns + '\n' + workflow_id;
  Generation& g = generations_[local];
  if (!redis_) {
    ++g.value;
    done(true);
    return;
  }
  redis_->command({"INCR", generationKey(ns, workflow_id)},
                  [this, local, ns, workflow_id, done = std::move(done)](std::optional<RedisReply> reply) {
                    Generation& gen = generations_[local];
                    if (!reply || reply->type != RedisReply::Type::Integer) {
                      // Redis unreachable: purge locally at least, and say so.
                      ++gen.value;
                      done(false);
                      return;
                    }
                    gen.value = std::max<uint64_t>(gen.value, static_cast<uint64_t>(reply->integer));
                    gen.fetched_ms = unixMillis();
                    redis_->command({"PUBLISH", prefix_ + "purge",
                                     "G\n" + std::to_string(reply->integer) + "\n" + ns + "\n" + workflow_id},
                                    [](std::optional<RedisReply>) {});
                    done(true);
                  });
}

void CacheStore::purgeInput(const std::string& ns, const std::string& workflow_id, const std::string& body_sha256_hex,
                            std::function<void(bool)> done) {
  generation(ns, workflow_id, [this, ns, workflow_id, body_sha256_hex, done = std::move(done)](uint64_t gen) {
    std::string run = cacheKey(prefix_, ns, "run", workflow_id, gen, body_sha256_hex);
    std::string stream = cacheKey(prefix_, ns, "stream", workflow_id, gen, body_sha256_hex);
    l1_.erase(run);
    l1_.erase(stream);
    if (!redis_) {
      done(true);
      return;
    }
    redis_->command({"DEL", run, stream}, [done](std::optional<RedisReply> reply) {
      done(reply && reply->type == RedisReply::Type::Integer);
    });
    redis_->command({"PUBLISH", prefix_ + "purge", "I\n" + run + "\n" + stream}, [](std::optional<RedisReply>) {});
  });
}

void CacheStore::onPurgeMessage(const std::string& message) {
  // "G\n<generation>\n<ns>\n<workflow>" or "I\n<run key>\n<stream key>".
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t nl = message.find('\n', start);
    parts.push_back(message.substr(start, nl - start));
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  if (parts.size() == 3 && parts[0] == "I") {
    l1_.erase(parts[1]);
    l1_.erase(parts[2]);
  } else if (parts.size() == 4 && parts[0] == "G") {
    uint64_t gen = std::strtoull(parts[1].c_str(), nullptr, 10);
    Generation& g = generations_[parts[2] + '\n' + parts[3]];
    if (gen > g.value) g.value = gen;
  }
}

}  // namespace wfp

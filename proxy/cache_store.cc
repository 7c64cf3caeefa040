#include "proxy/cache_store.h"

#include <algorithm>
#include <chrono>

#include <spdlog/spdlog.h>

#include "proxy/redis_client.h"
#include "proxy/redis_scripts.h"

namespace wfp {

namespace {

constexpr int64_t kGenerationFreshMs = 1000;
// Generations are whole numbers below 2^53 (what a Lua number holds exactly).
constexpr uint64_t kMaxGeneration = (uint64_t{1} << 53) - 2;
// Generations learnt from purge messages for workflows this instance does
// not track are remembered up to this many entries in all.
constexpr size_t kMaxTracked = 100000;

// The generation a purge moves to without Redis: past the current one, and
// to at least the clock (see kGenerationPurgeScript).
uint64_t nextGeneration(uint64_t current, int64_t now_ms) {
  uint64_t next = current + 1;
  if (now_ms > 0 && static_cast<uint64_t>(now_ms) > next && static_cast<uint64_t>(now_ms) <= kMaxGeneration) {
    next = static_cast<uint64_t>(now_ms);
  }
  return next;
}

}  // namespace

// A generation as stored in Redis or carried by a message: decimal digits
// only, at most kMaxGeneration. Anything else ("-1", "abc", 10^23) is not one.
std::optional<uint64_t> parseGeneration(std::string_view text) {
  if (text.empty() || text.size() > 16) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > kMaxGeneration) return std::nullopt;
  return v;
}

CacheStore::CacheStore(Runtime& runtime, RedisLink* redis, std::string key_prefix, size_t memory_max_bytes)
    : runtime_(runtime), redis_(redis), prefix_(std::move(key_prefix)), l1_(memory_max_bytes) {
  if (redis_) {
    redis_->subscribe(prefix_ + "purge", [this](const std::string&, const std::string& m) { onPurgeMessage(m); });
    redis_->setOnConnect([this] { reassert(); });
  }
}

CacheStore::~CacheStore() {
  if (redis_) {
    redis_->setOnConnect(nullptr);
    redis_->unsubscribe(prefix_ + "purge");
  }
}

// Redis is back, and may have lost everything (a restart): put back every
// generation and input-purge count this instance knows above Redis' own, and
// announce the generations. Otherwise an instance that did not hear of a
// purge reads 0 from the empty Redis, serves what it held from before the
// purge, and purges inputs under a generation others moved past — until this
// instance happens to read that workflow's generation again.
void CacheStore::reassert() {
  for (const auto& [local, g] : generations_) {
    if (g.value == 0 && g.input_purges == 0) continue;
    size_t nl = local.find('\n');
    std::string ns = local.substr(0, nl);
    std::string workflow_id = local.substr(nl + 1);
    if (g.value > 0) {
      redis_->command({"EVAL", kGenerationRaiseScript, "1", generationKey(ns, workflow_id), std::to_string(g.value)},
                      [](std::optional<RedisReply>) {});
      redis_->command({"PUBLISH", prefix_ + "purge",
                       "G\n" + std::to_string(g.value) + "\n" + ns + "\n" + workflow_id},
                      [](std::optional<RedisReply>) {});
    }
    if (g.input_purges > 0) {
      redis_->command(
          {"EVAL", kGenerationRaiseScript, "1", inputPurgesKey(ns, workflow_id), std::to_string(g.input_purges)},
          [](std::optional<RedisReply>) {});
    }
  }
}

std::string CacheStore::generationKey(const std::string& ns, const std::string& workflow_id) const {
  return prefix_ + "gen:{" + ns + "}:" + workflow_id;
}

std::string CacheStore::inputPurgesKey(const std::string& ns, const std::string& workflow_id) const {
  return prefix_ + "ipurge:{" + ns + "}:" + workflow_id;
}

std::string CacheStore::purgedMarkKey(const std::string& key) {
  // <prefix>v1:{<ns>}:<route>:<workflow>:<generation>:<sha> → the same
  // without the generation: instances may for a moment disagree on it
  // (Redis lost it, and the one that knew it has not put it back yet), and
  // a purge must reach the input's entries under every generation.
  size_t sha = key.rfind(':');
  size_t gen = sha == std::string::npos || sha == 0 ? std::string::npos : key.rfind(':', sha - 1);
  if (gen == std::string::npos) return key + ":purged";
  return key.substr(0, gen) + key.substr(sha) + ":purged";
}

void CacheStore::dropLocal(const std::string& ns, const std::string& workflow_id) {
  // Keys are <prefix>v1:{<ns>}:<route>:<workflow>:<generation>:<sha>; a
  // workflow id has no ':', so the trailing one bounds it.
  std::string head = prefix_ + "v1:{" + ns + "}:";
  l1_.eraseWithPrefix({head + "run:" + workflow_id + ":", head + "stream:" + workflow_id + ":"});
  ++l1_epoch_;
}

void CacheStore::generation(const std::string& ns, const std::string& workflow_id, GenerationFn fn) {
  if (!redis_ && generations_.empty()) return fn(0);  // nothing purged here yet: no key to build
  std::string local = ns + '\n' + workflow_id;
  if (!redis_) {
    // Only purged workflows have an entry: every other one is at 0.
    auto it = generations_.find(local);
    fn(it == generations_.end() ? 0 : it->second.value);
    return;
  }
  auto it = generations_.find(local);
  if (it == generations_.end()) {
    sweepGenerations();
    it = generations_.emplace(std::move(local), Generation{}).first;
  }
  Generation& g = it->second;
  int64_t now = runtime_.unixMillis();
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
  std::string gen_key = generationKey(ns, workflow_id);
  redis_->command({"MGET", gen_key, inputPurgesKey(ns, workflow_id)}, [this, key = it->first, gen_key, ns,
                                                                        workflow_id](std::optional<RedisReply> both) {
    auto found = generations_.find(key);
    if (found == generations_.end()) return;
    Generation& gen = found->second;
    const RedisReply* reply = nullptr;
    if (both && both->type == RedisReply::Type::Array && both->elements.size() == 2) {
      reply = &both->elements[0];
      const RedisReply& purges = both->elements[1];
      std::optional<uint64_t> n = purges.type == RedisReply::Type::String ? parseGeneration(purges.str) : std::nullopt;
      if (n && *n > gen.input_purges) {
        // Another instance purged an input of this workflow since we last
        // looked: its message may have been lost, so drop what we hold.
        dropLocal(ns, workflow_id);
        gen.input_purges = *n;
      }
    }
    if (reply && (reply->type == RedisReply::Type::String || reply->type == RedisReply::Type::Nil)) {
      std::optional<uint64_t> stored =
          reply->type == RedisReply::Type::Nil ? std::optional<uint64_t>(0) : parseGeneration(reply->str);
      if (stored && *stored > gen.value) gen.value = *stored;
      if (!stored || *stored < gen.value) {
        // Redis forgot (restarted empty, flushed) or holds something that is
        // not a generation: put back what we know, so that no instance goes
        // back to an older generation and a purge lands above it.
        if (!stored) spdlog::warn("cache: the generation in Redis under {} is not a number; repairing it", gen_key);
        redis_->command({"EVAL", kGenerationRaiseScript, "1", gen_key, std::to_string(gen.value)},
                        [](std::optional<RedisReply>) {});
      }
      gen.fetched_ms = runtime_.unixMillis();
    }
    auto waiting = std::move(gen.waiting);
    gen.waiting.clear();
    uint64_t value = gen.value;
    for (auto& w : waiting) w(value);
  });
}

// Amortised: a sweep when the map has doubled since the last one. An entry
// at generation 0 says nothing Redis does not (0 is where every workflow
// starts): once its one-second freshness is over it can go. Purged
// workflows stay (a floor that survives Redis losing the key).
void CacheStore::sweepGenerations() {
  if (generations_.size() < sweep_at_) return;
  int64_t now = runtime_.unixMillis();
  std::erase_if(generations_, [now](const auto& kv) {
    const Generation& g = kv.second;
    return g.value == 0 && g.input_purges == 0 && g.waiting.empty() && now - g.fetched_ms >= kGenerationFreshMs;
  });
  sweep_at_ = std::max<size_t>(1024, 2 * generations_.size());
}

void CacheStore::lookup(const std::string& key, int64_t keep_ms, EntryFn fn, int64_t min_stored_at_ms) {
  CachedResponsePtr local = l1_.get(key, runtime_.unixMillis());
  if (local && local->stored_at_ms >= min_stored_at_ms) {
    fn(std::move(local));
    return;
  }
  if (!redis_ || !redis_->up()) {
    fn(std::move(local));
    return;
  }
  // With the entry, the time of the last purge of this input, if any: a
  // store that was on its way when the purge came lands after its DEL, and
  // must not bring the purged answer back.
  redis_->command({"MGET", key, purgedMarkKey(key)}, [this, key, keep_ms, local, epoch = l1_epoch_,
                                                      fn = std::move(fn)](std::optional<RedisReply> both) {
    if (!both || both->type != RedisReply::Type::Array || both->elements.size() != 2 ||
        both->elements[0].type != RedisReply::Type::String) {
      fn(local);
      return;
    }
    const RedisReply& reply = both->elements[0];
    const RedisReply& mark = both->elements[1];
    int64_t purged_at = -1;  // none (a mark that is not a time is no mark)
    if (mark.type == RedisReply::Type::String) {
      if (auto t = parseGeneration(mark.str)) purged_at = static_cast<int64_t>(*t);
    }
    auto entry = decodeCachedResponse(reply.str, runtime_.unixMillis());
    if (entry && entry->stored_at_ms <= purged_at) {
      fn(local && local->stored_at_ms > purged_at ? local : nullptr);
      return;
    }
    if (!entry) {
      spdlog::debug("cache: undecodable value under {}: treated as a miss", key);
      fn(local);
      return;
    }
    if (local && entry->stored_at_ms <= local->stored_at_ms) {
      fn(local);
      return;
    }
    auto shared = std::make_shared<const CachedResponse>(std::move(*entry));
    // Safe to keep in L1 for its whole life: a purge moves the generation
    // (another key), and a one-input purge is announced to every instance —
    // unless one came while this reply was on its way (it may be the purged
    // answer, read before the DEL): then it answers this request only.
    if (epoch == l1_epoch_) l1_.put(key, shared, shared->stored_at_ms + keep_ms);
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
    g.value = nextGeneration(g.value, runtime_.unixMillis());
    done(true);
    return;
  }
  // Past Redis' value and past what this instance has seen, in one step.
  redis_->command({"EVAL", kGenerationPurgeScript, "1", generationKey(ns, workflow_id), std::to_string(g.value),
                   std::to_string(runtime_.unixMillis())},
                  [this, local, ns, workflow_id, done = std::move(done)](std::optional<RedisReply> reply) {
                    Generation& gen = generations_[local];
                    if (!reply || reply->type != RedisReply::Type::Integer || reply->integer <= 0 ||
                        static_cast<uint64_t>(reply->integer) > kMaxGeneration + 1) {
                      // Redis unreachable: purge locally at least, and say so.
                      gen.value = nextGeneration(gen.value, runtime_.unixMillis());
                      done(false);
                      return;
                    }
                    uint64_t value = static_cast<uint64_t>(reply->integer);
                    gen.value = std::max(gen.value, value);
                    gen.fetched_ms = runtime_.unixMillis();
                    redis_->command({"PUBLISH", prefix_ + "purge",
                                     "G\n" + std::to_string(value) + "\n" + ns + "\n" + workflow_id},
                                    [](std::optional<RedisReply>) {});
                    done(true);
                  });
}

void CacheStore::purgeInput(const std::string& ns, const std::string& workflow_id, const std::string& body_sha256_hex,
                            int64_t keep_ms, std::function<void(bool)> done) {
  generation(ns, workflow_id, [this, ns, workflow_id, body_sha256_hex, keep_ms, done = std::move(done)](uint64_t gen) {
    std::string run = cacheKey(prefix_, ns, "run", workflow_id, gen, body_sha256_hex);
    std::string stream = cacheKey(prefix_, ns, "stream", workflow_id, gen, body_sha256_hex);
    if (!redis_) {
      // The memory backend: this instance's generation is the only one.
      l1_.erase(run);
      l1_.erase(stream);
      ++l1_epoch_;
      done(true);
      return;
    }
    // Under every generation (see purgedMarkKey): the workflow's L1 entries
    // go (the others come back from Redis, where they stay).
    dropLocal(ns, workflow_id);
    redis_->command({"DEL", run, stream}, [](std::optional<RedisReply>) {});
    // A store already on its way lands after the DEL: the mark makes an
    // entry stored before the purge a miss (lookup) for as long as it could live.
    std::string now = std::to_string(runtime_.unixMillis());
    std::string px = std::to_string(std::max<int64_t>(keep_ms, 1000));
    redis_->command({"SET", purgedMarkKey(run), now, "PX", px}, [](std::optional<RedisReply>) {});
    redis_->command({"SET", purgedMarkKey(stream), now, "PX", px}, [](std::optional<RedisReply>) {});
    // Counted, so that an instance whose purge message is lost still drops
    // its copy when it next reads the generation (within a second). The
    // counter only moves forward, like the generation (the same script).
    std::string local = ns + '\n' + workflow_id;
    uint64_t floor = generations_[local].input_purges;
    redis_->command({"EVAL", kGenerationPurgeScript, "1", inputPurgesKey(ns, workflow_id), std::to_string(floor),
                     std::to_string(runtime_.unixMillis())},
                    [this, local, done](std::optional<RedisReply> reply) {
                      Generation& g = generations_[local];
                      if (reply && reply->type == RedisReply::Type::Integer && reply->integer > 0 &&
                          static_cast<uint64_t>(reply->integer) <= kMaxGeneration + 1) {
                        // Not taken as known: another instance's purge may
                        // have moved the counter just before ours, and only
                        // the next generation read, seeing it moved, drops
                        // what this instance holds of that input too.
                        return done(true);
                      }
                      // Redis did not take the purge: the entry would be
                      // found there again once it is back (docs/security.md:
                      // nothing makes a purge ineffective). Purge the whole
                      // workflow here instead — wider, but it holds: the
                      // generation only moves forward, and its floor reaches
                      // Redis, and so every instance, when Redis is back.
                      g.value = nextGeneration(g.value, runtime_.unixMillis());
                      done(false);
                    });
    redis_->command({"PUBLISH", prefix_ + "purge", "P\n" + ns + "\n" + workflow_id}, [](std::optional<RedisReply>) {});
  });
}

void CacheStore::onPurgeMessage(const std::string& message) {
  // "G\n<generation>\n<ns>\n<workflow>" (a workflow purged), "P\n<ns>\n<workflow>"
  // (an input of it purged: its L1 entries go, under every generation), or
  // "I\n<run key>\n<stream key>" (the same from an older version).
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t nl = message.find('\n', start);
    parts.push_back(message.substr(start, nl - start));
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  if (parts.size() == 3 && parts[0] == "P") {
    dropLocal(parts[1], parts[2]);
  } else if (parts.size() == 3 && parts[0] == "I") {
    l1_.erase(parts[1]);
    l1_.erase(parts[2]);
    ++l1_epoch_;
  } else if (parts.size() == 4 && parts[0] == "G") {
    // Untrusted like any value from Redis: a generation that is not one is
    // ignored, and messages about workflows this instance does not track
    // add entries only up to a bound.
    std::optional<uint64_t> gen = parseGeneration(parts[1]);
    if (!gen) return;
    std::string local = parts[2] + '\n' + parts[3];
    auto it = generations_.find(local);
    if (it == generations_.end()) {
      if (generations_.size() >= kMaxTracked) return;  // the next use asks Redis anyway
      it = generations_.emplace(std::move(local), Generation{}).first;
    }
    if (*gen > it->second.value) it->second.value = *gen;
  }
}

}  // namespace wfp

// The response cache behind one interface: the in-process LRU (backend
// `memory`, and the L1 of backend `redis`), Redis as the shared L2, and the
// purge generations that are part of every key (docs/http.md, docs/operations.md).
//
// With Redis, a generation is read from Redis at most a second before it is
// used, and a purge is announced on a channel so every instance sees it at
// once; a lost message is covered by that one-second refresh. Generations
// only move forward (docs/security.md): a value read from Redis that is lower than
// one this instance has seen (Redis restarted empty, the key flushed) or not
// a generation at all is repaired to the higher one, and a purge moves past
// both in one script.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "proxy/cache.h"
#include "proxy/config.h"
#include "proxy/runtime.h"

namespace wfp {

class RedisLink;

class CacheStore {
 public:
  using EntryFn = std::function<void(CachedResponsePtr)>;
  using GenerationFn = std::function<void(uint64_t)>;

  // `redis` is used as L2 and for generations; null for the memory backend.
  CacheStore(Runtime& runtime, RedisLink* redis, std::string key_prefix, size_t memory_max_bytes);
  ~CacheStore();

  void setMemoryMaxBytes(size_t bytes) { l1_.setMaxBytes(bytes); }

  // The current generation of (namespace, workflow). Runs `fn` synchronously
  // when it is known locally and fresh.
  void generation(const std::string& ns, const std::string& workflow_id, GenerationFn fn);
  // L1, then Redis (a Redis hit is kept in L1 until stored_at + keep_ms).
  // An L1 entry stored before `min_stored_at_ms` (too old for the request's
  // Cache-Control) sends the look to Redis, which may hold a younger one
  // from another instance; the older one is the answer if Redis has none.
  // `fn` may run synchronously.
  void lookup(const std::string& key, int64_t keep_ms, EntryFn fn, int64_t min_stored_at_ms = 0);
  // This instance's L1 only, synchronously (null when absent).
  CachedResponsePtr peekLocal(const std::string& key) { return l1_.get(key, runtime_.unixMillis()); }
  // `keep_ms`: how long the entry may be served at all (TTL + stale window).
  void store(const std::string& key, CachedResponsePtr entry, int64_t keep_ms);

  // Drops every entry of the workflow (O(1): the generation moves on).
  void purgeWorkflow(const std::string& ns, const std::string& workflow_id, std::function<void(bool)> done);
  // Drops one input's run and stream entries. `keep_ms`: how long an entry
  // of the workflow may live (TTL + stale window), as long as the purge's
  // mark must keep a store that was on its way from bringing it back.
  void purgeInput(const std::string& ns, const std::string& workflow_id, const std::string& body_sha256_hex,
                  int64_t keep_ms, std::function<void(bool)> done);

  size_t entries() const { return l1_.entries(); }
  // Workflows whose generation this instance keeps (bounded: see sweepGenerations).
  size_t generationsTracked() const { return generations_.size(); }
  const std::string& prefix() const { return prefix_; }

 private:
  struct Generation {
    uint64_t value = 0;
    // Input purges of the workflow (a counter in Redis, read with the
    // generation): when another instance's purge moved it on, this
    // instance's L1 entries of the workflow go, so a lost purge message
    // costs at most the generation's freshness (docs/operations.md: every instance
    // sees a purge within a second).
    uint64_t input_purges = 0;
    int64_t fetched_ms = 0;
    std::vector<GenerationFn> waiting;  // a fetch is in flight
  };
  std::string generationKey(const std::string& ns, const std::string& workflow_id) const;
  std::string inputPurgesKey(const std::string& ns, const std::string& workflow_id) const;
  // Beside an entry's key: when its input was last purged (unix ms).
  static std::string purgedMarkKey(const std::string& key);
  // Drops this instance's L1 entries of the workflow (every generation).
  void dropLocal(const std::string& ns, const std::string& workflow_id);
  void onPurgeMessage(const std::string& message);
  void reassert();  // Redis (re)connected
  void sweepGenerations();

  Runtime& runtime_;
  RedisLink* redis_;
  std::string prefix_;
  MemoryCache l1_;
  // "<namespace>\n<workflow>" → generation. Without Redis only purged
  // workflows have an entry; with Redis, also those looked up in the last
  // second (see sweepGenerations).
  std::unordered_map<std::string, Generation> generations_;
  size_t sweep_at_ = 1024;
  // Moves on whenever entries are dropped from L1 by a purge: a Redis reply
  // read before the purge must not put the purged answer back in L1.
  uint64_t l1_epoch_ = 0;
};

// A generation read from Redis: decimal digits, below 2^53; else nullopt.
std::optional<uint64_t> parseGeneration(std::string_view text);


}  // namespace wfp

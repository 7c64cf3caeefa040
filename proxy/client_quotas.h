// Client quotas (docs/rate-limits.md, "Client quotas"): at most N upstream
// runs led by a client in any sliding window of S seconds.
//
// The window is counted in buckets of S/60 (at least 1 ms): a run is recorded
// in the bucket holding the moment it was granted, and a bucket counts until
// its END is S old. A run therefore counts for at least S, never less: the
// quota is never exceeded, and a refused client may wait up to S/60 longer
// than an exact log would make it. Memory is bounded by the buckets (61 per
// client), not by N.
//
// Local by default. With `rate_limit.shared: true` (a RedisLink given) the
// buckets live in Redis, one hash per client updated by one script per grant,
// so the fleet together stays under N; every grant is also recorded here, and
// while Redis is away (down, slow, an answer we cannot believe) the local
// count decides: each instance then holds the quota for its own runs. Redis
// is not asked when this instance's own count already reaches the quota, so
// a Redis that restarted empty never lets an instance go over on its own.
//
// A grant is a QuotaTicket: a run that never goes upstream (answered by
// another instance, the cache, refused by the queue, abandoned) gives its
// place back when the ticket is destroyed unused. Counts are kept per
// organisation and client name, so a reload keeps what was used.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "proxy/config.h"
#include "proxy/runtime.h"

namespace wfp {

class ClientQuotas;
class RedisLink;
class RedisScriptRunner;
struct RedisReply;

// One run granted to a client. Move-only; destroyed unused, it is returned.
class QuotaTicket {
 public:
  QuotaTicket() = default;
  QuotaTicket(QuotaTicket&& other) noexcept { *this = std::move(other); }
  QuotaTicket& operator=(QuotaTicket&& other) noexcept;
  ~QuotaTicket() { release(); }

  explicit operator bool() const { return owner_ != nullptr; }
  // The run went upstream: it stays counted.
  void use() { owner_ = nullptr; }

 private:
  friend class ClientQuotas;
  void release();
  ClientQuotas* owner_ = nullptr;
  std::string budget_;
  int64_t bucket_end_ms_ = 0;        // local bucket
  std::string shared_bucket_;        // Redis hash field, "" when not recorded there
};

struct QuotaDecision {
  bool allowed = true;
  int retry_after_s = 0;  // refused: seconds until a run frees up (≥ 1)
  QuotaTicket ticket;     // allowed under a quota: the run's place
};

class ClientQuotas {
 public:
  // `shared`: the Redis connection of a fleet sharing its quotas, or null.
  ClientQuotas(Runtime& runtime, RedisLink* shared, std::string key_prefix);
  ~ClientQuotas();
  ClientQuotas(const ClientQuotas&) = delete;
  ClientQuotas& operator=(const ClientQuotas&) = delete;

  // Asks for one run of `client` of `org` under `quota`. `done` runs exactly
  // once: inside the call when the decision is local, later (on the loop)
  // when Redis decides; never after this object is destroyed.
  void acquire(const std::string& org, const std::string& client, const ClientQuota& quota,
               std::function<void(QuotaDecision)> done);

  // Runs counted in the current window: this instance's count, or with
  // shared quotas the fleet's (Redis; the local count while it is away).
  void used(const std::string& org, const std::string& client, const ClientQuota& quota,
            std::function<void(int64_t)> done);

  // Drops the counts of clients no longer configured (bounded by the config).
  void forgetRemoved(const Config& config);
  // Clients with a count held here (workflow_proxy_tracked_entries{map="quota_windows"}).
  size_t size() const { return windows_.size(); }

  // Decoders of the scripts' replies (Redis is untrusted): acquire's
  // {1, bucket_end_ms, used} or {0, retry_ms, used} and used's count, checked
  // against what the script could have sent; nullopt otherwise.
  struct SharedAnswer {
    bool allowed = false;
    int64_t bucket_end_ms = 0;
    int64_t retry_ms = 0;
    int64_t used = 0;
  };
  static std::optional<SharedAnswer> decodeAcquire(const RedisReply& reply, const ClientQuota& quota);
  static std::optional<int64_t> decodeUsed(const RedisReply& reply);

  static int64_t bucketWidthMs(const ClientQuota& quota);

 private:
  friend class QuotaTicket;
  // Bucket end (unix ms) → runs.
  using Window = std::map<int64_t, int64_t>;
  static std::string budgetOf(const std::string& org, const std::string& client);
  std::string redisKey(const std::string& budget) const;
  // Prunes and counts `w` at `now_ms`.
  static int64_t count(Window& w, int64_t window_ms, int64_t now_ms);
  QuotaDecision decideLocally(const std::string& budget, const ClientQuota& quota);
  void giveBack(const std::string& budget, int64_t bucket_end_ms, const std::string& shared_bucket);

  Runtime& runtime_;
  RedisLink* redis_;
  const std::string prefix_;
  std::unordered_map<std::string, Window> windows_;  // budget → buckets
  std::unique_ptr<RedisScriptRunner> scripts_;      // with `redis_`
  struct Scripts;
  std::unique_ptr<Scripts> script_;
};

}  // namespace wfp

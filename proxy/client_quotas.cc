// Client quotas (client_quotas.h). Redis layout, per client C of organisation
// O, with the configured prefix P and a hash tag so a cluster keeps it in one
// slot:
//
//   P quota:{O/C}   hash: field = a bucket's end (unix ms, Redis time),
//                   value = runs granted in it. Pruned by every script;
//                   PEXPIRE the longest window + bucket seen.
//
// Bucket ends name moments, not indexes, so instances whose windows differ
// (a rolling reload) still read one another's buckets correctly.
#include "proxy/client_quotas.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "proxy/redis_client.h"
#include "proxy/redis_script.h"

namespace wfp {

namespace {

constexpr int64_t kBuckets = 60;
constexpr int64_t kMaxWindowMs = 365LL * 86'400'000;  // as the budgets: a year

// The prune shared by both scripts: drops buckets that no longer count, and
// anything the scripts could not have written (untrusted Redis); leaves the
// live buckets in `ends` and their sum in `used`.
#define WFP_QUOTA_PRUNE                                                                      \
  "local t = redis.call('TIME')\n"                                                           \
  "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                  \
  "local window = tonumber(ARGV[2])\n"                                                       \
  "local all = redis.call('HGETALL', KEYS[1])\n"                                             \
  "local ends = {}\n"                                                                        \
  "local used = 0\n"                                                                         \
  "for i = 1, #all, 2 do\n"                                                                  \
  "  local e = tonumber(all[i])\n"                                                           \
  "  local c = tonumber(all[i + 1])\n"                                                       \
  "  if e == nil or c == nil or c ~= math.floor(c) or c <= 0 or e + window <= now or e > now + window then\n" \
  "    redis.call('HDEL', KEYS[1], all[i])\n"                                                \
  "  else\n"                                                                                 \
  "    used = used + c\n"                                                                    \
  "    ends[#ends + 1] = {e, c}\n"                                                           \
  "  end\n"                                                                                  \
  "end\n"

// KEYS: the client's hash. ARGV: limit, window_ms, width_ms.
// Returns {1, bucket_end, used} (granted) or {0, retry_ms, used} (refused).
constexpr const char* kAcquireScript = WFP_QUOTA_PRUNE R"lua(
local limit = tonumber(ARGV[1])
local width = tonumber(ARGV[3])
if used >= limit then
  table.sort(ends, function(a, b) return a[1] < b[1] end)
  local over = used - limit + 1
  local wait = window
  for _, b in ipairs(ends) do
    over = over - b[2]
    if over <= 0 then
      wait = b[1] + window - now
      break
    end
  end
  if wait < 1 then
    wait = 1
  end
  return {0, wait, used}
end
local bucket = math.floor(now / width) * width + width
redis.call('HINCRBY', KEYS[1], string.format('%d', bucket), 1)
if redis.call('PTTL', KEYS[1]) < window + width then
  redis.call('PEXPIRE', KEYS[1], window + width)
end
return {1, bucket, used + 1}
)lua";

// KEYS: the client's hash. ARGV: (unused), window_ms. Returns used.
constexpr const char* kUsedScript = "local _ = ARGV[1]\n" WFP_QUOTA_PRUNE "return used\n";

#undef WFP_QUOTA_PRUNE

// KEYS: the client's hash. ARGV: a bucket's field. One run given back.
constexpr const char* kGiveBackScript = R"lua(
local c = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if c == nil or c <= 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
end
return 0
)lua";

int64_t windowMs(const ClientQuota& q) {
  return std::clamp<int64_t>(static_cast<int64_t>(std::ceil(q.window_s * 1000.0)), 1, kMaxWindowMs);
}

int retrySeconds(int64_t ms) { return static_cast<int>(std::max<int64_t>(1, (ms + 999) / 1000)); }

std::optional<int64_t> integerAt(const RedisReply& reply, size_t i) {
  if (i >= reply.elements.size() || reply.elements[i].type != RedisReply::Type::Integer) return std::nullopt;
  return reply.elements[i].integer;
}

}  // namespace

struct ClientQuotas::Scripts {
  RedisScriptRunner::Script acquire{kAcquireScript};
  RedisScriptRunner::Script used{kUsedScript};
};

// --- tickets -------------------------------------------------------------------

QuotaTicket& QuotaTicket::operator=(QuotaTicket&& other) noexcept {
  if (this != &other) {
    release();
    owner_ = std::exchange(other.owner_, nullptr);
    budget_ = std::move(other.budget_);
    bucket_end_ms_ = other.bucket_end_ms_;
    shared_bucket_ = std::move(other.shared_bucket_);
  }
  return *this;
}

void QuotaTicket::release() {
  if (!owner_) return;
  ClientQuotas* owner = std::exchange(owner_, nullptr);
  owner->giveBack(budget_, bucket_end_ms_, shared_bucket_);
}

// --- quotas --------------------------------------------------------------------

ClientQuotas::ClientQuotas(Runtime& runtime, RedisLink* shared, std::string key_prefix)
    : runtime_(runtime), redis_(shared), prefix_(std::move(key_prefix)) {
  if (redis_) {
    scripts_ = std::make_unique<RedisScriptRunner>(*redis_, "client quotas");
    script_ = std::make_unique<Scripts>();
  }
}

ClientQuotas::~ClientQuotas() = default;

int64_t ClientQuotas::bucketWidthMs(const ClientQuota& quota) { return std::max<int64_t>(1, windowMs(quota) / kBuckets); }

std::string ClientQuotas::budgetOf(const std::string& org, const std::string& client) { return org + "/" + client; }

std::string ClientQuotas::redisKey(const std::string& budget) const { return prefix_ + "quota:{" + budget + "}"; }

int64_t ClientQuotas::count(Window& w, int64_t window_ms, int64_t now_ms) {
  int64_t used = 0;
  for (auto it = w.begin(); it != w.end();) {
    if (it->first + window_ms <= now_ms || it->second <= 0) {
      it = w.erase(it);
    } else {
      used += it->second;
      ++it;
    }
  }
  return used;
}

QuotaDecision ClientQuotas::decideLocally(const std::string& budget, const ClientQuota& quota) {
  const int64_t window = windowMs(quota);
  const int64_t width = bucketWidthMs(quota);
  const int64_t now = runtime_.unixMillis();
  Window& w = windows_[budget];
  int64_t used = count(w, window, now);
  QuotaDecision d;
  if (used >= quota.runs) {
    // The bucket whose end brings the count below the quota.
    int64_t over = used - quota.runs + 1;
    int64_t wait = window;
    for (const auto& [end, n] : w) {
      over -= n;
      if (over <= 0) {
        wait = end + window - now;
        break;
      }
    }
    d.allowed = false;
    d.retry_after_s = retrySeconds(wait);
    return d;
  }
  const int64_t end = now / width * width + width;
  ++w[end];
  d.ticket.owner_ = this;
  d.ticket.budget_ = budget;
  d.ticket.bucket_end_ms_ = end;
  return d;
}

void ClientQuotas::acquire(const std::string& org, const std::string& client, const ClientQuota& quota,
                           std::function<void(QuotaDecision)> done) {
  std::string budget = budgetOf(org, client);
  if (!redis_ || !redis_->up()) return done(decideLocally(budget, quota));
  const int64_t window = windowMs(quota);
  // The fleet ran at least what this instance ran: a count Redis lost (a
  // restart, a flush) never lets this instance's own runs go over.
  if (int64_t own = count(windows_[budget], window, runtime_.unixMillis()); own >= quota.runs) {
    return done(decideLocally(budget, quota));
  }
  scripts_->run(
      script_->acquire, {redisKey(budget)},
      {std::to_string(quota.runs), std::to_string(window), std::to_string(bucketWidthMs(quota))},
      [this, budget, quota, done = std::move(done)](std::optional<RedisReply> reply) {
        std::optional<SharedAnswer> answer;
        if (reply && !reply->isError()) answer = decodeAcquire(*reply, quota);
        if (!answer) {
          // Away, or an answer we cannot believe: this instance's count decides.
          if (reply && reply->isError()) spdlog::warn("client quotas: Redis refused the script: {}", reply->str);
          return done(decideLocally(budget, quota));
        }
        QuotaDecision d;
        if (!answer->allowed) {
          d.allowed = false;
          d.retry_after_s = retrySeconds(answer->retry_ms);
          return done(std::move(d));
        }
        // Recorded here too: the count that decides while Redis is away.
        const int64_t width = bucketWidthMs(quota);
        const int64_t now = runtime_.unixMillis();
        const int64_t end = now / width * width + width;
        ++windows_[budget][end];
        d.ticket.owner_ = this;
        d.ticket.budget_ = budget;
        d.ticket.bucket_end_ms_ = end;
        d.ticket.shared_bucket_ = std::to_string(answer->bucket_end_ms);
        done(std::move(d));
      });
}

void ClientQuotas::used(const std::string& org, const std::string& client, const ClientQuota& quota,
                        std::function<void(int64_t)> done) {
  std::string budget = budgetOf(org, client);
  auto local = [this, budget, window = windowMs(quota)] {
    auto it = windows_.find(budget);
    return it == windows_.end() ? int64_t{0} : count(it->second, window, runtime_.unixMillis());
  };
  if (!redis_ || !redis_->up()) return done(local());
  scripts_->run(script_->used, {redisKey(budget)}, {"0", std::to_string(windowMs(quota))},
                [local, done = std::move(done)](std::optional<RedisReply> reply) {
                  std::optional<int64_t> n;
                  if (reply && !reply->isError()) n = decodeUsed(*reply);
                  done(std::max(n.value_or(0), local()));  // at least this instance's own
                });
}

void ClientQuotas::giveBack(const std::string& budget, int64_t bucket_end_ms, const std::string& shared_bucket) {
  if (auto it = windows_.find(budget); it != windows_.end()) {
    if (auto b = it->second.find(bucket_end_ms); b != it->second.end() && --b->second <= 0) it->second.erase(b);
  }
  if (!shared_bucket.empty() && redis_) {
    // Fire and forget: if it is lost, the run counts until its bucket ends.
    redis_->command({"EVAL", kGiveBackScript, "1", redisKey(budget), shared_bucket}, nullptr);
  }
}

void ClientQuotas::forgetRemoved(const Config& config) {
  for (auto it = windows_.begin(); it != windows_.end();) {
    bool kept = false;
    for (const auto& org : config.organisations) {
      for (const auto& c : org.clients) kept |= c.quota && it->first == budgetOf(org.name, c.name);
    }
    it = kept ? std::next(it) : windows_.erase(it);
  }
}

std::optional<ClientQuotas::SharedAnswer> ClientQuotas::decodeAcquire(const RedisReply& reply,
                                                                      const ClientQuota& quota) {
  if (reply.type != RedisReply::Type::Array || reply.elements.size() != 3) return std::nullopt;
  auto flag = integerAt(reply, 0);
  auto value = integerAt(reply, 1);
  auto used = integerAt(reply, 2);
  if (!flag || !value || !used) return std::nullopt;
  SharedAnswer a;
  a.used = *used;
  if (*flag == 1) {
    // Granted below the quota: 1 ≤ used ≤ runs, a bucket end in unix ms.
    if (*used < 1 || *used > quota.runs || *value <= 0) return std::nullopt;
    a.allowed = true;
    a.bucket_end_ms = *value;
    return a;
  }
  if (*flag != 0) return std::nullopt;
  // Refused: a wait within one window and bucket.
  if (*used < quota.runs || *value < 1 || *value > windowMs(quota) + bucketWidthMs(quota)) return std::nullopt;
  a.retry_ms = *value;
  return a;
}

std::optional<int64_t> ClientQuotas::decodeUsed(const RedisReply& reply) {
  if (reply.type != RedisReply::Type::Integer || reply.integer < 0) return std::nullopt;
  return reply.integer;
}

}  // namespace wfp

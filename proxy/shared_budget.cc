// Shared budgets in Redis (docs/rate-limits.md). Key layout, per budget B, all with the
// configured prefix P and the hash tag {B}, so a budget's keys share a Redis
// Cluster slot and one script may touch them all:
//
//   P rl:{B}:starts    sorted set: member "<instance>:<n>", score = start (ms,
//                      Redis server time); pruned by the script, PEXPIRE 2×window
//   P rl:{B}:inflight  sorted set of leases: same member as its start, score =
//                      lease expiry (ms). A lease is removed by finish(),
//                      renewed by its owner every kLeaseRenewEvery, and simply
//                      expires when its owner died mid-request, so in-flight
//                      counts never leak.
//   P rl:{B}:pause     "1" with PX = the pause still in force
//
// and per instance:
//
//   P instance:<id>    "1" PX 3000, refreshed every second (the heartbeat key)
//   P instances        sorted set: member = instance id, score = last heartbeat
//                      (ms); members older than 3 s are pruned by every
//                      heartbeat, whose script returns the ZCARD.
//
// The heartbeat key and the instances set live in different slots, so they
// are written by two commands rather than one script (Cluster forbids a
// script across slots).
//
// Every time is Redis' own (TIME inside the scripts: Redis 7 replicates a
// script's effects, not the script), so the instances' clocks do not matter.
// Times are whole milliseconds: Lua hands numbers to redis.call() formatted
// with "%.14g", which keeps a 13-digit millisecond timestamp exact.
//
// Lifetime: every command we wait for is recorded with its RedisClient id and
// cancelled in the destructor, so no reply reaches a destroyed SharedBudget.
// Fire-and-forget commands carry no callback.
#include "proxy/shared_budget.h"

#include <sys/random.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <exception>
#include <optional>
#include <random>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "proxy/rate_limiter.h"
#include "proxy/redis_client.h"
#include "proxy/redis_script.h"

namespace wfp {
namespace {

using namespace std::chrono_literals;

// Same as RateLimiter::kSafetyMargin: a start counts for window + margin.
constexpr int64_t kMarginMs = 10;
static_assert(std::chrono::milliseconds(kMarginMs) == RateLimiter::kSafetyMargin);
// The longest pause is the longest Retry-After the limiter believes.
static_assert(SharedBudget::kMaxWaitMs == static_cast<int64_t>(RateLimiter::kMaxRetryAfterS * 1000));
// A lease outlives its last renewal by this much; an instance that dies
// mid-request holds its concurrency slots at most this long.
constexpr int64_t kLeaseMs = 60'000;
constexpr int kLeaseRenewEvery = 20;  // heartbeats (seconds)
constexpr int64_t kHeartbeatTtlMs = 3'000;
constexpr auto kHeartbeatInterval = 1s;
constexpr auto kHeartbeatRetry = 250ms;  // until the first heartbeat is answered
constexpr auto kErrorLogInterval = 10s;

// KEYS: starts, inflight, pause.
// ARGV: limit, span_ms (window + margin), max_concurrent, member, lease_ms,
//       starts_ttl_ms.
// Returns {admitted 0|1, wait_ms, remaining}.
//
// A start at millisecond S counts while now − S ≤ span (strictly older ones
// are dropped): S is TIME rounded down, so in real time a start counts for at
// least span, never less.
constexpr std::string_view kTryStartScript = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local max_concurrent = tonumber(ARGV[3])
local lease = tonumber(ARGV[5])
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then
  return {0, paused, 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= max_concurrent then
  return {0, 0, 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - span))
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  -- The start whose departure brings the count below the limit (the oldest
  -- unless the limit was lowered meanwhile).
  local first = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
  local wait = span
  if first[2] then
    wait = tonumber(first[2]) + span + 1 - now
  end
  if wait < 1 then
    wait = 1
  end
  return {0, wait, 0}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
redis.call('PEXPIRE', KEYS[2], 2 * lease)
return {1, 0, limit - n - 1}
)lua";

// KEYS: starts. ARGV: member, starts_ttl_ms. Moves an admitted start to now
// (never earlier); one pruned meanwhile (sent that late) counts again.
constexpr std::string_view kSentScript = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) >= now then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
)lua";

// KEYS: pause. ARGV: pause_ms. Never shortens a longer pause.
constexpr std::string_view kPauseScript = R"lua(
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  return 1
end
return 0
)lua";

// KEYS: instances. ARGV: instance id, ttl_ms. Returns the live count.
constexpr std::string_view kHeartbeatScript = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return redis.call('ZCARD', KEYS[1])
)lua";

// KEYS: inflight. ARGV: lease_ms, members… Re-adds leases that expired while
// Redis was unreachable (or lost in a Redis restart): they are still in flight.
constexpr std::string_view kRenewScript = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], 2 * lease)
return #ARGV - 1
)lua";

std::string randomInstanceId() {
  std::array<unsigned char, 8> bytes{};
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = ::getrandom(bytes.data() + got, bytes.size() - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (got < bytes.size()) {  // no getrandom(): still unique enough per process
    std::random_device rd;
    for (auto& b : bytes) b = static_cast<unsigned char>(rd());
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id;
  id.reserve(16);
  for (unsigned char b : bytes) {
    id.push_back(kHex[b >> 4]);
    id.push_back(kHex[b & 0xf]);
  }
  return id;
}

// window + margin, as the scripts count a start (ms); window_ms ≥ 1.
int64_t spanMs(int64_t window_ms) {
  // A year at most, as RateLimiter: keeps 2 × span far from overflowing.
  constexpr int64_t kMaxWindowMs = 365LL * 86'400'000;
  return std::clamp<int64_t>(window_ms, 1, kMaxWindowMs) + kMarginMs;
}

std::optional<int64_t> integerAt(const RedisReply& reply, size_t i) {
  if (i >= reply.elements.size() || reply.elements[i].type != RedisReply::Type::Integer) return std::nullopt;
  return reply.elements[i].integer;
}

}  // namespace

struct SharedBudget::Impl {
  using Callback = RedisLink::Callback;
  using Script = RedisScriptRunner::Script;

  Impl(SharedBudget& owner, Runtime& loop, RedisLink& redis, std::string prefix)
      : owner(owner),
        redis(redis),
        prefix(std::move(prefix)),
        instance_id(randomInstanceId()),
        scripts(redis, "shared budget"),
        heartbeat_timer(loop, [this] { heartbeat(); }) {
    heartbeat_timer.start(0us);
  }

  ~Impl() {
    heartbeat_timer.cancel();
    // Best effort: requests still counted as ours no longer run through us.
    for (auto& [budget, members] : leases) {
      std::vector<std::string> argv{"ZREM", inflightKey(budget)};
      argv.insert(argv.end(), members.begin(), members.end());
      redis.command(std::move(argv), nullptr);
    }
    redis.command({"ZREM", prefix + "instances", instance_id}, nullptr);
    redis.command({"DEL", prefix + "instance:" + instance_id}, nullptr);
  }

  std::string budgetKey(const std::string& budget, std::string_view what) const {
    std::string key;
    key.reserve(prefix.size() + budget.size() + what.size() + 6);
    key.append(prefix).append("rl:{").append(budget).append("}:").append(what);
    return key;
  }
  std::string startsKey(const std::string& budget) const { return budgetKey(budget, "starts"); }
  std::string inflightKey(const std::string& budget) const { return budgetKey(budget, "inflight"); }
  std::string pauseKey(const std::string& budget) const { return budgetKey(budget, "pause"); }

  void runScript(Script& script, std::vector<std::string> keys, std::vector<std::string> args, Callback cb,
                 std::function<void()> on_drop = {}) {
    scripts.run(script, std::move(keys), std::move(args), std::move(cb), std::move(on_drop));
  }

  // A reply no script of ours could have sent (rate-limited like errors).
  void logBad(std::string_view what, const RedisReply&) {
    auto now = std::chrono::steady_clock::now();
    if (last_error_log && now - *last_error_log < kErrorLogInterval) return;
    last_error_log = now;
    spdlog::warn("shared budget: {}: Redis answered out of range; not believed", what);
  }

  void logError(std::string_view what, const std::optional<RedisReply>& reply) {
    if (!reply || !reply->isError()) return;  // outages are RedisClient's to report
    auto now = std::chrono::steady_clock::now();
    if (last_error_log && now - *last_error_log < kErrorLogInterval) return;
    last_error_log = now;
    spdlog::warn("shared budget: {} failed: {}", what, reply->str);
  }

  // --- decisions --------------------------------------------------------------

  void tryStart(const std::string& budget, int limit, int64_t window_ms, int max_concurrent,
                std::function<void(SharedDecision)> done) {
    std::string member = instance_id + ":" + std::to_string(next_member++);
    std::string inflight = inflightKey(budget);
    const int64_t span = spanMs(window_ms);
    runScript(
        try_start_script, {startsKey(budget), inflight, pauseKey(budget)},
        {std::to_string(std::max(limit, 1)), std::to_string(span), std::to_string(std::max(max_concurrent, 1)),
         member, std::to_string(kLeaseMs), std::to_string(2 * span)},
        [this, budget, inflight, member, limit = std::max(limit, 1), span,
         done = std::move(done)](std::optional<RedisReply> reply) {
          SharedDecision d;
          std::optional<SharedDecision> decoded;
          if (reply && !reply->isError()) decoded = decodeDecision(*reply, limit, span);
          if (decoded) {
            d = std::move(*decoded);
            if (d.admitted) {
              d.member = member;
              leases[budget].push_back(member);  // before done(), which may finish() at once
            }
          } else {
            // No answer, or one we cannot read or believe: the script may
            // still have run (a timeout), so give back the lease it may have
            // taken. Harmless if it did not; if this fails too, the lease expires.
            if (reply && !reply->isError()) logBad("tryStart", *reply);
            logError("tryStart", reply);
            redis.command({"ZREM", inflight, member}, nullptr);
          }
          if (done) done(d);  // may destroy us: nothing after this
        },
        // Destroyed before the answer: give back the lease it may have taken.
        [&redis = redis, inflight, member] { redis.command({"ZREM", inflight, member}, nullptr); });
  }

  void sent(const std::string& budget, const std::string& member, int64_t window_ms) {
    if (member.empty()) return;
    // The starts' time to live, as tryStart sets it.
    runScript(sent_script, {startsKey(budget)}, {member, std::to_string(2 * spanMs(window_ms))},
              [this](std::optional<RedisReply> reply) { logError("sent", reply); });
  }

  void finish(const std::string& budget) {
    auto it = leases.find(budget);
    if (it == leases.end()) return;  // nothing of ours in flight: never below 0
    std::string member = std::move(it->second.back());
    it->second.pop_back();
    if (it->second.empty()) leases.erase(it);
    redis.command({"ZREM", inflightKey(budget), std::move(member)}, nullptr);
  }

  void pause(const std::string& budget, int64_t pause_ms) {
    if (pause_ms <= 0) return;
    runScript(pause_script, {pauseKey(budget)}, {std::to_string(pause_ms)},
              [this](std::optional<RedisReply> reply) { logError("pause", reply); });
  }

  // --- heartbeats -------------------------------------------------------------

  void heartbeat() {
    redis.command({"SET", prefix + "instance:" + instance_id, "1", "PX", std::to_string(kHeartbeatTtlMs)}, nullptr);
    runScript(heartbeat_script, {prefix + "instances"}, {instance_id, std::to_string(kHeartbeatTtlMs)},
              [this](std::optional<RedisReply> reply) {
                std::optional<int> alive;
                if (reply && !reply->isError()) alive = decodeInstances(*reply);
                if (alive) {
                  owner.instances_alive_ = *alive;
                  heard_once = true;
                } else {
                  // Down, or an answer we cannot believe: keep the last count.
                  if (reply && !reply->isError()) logBad("heartbeat", *reply);
                  logError("heartbeat", reply);
                }
              });
    if (++ticks % kLeaseRenewEvery == 0) renewLeases();
    heartbeat_timer.start(heard_once ? std::chrono::duration_cast<std::chrono::microseconds>(kHeartbeatInterval)
                                     : std::chrono::duration_cast<std::chrono::microseconds>(kHeartbeatRetry));
  }

  void renewLeases() {
    for (const auto& [budget, members] : leases) {
      std::vector<std::string> args{std::to_string(kLeaseMs)};
      args.insert(args.end(), members.begin(), members.end());
      runScript(renew_script, {inflightKey(budget)}, std::move(args),
                [this](std::optional<RedisReply> reply) { logError("lease renewal", reply); });
    }
  }

  SharedBudget& owner;
  RedisLink& redis;
  const std::string prefix;
  const std::string instance_id;
  uint64_t next_member = 0;
  uint64_t ticks = 0;
  bool heard_once = false;
  std::optional<std::chrono::steady_clock::time_point> last_error_log;
  Script try_start_script{kTryStartScript};
  Script pause_script{kPauseScript};
  Script sent_script{kSentScript};
  Script heartbeat_script{kHeartbeatScript};
  Script renew_script{kRenewScript};
  // The commands we wait for: cancelled (a pending tryStart's lease given
  // back) when we go, before the leases below are released.
  RedisScriptRunner scripts;
  // Our admitted starts not yet finished, per budget (interchangeable).
  std::unordered_map<std::string, std::vector<std::string>> leases;
  Timer heartbeat_timer;  // last: cancelled first
};

SharedBudget::SharedBudget(Runtime& loop, RedisLink& redis, std::string key_prefix)
    : impl_(std::make_unique<Impl>(*this, loop, redis, std::move(key_prefix))) {}

SharedBudget::~SharedBudget() = default;

void SharedBudget::tryStart(const std::string& budget, int limit, int64_t window_ms, int max_concurrent,
                            std::function<void(SharedDecision)> done) {
  impl_->tryStart(budget, limit, window_ms, max_concurrent, std::move(done));
}

void SharedBudget::sent(const std::string& budget, const std::string& member, int64_t window_ms) {
  impl_->sent(budget, member, window_ms);
}

std::optional<SharedDecision> SharedBudget::decodeDecision(const RedisReply& reply, int limit, int64_t span_ms) {
  if (reply.type != RedisReply::Type::Array || reply.elements.size() != 3) return std::nullopt;
  auto admitted = integerAt(reply, 0);
  auto wait = integerAt(reply, 1);
  auto remaining = integerAt(reply, 2);
  if (!admitted || !wait || !remaining) return std::nullopt;
  SharedDecision d;
  d.reachable = true;
  if (*admitted == 1) {
    // The script admits only below the limit: limit − n − 1 with n < limit.
    if (*wait != 0 || *remaining < 0 || *remaining >= std::max(limit, 1)) return std::nullopt;
    d.admitted = true;
    d.remaining = *remaining;
  } else if (*admitted == 0) {
    // PTTL of a pause, or until the window's oldest start leaves it; 0:
    // wait for a release. Negative: no script of ours says that. Longer than
    // any pause or window: cut, so that nothing waits on Redis' word for ever.
    if (*wait < 0 || *remaining != 0) return std::nullopt;
    d.wait_ms = std::min<int64_t>(*wait, std::max<int64_t>(kMaxWaitMs, span_ms + 1));
  } else {
    return std::nullopt;
  }
  return d;
}

std::optional<int> SharedBudget::decodeInstances(const RedisReply& reply) {
  // The script counts this instance too: at least 1.
  if (reply.type != RedisReply::Type::Integer || reply.integer < 1 || reply.integer > kMaxInstances) {
    return std::nullopt;
  }
  return static_cast<int>(reply.integer);
}

std::optional<std::string> SharedBudget::decodeDigest(const RedisReply& reply) {
  return RedisScriptRunner::decodeDigest(reply);
}

void SharedBudget::finish(const std::string& budget) { impl_->finish(budget); }

void SharedBudget::pause(const std::string& budget, int64_t pause_ms) { impl_->pause(budget, pause_ms); }

}  // namespace wfp

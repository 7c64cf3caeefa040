// The Lua scripts of the fleet's locks and purge generations, in one place:
// the code that sends them and the simulated Redis of tests/simulation,
// which runs each one's meaning in C++, name the same text.
// (The shared budget's scripts live with it, in shared_budget.cc.)
#pragma once

namespace wfp {

// A flight's lock (coalescer.cc): KEYS[1] the lock, ARGV[1] this instance.
// Extends the lock by ARGV[2] ms if this instance still holds it.
inline constexpr const char* kLockRenewScript =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0";
// Deletes the lock if this instance still holds it.
inline constexpr const char* kLockReleaseScript =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0";

// Purge generations (cache_store.cc): KEYS[1] the workflow's generation key.
// Raises the generation in Redis to at least ARGV[1] (a floor this instance
// has seen): a Redis that restarted empty, a flushed key or a value that is
// not a generation must never move a workflow's generation backwards.
inline constexpr const char* kGenerationRaiseScript =
    "local cur = tonumber(redis.call('get', KEYS[1]) or '0') "
    "local floor = tonumber(ARGV[1]) "
    "if cur == nil or cur ~= math.floor(cur) or cur < floor or cur > 9007199254740990 then "
    "redis.call('set', KEYS[1], ARGV[1]) return floor end "
    "return cur";
// A purge: the generation moves past both Redis' value and the floor, and to
// at least ARGV[2], the purging instance's clock (unix ms). The clock is what
// keeps a purge effective after Redis lost the key (docs/security.md): an instance
// that never heard of an earlier purge has no floor for it, but its clock is
// past that purge's generation, so the two never meet on one generation.
inline constexpr const char* kGenerationPurgeScript =
    "local cur = tonumber(redis.call('get', KEYS[1]) or '0') "
    "local floor = tonumber(ARGV[1]) "
    "local clock = tonumber(ARGV[2] or '0') "
    "if cur == nil or cur ~= math.floor(cur) or cur < 0 or cur > 9007199254740990 then cur = 0 end "
    "if cur < floor then cur = floor end "
    "cur = cur + 1 "
    "if clock ~= nil and clock == math.floor(clock) and clock > cur and clock <= 9007199254740990 then cur = clock end "
    "redis.call('set', KEYS[1], string.format('%d', cur)) "
    "return cur";

}  // namespace wfp

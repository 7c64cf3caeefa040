#include "proxy/coalescer.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <spdlog/spdlog.h>

#include "proxy/headers.h"
#include "proxy/redis_client.h"
#include "proxy/redis_scripts.h"

namespace wfp {

namespace {

constexpr int kLockMs = 10000;
constexpr auto kRenewEvery = std::chrono::milliseconds(3000);
constexpr auto kPollEvery = std::chrono::milliseconds(1000);

}  // namespace

struct Coalescer::Flight {
  enum class State { Locking, Leading, Following, Done };
  uint64_t id = 0;
  std::string key;
  State state = State::Locking;
  std::vector<uint64_t> waiters;
  bool started = false;
  bool lock_held = false;
  bool subscribed = false;
  std::unique_ptr<Timer> timer;  // renew (leading) or poll (following)
  std::string lockKey() const { return key + ":lock"; }
  std::string channel() const { return key + ":done"; }
};

Coalescer::Coalescer(Runtime& runtime, RedisLink* redis, std::string key_prefix, FlightHooks hooks)
    : runtime_(runtime),
      redis_(redis),
      prefix_(std::move(key_prefix)),
      hooks_(std::move(hooks)),
      instance_(newRequestId()),
      life_(runtime) {}

Coalescer::~Coalescer() {
  for (auto& [id, f] : flights_) {
    if (redis_ && f->subscribed) redis_->unsubscribe(f->channel());
  }
}

Coalescer::Flight* Coalescer::find(uint64_t flight_id) {
  auto it = flights_.find(flight_id);
  return it == flights_.end() ? nullptr : it->second.get();
}

Coalescer::Joined Coalescer::join(std::string key, WaiterFn fn, WaiterNeeds needs,
                                  const std::function<void(uint64_t)>& on_create, uint64_t owner) {
  Joined j;
  j.waiter = next_id_++;
  auto existing = by_key_.find(key);
  if (existing != by_key_.end()) {
    Flight& f = *flights_.at(existing->second);
    f.waiters.push_back(j.waiter);
    waiters_.emplace(j.waiter, Waiter{f.id, std::move(fn), needs, owner});
    j.flight = f.id;
    return j;
  }
  auto owned = std::make_unique<Flight>();
  Flight& f = *owned;
  f.id = next_id_++;
  f.key = std::move(key);
  f.waiters.push_back(j.waiter);
  flights_.emplace(f.id, std::move(owned));
  by_key_.emplace(std::string_view(f.key), f.id);
  waiters_.emplace(j.waiter, Waiter{f.id, std::move(fn), needs, owner});
  j.flight = f.id;
  j.created = true;
  if (on_create) on_create(f.id);
  joining_ = true;  // lead() answers nobody before join() returns
  if (redis_ && redis_->up()) {
    tryLock(f.id);
  } else {
    lead(f);
  }
  joining_ = false;
  return j;
}

void Coalescer::tryLock(uint64_t flight_id) {
  Flight* f = find(flight_id);
  if (!f) return;
  f->state = Flight::State::Locking;
  std::string lock_key = f->lockKey();
  redis_->command({"SET", lock_key, instance_, "NX", "PX", std::to_string(kLockMs)},
                  [this, flight_id, lock_key](std::optional<RedisReply> reply) {
                    Flight* fl = find(flight_id);
                    bool got_lock = reply && reply->type == RedisReply::Type::Status;
                    if (!fl || fl->state != Flight::State::Locking) {
                      // Abandoned while we asked: give the lock back at once.
                      if (got_lock && redis_) {
                        redis_->command({"EVAL", kLockReleaseScript, "1", lock_key, instance_},
                                        [](std::optional<RedisReply>) {});
                      }
                      return;
                    }
                    if (!reply || reply->isError()) {
                      lead(*fl);  // Redis is down or slow: run here
                    } else if (reply->type == RedisReply::Type::Status) {
                      fl->lock_held = true;
                      leadUnlessStored(*fl);
                    } else {
                      follow(*fl);
                    }
                  });
}

// The lock is ours, but its previous holder may have stored the result and
// let go between our cache look-up and our lock attempt (its write and unlock
// crossed our GET). One more look before running: one input, one run, also
// across instances.
void Coalescer::leadUnlessStored(Flight& f) {
  // A waiter that accepts no stored answer (no-cache) makes the look moot.
  if (!hooks_.lookup_shared || minStoredAt(f) == INT64_MAX) return lead(f);
  uint64_t flight_id = f.id;
  hooks_.lookup_shared(f.key, minStoredAt(f), [this, flight_id](CachedResponsePtr entry) {
    Flight* fl = find(flight_id);
    if (!fl || fl->state != Flight::State::Locking) return;  // left meanwhile: leave() gave the lock back
    // Only an entry every waiter's Cache-Control accepts (no-cache, max-age,
    // the TTL) answers them; anything else is run afresh.
    if (!entry || !acceptable(*fl, *entry)) return lead(*fl);
    deliverStored(flight_id, std::move(entry));  // gives the lock back
  });
}

int64_t Coalescer::minStoredAt(const Flight& f) const {
  int64_t min = 0;
  for (uint64_t w : f.waiters) {
    auto it = waiters_.find(w);
    if (it != waiters_.end()) min = std::max(min, it->second.needs.min_stored_at_ms);
  }
  return min;
}

bool Coalescer::acceptable(const Flight& f, const CachedResponse& entry) const {
  return entry.stored_at_ms >= minStoredAt(f);
}

bool Coalescer::anyMayRun(const Flight& f) const {
  for (uint64_t w : f.waiters) {
    auto it = waiters_.find(w);
    if (it != waiters_.end() && it->second.needs.may_run) return true;
  }
  return false;
}

void Coalescer::deliverStored(uint64_t flight_id, CachedResponsePtr entry) {
  FlightOutcome o;
  o.response = std::move(entry);
  o.stored = true;
  o.remote = true;
  deliver(flight_id, o);
}

void Coalescer::lead(Flight& f) {
  if (!anyMayRun(f) && joining_) {
    // Answered on a later turn (a waiter that may run can join meanwhile).
    life_.post([this, id = f.id] {
      if (Flight* fl = find(id); fl && fl->state == Flight::State::Locking) lead(*fl);
    });
    return;
  }
  if (!anyMayRun(f)) {
    // Only only-if-cached waiters: they never cause an upstream run.
    FlightOutcome o;
    o.rejected = FlightOutcome::Rejected::NotCached;
    deliver(f.id, o);
    return;
  }
  f.state = Flight::State::Leading;
  if (f.subscribed && redis_) {
    redis_->unsubscribe(f.channel());
    f.subscribed = false;
  }
  uint64_t id = f.id;
  if (f.lock_held) {
    f.timer = std::make_unique<Timer>(runtime_, [this, id] { life_.post([this, id] { renew(id); }); });
    f.timer->start(kRenewEvery);
  } else {
    f.timer.reset();
  }
  if (hooks_.on_lead) hooks_.on_lead(id);  // may complete (and free) the flight: `f` is not used after it
}

void Coalescer::renew(uint64_t flight_id) {
  Flight* f = find(flight_id);
  if (!f || !f->lock_held || !redis_) return;
  redis_->command({"EVAL", kLockRenewScript, "1", f->lockKey(), instance_, std::to_string(kLockMs)},
                  [](std::optional<RedisReply>) {});
  f->timer->start(kRenewEvery);
}

void Coalescer::follow(Flight& f) {
  f.state = Flight::State::Following;
  uint64_t id = f.id;
  redis_->subscribe(f.channel(), [this, id](const std::string&, const std::string& message) { onMessage(id, message); });
  f.subscribed = true;
  // On a turn of its own, not in the timer's callback: poll() may end the
  // flight, and the timer with it.
  f.timer = std::make_unique<Timer>(runtime_, [this, id] { life_.post([this, id] { poll(id); }); });
  // A first re-check right away: the leader may have finished between our
  // lock attempt and the subscription.
  f.timer->start(std::chrono::milliseconds(50));
}

void Coalescer::poll(uint64_t flight_id) {
  Flight* f = find(flight_id);
  if (!f || f->state != Flight::State::Following) return;
  f->timer->start(kPollEvery);
  if (!redis_->up()) {
    // Redis went away while we waited for another instance: run it here.
    lead(*f);
    return;
  }
  if (hooks_.lookup_shared && minStoredAt(*f) != INT64_MAX) {
    hooks_.lookup_shared(f->key, minStoredAt(*f), [this, flight_id](CachedResponsePtr entry) {
      Flight* fl = find(flight_id);
      if (!fl || fl->state != Flight::State::Following || !entry) return;
      // An entry older than a waiter accepts is not the leader's result: wait on.
      if (!acceptable(*fl, *entry)) return;
      deliverStored(flight_id, std::move(entry));
    });
    // The look may have answered at once (the entry in this instance's L1)
    // and ended the flight.
    f = find(flight_id);
    if (!f || f->state != Flight::State::Following) return;
  }
  redis_->command({"EXISTS", f->lockKey()}, [this, flight_id](std::optional<RedisReply> reply) {
    Flight* fl = find(flight_id);
    if (!fl || fl->state != Flight::State::Following) return;
    if (reply && reply->type == RedisReply::Type::Integer && reply->integer == 0) {
      // The holder is gone without a result: take over.
      spdlog::debug("coalescer: lock for {} expired, taking over", fl->key);
      tryLock(flight_id);
    }
  });
}

const std::string* Coalescer::keyOf(uint64_t flight) const {
  auto it = flights_.find(flight);
  return it == flights_.end() ? nullptr : &it->second->key;
}

uint64_t Coalescer::leader(uint64_t flight) const {
  auto it = flights_.find(flight);
  if (it == flights_.end()) return 0;
  for (uint64_t w : it->second->waiters) {
    auto wit = waiters_.find(w);
    if (wit != waiters_.end() && wit->second.owner) return wit->second.owner;
  }
  return 0;
}

void Coalescer::onMessage(uint64_t flight_id, const std::string& message) {
  Flight* f = find(flight_id);
  if (!f || f->state != Flight::State::Following) return;
  auto outcome = decodeOutcome(message, runtime_.unixMillis());
  if (!outcome) return;  // foreign or corrupt: the poll re-check still covers us
  if (outcome->response) {
    // The leader's run ended at stored_at. A waiter that joined after that,
    // while the message was on its way, would get an answer older than
    // itself: a stored answer, which no-cache refuses (docs/http.md: at every
    // point a stored answer can appear, a coalescing outcome included).
    // (+1: the run may end in the millisecond the request came.)
    std::vector<uint64_t> refusing;
    for (uint64_t w : f->waiters) {
      auto it = waiters_.find(w);
      if (it != waiters_.end() && it->second.needs.min_stored_at_ms > outcome->response->stored_at_ms + 1) {
        refusing.push_back(w);
      }
    }
    if (!refusing.empty()) return answerSome(flight_id, *outcome, refusing);
  }
  deliver(flight_id, *outcome);
}

void Coalescer::answerSome(uint64_t flight_id, const FlightOutcome& outcome, const std::vector<uint64_t>& refusing) {
  Flight* f = find(flight_id);
  if (!f) return;
  std::vector<WaiterFn> answered;
  std::vector<uint64_t> kept;
  for (uint64_t w : f->waiters) {
    auto it = waiters_.find(w);
    if (it == waiters_.end()) continue;
    if (std::find(refusing.begin(), refusing.end(), w) != refusing.end()) {
      kept.push_back(w);
      continue;
    }
    answered.push_back(std::move(it->second.fn));
    waiters_.erase(it);
  }
  f->waiters = std::move(kept);
  // The flight starts over for those left: the lock again, then lead or follow.
  if (f->subscribed && redis_) {
    redis_->unsubscribe(f->channel());
    f->subscribed = false;
  }
  f->timer.reset();
  if (redis_ && redis_->up()) {
    tryLock(flight_id);
  } else {
    lead(*f);
  }
  for (auto& fn : answered) fn(outcome);
}

void Coalescer::markStarted(uint64_t flight) {
  if (Flight* f = find(flight)) f->started = true;
}

void Coalescer::complete(uint64_t flight_id, FlightOutcome outcome) {
  Flight* f = find(flight_id);
  if (!f) return;
  // A leader that is shutting down announces nothing: releasing the lock
  // lets a follower take the run over.
  if (redis_ && f->lock_held && outcome.rejected != FlightOutcome::Rejected::ShuttingDown) {
    // Stored first (by the owner), then announced, then unlocked: one
    // connection keeps the order, so a follower that sees the lock gone
    // finds the entry.
    redis_->command({"PUBLISH", f->channel(), encodeOutcome(outcome)}, [](std::optional<RedisReply>) {});
  }
  deliver(flight_id, outcome);
}

void Coalescer::releaseRedis(Flight& f) {
  if (!redis_) return;
  if (f.subscribed) {
    redis_->unsubscribe(f.channel());
    f.subscribed = false;
  }
  if (f.lock_held) {
    redis_->command({"EVAL", kLockReleaseScript, "1", f.lockKey(), instance_}, [](std::optional<RedisReply>) {});
    f.lock_held = false;
  }
}

void Coalescer::deliver(uint64_t flight_id, const FlightOutcome& outcome) {
  auto it = flights_.find(flight_id);
  if (it == flights_.end()) return;
  std::unique_ptr<Flight> f = std::move(it->second);
  flights_.erase(it);
  auto k = by_key_.find(f->key);
  if (k != by_key_.end() && k->second == flight_id) by_key_.erase(k);
  f->state = Flight::State::Done;
  f->timer.reset();
  releaseRedis(*f);
  if (hooks_.on_end) hooks_.on_end(flight_id);
  for (uint64_t w : f->waiters) {
    auto wit = waiters_.find(w);
    if (wit == waiters_.end()) continue;  // left meanwhile
    WaiterFn fn = std::move(wit->second.fn);
    waiters_.erase(wit);
    fn(outcome);
  }
}

void Coalescer::leave(uint64_t waiter) {
  auto wit = waiters_.find(waiter);
  if (wit == waiters_.end()) return;
  uint64_t flight_id = wit->second.flight;
  waiters_.erase(wit);
  Flight* f = find(flight_id);
  if (!f) return;
  std::erase(f->waiters, waiter);
  if (f->started) return;
  if (!f->waiters.empty()) {
    // Those left behind are only-if-cached: a run not yet started is not
    // started for them. (Following another instance's run costs nothing.)
    if (f->state != Flight::State::Following && !anyMayRun(*f)) {
      FlightOutcome o;
      o.rejected = FlightOutcome::Rejected::NotCached;
      deliver(flight_id, o);
    }
    return;
  }
  // Nobody waits and nothing was spent: drop the flight.
  auto k = by_key_.find(f->key);
  if (k != by_key_.end() && k->second == flight_id) by_key_.erase(k);
  releaseRedis(*f);
  f->state = Flight::State::Done;
  flights_.erase(flight_id);
  if (hooks_.on_end) hooks_.on_end(flight_id);
}

}  // namespace wfp

#include "proxy/scheduler.h"

#include <cmath>

#include <spdlog/spdlog.h>

#include "proxy/http_types.h"
#include "proxy/shared_budget.h"

namespace wfp {

namespace {

std::optional<int64_t> integerHeader(const HttpHeaders& headers, std::string_view name) {
  const std::string* v = findHeader(headers, name);
  if (!v || v->empty() || v->size() > 18) return std::nullopt;
  int64_t n = 0;
  for (char c : *v) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  return n;
}

// Whole seconds for Retry-After: at least 1, and a huge wait (a year-long
// window, a deep queue) stays an int.
int ceilSeconds(double seconds) {
  constexpr double kMaxS = 86400.0 * 365;
  if (!(seconds > 1)) return 1;  // also NaN
  return static_cast<int>(std::ceil(std::min(seconds, kMaxS)));
}

}  // namespace

UpstreamSignals signalsFrom(int status, const HttpHeaders& headers) {
  UpstreamSignals s;
  s.ratelimit_limit = integerHeader(headers, "x-ratelimit-limit");
  s.ratelimit_remaining = integerHeader(headers, "x-ratelimit-remaining");
  s.status_429 = status == 429;
  if (auto ra = integerHeader(headers, "retry-after")) s.retry_after_s = static_cast<double>(*ra);
  return s;
}

struct Scheduler::Budget {
  Budget(const Clock& clock, std::string budget_name, BudgetConfig config, size_t queue_max, bool shared)
      : name(std::move(budget_name)),
        config(config),
        limiter(config, clock, reinterpret_cast<uintptr_t>(this)),
        fallback(shared ? std::make_unique<RateLimiter>(config, clock, reinterpret_cast<uintptr_t>(this) + 1)
                        : nullptr),
        queue_max(queue_max) {}

  bool empty() const { return !waiting || waiting->empty(); }
  size_t depth() const { return waiting ? waiting->size() : 0; }
  FairQueue& queue() {
    if (!waiting) waiting = std::make_unique<FairQueue>(queue_max);
    return *waiting;
  }

  const std::string name;  // budgets_ is keyed by a view of it
  std::string org_label;
  BudgetConfig config;
  RateLimiter limiter;   // this instance's budget (also in-flight bookkeeping when shared)
  std::unique_ptr<RateLimiter> fallback;  // shared mode only: 1/N of the budget while Redis is away
  // Made when a request first has to wait: a key that never exceeds its
  // budget never pays for one (a budget is kept per pass_through key).
  std::unique_ptr<FairQueue> waiting;
  size_t queue_max;
  size_t tickets = 0;         // queued or started tickets of this budget
  size_t reported_depth = 0;  // its share of depth_by_label_
  bool transient = false;     // not a configured organisation's: dropped when idle
  std::list<Budget*>::iterator lru;  // its place in transient_, when transient
  Clock::time_point last_active{};
  bool asking = false;                 // a shared decision is in flight
  Clock::time_point shared_next{};     // shared: do not ask again before
  Clock::time_point fallback_until{};  // shared: Redis did not answer; local 1/N until then
  // Made on first use: a budget that never waits never pays for them.
  std::unique_ptr<Timer> wake;    // the budget admits the next start
  std::unique_ptr<Timer> expiry;  // the oldest queued request reaches max_wait_s
  bool pumping = false;
  bool repump = false;
};

struct Scheduler::Ticket {
  uint64_t id = 0;
  Budget* budget = nullptr;  // alive while it has tickets (Budget::tickets)
  Admission admission;
  AdmissionCallbacks callbacks;
  enum class State { Queued, Started } state = State::Queued;
  enum class Via { Local, Shared, Fallback } via = Via::Local;
  Clock::time_point enqueued;
  Clock::time_point started;  // the last onStart() or onSent(), for the remaining: 0 pause
  std::string shared_member;  // Via::Shared: the start's name in Redis, for sending()
  int retries = 0;
};

Scheduler::Scheduler(Runtime& runtime, const Clock& clock, Metrics& metrics, SharedBudget* shared)
    : runtime_(runtime), clock_(clock), metrics_(metrics), shared_(shared) {
  sweep_timer_ = std::make_unique<Timer>(runtime_, [this] {
    sweep_armed_ = false;
    sweep();
    if (!transient_.empty() && !sweep_armed_) {
      sweep_armed_ = true;
      sweep_timer_->start(kSweepInterval);
    }
  });
  reportTracked();
}

Scheduler::~Scheduler() = default;

namespace {
BudgetConfig budgetFor(const Config& config, std::string_view name) {
  BudgetConfig b;
  if (const Organisation* org = config.findOrganisation(name)) {
    b.requests = org->rate_limit.requests;
    b.requests_auto = org->rate_limit.requests_auto;
    b.window_s = org->rate_limit.window_s;
    b.max_concurrent = org->rate_limit.max_concurrent;
  }
  return b;  // pass_through keys: the upstream's default allowance
}
}  // namespace

void Scheduler::configure(const ConfigPtr& config) {
  config_ = config;
  for (auto& [name, b] : budgets_) {
    b->config = budgetFor(*config_, name);
    b->limiter.configure(b->config);
    b->queue_max = static_cast<size_t>(config_->rate_limit.queue_max);
    if (b->waiting) b->waiting->setMaxEntries(b->queue_max);
    // An organisation the reload removed is transient from now on (and one
    // it added under a transient name no longer is).
    const bool transient = config_->findOrganisation(name) == nullptr;
    if (transient != b->transient) {
      b->transient = transient;
      if (transient) {
        b->lru = transient_.insert(transient_.end(), b.get());
      } else {
        transient_.erase(b->lru);
      }
    }
  }
  // pump() may start requests, whose callbacks may submit more: a new
  // budget (rehash) or a sweep for room (eviction) would pull the map from
  // under an iteration. Pump by name, each looked up afresh.
  std::vector<std::string> names;
  names.reserve(budgets_.size());
  for (auto& [name, b] : budgets_) names.emplace_back(name);
  for (const std::string& name : names) {
    if (auto it = budgets_.find(std::string_view(name)); it != budgets_.end()) pump(*it->second);
  }
}

Scheduler::Budget* Scheduler::budget(const Admission& a) {
  if (auto it = budgets_.find(std::string_view(a.budget)); it != budgets_.end()) return it->second.get();
  const bool transient = config_->findOrganisation(a.budget) == nullptr;
  // At the cap, a sweep first (cheap: it stops at the first budget used
  // within its window). Safe here: a budget whose callback is on the stack
  // is pumping, or has just started a request, so it is not idle.
  if (transient && transient_.size() >= kMaxTransientBudgets &&
      (sweep() == 0 || transient_.size() >= kMaxTransientBudgets)) {
    auto now = clock_.now();
    if (now - last_full_warning_ >= std::chrono::seconds(10)) {
      last_full_warning_ = now;
      spdlog::warn("{} pass_through budgets in use (the most kept at once): refusing requests of new keys",
                   transient_.size());
    }
    return nullptr;
  }
  auto b = std::make_unique<Budget>(clock_, a.budget, budgetFor(*config_, a.budget),
                                    static_cast<size_t>(config_->rate_limit.queue_max), shared_ != nullptr);
  b->org_label = a.org_label;
  b->transient = transient;
  Budget* raw = b.get();
  if (transient) raw->lru = transient_.insert(transient_.end(), raw);
  budgets_.emplace(std::string_view(raw->name), std::move(b));
  if (depth_by_label_.try_emplace(raw->org_label, 0).second) metrics_.setQueueDepth(raw->org_label, 0);
  reportTracked();
  return raw;
}

void Scheduler::dropTicket(TicketMap::iterator it) {
  --it->second->budget->tickets;
  tickets_.erase(it);
}

bool Scheduler::idle(const Budget& b) const {
  const auto now = clock_.now();
  return b.tickets == 0 && !b.asking && !b.pumping && now >= b.shared_next && now >= b.fallback_until &&
         b.limiter.idle() && (!b.fallback || b.fallback->idle());
}

void Scheduler::touch(Budget& b) {
  if (!b.transient) return;
  b.last_active = clock_.now();
  transient_.splice(transient_.end(), transient_, b.lru);
  if (!sweep_armed_) {
    sweep_armed_ = true;
    sweep_timer_->start(kSweepInterval);
  }
}

void Scheduler::evict(Budget& b) {
  // Only from sweep(), never inside one of the budget's own timer callbacks;
  // its timers are cancelled by their destructors.
  transient_.erase(b.lru);
  budgets_.erase(budgets_.find(std::string_view(b.name)));
}

size_t Scheduler::sweep() {
  const auto now = clock_.now();
  size_t evicted = 0;
  // Least recently active first. Each budget is looked at once at most: one
  // still in use goes to the back.
  for (size_t n = transient_.size(); n > 0 && !transient_.empty(); --n) {
    Budget& b = *transient_.front();
    // Behind it are budgets active later: with the same window (every
    // pass_through key has the default one) none of them is idle yet.
    if (now < b.last_active + b.limiter.span()) break;
    if (idle(b)) {
      evict(b);
      ++evicted;
    } else {
      touch(b);  // a request, a pause, a start sent late: look again a window later
    }
  }
  if (evicted > 0) reportTracked();
  return evicted;
}

void Scheduler::reportTracked() { metrics_.setTracked("budgets", static_cast<int64_t>(budgets_.size())); }

uint64_t Scheduler::submit(const Admission& admission, AdmissionCallbacks callbacks) {
  const uint64_t id = next_id_++;
  Budget* bp = budget(admission);
  if (!bp) {
    // Too many keys at once: refused like a full queue. A budget frees up
    // about a window after its key's last start.
    if (callbacks.reject) {
      RateLimiter fresh(budgetFor(*config_, admission.budget), clock_);
      const double wait = std::chrono::duration<double>(fresh.span() + kSweepInterval).count();
      callbacks.reject(RejectReason::QueueFull, ceilSeconds(wait));
    }
    return id;
  }
  Budget& b = *bp;
  auto t = std::make_unique<Ticket>();
  t->id = id;
  t->budget = &b;
  t->admission = admission;
  t->callbacks = std::move(callbacks);
  t->enqueued = clock_.now();
  if (!shared_ && !b.pumping && b.empty() && b.limiter.canStart()) {
    // Nobody waits and the budget allows it: start now, the queue untouched.
    Ticket& ticket = *t;
    tickets_.emplace(id, std::move(t));
    ++b.tickets;
    touch(b);
    begin(b, ticket, static_cast<int>(Ticket::Via::Local), {});
    return id;
  }
  if (!b.queue().push(id, admission.client, admission.weight, t->enqueued)) {
    auto reject = std::move(t->callbacks.reject);
    touch(b);
    if (reject) reject(RejectReason::QueueFull, retryAfter(b));
    return id;
  }
  tickets_.emplace(id, std::move(t));
  ++b.tickets;
  pump(b);
  return id;
}

void Scheduler::cancel(uint64_t ticket) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) return;
  Ticket& t = *it->second;
  Budget& b = *t.budget;
  if (t.state == Ticket::State::Queued) {
    b.queue().remove(ticket);  // spends nothing
  } else {
    limiterOf(b, t).onAbandon();
    if (t.via == Ticket::Via::Shared) shared_->finish(b.name);
  }
  dropTicket(it);
  pump(b);
}

void Scheduler::sending(uint64_t ticket) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end() || it->second->state != Ticket::State::Started) return;
  Ticket& t = *it->second;
  t.started = limiterOf(*t.budget, t).onSent(t.started);
  if (t.via == Ticket::Via::Shared && shared_) {
    shared_->sent(t.budget->name, t.shared_member, windowMs(*t.budget));
  }
}

void Scheduler::finish(uint64_t ticket, const UpstreamSignals& signals) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) return;
  Budget& b = *it->second->budget;
  if (it->second->state == Ticket::State::Started) {
    UpstreamSignals s = signals;
    s.started = it->second->started;
    limiterOf(b, *it->second).onFinish(s);
    if (it->second->via == Ticket::Via::Shared) {
      shared_->finish(b.name);
      sharePause(b, signals);
    }
  } else {
    b.queue().remove(ticket);
  }
  if (signals.status_429) metrics_.countUpstream429(b.org_label);
  dropTicket(it);
  metrics_.setRatelimitRemaining(b.org_label, b.limiter.remaining());
  pump(b);
}

bool Scheduler::retry(uint64_t ticket, const UpstreamSignals& signals) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) return false;
  Ticket& t = *it->second;
  Budget& b = *t.budget;
  int allowed = config_ ? config_->rate_limit.retry_429 : 0;
  if (t.state != Ticket::State::Started || t.retries >= allowed) {
    finish(ticket, signals);
    return false;
  }
  // One 429 pauses the organisation, not just this request: no retry storm.
  UpstreamSignals s = signals;
  s.started = t.started;
  limiterOf(b, t).onFinish(s);
  if (t.via == Ticket::Via::Shared) {
    shared_->finish(b.name);
    sharePause(b, signals);  // with shared budgets the pause is shared too
  }
  metrics_.countUpstream429(b.org_label);
  ++t.retries;
  t.state = Ticket::State::Queued;
  spdlog::info("upstream 429 for {}: pausing its starts, retry {}/{}", b.org_label, t.retries, allowed);
  b.queue().pushFront(ticket, t.admission.client, t.admission.weight, t.enqueued);
  pump(b);
  return true;
}

RateLimiter& Scheduler::limiterOf(Budget& b, const Ticket& t) {
  return t.via == Ticket::Via::Fallback ? *b.fallback : b.limiter;
}

bool Scheduler::sharedUsable(const Budget& b) const {
  return shared_ && clock_.now() >= b.fallback_until;
}

int64_t Scheduler::windowMs(const Budget& b) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(b.limiter.window()).count();
}

void Scheduler::startNext(Budget& b, int via, std::string shared_member) {
  if (b.empty()) return;
  auto id = b.waiting->pop();
  if (!id) return;
  auto it = tickets_.find(*id);
  if (it == tickets_.end()) return;
  begin(b, *it->second, via, std::move(shared_member));
}

void Scheduler::begin(Budget& b, Ticket& t, int via, std::string shared_member) {
  t.state = Ticket::State::Started;
  t.via = static_cast<Ticket::Via>(via);
  t.shared_member = std::move(shared_member);
  t.started = limiterOf(b, t).onStart();  // the limiter's own date: onSent() finds it by it
  metrics_.observeQueueWaitSeconds(std::chrono::duration<double>(clock_.now() - t.enqueued).count());
  auto start = t.callbacks.start;  // a copy: start() may cancel or finish this very ticket
  if (start) start();
}

void Scheduler::pump(Budget& b) {
  if (b.pumping) {
    b.repump = true;
    return;
  }
  b.pumping = true;
  do {
    b.repump = false;
    expire(b);
    while (!b.empty()) {
      if (sharedUsable(b)) {
        // One atomic decision in Redis per start; it answers on the loop.
        if (b.asking || b.limiter.concurrencyFull() || clock_.now() < b.shared_next) break;
        askShared(b);
        break;
      }
      RateLimiter& lim = shared_ ? *b.fallback : b.limiter;
      if (shared_) {
        // Redis is away: this instance keeps to 1/N of the budget.
        BudgetConfig share = b.config;
        share.requests = std::max(1, b.config.requests / std::max(1, shared_->instancesAlive()));
        share.max_concurrent = std::max(1, b.config.max_concurrent / std::max(1, shared_->instancesAlive()));
        b.fallback->configure(share);
      }
      if (!lim.canStart()) break;
      startNext(b, static_cast<int>(shared_ ? Ticket::Via::Fallback : Ticket::Via::Local));
    }
  } while (b.repump);
  b.pumping = false;
  arm(b);
  touch(b);
  report(b);  // every change of a queue ends here (or in rejectAll)
}

void Scheduler::askShared(Budget& b) {
  b.asking = true;
  // By name, not by pointer (lifetime rule 1): while it asks the budget is
  // not idle, so it is still there, but the callback does not rely on it.
  shared_->tryStart(b.name, b.limiter.effectiveLimit(), windowMs(b), b.config.max_concurrent,
                    [this, name = b.name](SharedDecision d) {
                      auto found = budgets_.find(std::string_view(name));
                      if (found == budgets_.end()) {
                        if (d.admitted) shared_->finish(name);
                        return;
                      }
                      Budget& bb = *found->second;
                      bb.asking = false;
                      auto now = clock_.now();
                      if (!d.reachable) {
                        bb.fallback_until = now + std::chrono::seconds(1);
                      } else if (d.admitted) {
                        metrics_.setRatelimitRemaining(bb.org_label, d.remaining);
                        if (!bb.empty()) {
                          startNext(bb, static_cast<int>(Ticket::Via::Shared), std::move(d.member));
                        } else {
                          shared_->finish(bb.name);  // nobody left to use it
                        }
                      } else {
                        // wait 0: another instance's finish frees the slot; ask again soon.
                        // (SharedBudget bounds wait_ms: it comes from Redis.)
                        bb.shared_next = now + std::chrono::milliseconds(d.wait_ms > 0 ? d.wait_ms : 50);
                      }
                      pump(bb);
                    });
}

void Scheduler::sharePause(Budget& b, const UpstreamSignals& signals) {
  const int64_t window_ms = windowMs(b);
  if (signals.status_429) {
    // Retry-After is network input: the limiter's rule for it, one home.
    auto retry_after = RateLimiter::retryAfter(signals);
    int64_t ms = retry_after ? std::chrono::ceil<std::chrono::milliseconds>(*retry_after).count() : window_ms;
    shared_->pause(b.name, ms);
  } else if (signals.ratelimit_remaining && *signals.ratelimit_remaining == 0) {
    shared_->pause(b.name, window_ms);
  }
}

void Scheduler::expire(Budget& b) {
  if (!config_ || b.empty()) return;
  auto max_wait = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(config_->rate_limit.max_wait_s));
  for (uint64_t id : b.waiting->expire(clock_.now() - max_wait)) {
    auto it = tickets_.find(id);
    if (it == tickets_.end()) continue;
    auto reject = std::move(it->second->callbacks.reject);
    dropTicket(it);
    if (reject) reject(RejectReason::MaxWait, retryAfter(b));
  }
}

void Scheduler::arm(Budget& b) {
  if (b.wake) b.wake->cancel();
  if (b.expiry) b.expiry->cancel();
  if (b.empty()) return;
  if (!b.wake) {
    // The budget outlives its timers (they are its members), and a budget is
    // only dropped by sweep(), never inside one of these callbacks.
    Budget* raw = &b;
    b.wake = std::make_unique<Timer>(runtime_, [this, raw] { pump(*raw); });
    b.expiry = std::make_unique<Timer>(runtime_, [this, raw] { pump(*raw); });
  }
  auto now = clock_.now();
  if (sharedUsable(b)) {
    if (!b.asking && !b.limiter.concurrencyFull()) {
      auto at = std::max(now, b.shared_next);
      b.wake->start(std::chrono::duration_cast<std::chrono::microseconds>(at - now) + std::chrono::microseconds(1));
    }
  } else {
    RateLimiter& lim = shared_ ? *b.fallback : b.limiter;
    if (!lim.concurrencyFull()) {
      // A finish wakes the queue when concurrency is the limit; else the window.
      auto at = lim.nextStartTime();
      if (shared_) at = std::min(at, b.fallback_until);  // then try Redis again
      b.wake->start(std::chrono::duration_cast<std::chrono::microseconds>(at - now) + std::chrono::microseconds(1));
    }
  }
  if (auto oldest = b.waiting->oldest(); oldest && config_) {
    auto deadline = *oldest + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(config_->rate_limit.max_wait_s));
    b.expiry->start(std::chrono::duration_cast<std::chrono::microseconds>(deadline - now) +
                    std::chrono::microseconds(1));
  }
}

int Scheduler::retryAfter(const Budget& b) const {
  // When the organisation expects free budget: the next start, plus the
  // time to work through what is queued at the current rate.
  auto now = clock_.now();
  double wait = std::chrono::duration<double>(b.limiter.nextStartTime() - now).count();
  int limit = std::max(1, b.limiter.effectiveLimit());
  double window = std::chrono::duration<double>(b.limiter.window()).count();
  wait += static_cast<double>(b.depth()) / limit * window;
  return ceilSeconds(wait);
}

void Scheduler::report(Budget& b) {
  // The gauge is per label, and every pass_through key shares one: keep the
  // sum over the label's budgets, moved by each budget's change.
  const size_t depth = b.depth();
  if (depth == b.reported_depth) return;
  int64_t& total = depth_by_label_[b.org_label];
  total += static_cast<int64_t>(depth) - static_cast<int64_t>(b.reported_depth);
  b.reported_depth = depth;
  metrics_.setQueueDepth(b.org_label, total);
}

void Scheduler::rejectAll(RejectReason reason) {
  std::vector<uint64_t> ids;
  for (auto& [id, t] : tickets_) {
    if (t->state == Ticket::State::Queued) ids.push_back(id);
  }
  for (uint64_t id : ids) {
    auto it = tickets_.find(id);
    if (it == tickets_.end()) continue;
    Budget& b = *it->second->budget;
    b.queue().remove(id);
    auto reject = std::move(it->second->callbacks.reject);
    dropTicket(it);
    report(b);
    if (reject) reject(reason, 1);
  }
}

size_t Scheduler::queued() const {
  size_t n = 0;
  for (const auto& [label, depth] : depth_by_label_) n += static_cast<size_t>(depth);
  return n;
}

std::unordered_map<std::string, size_t> Scheduler::depths() const {
  std::unordered_map<std::string, size_t> out;
  for (const auto& [label, depth] : depth_by_label_) out[label] = static_cast<size_t>(depth);
  return out;
}

}  // namespace wfp

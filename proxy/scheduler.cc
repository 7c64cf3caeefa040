#include "proxy/scheduler.h"

#include <cmath>

#include <spdlog/spdlog.h>

#include "proxy/http_server.h"
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
  Budget(const Clock& clock, BudgetConfig config, size_t queue_max)
      : config(config),
        limiter(config, clock, reinterpret_cast<uintptr_t>(this)),
        fallback(config, clock, reinterpret_cast<uintptr_t>(this) + 1),
        queue(queue_max) {}
  std::string name;
  std::string org_label;
  BudgetConfig config;
  RateLimiter limiter;   // this instance's budget (also in-flight bookkeeping when shared)
  RateLimiter fallback;  // shared mode with Redis unreachable: 1/N of the budget
  FairQueue queue;
  bool asking = false;                 // a shared decision is in flight
  Clock::time_point shared_next{};     // shared: do not ask again before
  Clock::time_point fallback_until{};  // shared: Redis did not answer; local 1/N until then
  std::unique_ptr<Timer> wake;    // the budget admits the next start
  std::unique_ptr<Timer> expiry;  // the oldest queued request reaches max_wait_s
  bool pumping = false;
  bool repump = false;
};

struct Scheduler::Ticket {
  uint64_t id = 0;
  Budget* budget = nullptr;
  Admission admission;
  AdmissionCallbacks callbacks;
  enum class State { Queued, Started } state = State::Queued;
  enum class Via { Local, Shared, Fallback } via = Via::Local;
  Clock::time_point enqueued;
  Clock::time_point started;  // the last onStart() or onSent(), for the remaining: 0 pause
  std::string shared_member;  // Via::Shared: the start's name in Redis, for sending()
  int retries = 0;
};

Scheduler::Scheduler(EventLoop& loop, const Clock& clock, Metrics& metrics, SharedBudget* shared)
    : loop_(loop), clock_(clock), metrics_(metrics), shared_(shared) {}

Scheduler::~Scheduler() = default;

namespace {
BudgetConfig budgetFor(const Config& config, const std::string& name) {
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
    b->queue.setMaxEntries(static_cast<size_t>(config_->rate_limit.queue_max));
    pump(*b);
  }
}

Scheduler::Budget& Scheduler::budget(const Admission& a) {
  auto it = budgets_.find(a.budget);
  if (it != budgets_.end()) return *it->second;
  auto b = std::make_unique<Budget>(clock_, budgetFor(*config_, a.budget),
                                    static_cast<size_t>(config_->rate_limit.queue_max));
  b->name = a.budget;
  b->org_label = a.org_label;
  Budget* raw = b.get();
  b->wake = std::make_unique<Timer>(loop_, [this, raw] { pump(*raw); });
  b->expiry = std::make_unique<Timer>(loop_, [this, raw] { pump(*raw); });
  budgets_.emplace(a.budget, std::move(b));
  return *raw;
}

uint64_t Scheduler::submit(const Admission& admission, AdmissionCallbacks callbacks) {
  Budget& b = budget(admission);
  auto t = std::make_unique<Ticket>();
  t->id = next_id_++;
  t->budget = &b;
  t->admission = admission;
  t->callbacks = std::move(callbacks);
  t->enqueued = clock_.now();
  uint64_t id = t->id;
  if (!b.queue.push(id, admission.client, admission.weight, t->enqueued)) {
    auto reject = std::move(t->callbacks.reject);
    if (reject) reject(RejectReason::QueueFull, retryAfter(b));
    return id;
  }
  tickets_.emplace(id, std::move(t));
  pump(b);
  report(b);
  return id;
}

void Scheduler::cancel(uint64_t ticket) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) return;
  Ticket& t = *it->second;
  Budget& b = *t.budget;
  if (t.state == Ticket::State::Queued) {
    b.queue.remove(ticket);  // spends nothing
  } else {
    limiterOf(b, t).onAbandon();
    if (t.via == Ticket::Via::Shared) shared_->finish(b.name);
  }
  tickets_.erase(it);
  pump(b);
  report(b);
}

void Scheduler::sending(uint64_t ticket) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end() || it->second->state != Ticket::State::Started) return;
  Ticket& t = *it->second;
  t.started = limiterOf(*t.budget, t).onSent(t.started);
  if (t.via == Ticket::Via::Shared && shared_) {
    const auto window = std::chrono::duration_cast<std::chrono::milliseconds>(t.budget->limiter.window());
    shared_->sent(t.budget->name, t.shared_member, window.count());
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
    b.queue.remove(ticket);
  }
  if (signals.status_429) metrics_.countUpstream429(b.org_label);
  tickets_.erase(it);
  metrics_.setRatelimitRemaining(b.org_label, b.limiter.remaining());
  pump(b);
  report(b);
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
  b.queue.pushFront(ticket, t.admission.client, t.admission.weight, t.enqueued);
  pump(b);
  report(b);
  return true;
}

RateLimiter& Scheduler::limiterOf(Budget& b, const Ticket& t) {
  return t.via == Ticket::Via::Fallback ? b.fallback : b.limiter;
}

bool Scheduler::sharedUsable(const Budget& b) const {
  return shared_ && clock_.now() >= b.fallback_until;
}

void Scheduler::startNext(Budget& b, int via, std::string shared_member) {
  auto id = b.queue.pop();
  if (!id) return;
  auto it = tickets_.find(*id);
  if (it == tickets_.end()) return;
  Ticket& t = *it->second;
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
    while (!b.queue.empty()) {
      if (sharedUsable(b)) {
        // One atomic decision in Redis per start; it answers on the loop.
        if (b.asking || b.limiter.concurrencyFull() || clock_.now() < b.shared_next) break;
        askShared(b);
        break;
      }
      RateLimiter& lim = shared_ ? b.fallback : b.limiter;
      if (shared_) {
        // Redis is away: this instance keeps to 1/N of the budget.
        BudgetConfig share = b.config;
        share.requests = std::max(1, b.config.requests / std::max(1, shared_->instancesAlive()));
        share.max_concurrent = std::max(1, b.config.max_concurrent / std::max(1, shared_->instancesAlive()));
        b.fallback.configure(share);
      }
      if (!lim.canStart()) break;
      startNext(b, static_cast<int>(shared_ ? Ticket::Via::Fallback : Ticket::Via::Local));
    }
  } while (b.repump);
  b.pumping = false;
  arm(b);
}

void Scheduler::askShared(Budget& b) {
  b.asking = true;
  Budget* raw = &b;  // budgets are never erased
  int64_t window_ms = static_cast<int64_t>(b.config.window_s * 1000.0);
  shared_->tryStart(b.name, b.limiter.effectiveLimit(), window_ms, b.config.max_concurrent,
                    [this, raw](SharedDecision d) {
                      Budget& bb = *raw;
                      bb.asking = false;
                      auto now = clock_.now();
                      if (!d.reachable) {
                        bb.fallback_until = now + std::chrono::seconds(1);
                      } else if (d.admitted) {
                        metrics_.setRatelimitRemaining(bb.org_label, d.remaining);
                        if (!bb.queue.empty()) {
                          startNext(bb, static_cast<int>(Ticket::Via::Shared), std::move(d.member));
                        } else {
                          shared_->finish(bb.name);  // nobody left to use it
                        }
                      } else {
                        // wait 0: another instance's finish frees the slot; ask again soon.
                        bb.shared_next = now + std::chrono::milliseconds(d.wait_ms > 0 ? d.wait_ms : 50);
                      }
                      pump(bb);
                    });
}

void Scheduler::sharePause(Budget& b, const UpstreamSignals& signals) {
  int64_t window_ms = static_cast<int64_t>(b.config.window_s * 1000.0);
  if (signals.status_429) {
    int64_t ms = signals.retry_after_s ? static_cast<int64_t>(*signals.retry_after_s * 1000.0) : window_ms;
    shared_->pause(b.name, ms);
  } else if (signals.ratelimit_remaining && *signals.ratelimit_remaining == 0) {
    shared_->pause(b.name, window_ms);
  }
}

void Scheduler::expire(Budget& b) {
  if (!config_ || b.queue.empty()) return;
  auto max_wait = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(config_->rate_limit.max_wait_s));
  for (uint64_t id : b.queue.expire(clock_.now() - max_wait)) {
    auto it = tickets_.find(id);
    if (it == tickets_.end()) continue;
    auto reject = std::move(it->second->callbacks.reject);
    tickets_.erase(it);
    if (reject) reject(RejectReason::MaxWait, retryAfter(b));
  }
}

void Scheduler::arm(Budget& b) {
  b.wake->cancel();
  b.expiry->cancel();
  if (b.queue.empty()) return;
  auto now = clock_.now();
  if (sharedUsable(b)) {
    if (!b.asking && !b.limiter.concurrencyFull()) {
      auto at = std::max(now, b.shared_next);
      b.wake->start(std::chrono::duration_cast<std::chrono::microseconds>(at - now) + std::chrono::microseconds(1));
    }
  } else {
    RateLimiter& lim = shared_ ? b.fallback : b.limiter;
    if (!lim.concurrencyFull()) {
      // A finish wakes the queue when concurrency is the limit; else the window.
      auto at = lim.nextStartTime();
      if (shared_) at = std::min(at, b.fallback_until);  // then try Redis again
      b.wake->start(std::chrono::duration_cast<std::chrono::microseconds>(at - now) + std::chrono::microseconds(1));
    }
  }
  if (auto oldest = b.queue.oldest(); oldest && config_) {
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
  double window = config_ ? budgetFor(*config_, b.name).window_s : 1.0;
  wait += static_cast<double>(b.queue.size()) / limit * window;
  return std::max(1, static_cast<int>(std::ceil(wait)));
}

void Scheduler::report(const Budget& b) {
  metrics_.setQueueDepth(b.org_label, static_cast<int64_t>(b.queue.size()));
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
    b.queue.remove(id);
    auto reject = std::move(it->second->callbacks.reject);
    tickets_.erase(it);
    if (reject) reject(reason, 1);
    report(b);
  }
}

size_t Scheduler::queued() const {
  size_t n = 0;
  for (auto& [name, b] : budgets_) n += b->queue.size();
  return n;
}

std::unordered_map<std::string, size_t> Scheduler::depths() const {
  std::unordered_map<std::string, size_t> out;
  for (auto& [name, b] : budgets_) out[b->org_label] += b->queue.size();
  return out;
}

}  // namespace wfp

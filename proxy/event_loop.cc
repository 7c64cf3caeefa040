#include "proxy/event_loop.h"

#include <event2/event.h>

#include <cmath>
#include <stdexcept>

#include <spdlog/spdlog.h>

namespace wfp {

void EventDeleter::operator()(event* ev) const noexcept { event_free(ev); }
void EventLoop::BaseDeleter::operator()(event_base* base) const noexcept { event_base_free(base); }

namespace {
template <typename Fn>
void guarded(const char* what, Fn&& fn) noexcept {
  try {
    fn();
  } catch (const std::exception& e) {
    spdlog::error("uncaught exception in {} callback: {}", what, e.what());
  } catch (...) {
    spdlog::error("uncaught exception in {} callback", what);
  }
}
}  // namespace

EventLoop::EventLoop() {
  event_config* cfg = event_config_new();
  // EV_CLOSED (EPOLLRDHUP) for FdWatch users that want to notice a peer's
  // hang-up without reading; falls back to the default backend below.
  event_config_require_features(cfg, EV_FEATURE_EARLY_CLOSE);
  base_.reset(event_base_new_with_config(cfg));
  event_config_free(cfg);
  if (!base_) base_.reset(event_base_new());
  if (!base_) throw std::runtime_error("event_base_new failed");
  posted_event_.reset(event_new(base_.get(), -1, 0, &EventLoop::onPosted, this));
}

EventLoop::~EventLoop() {
  // What is still posted is dropped, not run: its owners may be gone (they
  // post through a Lifeline, whose closures would do nothing anyway), and
  // dropping a closure frees what it holds.
  posted_.clear();
  posted_event_.reset();
}

int EventLoop::run() { return event_base_dispatch(base_.get()); }

void EventLoop::stop() { event_base_loopbreak(base_.get()); }

void EventLoop::post(std::function<void()> fn) {
  posted_.push_back(std::move(fn));
  if (posted_.size() == 1) event_active(posted_event_.get(), EV_TIMEOUT, 0);
}

void EventLoop::onPosted(int, short, void* arg) noexcept {
  auto* self = static_cast<EventLoop*>(arg);
  auto batch = std::move(self->posted_);
  self->posted_.clear();
  for (auto& fn : batch) guarded("posted", fn);
}

int64_t EventLoop::unixMillis() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {
// A libevent timer. The callback runs from a local copy and the timer is not
// touched afterwards if the callback destroyed it.
class LibeventTimer final : public TimerBackend {
 public:
  LibeventTimer(event_base* base, std::function<void()> fn)
      : fn_(std::move(fn)), event_(evtimer_new(base, &LibeventTimer::onFire, this)) {}
  ~LibeventTimer() override {
    if (destroyed_) *destroyed_ = true;
  }
  void start(std::chrono::microseconds delay) override {
    if (delay.count() < 0) delay = std::chrono::microseconds(0);
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(delay.count() / 1000000);
    tv.tv_usec = static_cast<suseconds_t>(delay.count() % 1000000);
    evtimer_add(event_.get(), &tv);
  }
  void cancel() override { evtimer_del(event_.get()); }
  bool pending() const override { return evtimer_pending(event_.get(), nullptr) != 0; }

 private:
  static void onFire(int, short, void* arg) noexcept {
    auto* self = static_cast<LibeventTimer*>(arg);
    bool destroyed = false;
    self->destroyed_ = &destroyed;
    std::function<void()> fn = std::move(self->fn_);  // outlives the timer if the callback destroys it
    guarded("timer", fn);
    if (destroyed) return;
    self->fn_ = std::move(fn);
    self->destroyed_ = nullptr;
  }
  std::function<void()> fn_;
  EventPtr event_;
  bool* destroyed_ = nullptr;  // set while the callback runs
};
}  // namespace

std::unique_ptr<TimerBackend> EventLoop::newTimer(std::function<void()> fn) {
  return std::make_unique<LibeventTimer>(base_.get(), std::move(fn));
}

FdWatch::FdWatch(EventLoop& loop, int fd, short events, std::function<void(short)> fn)
    : fn_(std::move(fn)),
      event_(event_new(loop.base(), fd, static_cast<short>(events | EV_PERSIST), &FdWatch::onEvent, this)) {
  event_add(event_.get(), nullptr);
}

void FdWatch::cancel() {
  if (event_) event_del(event_.get());
}

void FdWatch::onEvent(int, short what, void* arg) noexcept {
  auto* self = static_cast<FdWatch*>(arg);
  guarded("fd", [&] { self->fn_(what); });
}

SignalWatch::SignalWatch(EventLoop& loop, int signo, std::function<void()> fn)
    : fn_(std::move(fn)), event_(evsignal_new(loop.base(), signo, &SignalWatch::onSignal, this)) {
  event_add(event_.get(), nullptr);
}

void SignalWatch::onSignal(int, short, void* arg) noexcept {
  auto* self = static_cast<SignalWatch*>(arg);
  guarded("signal", self->fn_);
}

}  // namespace wfp

// Time, timers and deferred work behind one interface, so the run path
// (coalescer, scheduler, cache store, run handler, stream fan-out) runs on
// the libevent loop in production and on a virtual clock in the fleet
// simulation (tests/simulation), unchanged.
//
// Rules every implementation keeps (the run path relies on them):
//   - a timer's callback never runs inside start(), and never after the
//     timer was cancelled or destroyed;
//   - a timer may be destroyed inside its own callback;
//   - post() runs its closure on a later turn, never inside post(); what is
//     still posted when the runtime goes is dropped, not run (owners post
//     through a Lifeline, so a closure never runs after its owner).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>

#include "proxy/clock.h"

namespace wfp {

// One timer of a Runtime; owned by a Timer.
class TimerBackend {
 public:
  virtual ~TimerBackend() = default;
  virtual void start(std::chrono::microseconds delay) = 0;  // re-arms if pending
  virtual void cancel() = 0;
  virtual bool pending() const = 0;
};

class Runtime : public Clock {
 public:
  // now() (Clock): monotonic time, for durations and deadlines.
  // Wall-clock time in unix milliseconds, for what is stored and shared
  // between instances (a cache entry's stored_at).
  virtual int64_t unixMillis() const = 0;
  virtual std::unique_ptr<TimerBackend> newTimer(std::function<void()> fn) = 0;
  // Runs `fn` on a later turn (after the current callback returns).
  virtual void post(std::function<void()> fn) = 0;
};

// A one-shot timer. Destroying or cancel()ling it guarantees the callback
// will not run afterwards; it may be destroyed inside its own callback (the
// owner of a flight that ends in its timer's callback drops the flight,
// timer and all).
class Timer {
 public:
  Timer(Runtime& runtime, std::function<void()> fn) : backend_(runtime.newTimer(std::move(fn))) {}
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  void start(std::chrono::microseconds delay) { backend_->start(delay); }
  void startSeconds(double seconds);
  void cancel() { backend_->cancel(); }
  bool pending() const { return backend_->pending(); }

 private:
  std::unique_ptr<TimerBackend> backend_;
};

// An owner's lifetime, for work it posts and for checks after it calls out:
// a closure posted through it is dropped, not run, once the owner is gone,
// and token() expires with it. (A Runtime may outlive the owners of what
// was posted to it.) The token is made on first use: an owner that never
// needs it costs nothing more.
class Lifeline {
 public:
  explicit Lifeline(Runtime& runtime) : runtime_(runtime) {}
  Lifeline(const Lifeline&) = delete;
  Lifeline& operator=(const Lifeline&) = delete;

  void post(std::function<void()> fn) {
    runtime_.post([alive = token(), fn = std::move(fn)] {
      if (!alive.expired()) fn();
    });
  }
  std::weak_ptr<const void> token() {
    if (!alive_) alive_ = std::make_shared<char>();
    return alive_;
  }

 private:
  Runtime& runtime_;
  std::shared_ptr<char> alive_;
};

inline void Timer::startSeconds(double seconds) {
  if (!(seconds > 0)) seconds = 0;
  start(std::chrono::microseconds(static_cast<int64_t>(std::llround(seconds * 1e6))));
}

}  // namespace wfp

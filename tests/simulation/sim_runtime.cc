#include "tests/simulation/sim_runtime.h"

namespace wfp::sim {

namespace {

// A timer on the virtual clock. Each start() schedules an event tagged with
// the timer's generation; cancel, restart and destruction move the
// generation on, so a stale event does nothing. The state is shared with
// the scheduled event, which keeps it (and the callback) alive while the
// callback runs, so the timer may be destroyed inside it.
class SimTimer final : public TimerBackend {
 public:
  SimTimer(SimRuntime& rt, std::function<void()> fn) : rt_(rt), state_(std::make_shared<State>()) {
    state_->fn = std::move(fn);
  }
  ~SimTimer() override {
    ++state_->generation;
    state_->pending = false;
  }
  void start(std::chrono::microseconds delay) override {
    uint64_t gen = ++state_->generation;
    state_->pending = true;
    rt_.after(delay.count(), [state = state_, gen] {
      if (state->generation != gen || !state->pending) return;
      state->pending = false;
      std::function<void()> fn = state->fn;  // the timer may be destroyed inside
      fn();
    });
  }
  void cancel() override {
    ++state_->generation;
    state_->pending = false;
  }
  bool pending() const override { return state_->pending; }

 private:
  struct State {
    std::function<void()> fn;
    uint64_t generation = 0;
    bool pending = false;
  };
  SimRuntime& rt_;
  std::shared_ptr<State> state_;
};

}  // namespace

std::unique_ptr<TimerBackend> SimRuntime::newTimer(std::function<void()> fn) {
  return std::make_unique<SimTimer>(*this, std::move(fn));
}

void SimRuntime::at(int64_t t_us, std::function<void()> fn) {
  if (t_us < now_us_) t_us = now_us_;
  queue_.push(Event{t_us, next_seq_++, std::move(fn)});
}

bool SimRuntime::step() {
  if (queue_.empty()) return false;
  // priority_queue::top() is const: move the closure out through a copy of
  // the event's fields before popping.
  Event ev = std::move(const_cast<Event&>(queue_.top()));
  queue_.pop();
  now_us_ = ev.t_us;
  ++events_run_;
  ev.fn();
  return true;
}

}  // namespace wfp::sim

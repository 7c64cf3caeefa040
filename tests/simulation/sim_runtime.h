// A virtual clock for the fleet simulation: every instance's timers, posted
// work, Redis replies, upstream answers and client actions are events on one
// queue, ordered by (time, sequence). Nothing depends on the real clock or
// on thread timing, so a seed replays exactly.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <vector>

#include "proxy/runtime.h"

namespace wfp::sim {

class SimRuntime final : public Runtime {
 public:
  // Virtual time starts at a fixed wall-clock instant (2026-01-01T00:00Z).
  static constexpr int64_t kEpochUnixMs = 1'767'225'600'000;

  time_point now() const override { return time_point(std::chrono::microseconds(now_us_)); }
  int64_t unixMillis() const override { return kEpochUnixMs + now_us_ / 1000; }
  std::unique_ptr<TimerBackend> newTimer(std::function<void()> fn) override;
  void post(std::function<void()> fn) override { at(now_us_, std::move(fn)); }

  // Runs `fn` at virtual time `t_us` (not before now).
  void at(int64_t t_us, std::function<void()> fn);
  void after(int64_t delay_us, std::function<void()> fn) { at(now_us_ + (delay_us > 0 ? delay_us : 0), std::move(fn)); }
  // Runs the next event; false when the queue is empty.
  bool step();
  int64_t nowUs() const { return now_us_; }
  size_t pendingEvents() const { return queue_.size(); }
  uint64_t eventsRun() const { return events_run_; }

 private:
  struct Event {
    int64_t t_us;
    uint64_t seq;
    std::function<void()> fn;
  };
  struct Later {
    bool operator()(const Event& a, const Event& b) const {
      return a.t_us != b.t_us ? a.t_us > b.t_us : a.seq > b.seq;
    }
  };
  std::priority_queue<Event, std::vector<Event>, Later> queue_;
  int64_t now_us_ = 0;
  uint64_t next_seq_ = 0;
  uint64_t events_run_ = 0;
};

}  // namespace wfp::sim

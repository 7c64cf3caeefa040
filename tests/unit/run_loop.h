// Runs a real EventLoop in a unit test until a condition holds, bounded in
// time: one home for the helper the loop-driven tests share.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "proxy/event_loop.h"

namespace wfp::test_loop {

// Runs the loop until `done()` or `limit`; true if `done()`.
inline bool runUntil(EventLoop& loop, const std::function<bool()>& done,
                     std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  using std::chrono::steady_clock;
  if (done()) return true;
  auto deadline = steady_clock::now() + limit;
  std::unique_ptr<Timer> poll;
  poll = std::make_unique<Timer>(loop, [&] {
    if (done() || steady_clock::now() >= deadline) {
      loop.stop();
      return;
    }
    poll->start(std::chrono::milliseconds(1));
  });
  poll->start(std::chrono::microseconds(0));
  loop.run();
  return done();
}

// Runs the loop for `duration`.
inline void runFor(EventLoop& loop, std::chrono::milliseconds duration) {
  runUntil(loop, [] { return false; }, duration);
}

}  // namespace wfp::test_loop

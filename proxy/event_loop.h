// RAII over libevent's event_base and events; the production Runtime.
//
// EventLoop owns the base; everything created on it (Timer, FdWatch, Signal)
// must be destroyed before it. deferDelete() frees an object on the next loop
// pass, so an object can finish itself from inside one of its own callbacks
// (STYLE: never delete the object whose callback is on the stack).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "proxy/runtime.h"

struct event_base;
struct event;

namespace wfp {

struct EventDeleter {
  void operator()(event* ev) const noexcept;
};
using EventPtr = std::unique_ptr<event, EventDeleter>;

class EventLoop final : public Runtime {
 public:
  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  event_base* base() const { return base_.get(); }
  int run();  // until break() or no more events
  void stop();

  // Runtime: the system clocks, libevent timers.
  time_point now() const override { return std::chrono::steady_clock::now(); }
  int64_t unixMillis() const override;
  std::unique_ptr<TimerBackend> newTimer(std::function<void()> fn) override;
  // Runs `fn` on the next loop pass (after the current callback returns).
  void post(std::function<void()> fn) override;
  // Frees `object` on the next loop pass — or when the loop goes, if first.
  template <typename T>
  void deferDelete(std::unique_ptr<T> object) {
    post([held = std::shared_ptr<T>(std::move(object))] {});
  }

 private:
  static void onPosted(int, short, void* arg) noexcept;
  struct BaseDeleter {
    void operator()(event_base* base) const noexcept;
  };
  std::unique_ptr<event_base, BaseDeleter> base_;
  EventPtr posted_event_;
  std::vector<std::function<void()>> posted_;
};

// Watches a file descriptor; `events` is a mask of EV_READ/EV_WRITE/EV_CLOSED.
class FdWatch {
 public:
  FdWatch(EventLoop& loop, int fd, short events, std::function<void(short)> fn);
  FdWatch(const FdWatch&) = delete;
  FdWatch& operator=(const FdWatch&) = delete;
  void cancel();

 private:
  static void onEvent(int, short what, void* arg) noexcept;
  std::function<void(short)> fn_;
  EventPtr event_;
};

// A signal handler run on the loop (not in signal context).
class SignalWatch {
 public:
  SignalWatch(EventLoop& loop, int signo, std::function<void()> fn);
  SignalWatch(const SignalWatch&) = delete;
  SignalWatch& operator=(const SignalWatch&) = delete;

 private:
  static void onSignal(int, short, void* arg) noexcept;
  std::function<void()> fn_;
  EventPtr event_;
};

}  // namespace wfp

// RAII over libevent's event_base and events.
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

struct event_base;
struct event;

namespace wfp {

struct EventDeleter {
  void operator()(event* ev) const noexcept;
};
using EventPtr = std::unique_ptr<event, EventDeleter>;

class EventLoop {
 public:
  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  event_base* base() const { return base_.get(); }
  int run();  // until break() or no more events
  void stop();

  // Runs `fn` on the next loop pass (after the current callback returns).
  void post(std::function<void()> fn);
  template <typename T>
  void deferDelete(std::unique_ptr<T> object) {
    auto* raw = object.release();
    post([raw] { delete raw; });
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

// A one-shot or repeating timer. Destroying or cancel()ling it guarantees the
// callback will not run afterwards.
// A timer may be destroyed inside its own callback (the owner of a flight
// that ends in its timer's callback drops the flight, timer and all): the
// callback runs from a local copy, and the timer is not touched afterwards.
class Timer {
 public:
  Timer(EventLoop& loop, std::function<void()> fn);
  ~Timer();
  Timer(const Timer&) = delete;  // the event points at this object
  Timer& operator=(const Timer&) = delete;
  void start(std::chrono::microseconds delay);
  void startSeconds(double seconds);
  void cancel();
  bool pending() const;

 private:
  static void onFire(int, short, void* arg) noexcept;
  std::function<void()> fn_;
  EventPtr event_;
  bool* destroyed_ = nullptr;  // set while the callback runs
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

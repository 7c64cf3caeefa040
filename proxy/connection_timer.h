// The one timer of a client connection, and why it is armed: a connection
// waits for one thing at a time — a request's head (408 when it is late),
// the next request on a kept-alive connection, the end of lingering.
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <utility>

namespace wfp {

class ConnectionTimer {
 public:
  enum class Kind : uint8_t { None, Header, Idle, Linger };

  ConnectionTimer(event_base* base, event_callback_fn fn, void* arg) : ev_(event_new(base, -1, 0, fn, arg)) {}
  ~ConnectionTimer() {
    if (ev_) event_free(ev_);
  }
  ConnectionTimer(const ConnectionTimer&) = delete;
  ConnectionTimer& operator=(const ConnectionTimer&) = delete;

  bool valid() const { return ev_ != nullptr; }  // false: out of memory
  Kind kind() const { return kind_; }
  // Fires after `tv` for `kind`; a null `tv` (no such limit) disarms it.
  void arm(Kind kind, const timeval* tv) {
    if (!tv) return disarm();
    kind_ = kind;
    event_add(ev_, tv);
  }
  void disarm() {
    if (kind_ != Kind::None) {
      kind_ = Kind::None;
      event_del(ev_);
    }
  }
  // In its callback: what it was armed for (disarmed from now on).
  Kind fired() { return std::exchange(kind_, Kind::None); }
  // The connection closed: it never fires again (its memory goes later).
  void stop() { event_del(ev_); }

 private:
  event* ev_;
  Kind kind_ = Kind::None;
};

}  // namespace wfp

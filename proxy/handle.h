// A handle on something another object keeps on one's behalf under an id (a
// coalescer waiter, a stream subscriber): destroying the handle gives it
// back, so whoever holds it cancels it by going away.
#pragma once

#include <cstdint>
#include <utility>

namespace wfp {

template <class Owner, void (Owner::*Release)(uint64_t)>
class IdHandle {
 public:
  IdHandle() = default;
  IdHandle(Owner& owner, uint64_t id) : owner_(&owner), id_(id) {}
  IdHandle(IdHandle&& o) noexcept : owner_(o.owner_), id_(std::exchange(o.id_, 0)) {}
  IdHandle& operator=(IdHandle&& o) noexcept {
    if (this != &o) {
      reset();
      owner_ = o.owner_;
      id_ = std::exchange(o.id_, 0);
    }
    return *this;
  }
  IdHandle(const IdHandle&) = delete;
  IdHandle& operator=(const IdHandle&) = delete;
  ~IdHandle() { reset(); }

  void reset() {
    if (id_) (owner_->*Release)(std::exchange(id_, 0));
  }
  // The owner ended it itself (it called back to say so): nothing to give back.
  void forget() { id_ = 0; }
  uint64_t id() const { return id_; }
  explicit operator bool() const { return id_ != 0; }

 private:
  Owner* owner_ = nullptr;
  uint64_t id_ = 0;
};

}  // namespace wfp

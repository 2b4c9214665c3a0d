// A share of a counted resource (memory in bytes) that goes back to its
// owner, once, when the handle goes or is replaced: what the write budget
// and the memory guard hand out.
//
//   using Reservation = Held<WriteBudget, &WriteBudget::Return>;
//   Reservation r(this, bytes);  // ... (this->*Return)(bytes) when r goes.
//
// Movable, not copyable. Not thread-safe itself; the owner's give-back is
// called from whichever thread drops the handle.
#ifndef ENGRAM_SERVER_BASE_HELD_H_
#define ENGRAM_SERVER_BASE_HELD_H_

#include <cstddef>
#include <utility>

namespace engram {

template <typename Owner, void (Owner::*kGiveBack)(size_t)>
class Held {
 public:
  Held() = default;
  // Holds `bytes` of `owner`'s, taken by the owner already.
  Held(Owner* owner, size_t bytes) : owner_(owner), bytes_(bytes) {}
  Held(Held&& other) noexcept { *this = std::move(other); }
  Held& operator=(Held&& other) noexcept {
    if (this != &other) {
      Release();
      owner_ = std::exchange(other.owner_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;
  ~Held() { Release(); }

  // Gives the share back now.
  void Release() {
    if (owner_ != nullptr) (owner_->*kGiveBack)(bytes_);
    owner_ = nullptr;
    bytes_ = 0;
  }
  // `more` bytes of `owner`'s, taken by it already, added to this share
  // (empty, or of the same owner).
  void Add(Owner* owner, size_t more) {
    owner_ = owner;
    bytes_ += more;
  }
  size_t bytes() const { return bytes_; }

 private:
  Owner* owner_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_HELD_H_

// Storage backends for tests.
#ifndef ENGRAM_TESTS_STORE_TEST_STORAGE_H_
#define ENGRAM_TESTS_STORE_TEST_STORAGE_H_

#include <atomic>

#include "server/base/mutex.h"
#include "server/store/storage.h"

namespace engram::store {

// Accepts everything until `fail` is set, then fails every write with
// UNAVAILABLE (as a full or broken disk would). Thread-safe.
class FaultyStorage : public EphemeralStorage {
 public:
  std::atomic<bool> fail{false};

  absl::Status PutStore(const StoreSettings& s) override {
    return fail ? Failure() : EphemeralStorage::PutStore(s);
  }
  absl::Status DeleteStore(absl::string_view name) override {
    return fail ? Failure() : EphemeralStorage::DeleteStore(name);
  }
  absl::Status PutMap(absl::string_view store, const FitRecord& record,
                      const core::FeatureMap& map) override {
    return fail ? Failure() : EphemeralStorage::PutMap(store, record, map);
  }
  absl::Status WritePatterns(absl::string_view store,
                             absl::Span<const Pattern> added,
                             absl::Span<const uint64_t> deleted,
                             uint64_t next_id) override {
    return fail ? Failure()
                : EphemeralStorage::WritePatterns(store, added, deleted,
                                                  next_id);
  }
  absl::Status PutWholeStore(const StoreImage& image) override {
    return fail ? Failure() : EphemeralStorage::PutWholeStore(image);
  }

 private:
  static absl::Status Failure() {
    return absl::UnavailableError("injected storage failure");
  }
};

// Holds every PutStore and DeleteStore while `Hold()` is in force, as a
// slow or hung disk would, until `Release()`; `WaitHeld(n)` returns once n
// calls are waiting. Thread-safe (engram::Mutex, which ThreadSanitizer
// sees through).
class GatedStorage : public EphemeralStorage {
 public:
  void Hold() {
    MutexLock lock(&mu_);
    held_ = true;
  }
  void Release() {
    MutexLock lock(&mu_);
    held_ = false;
    changed_.SignalAll();
  }
  void WaitHeld(int n) {
    MutexLock lock(&mu_);
    while (waiting_ < n) changed_.Wait(&mu_);
  }

  absl::Status PutStore(const StoreSettings& s) override {
    Gate();
    return EphemeralStorage::PutStore(s);
  }
  absl::Status DeleteStore(absl::string_view name) override {
    Gate();
    return EphemeralStorage::DeleteStore(name);
  }

 private:
  void Gate() {
    MutexLock lock(&mu_);
    ++waiting_;
    changed_.SignalAll();
    while (held_) changed_.Wait(&mu_);
    --waiting_;
  }

  Mutex mu_;
  CondVar changed_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace engram::store

#endif  // ENGRAM_TESTS_STORE_TEST_STORAGE_H_

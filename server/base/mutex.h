// engram's reader-writer mutex, with Abseil's thread-safety annotations.
//
//   engram::Mutex mu_;
//   int value_ ABSL_GUARDED_BY(mu_);
//   { engram::MutexLock lock(&mu_); ++value_; }
//
// It is absl::Mutex, except in ThreadSanitizer builds: Debian's Abseil is an
// uninstrumented shared library, so TSan cannot see absl::Mutex's
// synchronisation and would report every guarded access as a race. There it
// is std::shared_mutex, whose pthread calls TSan intercepts.
//
// The condition variable is std::condition_variable_any in every build: its
// timed waits measure by the steady clock. Abseil 20220623's measure by the
// wall clock (an absolute deadline for a futex on CLOCK_REALTIME), so a
// clock stepped back an hour made a one-second wait last an hour: the job
// scheduler's tick, a write's wait for memory, the credential watcher.
//
// Thread-safe: it is the lock.
#ifndef ENGRAM_SERVER_BASE_MUTEX_H_
#define ENGRAM_SERVER_BASE_MUTEX_H_

#include <algorithm>
#include <chrono>
#include <condition_variable>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/base/steady_clock.h"

#if defined(__SANITIZE_THREAD__)
#include <shared_mutex>
#define ENGRAM_STD_MUTEX 1
#endif

namespace engram {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  // For std::condition_variable_any (CondVar) only.
  void lock() ABSL_NO_THREAD_SAFETY_ANALYSIS { Lock(); }
  void unlock() ABSL_NO_THREAD_SAFETY_ANALYSIS { Unlock(); }

#ifdef ENGRAM_STD_MUTEX
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    return mu_.try_lock();
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { mu_.lock_shared(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock_shared(); }

 private:
  std::shared_mutex mu_;
#else
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.Lock(); }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.TryLock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.Unlock(); }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { mu_.ReaderLock(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mu_.ReaderUnlock(); }

 private:
  absl::Mutex mu_;
#endif
};

// A condition variable for engram::Mutex.
class CondVar {
 public:
  // Waits, with `mu` held exclusively, until signalled (or spuriously).
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { cv_.wait(*mu); }
  // As Wait, for at most `timeout` by the steady clock; true if it timed
  // out.
  bool WaitWithTimeout(Mutex* mu, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (timeout <= absl::ZeroDuration()) return true;
    // At most a day at a time (an infinite duration does not convert): past
    // that it returns as if woken spuriously.
    const absl::Duration day = absl::Hours(24);
    const bool timed_out =
        cv_.wait_for(*mu, absl::ToChronoNanoseconds(std::min(timeout, day))) ==
        std::cv_status::timeout;
    return timed_out && timeout <= day;
  }
  // Waits, with `mu` held exclusively, until `done()` (called with `mu`
  // held) or `timeout` has passed by the steady clock; done()'s last value.
  // Whoever changes what `done` reads signals this CondVar.
  bool AwaitWithTimeout(Mutex* mu, absl::FunctionRef<bool()> done,
                        absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const absl::Time until = SteadyNow() + timeout;
    for (absl::Time now = SteadyNow(); !done() && now < until;
         now = SteadyNow()) {
      WaitWithTimeout(mu, until - now);
    }
    return done();
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable_any cv_;
};

// Turns off Abseil's lock-order checks for the whole process, gRPC's
// mutexes included. Debian builds Abseil without NDEBUG, which leaves them
// on: every absl::Mutex lock then records the locks its thread holds and
// looks the mutex up in one process-wide graph behind a global lock, and a
// mutex's destruction takes it out again; a cycle in lock order aborts the
// process. engramd spent about 10% less CPU on an empty call without them.
// engramd, the CLI and the benchmarks call this first thing in main (before
// any thread starts); the unit tests keep the checks.
inline void SkipLockOrderChecks() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

class ABSL_SCOPED_LOCKABLE ReaderMutexLock {
 public:
  explicit ReaderMutexLock(Mutex* mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->ReaderLock();
  }
  ~ReaderMutexLock() ABSL_UNLOCK_FUNCTION() { mu_->ReaderUnlock(); }
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_MUTEX_H_

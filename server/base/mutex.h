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
// Thread-safe: it is the lock.
#ifndef ENGRAM_SERVER_BASE_MUTEX_H_
#define ENGRAM_SERVER_BASE_MUTEX_H_

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"

#if defined(__SANITIZE_THREAD__)
#include <chrono>
#include <condition_variable>
#include <shared_mutex>
#define ENGRAM_STD_MUTEX 1
#else
#include "absl/synchronization/mutex.h"
#endif

namespace engram {

class CondVar;

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

#ifdef ENGRAM_STD_MUTEX
  void lock() { mu_.lock(); }  // For std::condition_variable_any.
  void unlock() { mu_.unlock(); }
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { mu_.lock_shared(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock_shared(); }

 private:
  std::shared_mutex mu_;
#else
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.Lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.Unlock(); }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { mu_.ReaderLock(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mu_.ReaderUnlock(); }

 private:
  friend class CondVar;
  absl::Mutex mu_;
#endif
};

// A condition variable for engram::Mutex; same TSan rule as the mutex.
class CondVar {
 public:
  // Waits, with `mu` held exclusively, until signalled (or spuriously).
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
#ifdef ENGRAM_STD_MUTEX
    cv_.wait(*mu);
#else
    cv_.Wait(&mu->mu_);
#endif
  }
  // As Wait, for at most `timeout`; true if it timed out.
  bool WaitWithTimeout(Mutex* mu, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
#ifdef ENGRAM_STD_MUTEX
    return cv_.wait_for(*mu, absl::ToChronoNanoseconds(timeout)) ==
           std::cv_status::timeout;
#else
    return cv_.WaitWithTimeout(&mu->mu_, timeout);
#endif
  }
  void Signal() { cv_.Signal(); }
  void SignalAll() { cv_.SignalAll(); }

 private:
#ifdef ENGRAM_STD_MUTEX
  struct Std : std::condition_variable_any {
    void Signal() { notify_one(); }
    void SignalAll() { notify_all(); }
  } cv_;
#else
  absl::CondVar cv_;
#endif
};

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

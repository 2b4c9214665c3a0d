#include "server/rpc/handlers.h"

#if defined(__linux__)
#include <pthread.h>
#endif

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/base/mib.h"

namespace engram::rpc {

absl::Status RetrievalThreadsBusy(absl::string_view why) {
  return absl::ResourceExhaustedError(
      absl::StrCat("retrieval threads: ", why,
                   " (--rpc_threads); retry later or send fewer queries"));
}

Handlers::Handlers(size_t max_threads, size_t max_waiting,
                   size_t max_waiting_bytes)
    : max_threads_(max_threads),
      max_waiting_(max_waiting),
      max_waiting_bytes_(max_waiting_bytes) {}

Handlers::~Handlers() {
  std::vector<std::thread> threads;
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    work_.SignalAll();
    threads.swap(threads_);
  }
  for (std::thread& thread : threads) thread.join();
}

bool Handlers::Run(absl::AnyInvocable<void() &&> task, size_t bytes,
                   std::string* why) {
  MutexLock lock(&mu_);
  if (stopping_) {
    if (why != nullptr) *why = "the server is stopping";
    return false;
  }
  // A task waits unless a thread is idle or may still be started.
  const bool waits = tasks_.size() >= idle_ && threads_.size() >= max_threads_;
  if (waits && busy_ + tasks_.size() >= max_threads_ + max_waiting_) {
    if (why != nullptr) {
      *why = absl::StrCat("all ", max_threads_, " threads are busy and ",
                          tasks_.size(), " more wait for them");
    }
    return false;
  }
  if (waits && waiting_bytes_ + bytes > max_waiting_bytes_) {
    if (why != nullptr) {
      *why = absl::StrCat("all ", max_threads_, " threads are busy and the ",
                          tasks_.size(), " waiting for them hold ",
                          MiB(waiting_bytes_), " of requests, of the ",
                          MiB(max_waiting_bytes_), " that may wait");
    }
    return false;
  }
  tasks_.push_back(Task{std::move(task), bytes});
  waiting_bytes_ += bytes;
  if (tasks_.size() <= idle_) {
    work_.Signal();  // An idle thread takes it.
  } else if (threads_.size() < max_threads_) {
    threads_.emplace_back(&Handlers::Loop, this);
  }  // Else it waits for the first busy thread to finish.
  return true;
}

bool Handlers::RunAndWait(absl::FunctionRef<void()> task, size_t bytes,
                          std::string* why) {
  // engram's Mutex rather than absl::Notification, whose synchronisation a
  // ThreadSanitizer build cannot see (server/base/mutex.h).
  Mutex mu;
  CondVar ran_cv;
  bool ran = false;
  if (!Run(
          [task, &mu, &ran_cv, &ran] {
            task();
            MutexLock lock(&mu);
            ran = true;
            ran_cv.Signal();
          },
          bytes, why)) {
    return false;
  }
  MutexLock lock(&mu);
  while (!ran) ran_cv.Wait(&mu);
  return true;
}

void Handlers::Loop() {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), "engram-handler");
#endif
  mu_.Lock();
  while (true) {
    while (tasks_.empty() && !stopping_) {
      ++idle_;
      work_.Wait(&mu_);
      --idle_;
    }
    if (tasks_.empty()) break;  // Stopping, nothing left.
    absl::AnyInvocable<void()&&> task = std::move(tasks_.front().run);
    waiting_bytes_ -= tasks_.front().bytes;
    tasks_.pop_front();
    ++busy_;
    mu_.Unlock();
    std::move(task)();
    task = nullptr;  // Its captures go before the thread counts as free.
    mu_.Lock();
    --busy_;
  }
  mu_.Unlock();
}

}  // namespace engram::rpc

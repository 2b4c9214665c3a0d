#include "server/rpc/handlers.h"

#if defined(__linux__)
#include <pthread.h>
#endif

#include <utility>

namespace engram::rpc {

Handlers::Handlers(size_t max_threads) : max_threads_(max_threads) {}

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

bool Handlers::Run(absl::AnyInvocable<void() &&> task) {
  MutexLock lock(&mu_);
  if (stopping_ || busy_ + tasks_.size() >= 2 * max_threads_) return false;
  tasks_.push_back(std::move(task));
  if (tasks_.size() <= idle_) {
    work_.Signal();  // An idle thread takes it.
  } else if (threads_.size() < max_threads_) {
    threads_.emplace_back(&Handlers::Loop, this);
  }  // Else it waits for the first busy thread to finish.
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
    absl::AnyInvocable<void()&&> task = std::move(tasks_.front());
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

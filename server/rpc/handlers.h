// Threads for the calls engramd answers off gRPC's own threads.
//
// A callback method runs on one of gRPC's few event threads, which carry
// every call's I/O; work of more than a moment (a retrieval of milliseconds
// to seconds) must move to a thread of its own so that the event thread goes
// back to I/O. Handlers keeps up to `max_threads` such threads: a task runs on
// an idle one, or on a new one while there are fewer than the limit; when all
// are busy up to `max_threads` more tasks wait for the first thread free
// (so that a thread still on its way back from a task it just answered does
// not turn the next call away), and beyond them a task is refused (the
// caller answers RESOURCE_EXHAUSTED, as gRPC's synchronous server does when
// its threads run out). Threads stay for the next task once started.
//
//   Handlers handlers(64);
//   if (!handlers.Run([=] { reactor->Finish(Answer()); })) refuse...;
//
// Thread-safe. The destructor waits for the tasks handed over.
#ifndef ENGRAM_SERVER_RPC_HANDLERS_H_
#define ENGRAM_SERVER_RPC_HANDLERS_H_

#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "server/base/mutex.h"

namespace engram::rpc {

class Handlers {
 public:
  explicit Handlers(size_t max_threads);
  ~Handlers();
  Handlers(const Handlers&) = delete;
  Handlers& operator=(const Handlers&) = delete;

  // Hands `task` to an idle or a new thread, or queues it for the first
  // thread free; false, and `task` destroyed unrun, when `max_threads`
  // threads are busy and `max_threads` tasks already wait.
  bool Run(absl::AnyInvocable<void() &&> task);

  size_t max_threads() const { return max_threads_; }

 private:
  void Loop();

  const size_t max_threads_;
  Mutex mu_;
  CondVar work_;
  // Tasks not taken yet; with busy_ at most 2 * max_threads_.
  std::deque<absl::AnyInvocable<void() &&>> tasks_ ABSL_GUARDED_BY(mu_);
  size_t busy_ ABSL_GUARDED_BY(mu_) = 0;  // Threads running a task.
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;  // Threads waiting for one.
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_HANDLERS_H_

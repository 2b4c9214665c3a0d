// Threads for the calls engramd answers off gRPC's own threads.
//
// A callback method runs on one of gRPC's few event threads, which carry
// every call's I/O; work of more than a moment (a retrieval of milliseconds
// to seconds) must move to a thread of its own so that the event thread goes
// back to I/O. Handlers keeps up to `max_threads` such threads: a task runs on
// an idle one, or on a new one while there are fewer than the limit; when all
// are busy up to `max_waiting` more tasks wait for the first thread free
// (so that a thread still on its way back from a task it just answered does
// not turn the next call away), as long as what they hold while they wait
// (the bytes each was handed with) stays within `max_waiting_bytes`; beyond
// that a task is refused (the caller answers RESOURCE_EXHAUSTED, as gRPC's
// synchronous server does when its threads run out). Threads stay for the
// next task once started.
//
// A retrieval holds tens of MiB while it runs (its queries, scores,
// answers), and more threads than cores add no speed: a few threads and a
// bounded queue keep concurrent retrievals within memory (sixteen of 2,048
// queries at once got engramd killed in a 768 MiB container when each had a
// thread of its own). A synchronous method (a shard's step, a router's
// retrieval) bounds its work the same way with RunAndWait: its gRPC thread
// waits while one of these threads runs it.
//
//   Handlers handlers(64);
//   if (!handlers.Run([=] { reactor->Finish(Answer()); })) refuse...;
//
// Thread-safe. The destructor waits for the tasks handed over.
#ifndef ENGRAM_SERVER_RPC_HANDLERS_H_
#define ENGRAM_SERVER_RPC_HANDLERS_H_

#include <cstdint>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/base/mutex.h"

namespace engram::rpc {

// Work (multiply-adds, about: queries x steps x rows x (dimension + 64)) up
// to which a retrieval runs on the gRPC thread that read its request rather
// than on a thread of Handlers: about 0.1-0.3 ms of one core, less than the
// hand-off costs.
inline constexpr size_t kInlineRetrievalWork = size_t{1} << 22;

// What a retrieval still allocates when it starts, counted in its
// request's bytes: its scores, its answers as built and as sent (its
// request as received, as parsed and as converted are taken already; about
// 50 MiB for 2,048 queries of 1,024 values in all). Its share of the memory
// guard (memory_guard.h).
inline constexpr size_t kRetrievalCost = 3;

// RESOURCE_EXHAUSTED for a retrieval Handlers turned away, with Run's `why`.
absl::Status RetrievalThreadsBusy(absl::string_view why);

class Handlers {
 public:
  // As many may wait as there are threads.
  explicit Handlers(size_t max_threads)
      : Handlers(max_threads, max_threads, SIZE_MAX) {}
  Handlers(size_t max_threads, size_t max_waiting, size_t max_waiting_bytes);
  ~Handlers();
  Handlers(const Handlers&) = delete;
  Handlers& operator=(const Handlers&) = delete;

  // Hands `task`, which holds `bytes` until it runs, to an idle or a new
  // thread, or queues it for the first thread free; false, and `task`
  // destroyed unrun, when every thread is busy and `max_waiting` tasks
  // already wait, or the waiting ones with this one would hold more than
  // `max_waiting_bytes`. Then `why`, if set, says which.
  bool Run(absl::AnyInvocable<void() &&> task, size_t bytes = 0,
           std::string* why = nullptr);
  // For a synchronous method, whose gRPC thread may block: as Run, and then
  // waits until `task` has run. False (with `why`) where Run refuses.
  bool RunAndWait(absl::FunctionRef<void()> task, size_t bytes = 0,
                  std::string* why = nullptr);

  size_t max_threads() const { return max_threads_; }

 private:
  void Loop();

  struct Task {
    absl::AnyInvocable<void() &&> run;
    size_t bytes;
  };

  const size_t max_threads_;
  const size_t max_waiting_;
  const size_t max_waiting_bytes_;
  Mutex mu_;
  CondVar work_;
  // Tasks not taken yet; with busy_ at most max_threads_ + max_waiting_.
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  size_t waiting_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // The tasks' bytes.
  size_t busy_ ABSL_GUARDED_BY(mu_) = 0;           // Threads running a task.
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;           // Threads waiting for one.
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_HANDLERS_H_

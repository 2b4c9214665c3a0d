#include "server/core/internal/parallel.h"

#if defined(__linux__)
#include <pthread.h>
#endif

#include <atomic>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "server/base/mutex.h"

namespace engram::core::internal {

namespace {

// One ParallelFor call: its parts are claimed one by one by the caller and
// any pool thread that picks the job up.
struct Job {
  explicit Job(size_t parts, absl::FunctionRef<void(size_t)> fn)
      : parts(parts), fn(fn) {}
  const size_t parts;
  const absl::FunctionRef<void(size_t)> fn;
  std::atomic<size_t> next{1};  // Part 0 is the caller's.
  Mutex mu;
  CondVar all_done;
  size_t done ABSL_GUARDED_BY(mu) = 0;

  // Runs parts until none is left unclaimed.
  void Work() {
    for (size_t p = next.fetch_add(1); p < parts; p = next.fetch_add(1)) {
      fn(p);
      MutexLock lock(&mu);
      if (++done == parts - 1) all_done.SignalAll();
    }
  }
};

class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool();  // Lives for the process.
    return *pool;
  }

  void Run(size_t parts, absl::FunctionRef<void(size_t)> fn) {
    auto job = std::make_shared<Job>(parts, fn);
    {
      MutexLock lock(&mu_);
      while (threads_ < std::min(parts - 1, kMaxThreads)) {
        std::thread(&Pool::Loop, this).detach();
        ++threads_;
      }
      queue_.push_back(job);
      work_.SignalAll();
    }
    fn(0);
    job->Work();
    MutexLock lock(&job->mu);
    while (job->done < parts - 1) job->all_done.Wait(&job->mu);
  }

 private:
  static constexpr size_t kMaxThreads = 256;

  void Loop() {
    // Named for profiles and `top -H` (otherwise it inherits the name of
    // whichever thread first needed it, e.g. a gRPC handler's).
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "engram-pool");
#endif
    while (true) {
      std::shared_ptr<Job> job;
      {
        MutexLock lock(&mu_);
        while (queue_.empty()) work_.Wait(&mu_);
        job = queue_.front();
        // A job whose parts are all claimed leaves the queue.
        if (job->next.load() >= job->parts) {
          queue_.pop_front();
          continue;
        }
      }
      job->Work();
    }
  }

  Mutex mu_;
  CondVar work_;
  std::deque<std::shared_ptr<Job>> queue_ ABSL_GUARDED_BY(mu_);
  size_t threads_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

void ParallelFor(size_t parts, absl::FunctionRef<void(size_t)> fn) {
  if (parts == 0) return;
  if (parts == 1) {
    fn(0);
    return;
  }
  Pool::Get().Run(parts, fn);
}

}  // namespace engram::core::internal

// Runs U-Hop Stage I fits in the background.
//
//   FitScheduler fits(&registry, {});
//   fits.PatternsAdded("faces", 100);   // debounced: fits once adds go quiet
//   fits.Start("faces");                // or now
//   absl::StatusOr<FitStatus> s = fits.Status("faces");
//
// Adding patterns schedules a fit for that store once at least
// `min_new_patterns` were added and none for `debounce_ms` (store settings).
// At most one fit per store runs at a time, on a bounded pool of worker
// threads (niced, so fits yield the cores to queries). A fit runs on an
// immutable snapshot; patterns added meanwhile are retrievable at once with
// the current map and count toward the next fit. The fitted map is published
// atomically (Store::PublishMap); cancel and store deletion stop a fit at the
// next epoch.
//
// Thread-safe: all methods may be called concurrently.
#ifndef ENGRAM_SERVER_JOBS_FIT_SCHEDULER_H_
#define ENGRAM_SERVER_JOBS_FIT_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/base/mutex.h"
#include "server/store/registry.h"

namespace engram::jobs {

struct FitStatus {
  enum class State {
    kNotConfigured,  // The store has no U-Hop feature map.
    kIdle,
    kPending,
    kRunning,
    kSucceeded,
    kCancelled,
    kFailed,
  };
  State state = State::kIdle;
  uint32_t epoch = 0;
  uint32_t total_epochs = 0;
  double loss_before = 0;
  double loss_after = 0;
  double duration_seconds = 0;
  uint64_t map_version = 0;  // Of the published map.
  uint64_t patterns_fitted = 0;
  std::string error;
  uint64_t generation = 0;  // Increases on every change.
};

// Counts what the scheduler does (implemented over metrics::Metrics).
class FitObserver {
 public:
  virtual ~FitObserver() = default;
  virtual void FitCounts(size_t running, size_t pending) = 0;
  virtual void FitFinished(const std::string& store,
                           const FitStatus& status) = 0;
};

struct FitSchedulerOptions {
  int workers = 1;
  absl::Duration tick = absl::Milliseconds(20);  // Debounce resolution.
  FitObserver* observer = nullptr;               // Borrowed; may be null.
};

class FitScheduler {
 public:
  // `registry` is borrowed and must outlive the scheduler.
  FitScheduler(store::StoreRegistry* registry,
               const FitSchedulerOptions& options);
  // Cancels running fits and joins every thread.
  ~FitScheduler();
  FitScheduler(const FitScheduler&) = delete;
  FitScheduler& operator=(const FitScheduler&) = delete;

  void PatternsAdded(const std::string& store, size_t count);
  // Schedules fits for stores holding patterns their map was not fitted on
  // (after a restart).
  void ResumeAll();
  absl::StatusOr<FitStatus> Status(const std::string& store);
  // Queues a fit now. FAILED_PRECONDITION without U-Hop or with < 2 patterns.
  absl::StatusOr<FitStatus> Start(const std::string& store);
  // Cancels a pending or running fit; returns the status after.
  absl::StatusOr<FitStatus> Cancel(const std::string& store);
  void StoreDeleted(const std::string& store);
  // The status once its generation passes `after`, or after `timeout`.
  absl::StatusOr<FitStatus> WaitForChange(const std::string& store,
                                          uint64_t after,
                                          absl::Duration timeout);

 private:
  struct Entry {
    FitStatus status;
    size_t new_patterns = 0;
    absl::Time last_add = absl::InfinitePast();
    bool queued = false;
    bool running = false;
    std::shared_ptr<std::atomic<bool>> cancel;
  };

  void SchedulerLoop();
  void WorkerLoop();
  void RunFit(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  // The entry of a U-Hop store, created from its published record if new.
  absl::StatusOr<Entry*> EntryFor(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Changed(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Enqueue(const std::string& name, Entry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReportCounts() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  store::StoreRegistry* const registry_;
  const FitSchedulerOptions options_;

  Mutex mu_;
  CondVar work_;     // Queue non-empty, or stopping (workers wait on it).
  CondVar stop_;     // Stopping (the scheduler loop's timed wait).
  CondVar changed_;  // Some status changed (WaitForChange).
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::vector<std::thread> threads_;  // Set in the constructor only.
};

}  // namespace engram::jobs

#endif  // ENGRAM_SERVER_JOBS_FIT_SCHEDULER_H_

// Runs U-Hop Stage I fits and self-retrieval calibrations in the background.
//
//   FitScheduler fits(&registry, {});
//   fits.PatternsAdded("faces", 100);   // debounced: fits once adds go quiet
//   fits.Start("faces");                // or now
//   absl::StatusOr<FitStatus> s = fits.Status("faces");
//   fits.StartCalibration("faces", std::nullopt);
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
// Calibration (core/calibration.h) runs on request, and with
// store.calibration.automatic after every successful fit of a U-Hop store or,
// for other stores, once adds go quiet (on the same debounce). It runs on a
// snapshot; its report, and the setting it found when it applies one, are
// stored with the settings in one write (Store::UpdateSettings), and only if
// the retrieval settings did not change meanwhile.
//
// Thread-safe: all methods may be called concurrently.
#ifndef ENGRAM_SERVER_JOBS_FIT_SCHEDULER_H_
#define ENGRAM_SERVER_JOBS_FIT_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/base/mutex.h"
#include "server/core/calibration.h"
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

struct CalibrationStatus {
  enum class State {
    kIdle,
    kPending,
    kRunning,
    kSucceeded,
    kCancelled,
    kFailed
  };
  State state = State::kIdle;
  // The last finished calibration's report (also after a restart); its time
  // is InfinitePast when the store was never calibrated.
  store::CalibrationReport report;
  std::string error;        // Why the last calibration failed, if it did.
  uint64_t generation = 0;  // Increases on every change.
};

// Counts what the scheduler does (implemented over metrics::Metrics).
class FitObserver {
 public:
  virtual ~FitObserver() = default;
  virtual void FitCounts(size_t running, size_t pending) = 0;
  virtual void FitFinished(const std::string& store,
                           const FitStatus& status) = 0;
  // A finished calibration (succeeded, cancelled or failed).
  virtual void CalibrationFinished(const std::string& store,
                                   const CalibrationStatus& status) = 0;
  // A store's current calibration report: after each successful
  // calibration, and the stored one of each store at ResumeAll.
  virtual void CalibrationReported(const std::string& store,
                                   const store::CalibrationReport& report) = 0;
};

struct FitSchedulerOptions {
  int workers = 1;
  absl::Duration tick = absl::Milliseconds(20);  // Debounce resolution.
  FitObserver* observer = nullptr;               // Borrowed; may be null.
  // Retrieval threads and work budget of one calibration.
  int calibration_threads = 1;
  double max_calibration_work = core::kDefaultCalibrationWork;
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

  // Queues a calibration now; `apply` overrides store.calibration.apply.
  // FAILED_PRECONDITION with fewer than 2 patterns.
  absl::StatusOr<CalibrationStatus> StartCalibration(const std::string& store,
                                                     std::optional<bool> apply);
  absl::StatusOr<CalibrationStatus> Calibration(const std::string& store);
  // The status once its generation passes `after`, or after `timeout`.
  absl::StatusOr<FitStatus> WaitForChange(const std::string& store,
                                          uint64_t after,
                                          absl::Duration timeout);

 private:
  enum class Job { kFit, kCalibrate };

  struct Entry {
    // Which incarnation of the store this is: a store deleted and created
    // again gets a new entry, and jobs of the old one drop their results.
    uint64_t serial = 0;
    bool uhop = false;  // The store has a U-Hop map, so it is fitted.
    FitStatus status;
    size_t new_patterns = 0;
    absl::Time last_add = absl::InfinitePast();
    bool queued = false;
    bool running = false;
    std::shared_ptr<std::atomic<bool>> cancel;
    CalibrationStatus calibration;
    bool calibration_queued = false;
    bool calibration_running = false;
    std::optional<bool> calibration_apply;  // The request's override.
    std::shared_ptr<std::atomic<bool>> calibration_cancel;
  };

  void SchedulerLoop();
  void WorkerLoop();
  void RunFit(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  void RunCalibration(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  // The entry of incarnation `serial` of a store, or null if it was deleted.
  Entry* Find(const std::string& name, uint64_t serial)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The entry of a store, created from its published records if new.
  absl::StatusOr<Entry*> EntryFor(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueCalibration(const std::string& name, Entry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stamps a status's generation and wakes WaitForChange.
  void Changed(uint64_t& generation) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
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
  std::deque<std::pair<std::string, Job>> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_serial_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::vector<std::thread> threads_;  // Set in the constructor only.
};

}  // namespace engram::jobs

#endif  // ENGRAM_SERVER_JOBS_FIT_SCHEDULER_H_

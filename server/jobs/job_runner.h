// Runs the background jobs of every store: U-Hop Stage I fits and
// self-retrieval calibrations, on one queue and one pool of workers.
//
//   JobRunner jobs(&registry, {});
//   jobs.PatternsAdded("faces", 100);  // debounced: runs once adds go quiet
//   absl::StatusOr<v1::FitStatus> fit = jobs.Start(JobKind::kFit, "faces");
//   jobs.Start(JobKind::kCalibration, "faces", /*apply=*/true);
//
// Every job has the same life: queued (PENDING), claimed by a worker
// (RUNNING) on an immutable snapshot of its store, and ended (SUCCEEDED,
// CANCELLED or FAILED); at most one job of a kind per store at a time;
// cancelling, deleting the store or shutting down stops it at its next
// check. Statuses are the API's messages, stamped with a generation that
// increases on every change, so callers can wait for the next one.
//
// What starts jobs: adding patterns, once at least
// feature_map.min_new_patterns were added and none for
// feature_map.debounce_ms, starts a fit of a U-Hop store, or a calibration
// of another store with calibration.automatic; a successful fit starts a
// calibration when calibration.automatic; and requests. A fit publishes its
// map atomically (Store::PublishMap); a calibration stores its report, and
// the setting it found when it applies one, in one write
// (Store::UpdateSettings), and only if the retrieval settings did not change
// meanwhile.
//
// Workers are niced, so jobs yield the cores to queries.
//
// Thread-safe: all methods may be called concurrently.
#ifndef ENGRAM_SERVER_JOBS_JOB_RUNNER_H_
#define ENGRAM_SERVER_JOBS_JOB_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engram/v1/engram.pb.h"
#include "server/base/mutex.h"
#include "server/core/calibration.h"
#include "server/store/registry.h"

namespace engram::jobs {

enum class JobKind { kFit, kCalibration };

// FAILED_PRECONDITION when a job of `kind` cannot start on `store`: a fit
// on a store without a U-Hop feature map (`uhop`), either job on fewer than
// 2 patterns. One wording for engramd's runner and a router's jobs.
absl::Status CheckCanStart(JobKind kind, absl::string_view store, bool uhop,
                           uint64_t patterns);

// Counts what the runner does (implemented over metrics::Metrics).
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  // Fits running and waiting, after every change.
  virtual void FitCounts(size_t running, size_t pending) = 0;
  virtual void FitFinished(const v1::FitStatus& status) = 0;
  // A finished calibration (succeeded, cancelled or failed).
  virtual void CalibrationFinished(const v1::CalibrationStatus& status) = 0;
  // A store's current calibration report: after each successful
  // calibration, and the stored one of each store at ResumeAll.
  virtual void CalibrationReported(const std::string& store,
                                   const v1::CalibrationReport& report) = 0;
};

struct JobRunnerOptions {
  int workers = 1;
  // The scheduler sleeps until a store's debounce ends, an add, or a job's
  // end; a store whose new patterns are still below its threshold is
  // looked at again this often as well (its settings may have changed).
  absl::Duration recheck = absl::Seconds(1);
  JobObserver* observer = nullptr;  // Borrowed; may be null.
  // Start fits and calibrations on their own after adds (off on a shard:
  // its router runs them for the whole store).
  bool automatic = true;
  // Retrieval threads and work budget of one calibration.
  int calibration_threads = 1;
  double max_calibration_work = core::kDefaultCalibrationWork;
};

class JobRunner {
 public:
  // `registry` is borrowed and must outlive the runner.
  JobRunner(store::StoreRegistry* registry, const JobRunnerOptions& options);
  // Cancels running jobs and joins every thread.
  ~JobRunner();
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  void PatternsAdded(const std::string& store, size_t count);
  // After a restart: schedules jobs for stores holding patterns their map
  // (or their last calibration) did not see, and reports stored reports.
  void ResumeAll();
  void StoreDeleted(const std::string& store);
  // A fit's map or a calibration's report was stored from outside the
  // runner (a router's job over a sharded store): that kind's status
  // becomes what the store has published.
  void Published(JobKind kind, const std::string& store);

  // The fit's status (NOT_CONFIGURED without a U-Hop map) or the
  // calibration's, with the generation it carries.
  absl::StatusOr<v1::FitStatus> FitStatus(const std::string& store);
  absl::StatusOr<v1::CalibrationStatus> CalibrationStatus(
      const std::string& store);
  absl::StatusOr<uint64_t> Generation(JobKind kind, const std::string& store);
  // Queues a job now. FAILED_PRECONDITION with fewer than 2 patterns, and a
  // fit without a U-Hop map. `apply` (calibrations) overrides
  // store.calibration.apply. Returns the status after.
  absl::Status Start(JobKind kind, const std::string& store,
                     std::optional<bool> apply = std::nullopt);
  // Cancels a pending or running job, and a fit's debounced automatic start.
  absl::Status Cancel(JobKind kind, const std::string& store);
  // The generation once it passes `after`, or the current one after
  // `timeout` (or at shutdown).
  absl::StatusOr<uint64_t> WaitForChange(JobKind kind, const std::string& store,
                                         uint64_t after,
                                         absl::Duration timeout);

 private:
  // One kind of job of one store.
  struct Slot {
    bool queued = false;
    bool running = false;
    std::shared_ptr<std::atomic<bool>> cancel;
    std::optional<bool> apply;  // A calibration request's override.
    uint64_t generation = 0;
    // Started again while the running job was being cancelled: queued
    // once that job has ended.
    bool restart = false;
  };
  // One incarnation of a store: deleted and created again, it is a new
  // entry (its serial tells them apart), and jobs of the old one drop their
  // results.
  struct Entry {
    uint64_t serial = 0;
    bool uhop = false;  // The store has a U-Hop map, so it is fitted.
    size_t new_patterns = 0;
    absl::Time last_add = absl::InfinitePast();
    // The scheduler knows when this store's debounce ends and will wake
    // for it: an add need not wake it.
    bool awaited = false;
    Slot fit_slot, calibration_slot;
    v1::FitStatus fit;
    v1::CalibrationStatus calibration;
    Slot& slot(JobKind kind) {
      return kind == JobKind::kFit ? fit_slot : calibration_slot;
    }
  };
  struct Queued {
    JobKind kind;
    std::string store;
    uint64_t serial;
  };

  void SchedulerLoop();
  void WorkerLoop();
  // The body of a claimed job: runs it without the lock and records the end.
  void RunFit(const Queued& job) ABSL_LOCKS_EXCLUDED(mu_);
  void RunCalibration(const Queued& job) ABSL_LOCKS_EXCLUDED(mu_);
  // Marks a queued job RUNNING and hands out its snapshot and cancel flag;
  // null if it was cancelled or its store deleted meanwhile.
  // After a job of `kind` ended: queues the one a Start asked for while it
  // was being cancelled.
  void Restart(JobKind kind, const std::string& store, Entry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reclaims the store's expired patterns before a job reads it, so a fit
  // or calibration never sees one (a failure leaves them to the sweeper).
  void ReclaimExpired(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  // Marks a queued job running and returns the snapshot it works on, with
  // the store it came from in `store` (a second lookup by name could find a
  // store created under that name since, or none); null if the job was
  // cancelled or its store is gone.
  std::shared_ptr<const store::StoreView> Claim(
      const Queued& job, std::shared_ptr<std::atomic<bool>>& cancel,
      std::shared_ptr<store::Store>& store) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The entry of a store, created from its published records if new.
  absl::StatusOr<Entry*> EntryFor(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The entry of incarnation `serial` of a store, or null if it was deleted.
  Entry* Find(const std::string& name, uint64_t serial)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Enqueue(JobKind kind, const std::string& name, Entry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stamps a slot's generation and wakes the waiters.
  void Changed(Slot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReportCounts() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  store::StoreRegistry* const registry_;
  const JobRunnerOptions options_;

  Mutex mu_;
  CondVar work_;      // Queue non-empty, or stopping (workers wait on it).
  CondVar schedule_;  // For the scheduler: an add, a job's end, stopping.
  CondVar changed_;   // Some status changed (WaitForChange).
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_serial_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::vector<std::thread> threads_;
};

}  // namespace engram::jobs

#endif  // ENGRAM_SERVER_JOBS_JOB_RUNNER_H_

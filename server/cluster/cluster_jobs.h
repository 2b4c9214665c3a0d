// The jobs a router runs for a sharded store, on a sample gathered from its
// shards (docs/scale-out.md):
//
// - U-Hop Stage I: one feature map for the whole store, fitted on a seeded
//   sample (every pattern up to the fit's batch size, else batch_size of
//   them, each group's share in proportion to the patterns it holds), in id
//   order, and published to every ready replica with one version. Queries
//   see one version at a time: the router's kernel steps check that every
//   shard used the same map and rerun the query while a publication is
//   under way.
// - Calibration: the search of one engramd (core::Calibrate) on a seeded
//   sample of the whole store (at most kCalibrationSample patterns, with
//   their features under the store's map), its report and setting stored on
//   every ready replica.
//
//   ClusterJobs jobs(&pool, options);
//   absl::StatusOr<v1::FitStatus> started = jobs.StartFit(merged_store);
//   std::optional<v1::FitStatus> now = jobs.fits().Get("faces");
//
// Thread-safe. One job of a kind per store at a time, each on its own
// thread.
#ifndef ENGRAM_SERVER_CLUSTER_CLUSTER_JOBS_H_
#define ENGRAM_SERVER_CLUSTER_CLUSTER_JOBS_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engram/v1/engram.pb.h"
#include "server/base/mutex.h"
#include "server/cluster/shard_pool.h"
#include "server/core/calibration.h"
#include "server/store/settings.h"

namespace engram::cluster {

// At most this many patterns are gathered for a calibration (the search
// itself samples fewer within its work budget).
inline constexpr uint64_t kCalibrationSample = 65536;

// The jobs of one kind (Status: FitStatus or CalibrationStatus), by store:
// each runs `body` on its own thread; statuses carry a generation that
// increases on every change, so callers can wait for the next one.
template <typename Status>
class JobTable {
 public:
  struct Job {
    Status status;
    uint64_t generation = 0;
    std::atomic<bool> cancel{false};
    bool done = false;
    std::thread thread;
  };
  // Runs the job; its status is updated through Update; OK ends it
  // SUCCEEDED, CANCELLED status CANCELLED, anything else FAILED.
  using Body = std::function<absl::Status(Job* job)>;

  JobTable() = default;
  JobTable(const JobTable&) = delete;
  JobTable& operator=(const JobTable&) = delete;
  ~JobTable() {  // Cancels running jobs and waits for them.
    std::vector<std::thread> threads;
    {
      MutexLock lock(&mu_);
      for (auto& [name, job] : jobs_) {
        job->cancel = true;
        if (job->thread.joinable()) threads.push_back(std::move(job->thread));
      }
    }
    for (std::thread& t : threads) t.join();
  }

  // Starts `body` for `store` with `initial` as its status (RUNNING), unless
  // one runs: then that one's status.
  Status Start(const std::string& store, Status initial, Body body) {
    MutexLock lock(&mu_);
    std::unique_ptr<Job>& slot = jobs_[store];
    if (slot != nullptr && !slot->done) return slot->status;
    if (slot != nullptr && slot->thread.joinable()) {
      slot->thread.join();  // Done: it takes the lock no more.
    }
    slot = std::make_unique<Job>();
    Job* job = slot.get();
    job->status = std::move(initial);
    job->status.set_state(Status::RUNNING);
    job->generation = ++generation_;
    changed_.SignalAll();
    job->thread = std::thread([this, job, body = std::move(body)] {
      const absl::Status result = body(job);
      MutexLock lock(&mu_);
      job->status.set_state(result.ok()                 ? Status::SUCCEEDED
                            : absl::IsCancelled(result) ? Status::CANCELLED
                                                        : Status::FAILED);
      if (!result.ok()) job->status.set_error(std::string(result.message()));
      job->generation = ++generation_;
      job->done = true;  // The last time this thread takes the lock.
      changed_.SignalAll();
    });
    return job->status;
  }

  // Cancels the running job: its status; nullopt if none runs.
  std::optional<Status> Cancel(const std::string& store) {
    MutexLock lock(&mu_);
    auto it = jobs_.find(store);
    if (it == jobs_.end() || it->second->done) return std::nullopt;
    it->second->cancel = true;
    return it->second->status;
  }

  // The status of this router's last job of `store`, if it ran one since it
  // started, and its generation.
  std::optional<Status> Get(const std::string& store,
                            uint64_t* generation = nullptr) {
    MutexLock lock(&mu_);
    auto it = jobs_.find(store);
    if (it == jobs_.end()) return std::nullopt;
    if (generation != nullptr) *generation = it->second->generation;
    return it->second->status;
  }

  // The generation of `store`'s job once it passes `after`, or after
  // `timeout`.
  uint64_t WaitForChange(const std::string& store, uint64_t after,
                         absl::Duration timeout) {
    MutexLock lock(&mu_);
    auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto it = jobs_.find(store);
      return it == jobs_.end() || it->second->generation != after;
    };
    changed_.AwaitWithTimeout(&mu_, changed, timeout);
    auto it = jobs_.find(store);
    return it == jobs_.end() ? after : it->second->generation;
  }

  // Changes a running job's status.
  void Update(Job* job, const std::function<void(Status&)>& change) {
    MutexLock lock(&mu_);
    change(job->status);
    job->generation = ++generation_;
    changed_.SignalAll();
  }

 private:
  Mutex mu_;
  CondVar changed_;  // Signalled at each new generation.
  std::map<std::string, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
};

struct ClusterJobOptions {
  store::Limits limits;  // The router's; max_calibration_work bounds a job.
  int calibration_threads = 1;
};

// The settings of a store as its shards describe it (`described`, their
// parts merged), checked as a create's are: a description out of range (a
// damaged answer, or shards whose stores exceed this router's limits) is
// FAILED_PRECONDITION naming the store, before anything is sized by it.
absl::StatusOr<store::StoreSettings> DescribedSettings(
    const engram::v1::Store& described, const store::Limits& limits);

class ClusterJobs {
 public:
  ClusterJobs(ShardPool* pool, ClusterJobOptions options)
      : pool_(pool), options_(options) {}

  // Start a job for the store `merged` describes (its parts merged by the
  // router). FAILED_PRECONDITION with fewer than 2 patterns, and a fit
  // without a U-Hop map. A job of the kind already running: its status.
  absl::StatusOr<engram::v1::FitStatus> StartFit(
      const engram::v1::Store& merged);
  // `apply` overrides the store's calibration.apply.
  absl::StatusOr<engram::v1::CalibrationStatus> StartCalibration(
      const engram::v1::Store& merged, std::optional<bool> apply);

  JobTable<engram::v1::FitStatus>& fits() { return fits_; }
  JobTable<engram::v1::CalibrationStatus>& calibrations() {
    return calibrations_;
  }

 private:
  // A seeded sample of the store: every pattern up to `most`, else `most`
  // with each group's share in proportion to what it holds; rows in id
  // order. `total` gets the store's pattern count.
  absl::StatusOr<std::vector<float>> Sample(const std::string& store,
                                            size_t dim, uint64_t most,
                                            uint64_t seed, uint64_t* total);
  absl::Status Fit(const engram::v1::Store& merged,
                   JobTable<engram::v1::FitStatus>::Job* job);
  absl::Status Calibrate(const engram::v1::Store& merged, bool apply,
                         JobTable<engram::v1::CalibrationStatus>::Job* job);

  ShardPool* const pool_;
  const ClusterJobOptions options_;
  // Last: destroyed first, so running jobs stop before what they use goes.
  JobTable<engram::v1::FitStatus> fits_;
  JobTable<engram::v1::CalibrationStatus> calibrations_;
};

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_CLUSTER_JOBS_H_

// U-Hop Stage I of a sharded store, run by a router: one feature map for
// the whole store, fitted on a seeded sample gathered from the shards (at
// most the fit's batch size, each group's share in proportion to the
// patterns it holds) and published to every ready replica with one version
// (docs/scale-out.md). Queries see one version at a time: the router's
// kernel steps check that every shard used the same map and retry the
// query while a publication is under way.
//
//   ClusterFits fits(&pool);
//   absl::StatusOr<v1::FitStatus> started = fits.Start(merged_store);
//   std::optional<v1::FitStatus> now = fits.Status("faces");
//
// Thread-safe. One fit per store at a time, each on its own thread.
#ifndef ENGRAM_SERVER_CLUSTER_CLUSTER_FIT_H_
#define ENGRAM_SERVER_CLUSTER_CLUSTER_FIT_H_

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engram/v1/engram.pb.h"
#include "server/cluster/shard_pool.h"

namespace engram::cluster {

class ClusterFits {
 public:
  explicit ClusterFits(ShardPool* pool) : pool_(pool) {}
  ~ClusterFits();  // Cancels running fits and waits for them.
  ClusterFits(const ClusterFits&) = delete;
  ClusterFits& operator=(const ClusterFits&) = delete;

  // Starts a fit of the store `merged` describes (its parts merged by the
  // router). FAILED_PRECONDITION without a U-Hop map or with fewer than 2
  // patterns. A fit of the store already running: OK, its status.
  absl::StatusOr<engram::v1::FitStatus> Start(const engram::v1::Store& merged);
  // Cancels the running fit; FAILED_PRECONDITION if none runs here.
  absl::StatusOr<engram::v1::FitStatus> Cancel(const std::string& store);
  // The status of this router's last fit of `store`, if it ran one since
  // it started, and its generation (increases on every change).
  std::optional<engram::v1::FitStatus> Status(const std::string& store,
                                              uint64_t* generation = nullptr);
  // Waits until the generation of `store`'s fit passes `after`, at most
  // `timeout`; returns the generation then.
  uint64_t WaitForChange(const std::string& store, uint64_t after,
                         absl::Duration timeout);

 private:
  struct Job {
    engram::v1::FitStatus status;
    uint64_t generation = 0;
    std::atomic<bool> cancel{false};
    bool done = false;
    std::thread thread;
  };
  // The fit itself, on the job's thread.
  void Run(engram::v1::Store merged, Job* job);
  absl::Status Fit(const engram::v1::Store& merged, Job* job);
  void Update(Job* job, const std::function<void(engram::v1::FitStatus&)>& f)
      ABSL_LOCKS_EXCLUDED(mu_);

  ShardPool* const pool_;
  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_CLUSTER_FIT_H_

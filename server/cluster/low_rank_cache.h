// A router's low-rank form of its sharded stores: the sum of every shard
// group's low-rank sums (A, z and the norm sums add over a partition of the
// patterns), so that a low-rank query is answered on the router without the
// shards' work (docs/scale-out.md). Each call checks with one replica of
// every group that the part it holds is current (a fingerprint of the
// store's version, content, settings and map), and fetches only the parts
// that changed; so an answer is exact for the parts as they were at the
// call, never stale.
//
//   LowRankCache cache(&pool);
//   absl::StatusOr<std::shared_ptr<const MergedLowRank>> merged =
//       cache.Get("faces", deadline);
//   store::PlanPath((*merged)->form, params, choice, tolerance, q, L);
//
// Thread-safe.
#ifndef ENGRAM_SERVER_CLUSTER_LOW_RANK_CACHE_H_
#define ENGRAM_SERVER_CLUSTER_LOW_RANK_CACHE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engram/v1/engram.pb.h"
#include "server/cluster/shard_pool.h"
#include "server/core/low_rank.h"
#include "server/store/retrieve.h"

namespace engram::cluster {

// One store's sums over all groups, and where each part came from.
struct MergedLowRank {
  std::shared_ptr<const core::LowRankSums> sums;  // Null: none (form.detail).
  store::LowRankForm form;                        // Borrows sums.
  // kernel_dot: the map the shards' keys were taken with (one version).
  std::shared_ptr<const core::FeatureMap> map;
  // The replica of every group the parts came from, and the store version
  // each had: the matches' scan must read the same.
  std::vector<const Replica*> replicas;
  std::vector<uint64_t> versions;
};

class LowRankCache {
 public:
  explicit LowRankCache(ShardPool* pool) : pool_(pool) {}

  // The merged sums of `store` as one ready replica of every group holds
  // them now; with `described`, also each group's part of the store as
  // GetStore describes it (without the fit's status), from the same call.
  // Errors: those of the shards (NOT_FOUND, UNAVAILABLE naming the group),
  // or INTERNAL when the parts do not fit together.
  absl::StatusOr<std::shared_ptr<const MergedLowRank>> Get(
      const std::string& store, absl::Time deadline,
      std::vector<engram::v1::Store>* described = nullptr);

  // Drops what is held of `store` (deleted).
  void Forget(const std::string& store);

 private:
  struct Part {
    const Replica* replica = nullptr;
    std::shared_ptr<const v1::LowRankSums> sums;
  };
  struct Entry {
    std::vector<Part> parts;  // Per group.
    std::shared_ptr<const MergedLowRank> merged;
  };

  ShardPool* const pool_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

// The sum of the parts (one per group) as one store's low-rank form; parts
// keeping different degrees merge at the smallest (a higher degree's sums
// begin with a lower one's).
absl::StatusOr<std::shared_ptr<MergedLowRank>> MergeParts(
    const std::string& store,
    const std::vector<std::shared_ptr<const v1::LowRankSums>>& parts);

// OK if `merged`'s sums (if any) answer queries of `dimension` under
// `similarity`: ABORTED if they do not (the store was replaced between its
// description and its sums; a retry reads both again).
absl::Status CheckSumsFit(const MergedLowRank& merged, size_t dimension,
                          core::Similarity similarity);

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_LOW_RANK_CACHE_H_

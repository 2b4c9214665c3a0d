// A fitted feature map as the cluster protocol carries it
// (engram.cluster.v1.FeatureMapRecord), and back: what a shard publishes,
// sends with its low-rank sums and gives a repair, and what a router reads.
//
// Thread-safe: pure functions.
#ifndef ENGRAM_SERVER_CLUSTER_MAP_RECORD_H_
#define ENGRAM_SERVER_CLUSTER_MAP_RECORD_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engram/cluster/v1/shard.pb.h"
#include "server/core/feature_map.h"
#include "server/store/storage.h"

namespace engram::cluster {

// The record of `map` (the identity written out as its matrix) and its fit.
void FeatureMapToProto(const std::string& store, const core::FeatureMap& map,
                       const store::FitRecord& fit, v1::FeatureMapRecord& out);

// The map a record carries; INVALID_ARGUMENT naming the field if its
// weights are not out_dim x in_dim finite values.
absl::StatusOr<std::shared_ptr<const core::FeatureMap>> FeatureMapFromProto(
    const v1::FeatureMapRecord& record);

// The fit a record carries.
store::FitRecord FitRecordFromProto(const v1::FeatureMapRecord& record);

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_MAP_RECORD_H_

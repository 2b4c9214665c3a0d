// engram.cluster.v1.Shard: what a shard serves a router besides
// engram.v1.Engram — its identity and stores (Describe), one retrieval step
// over its part of a store (PartialStep, server/core/partial.h), pattern
// values by id (GetValues), a page of patterns after an id that any
// replica continues (ListPatternsAfter), whether a delete would succeed
// (CheckDelete), its part of the low-rank sums (GetLowRankSums,
// server/core/low_rank.h), and what a router's fit of the whole store needs:
// a seeded sample (GetSample), the map it publishes (PutFeatureMap,
// GetFeatureMap) and the calibration it applies (PutCalibration).
//
// Thread-safe: gRPC calls every method concurrently; all state lives in the
// registry.
#ifndef ENGRAM_SERVER_CLUSTER_SHARD_SERVICE_H_
#define ENGRAM_SERVER_CLUSTER_SHARD_SERVICE_H_

#include <cstddef>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "engram/cluster/v1/shard.grpc.pb.h"
#include "server/jobs/job_runner.h"
#include "server/rpc/call.h"
#include "server/rpc/handlers.h"
#include "server/store/placement.h"
#include "server/store/registry.h"

namespace engram::cluster {

struct ShardOptions {
  std::string cluster;         // --cluster
  store::Placement placement;  // --shard_group, --shard_groups
  int retrieval_threads = 1;
  // Threads a step of more than `inline_work` (rpc::kInlineRetrievalWork)
  // runs on, the gRPC thread that read it waiting; when they are all busy
  // and as many steps wait as may, a step is RESOURCE_EXHAUSTED. Borrowed
  // (engramd shares them with Retrieve); null: every step runs on its gRPC
  // thread.
  rpc::Handlers* handlers = nullptr;
  size_t inline_work = rpc::kInlineRetrievalWork;
  store::Limits limits;  // A step's filter is checked against them.
  // Told of maps a router publishes (the fit status); may be null.
  jobs::JobRunner* jobs = nullptr;
};

// What a shard does after each write that succeeded (rpc::CallPolicy::
// after_write): keeps the router's write stamp of the call for the store the
// write went to.
rpc::AfterWrite StampRecorder();

class ShardService final : public v1::Shard::Service {
 public:
  // Borrowed; they must outlive the service.
  ShardService(store::StoreRegistry* registry, const rpc::CallPolicy* policy,
               ShardOptions options);

  grpc::Status Describe(grpc::ServerContext* context,
                        const v1::DescribeRequest* request,
                        v1::ShardDescription* response) override;
  grpc::Status PartialStep(grpc::ServerContext* context,
                           const v1::PartialStepRequest* request,
                           v1::PartialStepResponse* response) override;
  grpc::Status GetValues(grpc::ServerContext* context,
                         const v1::GetValuesRequest* request,
                         v1::GetValuesResponse* response) override;
  grpc::Status ListPatternsAfter(
      grpc::ServerContext* context, const v1::ListPatternsAfterRequest* request,
      v1::ListPatternsAfterResponse* response) override;
  grpc::Status CheckDelete(
      grpc::ServerContext* context,
      const engram::v1::DeletePatternsRequest* request,
      engram::v1::DeletePatternsResponse* response) override;
  grpc::Status GetLowRankSums(grpc::ServerContext* context,
                              const v1::LowRankSumsRequest* request,
                              v1::LowRankSums* response) override;
  grpc::Status GetSample(grpc::ServerContext* context,
                         const v1::SampleRequest* request,
                         v1::Sample* response) override;
  grpc::Status PutFeatureMap(grpc::ServerContext* context,
                             const v1::FeatureMapRecord* request,
                             v1::PutFeatureMapResponse* response) override;
  grpc::Status GetFeatureMap(grpc::ServerContext* context,
                             const v1::GetFeatureMapRequest* request,
                             v1::FeatureMapRecord* response) override;
  grpc::Status PutCalibration(grpc::ServerContext* context,
                              const v1::CalibrationRecord* request,
                              engram::v1::CalibrationReport* response) override;

 private:
  // Runs `step` (of about `work` multiply-adds, for a request of
  // `request_bytes`) here or on options_.handlers (see ShardOptions), with
  // the call's share of the memory guard there.
  absl::Status RunStep(rpc::Call& call, double work, size_t request_bytes,
                       absl::FunctionRef<absl::Status()> step);

  store::StoreRegistry* const registry_;
  const rpc::CallPolicy* const policy_;
  const ShardOptions options_;
};

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_SHARD_SERVICE_H_

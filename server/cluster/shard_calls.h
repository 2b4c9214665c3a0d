// How a router calls its shards: one call to one replica, with the pool's
// token, deadline and metrics; calls to several at once; one retrieval step
// on one replica of every group.
//
// Thread-safe: free functions; the pool is thread-safe.
#ifndef ENGRAM_SERVER_CLUSTER_SHARD_CALLS_H_
#define ENGRAM_SERVER_CLUSTER_SHARD_CALLS_H_

#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "engram/cluster/v1/shard.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/server_context.h"
#include "server/cluster/shard_pool.h"

namespace engram::cluster {

// A shard's answer as a status that says which shard gave it.
absl::Status FromShard(const grpc::Status& status, const Replica& replica);

// The deadline a router's call to its shards inherits from its client's
// call (none beyond a day).
absl::Time DeadlineOf(const grpc::ServerContext* context);

// One unary call to a replica.
template <typename Stub, typename Request, typename Response>
absl::Status Unary(const ShardPool& pool, const Replica& replica, Stub& stub,
                   grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                const Request&, Response*),
                   const Request& request, Response* response,
                   absl::Time deadline) {
  grpc::ClientContext context;
  pool.Prepare(context, deadline);
  const absl::Time start = absl::Now();
  const grpc::Status status = (stub.*method)(&context, request, response);
  absl::string_view method_name = Request::descriptor()->name();
  absl::ConsumeSuffix(&method_name, "Request");
  pool.Record(replica, method_name, status, absl::Now() - start,
              request.ByteSizeLong(),
              status.ok() ? response->ByteSizeLong() : 0);
  return FromShard(status, replica);
}

// Runs fn(0) .. fn(n - 1) at once (a thread each but the first).
std::vector<absl::Status> InParallel(
    size_t n, const std::function<absl::Status(size_t)>& fn);

absl::Status FirstError(const std::vector<absl::Status>& status);

// One PartialStep on every replica of `replicas` (one per group) at once;
// the first failure if any fails.
absl::StatusOr<std::vector<v1::PartialStepResponse>> StepOnEach(
    const ShardPool& pool, const std::vector<const Replica*>& replicas,
    const v1::PartialStepRequest& step, absl::Time deadline);

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_SHARD_CALLS_H_

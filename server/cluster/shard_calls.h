// How a router calls its shards: one call to one replica, with the pool's
// token, deadline and metrics; calls to several at once; one retrieval step
// on one replica of every group.
//
// Thread-safe: free functions; the pool is thread-safe.
#ifndef ENGRAM_SERVER_CLUSTER_SHARD_CALLS_H_
#define ENGRAM_SERVER_CLUSTER_SHARD_CALLS_H_

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "engram/cluster/v1/shard.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/server_context.h"
#include "server/base/mutex.h"
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

// One unary call to each of `replicas` at once through gRPC's callback API:
// the calling thread waits for all of them and no thread is started.
// request(i) goes to replicas[i] and its answer to (*responses)[i]; `start`
// issues one call, e.g.
//   [](const Replica& r, grpc::ClientContext* c, const Req* q, Resp* a,
//      std::function<void(grpc::Status)> done) {
//     r.engram->async()->GetStore(c, q, a, std::move(done));
//   }
// Returns each call's status, named by its shard as Unary's is.
template <typename Request, typename Response, typename Start>
std::vector<absl::Status> UnaryOnEach(
    const ShardPool& pool, const std::vector<const Replica*>& replicas,
    const std::function<const Request&(size_t)>& request, const Start& start,
    std::vector<Response>* responses, absl::Time deadline) {
  const size_t n = replicas.size();
  responses->resize(n);
  std::vector<grpc::ClientContext> contexts(n);
  // What the callbacks share with the waiting thread; the last of them to
  // finish may still hold it when the waiter has returned.
  struct Calls {
    Mutex mu;
    CondVar finished;
    size_t left ABSL_GUARDED_BY(mu) = 0;
    std::vector<absl::Status> status ABSL_GUARDED_BY(mu);
  };
  auto calls = std::make_shared<Calls>();
  {
    MutexLock lock(&calls->mu);
    calls->left = n;
    calls->status.resize(n);
  }
  absl::string_view method = Request::descriptor()->name();
  absl::ConsumeSuffix(&method, "Request");
  for (size_t i = 0; i < n; ++i) {
    pool.Prepare(contexts[i], deadline);
    const absl::Time sent = absl::Now();
    const Request& sending = request(i);
    Response* answer = &(*responses)[i];
    const Replica& replica = *replicas[i];
    start(replica, &contexts[i], &sending, answer,
          [&pool, &replica, &sending, answer, calls, method, sent,
           i](grpc::Status s) {
            pool.Record(replica, method, s, absl::Now() - sent,
                        sending.ByteSizeLong(),
                        s.ok() ? answer->ByteSizeLong() : 0);
            MutexLock lock(&calls->mu);
            calls->status[i] = FromShard(s, replica);
            if (--calls->left == 0) calls->finished.SignalAll();
          });
  }
  MutexLock lock(&calls->mu);
  while (calls->left > 0) calls->finished.Wait(&calls->mu);
  return calls->status;
}

// The same request to a method of engram.v1.Engram on each of `replicas`
// at once, as UnaryOnEach:
//   EngramOnEach(pool, replicas, &engram::v1::Engram::Stub::async::GetStore,
//                request, &stores, deadline);
template <typename Request, typename Response>
std::vector<absl::Status> EngramOnEach(
    const ShardPool& pool, const std::vector<const Replica*>& replicas,
    void (engram::v1::Engram::Stub::async::*method)(
        grpc::ClientContext*, const Request*, Response*,
        std::function<void(grpc::Status)>),
    const Request& request, std::vector<Response>* responses,
    absl::Time deadline) {
  return UnaryOnEach<Request>(
      pool, replicas, [&request](size_t) -> const Request& { return request; },
      [method](const Replica& r, grpc::ClientContext* context,
               const Request* sending, Response* answer,
               std::function<void(grpc::Status)> done) {
        (r.engram->async()->*method)(context, sending, answer, std::move(done));
      },
      responses, deadline);
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

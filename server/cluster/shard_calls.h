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

// Unary calls to several replicas at once through gRPC's callback API: no
// thread is started, and Wait() waits for all of them (the destructor first
// cancels what is still in flight, then waits). request(i) goes to
// replicas[i] and must outlive the Fanout; its answer is responses()[i].
// `start` issues one call, e.g.
//   [](const Replica& r, grpc::ClientContext* c, const Req* q, Resp* a,
//      std::function<void(grpc::Status)> done) {
//     r.engram->async()->GetStore(c, q, a, std::move(done));
//   }
// Each call's status names its shard, as Unary's does.
//
// Thread-compatible: one thread owns it; the callbacks share only `calls_`.
template <typename Request, typename Response>
class Fanout {
 public:
  template <typename Start>
  Fanout(const ShardPool& pool, const std::vector<const Replica*>& replicas,
         const std::function<const Request&(size_t)>& request,
         const Start& start, absl::Time deadline)
      : contexts_(replicas.size()),
        responses_(replicas.size()),
        calls_(std::make_shared<Calls>()) {
    const size_t n = replicas.size();
    {
      MutexLock lock(&calls_->mu);
      calls_->left = n;
      calls_->status.resize(n);
    }
    absl::string_view method = Request::descriptor()->name();
    absl::ConsumeSuffix(&method, "Request");
    for (size_t i = 0; i < n; ++i) {
      pool.Prepare(contexts_[i], deadline);
      const absl::Time sent = absl::Now();
      const Request& sending = request(i);
      Response* answer = &responses_[i];
      const Replica& replica = *replicas[i];
      start(replica, &contexts_[i], &sending, answer,
            [&pool, &replica, &sending, answer, calls = calls_, method, sent,
             i](grpc::Status s) {
              pool.Record(replica, method, s, absl::Now() - sent,
                          sending.ByteSizeLong(),
                          s.ok() ? answer->ByteSizeLong() : 0);
              MutexLock lock(&calls->mu);
              calls->status[i] = FromShard(s, replica);
              if (--calls->left == 0) calls->finished.SignalAll();
            });
    }
  }
  ~Fanout() {
    if (!waited_) {
      for (grpc::ClientContext& context : contexts_) context.TryCancel();
    }
    Wait();
  }
  Fanout(const Fanout&) = delete;
  Fanout& operator=(const Fanout&) = delete;

  // Waits for every call; each one's status.
  std::vector<absl::Status> Wait() {
    MutexLock lock(&calls_->mu);
    while (calls_->left > 0) calls_->finished.Wait(&calls_->mu);
    waited_ = true;
    return calls_->status;
  }
  // After Wait().
  std::vector<Response>& responses() { return responses_; }

 private:
  // What the callbacks share with the owner; the last of them to finish
  // may still hold it when the owner has gone.
  struct Calls {
    Mutex mu;
    CondVar finished;
    size_t left ABSL_GUARDED_BY(mu) = 0;
    std::vector<absl::Status> status ABSL_GUARDED_BY(mu);
  };
  std::vector<grpc::ClientContext> contexts_;
  std::vector<Response> responses_;
  std::shared_ptr<Calls> calls_;
  bool waited_ = false;
};

// The calls of a Fanout, waited for: each one's status, the answers in
// *responses.
template <typename Request, typename Response, typename Start>
std::vector<absl::Status> UnaryOnEach(
    const ShardPool& pool, const std::vector<const Replica*>& replicas,
    const std::function<const Request&(size_t)>& request, const Start& start,
    std::vector<Response>* responses, absl::Time deadline) {
  Fanout<Request, Response> calls(pool, replicas, request, start, deadline);
  std::vector<absl::Status> status = calls.Wait();
  *responses = std::move(calls.responses());
  return status;
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

// One PartialStep on every replica of `replicas` (one per group), sent at
// construction; `step` must outlive it.
//
// Thread-compatible, as Fanout.
class StepFanout {
 public:
  StepFanout(const ShardPool& pool, std::vector<const Replica*> replicas,
             const v1::PartialStepRequest& step, absl::Time deadline);
  // Waits for every group's answer; the first failure if any failed, or
  // INTERNAL if a group answered another number of rows than states.
  absl::StatusOr<std::vector<v1::PartialStepResponse>> Answers();

 private:
  const std::vector<const Replica*> replicas_;
  const v1::PartialStepRequest& step_;
  Fanout<v1::PartialStepRequest, v1::PartialStepResponse> calls_;
};

// A StepFanout's answers.
absl::StatusOr<std::vector<v1::PartialStepResponse>> StepOnEach(
    const ShardPool& pool, const std::vector<const Replica*>& replicas,
    const v1::PartialStepRequest& step, absl::Time deadline);

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_SHARD_CALLS_H_

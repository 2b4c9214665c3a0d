// How a router calls its shards: one call to one replica, with the pool's
// token, deadline and metrics; calls to several at once; one retrieval step
// on one replica of every group.
//
// Thread-safe: free functions; the pool is thread-safe.
#ifndef ENGRAM_SERVER_CLUSTER_SHARD_CALLS_H_
#define ENGRAM_SERVER_CLUSTER_SHARD_CALLS_H_

#include <functional>
#include <memory>
#include <string>
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
#include "server/base/steady_clock.h"
#include "server/cluster/shard_pool.h"
#include "server/rpc/call.h"

namespace engram::cluster {

// A shard's answer as a status that says which shard gave it.
absl::Status FromShard(const grpc::Status& status, const Replica& replica);

// The deadline a router's call to its shards inherits from its client's
// call.
using rpc::DeadlineOf;

// One unary call to a replica (`stamped`: see ShardPool::Prepare).
template <typename Stub, typename Request, typename Response>
absl::Status Unary(const ShardPool& pool, const Replica& replica, Stub& stub,
                   grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                const Request&, Response*),
                   const Request& request, Response* response,
                   absl::Time deadline, bool stamped = true) {
  absl::StatusOr<std::shared_ptr<grpc::ClientContext>> context =
      pool.WatchedContext(deadline, stamped);
  if (!context.ok()) return context.status();
  const absl::Time start = SteadyNow();
  const grpc::Status status = pool.cutter().Unwatch(
      context->get(), (stub.*method)(context->get(), request, response));
  absl::string_view method_name = Request::descriptor()->name();
  absl::ConsumeSuffix(&method_name, "Request");
  pool.Record(replica, method_name, status, SteadyNow() - start,
              request.ByteSizeLong(),
              status.ok() ? response->ByteSizeLong() : 0);
  return FromShard(status, replica);
}

// How many replicas of a group a read tries before it gives up.
constexpr int kMaxReadAttempts = 4;

// What a read does when its replica answers UNAVAILABLE (gone, or shutting
// down). Writes fail: each of their replicas must take the write itself.
enum class OnUnavailable {
  kFail,
  // Mark the replica unreachable — no call picks it until a probe finds it
  // back, and then it is repaired first — and ask another ready replica of
  // the same group, while there is one (at most kMaxReadAttempts in all).
  kFailOver,
};

// The failover step of a read whose replica `failed` answered UNAVAILABLE
// (`why`): marks it unreachable; another ready replica of its group, or
// null when it was the only one.
const Replica* FailOver(ShardPool& pool, const Replica& failed,
                        absl::string_view why);

// One read from a ready replica of `group`, failing over as
// OnUnavailable::kFailOver says.
absl::Status ReadFromGroup(
    ShardPool& pool, uint32_t group,
    const std::function<absl::Status(const Replica&)>& read);

// Unary calls to several replicas at once through gRPC's callback API: no
// thread is started, and Wait() waits for all of them (the destructor first
// cancels what is still in flight, then waits). request(i) goes to
// replicas[i] and must outlive the Fanout; its answer is responses()[i].
// `start` issues one call: EngramCall or ShardCall below, e.g.
// EngramCall(&engram::v1::Engram::Stub::async::GetStore).
// Each call's status names its shard, as Unary's does; a read passes
// OnUnavailable::kFailOver, and its call whose replica is UNAVAILABLE goes
// again to another replica of the group.
//
// Thread-compatible: one thread owns it; the callbacks share only `calls_`.
template <typename Request, typename Response>
class Fanout {
 public:
  template <typename Start>
  Fanout(ShardPool& pool, const std::vector<const Replica*>& replicas,
         const std::function<const Request&(size_t)>& request,
         const Start& start, absl::Time deadline,
         OnUnavailable on_unavailable = OnUnavailable::kFail)
      : responses_(replicas.size()), calls_(std::make_shared<Calls>()) {
    const size_t n = replicas.size();
    absl::string_view method = Request::descriptor()->name();
    absl::ConsumeSuffix(&method, "Request");
    calls_->pool = &pool;
    calls_->on_unavailable = on_unavailable;
    calls_->method = method;
    calls_->deadline = deadline;
    calls_->start = start;
    {
      MutexLock lock(&calls_->mu);
      calls_->left = n;
      calls_->status.resize(n);
    }
    for (size_t i = 0; i < n; ++i) {
      Issue(calls_, i, *replicas[i], &request(i), &responses_[i], 1);
    }
  }
  ~Fanout() {
    if (!waited_) {
      MutexLock lock(&calls_->mu);
      calls_->cancelled = true;
      for (auto& context : calls_->contexts) context->TryCancel();
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
    ShardPool* pool = nullptr;
    OnUnavailable on_unavailable = OnUnavailable::kFail;
    absl::string_view method;
    absl::Time deadline;
    std::function<void(const Replica&, grpc::ClientContext*, const Request*,
                       Response*, std::function<void(grpc::Status)>)>
        start;
    Mutex mu;
    CondVar finished;
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    // One per call made, retries included; each outlives its call.
    std::vector<std::shared_ptr<grpc::ClientContext>> contexts
        ABSL_GUARDED_BY(mu);
    size_t left ABSL_GUARDED_BY(mu) = 0;
    std::vector<absl::Status> status ABSL_GUARDED_BY(mu);
  };

  // Call `attempt` of request i, to `replica`.
  static void Issue(const std::shared_ptr<Calls>& calls, size_t i,
                    const Replica& replica, const Request* sending,
                    Response* answer, int attempt) {
    auto owned = std::make_shared<grpc::ClientContext>();
    grpc::ClientContext* context = owned.get();
    calls->pool->Prepare(*context, calls->deadline);
    {
      MutexLock lock(&calls->mu);
      // Cancelled before it starts: gRPC cancels it as it starts.
      if (calls->cancelled) context->TryCancel();
      calls->contexts.push_back(owned);
    }
    calls->pool->cutter().Watch(std::move(owned));  // Else cancelled.
    const absl::Time sent = SteadyNow();
    calls->start(replica, context, sending, answer,
                 [calls, i, &replica, sending, answer, sent, attempt,
                  context](grpc::Status s) {
                   s = calls->pool->cutter().Unwatch(context, std::move(s));
                   calls->pool->Record(replica, calls->method, s,
                                       SteadyNow() - sent,
                                       sending->ByteSizeLong(),
                                       s.ok() ? answer->ByteSizeLong() : 0);
                   if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
                       calls->on_unavailable == OnUnavailable::kFailOver &&
                       attempt < kMaxReadAttempts) {
                     const Replica* next =
                         FailOver(*calls->pool, replica, s.error_message());
                     bool cancelled;
                     {
                       MutexLock lock(&calls->mu);
                       cancelled = calls->cancelled;
                     }
                     if (next != nullptr && !cancelled) {
                       Issue(calls, i, *next, sending, answer, attempt + 1);
                       return;
                     }
                   }
                   MutexLock lock(&calls->mu);
                   calls->status[i] = FromShard(s, replica);
                   if (--calls->left == 0) calls->finished.SignalAll();
                 });
  }

  std::vector<Response> responses_;
  std::shared_ptr<Calls> calls_;
  bool waited_ = false;
};

// The calls of a Fanout, waited for: each one's status, the answers in
// *responses.
template <typename Request, typename Response, typename Start>
std::vector<absl::Status> UnaryOnEach(
    ShardPool& pool, const std::vector<const Replica*>& replicas,
    const std::function<const Request&(size_t)>& request, const Start& start,
    std::vector<Response>* responses, absl::Time deadline,
    OnUnavailable on_unavailable = OnUnavailable::kFail) {
  Fanout<Request, Response> calls(pool, replicas, request, start, deadline,
                                  on_unavailable);
  std::vector<absl::Status> status = calls.Wait();
  *responses = std::move(calls.responses());
  return status;
}

// A method of the callback API of engram.v1.Engram's stub, e.g.
// &engram::v1::Engram::Stub::async::GetStore, and of the Shard service's.
template <typename Request, typename Response>
using EngramMethod = void (engram::v1::Engram::Stub::async::*)(
    grpc::ClientContext*, const Request*, Response*,
    std::function<void(grpc::Status)>);
template <typename Request, typename Response>
using ShardMethod = void (v1::Shard::Stub::async::*)(
    grpc::ClientContext*, const Request*, Response*,
    std::function<void(grpc::Status)>);

// The `start` of a Fanout that calls `method` of engram.v1.Engram.
template <typename Request, typename Response>
auto EngramCall(EngramMethod<Request, Response> method) {
  return [method](const Replica& r, grpc::ClientContext* context,
                  const Request* request, Response* answer,
                  std::function<void(grpc::Status)> done) {
    (r.engram->async()->*method)(context, request, answer, std::move(done));
  };
}

// The `start` of a Fanout that calls `method` of engram.cluster.v1.Shard.
template <typename Request, typename Response>
auto ShardCall(ShardMethod<Request, Response> method) {
  return [method](const Replica& r, grpc::ClientContext* context,
                  const Request* request, Response* answer,
                  std::function<void(grpc::Status)> done) {
    (r.shard->async()->*method)(context, request, answer, std::move(done));
  };
}

// The same request to a method of engram.v1.Engram on each of `replicas`
// at once, as UnaryOnEach:
//   EngramOnEach(pool, replicas, &engram::v1::Engram::Stub::async::GetStore,
//                request, &stores, deadline);
template <typename Request, typename Response>
std::vector<absl::Status> EngramOnEach(
    ShardPool& pool, const std::vector<const Replica*>& replicas,
    EngramMethod<Request, Response> method, const Request& request,
    std::vector<Response>* responses, absl::Time deadline,
    OnUnavailable on_unavailable = OnUnavailable::kFail) {
  return UnaryOnEach<Request>(
      pool, replicas, [&request](size_t) -> const Request& { return request; },
      EngramCall(method), responses, deadline, on_unavailable);
}

// Each group's own description of store `name`, in group order: GetStore
// on a replica of every group at once, failing over.
absl::StatusOr<std::vector<engram::v1::Store>> GroupStores(
    ShardPool& pool, const std::string& name, absl::Time deadline);

// One write to the ready replicas of each group g with writes[g]: shares[g]
// to each. The first replica of a group that answers decides the group's
// outcome (one that is UNAVAILABLE goes stale and the next is asked);
// decided(g, its answer, &shares[g]) may then fill in what it decided (the
// ids an add assigned), or refuse the answer (its status is the group's,
// and nothing more is sent). The group's other replicas follow, all at
// once; one that fails goes stale, to be repaired from the one that
// decided, so the write stands. Each group's status (OK where nothing was
// written).
//
// No thread is started: the groups' first replicas are asked at once, then
// all the followers at once. `alongside`, if given, runs once every group
// has decided, while the followers' calls are out: a read that should not
// cost a round of its own (the count of the groups the write left alone).
template <typename Request, typename Response>
std::vector<absl::Status> WriteToGroups(
    ShardPool& pool, const std::vector<bool>& writes,
    EngramMethod<Request, Response> method, std::vector<Request>* shares,
    const std::function<absl::Status(size_t, const Response&, Request*)>&
        decided,
    absl::Time deadline, const std::function<void()>& alongside = nullptr) {
  absl::ReaderMutexLock writing(&pool.write_gate());
  const size_t groups = shares->size();
  std::vector<absl::Status> status(groups);
  std::vector<std::vector<const Replica*>> ready(groups);
  std::vector<size_t> deciding(groups, 0);  // Index into ready[g].
  std::vector<size_t> asking;               // Groups still undecided.
  for (size_t g = 0; g < groups; ++g) {
    if (!writes[g]) continue;
    absl::StatusOr<std::vector<const Replica*>> r =
        pool.ReadyReplicas(static_cast<uint32_t>(g));
    if (!r.ok()) {
      status[g] = r.status();
      continue;
    }
    ready[g] = *std::move(r);
    asking.push_back(g);
  }
  while (!asking.empty()) {
    std::vector<const Replica*> to;
    for (size_t g : asking) to.push_back(ready[g][deciding[g]]);
    std::vector<Response> answers;
    const std::vector<absl::Status> got = UnaryOnEach<Request>(
        pool, to,
        [&](size_t i) -> const Request& { return (*shares)[asking[i]]; },
        EngramCall(method), &answers, deadline);
    std::vector<size_t> again;
    for (size_t i = 0; i < asking.size(); ++i) {
      const size_t g = asking[i];
      if (got[i].ok()) {
        status[g] = decided(g, answers[i], &(*shares)[g]);
      } else if (absl::IsUnavailable(got[i]) &&
                 deciding[g] + 1 < ready[g].size()) {
        pool.MarkStale(*to[i], got[i].message());
        ++deciding[g];
        again.push_back(g);
      } else {
        status[g] = got[i];
      }
    }
    asking = std::move(again);
  }
  std::vector<const Replica*> followers;
  std::vector<size_t> group_of;
  for (size_t g = 0; g < groups; ++g) {
    if (!writes[g] || !status[g].ok()) continue;
    for (size_t r = deciding[g] + 1; r < ready[g].size(); ++r) {
      followers.push_back(ready[g][r]);
      group_of.push_back(g);
    }
  }
  Fanout<Request, Response> following(
      pool, followers,
      [&](size_t i) -> const Request& { return (*shares)[group_of[i]]; },
      EngramCall(method), deadline);
  if (alongside) alongside();
  const std::vector<absl::Status> followed = following.Wait();
  for (size_t i = 0; i < followers.size(); ++i) {
    if (!followed[i].ok()) pool.MarkStale(*followers[i], followed[i].message());
  }
  return status;
}

// Runs fn(0) .. fn(n - 1) at once (a thread each but the first).
std::vector<absl::Status> InParallel(
    size_t n, const std::function<absl::Status(size_t)>& fn);

absl::Status FirstError(const std::vector<absl::Status>& status);

// Whether every group whose write failed (`status` as WriteToGroups gives
// it) refused it before writing anything (bad input, an id it holds, a
// limit, a store being restored), so that no failed group's outcome is
// unknown (the call timed out, the replica went away, an error of its own).
bool FailuresAllRefused(const std::vector<absl::Status>& status);

// One PartialStep on every replica of `replicas` (one per group), sent at
// construction, failing over to another replica of a group whose own is
// UNAVAILABLE (Fanout); `step` must outlive it.
//
// Thread-compatible, as Fanout.
class StepFanout {
 public:
  StepFanout(ShardPool& pool, std::vector<const Replica*> replicas,
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
    ShardPool& pool, const std::vector<const Replica*>& replicas,
    const v1::PartialStepRequest& step, absl::Time deadline);

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_SHARD_CALLS_H_

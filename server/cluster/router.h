// engram.v1.Engram served by a router: the unchanged API over a store spread
// across shard groups (docs/scale-out.md). The router holds no patterns:
// settings go to every group, patterns to the group their id places them in
// (server/store/placement.h), and a retrieval runs step by step, each step
// fanned out to one replica of every group and merged exactly
// (server/core/partial.h).
//
// Thread-safe: gRPC calls every method concurrently; the router's state is
// the shard pool's.
#ifndef ENGRAM_SERVER_CLUSTER_ROUTER_H_
#define ENGRAM_SERVER_CLUSTER_ROUTER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engram/v1/engram.grpc.pb.h"
#include "server/base/mutex.h"
#include "server/cluster/cluster_jobs.h"
#include "server/cluster/low_rank_cache.h"
#include "server/cluster/shard_pool.h"
#include "server/rpc/call.h"
#include "server/rpc/handlers.h"
#include "server/rpc/page_token.h"
#include "server/store/retrieve.h"
#include "server/store/settings.h"
#include "server/store/storage.h"

namespace engram::cluster {

// A retrieval's first exact step, sent before the store's description is
// back (router.cc).
struct EarlyStep;

struct RouterOptions {
  store::Limits limits;         // Checked before anything reaches a shard.
  int calibration_threads = 1;  // Retrieval threads of a calibration.
  // The most bytes of one store a backup or a restore holds in memory
  // (--max_restore_mb).
  size_t max_restore_bytes = size_t{8} << 30;
  // Threads a retrieval whose request is at least `large_retrieval` bytes
  // runs on, the gRPC thread that read it waiting: it holds several times
  // its request while the shards answer (thirty-two of 8 MiB at once got a
  // router killed in a 768 MiB container). When they are all busy and as
  // many wait as may, it is RESOURCE_EXHAUSTED. Borrowed; null: every
  // retrieval runs on its gRPC thread.
  rpc::Handlers* handlers = nullptr;
  size_t large_retrieval = rpc::WriteBudget::kSmallRequest;
};

// engram.cluster.v1.Router: the shards as the router's probe sees them.
class RouterAdmin final : public v1::Router::Service {
 public:
  RouterAdmin(ShardPool* pool, const rpc::CallPolicy* policy,
              std::string cluster)
      : pool_(pool), policy_(policy), cluster_(std::move(cluster)) {}

  grpc::Status ClusterStatus(grpc::ServerContext* context,
                             const v1::ClusterStatusRequest* request,
                             v1::ClusterState* response) override;

 private:
  ShardPool* const pool_;
  const rpc::CallPolicy* const policy_;
  const std::string cluster_;
};

// AddPatterns is streamed unary, as on a single engramd (rpc::EngramService):
// its request is read only when the write memory lets it.
class Router final
    : public engram::v1::Engram::WithStreamedUnaryMethod_AddPatterns<
          engram::v1::Engram::Service> {
 public:
  // Borrowed; they must outlive the router.
  Router(ShardPool* pool, const rpc::CallPolicy* policy, RouterOptions options);

  using Ctx = grpc::ServerContext;
  grpc::Status CreateStore(Ctx* context,
                           const engram::v1::CreateStoreRequest* request,
                           engram::v1::Store* response) override;
  grpc::Status GetStore(Ctx* context,
                        const engram::v1::GetStoreRequest* request,
                        engram::v1::Store* response) override;
  grpc::Status ListStores(Ctx* context,
                          const engram::v1::ListStoresRequest* request,
                          engram::v1::ListStoresResponse* response) override;
  grpc::Status UpdateStore(Ctx* context,
                           const engram::v1::UpdateStoreRequest* request,
                           engram::v1::Store* response) override;
  grpc::Status DeleteStore(Ctx* context,
                           const engram::v1::DeleteStoreRequest* request,
                           engram::v1::DeleteStoreResponse* response) override;
  grpc::Status StreamedAddPatterns(
      Ctx* context,
      grpc::ServerUnaryStreamer<engram::v1::AddPatternsRequest,
                                engram::v1::AddPatternsResponse>* streamer)
      override;
  grpc::Status ImportPatterns(
      Ctx* context,
      grpc::ServerReader<engram::v1::ImportPatternsRequest>* reader,
      engram::v1::ImportPatternsResponse* response) override;
  grpc::Status GetPattern(Ctx* context,
                          const engram::v1::GetPatternRequest* request,
                          engram::v1::Pattern* response) override;
  grpc::Status ListPatterns(
      Ctx* context, const engram::v1::ListPatternsRequest* request,
      engram::v1::ListPatternsResponse* response) override;
  grpc::Status DeletePatterns(
      Ctx* context, const engram::v1::DeletePatternsRequest* request,
      engram::v1::DeletePatternsResponse* response) override;
  grpc::Status Retrieve(Ctx* context,
                        const engram::v1::RetrieveRequest* request,
                        engram::v1::RetrieveResponse* response) override;
  grpc::Status GetFitStatus(Ctx* context,
                            const engram::v1::GetFitStatusRequest* request,
                            engram::v1::FitStatus* response) override;
  grpc::Status WatchFit(
      Ctx* context, const engram::v1::WatchFitRequest* request,
      grpc::ServerWriter<engram::v1::FitStatus>* writer) override;
  grpc::Status StartFit(Ctx* context,
                        const engram::v1::StartFitRequest* request,
                        engram::v1::FitStatus* response) override;
  grpc::Status CancelFit(Ctx* context,
                         const engram::v1::CancelFitRequest* request,
                         engram::v1::FitStatus* response) override;
  grpc::Status StartCalibration(
      Ctx* context, const engram::v1::StartCalibrationRequest* request,
      engram::v1::CalibrationStatus* response) override;
  grpc::Status GetCalibrationStatus(
      Ctx* context, const engram::v1::GetCalibrationStatusRequest* request,
      engram::v1::CalibrationStatus* response) override;
  grpc::Status WatchCalibration(
      Ctx* context, const engram::v1::WatchCalibrationRequest* request,
      grpc::ServerWriter<engram::v1::CalibrationStatus>* writer) override;
  grpc::Status CancelCalibration(
      Ctx* context, const engram::v1::CancelCalibrationRequest* request,
      engram::v1::CalibrationStatus* response) override;
  // Backups (router_backup.cc): a store is backed up as one, put together
  // from one replica of each group, and restored split over the groups.
  grpc::Status CreateBackup(
      Ctx* context, const engram::v1::CreateBackupRequest* request,
      grpc::ServerWriter<engram::v1::BackupChunk>* writer) override;
  grpc::Status RestoreStore(
      Ctx* context, grpc::ServerReader<engram::v1::RestoreStoreRequest>* reader,
      engram::v1::Store* response) override;

 private:
  // Retrieve, once admitted, on the thread that calls it; ends `call`.
  grpc::Status RetrieveHere(rpc::Call& call, Ctx* context,
                            const engram::v1::RetrieveRequest* request,
                            engram::v1::RetrieveResponse* response);
  // AddPatterns once its request is read and admitted; ends `call`.
  grpc::Status Add(rpc::Call& call, Ctx& context,
                   const engram::v1::AddPatternsRequest& request,
                   engram::v1::AddPatternsResponse& response);
  // The parts of one store, one per group (GetStore's answers), as one
  // store: counts, versions and memory summed, norms merged, DAMAGED if any
  // part is.
  static engram::v1::Store MergeDescriptions(
      std::vector<engram::v1::Store> parts);
  // Every store's name (group 0 holds every store), in order.
  absl::StatusOr<std::vector<std::string>> StoreNames(absl::Time deadline);
  // Group `group`'s part of store `name`, from the backup of one of its
  // ready replicas, every byte checked.
  absl::StatusOr<store::StoreImage> GroupBackup(const std::string& name,
                                                uint32_t group,
                                                absl::Time deadline);
  absl::StatusOr<store::StoreImage> BackupFrom(const Replica& replica,
                                               const std::string& name,
                                               absl::Time deadline);
  // Restores one store from a backup's files on `replica`.
  absl::Status RestoreOn(const Replica& replica, const std::string& name,
                         bool replace,
                         const std::vector<engram::v1::BackupChunk>& files,
                         absl::Time deadline);

  // The store as one store: every group's part merged (counts summed,
  // norms combined, damage from any group).
  absl::StatusOr<engram::v1::Store> MergedStore(const std::string& name,
                                                absl::Time deadline);
  // Where a batch's patterns go: each group's share (indices into
  // `patterns`), explicit ids where they place, automatic ones in
  // contiguous slices, the first slice to the next group in turn.
  std::vector<std::vector<int>> Place(
      const google::protobuf::RepeatedPtrField<engram::v1::Pattern>& patterns);
  // Adds one batch placed by Place: each group's share in one atomic add on
  // every ready replica; ids in the request's order, and each written
  // group's count after the add in (*group_counts)[g] (the others: max).
  // `alongside` as WriteToGroups'.
  absl::StatusOr<std::vector<uint64_t>> AddBatch(
      const std::string& store,
      const google::protobuf::RepeatedPtrField<engram::v1::Pattern>& patterns,
      const std::vector<std::vector<int>>& members, absl::Time deadline,
      std::vector<uint64_t>* group_counts,
      const std::function<void()>& alongside = nullptr);

  // What a retrieval needs first: the store's merged description and,
  // unless the request asks for the exact path or filters (neither uses
  // them), the shards' low-rank sums checked in the same round (into
  // `sums`, with their error if they failed; nullopt when not fetched).
  absl::StatusOr<engram::v1::Store> DescribeForRetrieval(
      const engram::v1::RetrieveRequest& request, absl::Time deadline,
      std::optional<absl::StatusOr<std::shared_ptr<const MergedLowRank>>>*
          sums);
  // The path of a retrieval: the planner over the shards' merged low-rank
  // sums (`fetched` if given, else fetched now; into `sums`) for dot and
  // softmax; exact otherwise.
  absl::StatusOr<store::PathReport> PlanThroughRouter(
      const std::string& name, const store::StoreSettings& settings,
      const engram::v1::Store& merged, const store::RetrieveRequest& query,
      const core::RetrievalParams& params, absl::Time deadline,
      std::optional<absl::StatusOr<std::shared_ptr<const MergedLowRank>>>
          fetched,
      std::shared_ptr<const MergedLowRank>* sums);
  // The exact path: step by step through one replica of every group, over
  // the patterns that match `filter` if it is given (not empty); the
  // patterns stepped over, summed over the groups, in `*patterns`.
  // `early`, if given, is this retrieval's first step already sent: its
  // answers serve if it is the step the retrieval sends first.
  absl::StatusOr<store::RetrieveResult> RetrieveExact(
      const std::string& name, const store::RetrieveRequest& query,
      const core::RetrievalParams& params, const engram::v1::Filter* filter,
      absl::Time deadline, std::unique_ptr<EarlyStep> early,
      uint64_t* patterns);
  // Sends the first exact step of `request` now, with the settings the
  // store's last retrieval found, where that retrieval took the exact path
  // (or the request asks for it): the step is then under way while the
  // store's description is fetched. Null where there is nothing to go by.
  std::unique_ptr<EarlyStep> StartEarlyStep(
      const engram::v1::RetrieveRequest& request, absl::Time deadline);
  // Remembers what a retrieval of `store` found, for the next one's early
  // step; `exact_under_auto`: whether AUTO took the exact path (unset: the
  // request did not ask AUTO; the last answer stands).
  void RememberRetrieval(const std::string& store,
                         const engram::v1::Store& described,
                         std::optional<bool> exact_under_auto);
  // Forgets it: the store is deleted, replaced or its settings change.
  void ForgetRetrieval(const std::string& store);
  // The low-rank path on the router at the sums' degree; the matches from
  // one top-only scan on the replicas the sums came from (ABORTED if one
  // changed in between).
  absl::StatusOr<store::RetrieveResult> RetrieveFromSums(
      const std::string& name, const MergedLowRank& sums, uint32_t degree,
      const store::RetrieveRequest& query, const core::RetrievalParams& params,
      const core::RetrievalOptions& options, absl::Time deadline);

  // This router's last job of `store` (Status: FitStatus or
  // CalibrationStatus), else what the shards last published.
  template <typename Status>
  absl::Status JobStatusOf(const std::string& store, absl::Time deadline,
                           Status* response);
  // Cancels this router's running job of `store`; with none running, its
  // status as JobStatusOf gives it (one engramd's answer).
  template <typename Status>
  absl::Status CancelJob(const std::string& store, absl::Time deadline,
                         Status* response);
  // Streams a job's status at every change until it ends.
  template <typename Status>
  absl::Status WatchJob(grpc::ServerContext* context, const std::string& store,
                        grpc::ServerWriter<Status>* writer);

  ShardPool* const pool_;
  const rpc::CallPolicy* const policy_;
  const RouterOptions options_;
  const rpc::PageTokens tokens_;
  std::atomic<uint64_t> next_group_{0};  // Where automatic ids go next.
  LowRankCache low_rank_;
  ClusterJobs jobs_;
  // What the last retrieval of each store found.
  struct RetrievalHint {
    engram::v1::Store described;
    bool exact_under_auto = false;
  };
  Mutex hints_mu_;
  absl::flat_hash_map<std::string, RetrievalHint> hints_
      ABSL_GUARDED_BY(hints_mu_);
};

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_ROUTER_H_

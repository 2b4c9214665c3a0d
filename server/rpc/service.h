// The engram.v1.Engram gRPC service: validates requests, converts them and
// delegates to the store layer; nothing else.
//
// Thread-safe: gRPC calls every method concurrently; all state lives in the
// registry.
#ifndef ENGRAM_SERVER_RPC_SERVICE_H_
#define ENGRAM_SERVER_RPC_SERVICE_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/string_view.h"
#include "engram/v1/engram.grpc.pb.h"
#include "server/jobs/job_runner.h"
#include "server/metrics/metrics.h"
#include "server/rpc/auth.h"
#include "server/rpc/call.h"
#include "server/rpc/handlers.h"
#include "server/rpc/page_token.h"
#include "server/store/registry.h"
#include "server/store/retrieve.h"

namespace engram::rpc {

// Sets a store's gauges (patterns, memory, norm statistics) from its
// current view.
void CountStore(metrics::Metrics& metrics, const store::Store& store);

struct ServiceOptions {
  int retrieval_threads = 1;
  size_t inline_work = kInlineRetrievalWork;
  // Threads for the larger retrievals (their bounds: handlers.h). Borrowed
  // when set (it must outlive the service); else the service keeps its own
  // `handler_threads`, with as many retrievals waiting for them.
  Handlers* handlers = nullptr;
  int handler_threads = 8;
  // The most bytes one RestoreStore may send (it is held in memory).
  size_t max_restore_bytes = size_t{8} << 30;
};

// Retrieve is a raw callback method: a retrieval of little work (up to
// ServiceOptions::inline_work) is answered on the gRPC thread that read the
// request, sparing the hand-off to another thread that a synchronous method
// costs (more than such a retrieval); a larger one runs on a thread of
// Handlers, so that gRPC's threads stay free for I/O. It parses its request
// itself, so that bytes that are no RetrieveRequest get INVALID_ARGUMENT
// (gRPC's callback API would answer UNIMPLEMENTED). AddPatterns is streamed
// unary: gRPC leaves its request unread until the write memory lets it be
// read (ServeUnaryWrite). Every other method is synchronous.
class EngramService final : public v1::Engram::WithRawCallbackMethod_Retrieve<
                                v1::Engram::WithStreamedUnaryMethod_AddPatterns<
                                    v1::Engram::Service>> {
 public:
  // All borrowed; they must outlive the service. The policy's metrics
  // must be set.
  EngramService(store::StoreRegistry* registry, jobs::JobRunner* jobs,
                const CallPolicy* policy, ServiceOptions options);

  grpc::Status CreateStore(grpc::ServerContext* context,
                           const v1::CreateStoreRequest* request,
                           v1::Store* response) override;
  grpc::Status GetStore(grpc::ServerContext* context,
                        const v1::GetStoreRequest* request,
                        v1::Store* response) override;
  grpc::Status ListStores(grpc::ServerContext* context,
                          const v1::ListStoresRequest* request,
                          v1::ListStoresResponse* response) override;
  grpc::Status UpdateStore(grpc::ServerContext* context,
                           const v1::UpdateStoreRequest* request,
                           v1::Store* response) override;
  grpc::Status DeleteStore(grpc::ServerContext* context,
                           const v1::DeleteStoreRequest* request,
                           v1::DeleteStoreResponse* response) override;
  grpc::Status StreamedAddPatterns(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<v1::AddPatternsRequest,
                                v1::AddPatternsResponse>* streamer) override;
  grpc::Status ImportPatterns(
      grpc::ServerContext* context,
      grpc::ServerReader<v1::ImportPatternsRequest>* reader,
      v1::ImportPatternsResponse* response) override;
  grpc::Status GetPattern(grpc::ServerContext* context,
                          const v1::GetPatternRequest* request,
                          v1::Pattern* response) override;
  grpc::Status ListPatterns(grpc::ServerContext* context,
                            const v1::ListPatternsRequest* request,
                            v1::ListPatternsResponse* response) override;
  grpc::Status DeletePatterns(grpc::ServerContext* context,
                              const v1::DeletePatternsRequest* request,
                              v1::DeletePatternsResponse* response) override;
  grpc::ServerUnaryReactor* Retrieve(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* raw_request,
                                     grpc::ByteBuffer* raw_response) override;
  grpc::Status GetFitStatus(grpc::ServerContext* context,
                            const v1::GetFitStatusRequest* request,
                            v1::FitStatus* response) override;
  grpc::Status WatchFit(grpc::ServerContext* context,
                        const v1::WatchFitRequest* request,
                        grpc::ServerWriter<v1::FitStatus>* writer) override;
  grpc::Status StartFit(grpc::ServerContext* context,
                        const v1::StartFitRequest* request,
                        v1::FitStatus* response) override;
  grpc::Status CancelFit(grpc::ServerContext* context,
                         const v1::CancelFitRequest* request,
                         v1::FitStatus* response) override;
  grpc::Status StartCalibration(grpc::ServerContext* context,
                                const v1::StartCalibrationRequest* request,
                                v1::CalibrationStatus* response) override;
  grpc::Status GetCalibrationStatus(
      grpc::ServerContext* context,
      const v1::GetCalibrationStatusRequest* request,
      v1::CalibrationStatus* response) override;
  grpc::Status WatchCalibration(
      grpc::ServerContext* context, const v1::WatchCalibrationRequest* request,
      grpc::ServerWriter<v1::CalibrationStatus>* writer) override;
  grpc::Status CancelCalibration(grpc::ServerContext* context,
                                 const v1::CancelCalibrationRequest* request,
                                 v1::CalibrationStatus* response) override;
  grpc::Status CreateBackup(
      grpc::ServerContext* context, const v1::CreateBackupRequest* request,
      grpc::ServerWriter<v1::BackupChunk>* writer) override;
  grpc::Status RestoreStore(grpc::ServerContext* context,
                            grpc::ServerReader<v1::RestoreStoreRequest>* reader,
                            v1::Store* response) override;

 private:
  // The store's settings and statistics with its fit status.
  void StoreToProto(const store::Store& store, v1::Store& out);
  // After a successful add: counts and schedules a fit.
  void Added(const store::Store& store, size_t count);
  // A job status stream: the status now and after every change, until the
  // job ends or the client goes away.
  template <typename Status>
  absl::Status Watch(grpc::ServerContext* context, const std::string& store,
                     grpc::ServerWriter<Status>* writer);
  // A Retrieve request checked and converted, ready to run.
  struct Retrieval {
    std::shared_ptr<const store::StoreView> view;
    std::vector<float> queries;  // What query.queries points into.
    store::RetrieveRequest query;
    // Its multiply-adds, about: queries x steps x rows x (dimension + a
    // row's other costs: its score, filter, top-k); a double, since the
    // product of the limits can pass 2^64.
    double Work() const;
  };
  absl::StatusOr<std::unique_ptr<Retrieval>> PrepareRetrieval(
      const v1::RetrieveRequest& request) const;
  // Runs it on `threads` threads and serializes the answer into
  // `raw_response`.
  absl::Status Answer(const Retrieval& retrieval,
                      const grpc::ServerContextBase* context, int threads,
                      bool omit_vectors, grpc::ByteBuffer* raw_response);
  // `done`, or the job status after it into `response`.
  template <typename Status>
  absl::Status Reply(const std::string& store, absl::Status done,
                     Status* response);

  store::StoreRegistry* const registry_;
  jobs::JobRunner* const jobs_;
  const CallPolicy* const policy_;
  const ServiceOptions options_;
  const PageTokens tokens_;
  metrics::Metrics* const metrics_;
  // Last: destroyed first, after waiting for the retrievals it runs.
  const std::unique_ptr<Handlers> own_handlers_;
  Handlers* const handlers_;
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_SERVICE_H_

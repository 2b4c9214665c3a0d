// A typed C++ client for engram.v1.Engram: one call per RPC.
//
//   absl::StatusOr<std::unique_ptr<Client>> client =
//       Client::Connect({.address = "127.0.0.1:50051"});
//   v1::Store store;
//   store.set_name("faces");
//   store.set_dimension(784);
//   (*client)->CreateStore(store);
//   (*client)->Import("faces", images.data(), 784, {}, 1024);
//   absl::StatusOr<v1::RetrieveResponse> r =
//       (*client)->Retrieve("faces", queries, 784, {});
//
// Every unary call has a deadline (ClientOptions::timeout) and carries the
// token. gRPC errors come back as absl::Status with the same code and
// message. Calls that are safe to repeat (reads, Retrieve and the cancels)
// are retried on UNAVAILABLE; writes are not, since a write whose answer was
// lost may have been applied.
//
// Thread-safe: a Client may be shared by threads.
#ifndef ENGRAM_CLIENT_CLIENT_H_
#define ENGRAM_CLIENT_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engram/cluster/v1/shard.grpc.pb.h"
#include "engram/v1/engram.grpc.pb.h"
#include "google/protobuf/arena.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace engram::client {

struct ClientOptions {
  std::string address = "127.0.0.1:50051";
  absl::Duration timeout = absl::Seconds(60);
  int max_message_mb = 256;
  // TLS: the CA that signed the server's certificate (PEM text); empty
  // means plaintext. With mutual TLS also the client's certificate and key.
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  // Expected server name when it differs from the address's host.
  std::string tls_server_name;
  // Sent as "authorization: Bearer TOKEN" on every call, if set.
  std::string token;
  // Repeatable calls are retried this many times on UNAVAILABLE, after
  // 50 ms, 100 ms, 200 ms, ... (with jitter).
  int retries = 3;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ClientOptions& options);

  // --- Stores ---
  absl::StatusOr<v1::Store> CreateStore(const v1::Store& store);
  absl::StatusOr<v1::Store> GetStore(const std::string& name);
  // Every store, following the pages.
  absl::StatusOr<std::vector<v1::Store>> ListStores();
  // Sets the fields `paths` name (e.g. "retrieval.beta") to their values in
  // `store`, which names the store.
  absl::StatusOr<v1::Store> UpdateStore(const v1::Store& store,
                                        const std::vector<std::string>& paths);
  absl::Status DeleteStore(const std::string& name);

  // --- Patterns ---
  // Adds `values.size() / dim` patterns (row-major) in one atomic batch;
  // `labels` is empty or holds one label per row.
  absl::StatusOr<v1::AddPatternsResponse> AddPatterns(
      const std::string& store, absl::Span<const float> values, size_t dim,
      absl::Span<const std::string> labels = {});
  // Streams the rows in messages of `batch_rows`; `progress` (if set) is
  // called with the rows sent so far. `details` is empty or holds each
  // row's id, label and metadata (its values are ignored).
  absl::StatusOr<v1::ImportPatternsResponse> Import(
      const std::string& store, absl::Span<const float> values, size_t dim,
      absl::Span<const std::string> labels, size_t batch_rows,
      const std::function<void(size_t)>& progress = nullptr,
      absl::Span<const v1::Pattern> details = {});
  absl::StatusOr<v1::Pattern> GetPattern(const std::string& store, uint64_t id);
  // One page of patterns in id order, from `page_token` ("" for the first);
  // the response's next_page_token is "" after the last page.
  absl::StatusOr<v1::ListPatternsResponse> ListPatterns(
      const std::string& store, const std::string& page_token = "",
      uint32_t page_size = 0, bool omit_values = false);
  absl::StatusOr<v1::DeletePatternsResponse> DeletePatterns(
      const std::string& store, absl::Span<const uint64_t> ids);

  // --- Retrieval ---
  // Retrieves for queries (row-major, `queries.size() / dim` rows).
  // `request` carries the overrides; its store and queries are filled here.
  absl::StatusOr<v1::RetrieveResponse> Retrieve(
      const std::string& store, absl::Span<const float> queries, size_t dim,
      const v1::RetrieveRequest& request);
  // The same, answered into `response`, which may live on an arena (see
  // AnswerArena below):
  //
  //   AnswerArena answers;  // Kept from call to call.
  //   v1::RetrieveResponse* r = answers.Fresh();
  //   absl::Status s = client->Retrieve("faces", queries, 784, {}, r);
  absl::Status Retrieve(const std::string& store,
                        absl::Span<const float> queries, size_t dim,
                        const v1::RetrieveRequest& request,
                        v1::RetrieveResponse* response);

  // --- Stage I ---
  absl::StatusOr<v1::FitStatus> GetFitStatus(const std::string& store);
  absl::StatusOr<v1::FitStatus> StartFit(const std::string& store);
  absl::StatusOr<v1::FitStatus> CancelFit(const std::string& store);
  // Streams the fit's status to `on_status` until the fit ends; returns the
  // last status. No deadline: a fit can take long.
  absl::StatusOr<v1::FitStatus> WatchFit(
      const std::string& store,
      const std::function<void(const v1::FitStatus&)>& on_status);

  // --- Calibration ---
  // Queues one now (`apply` overrides the store's setting).
  absl::StatusOr<v1::CalibrationStatus> StartCalibration(
      const std::string& store, std::optional<bool> apply = std::nullopt);
  // Its state and last report.
  absl::StatusOr<v1::CalibrationStatus> GetCalibrationStatus(
      const std::string& store);
  absl::StatusOr<v1::CalibrationStatus> CancelCalibration(
      const std::string& store);
  // As WatchFit.
  absl::StatusOr<v1::CalibrationStatus> WatchCalibration(
      const std::string& store,
      const std::function<void(const v1::CalibrationStatus&)>& on_status);

  // --- Backups ---
  // Streams a backup of `store` ("" for every store) to `on_chunk`, piece
  // by piece, the manifest last; an error from `on_chunk` cancels the call
  // and is returned. No deadline: a backup can take long.
  absl::Status CreateBackup(
      const std::string& store,
      const std::function<absl::Status(const v1::BackupChunk&)>& on_chunk);
  // Sends a backup's files (path, contents) to restore one store of it;
  // `request` says which, under which name and whether to replace. Files
  // go in pieces of `piece_bytes`. No deadline.
  absl::StatusOr<v1::Store> RestoreStore(
      const v1::RestoreStoreRequest& request,
      absl::Span<const std::pair<std::string, std::string>> files,
      size_t piece_bytes = 1 << 20);

  // The health of `service` ("" for the server): "SERVING", "NOT_SERVING"...
  absl::StatusOr<std::string> Health(const std::string& service = "");

  // A router's shards: groups, replicas, readiness and what each holds
  // (engram.cluster.v1.Router; UNIMPLEMENTED from a server that is not a
  // router).
  absl::StatusOr<cluster::v1::ClusterState> ClusterStatus();

 private:
  Client(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel);

  // The deadline (unless `deadline` is false) and the token of a call.
  void Prepare(grpc::ClientContext& context, bool deadline = true) const;
  // One unary call with a fresh context per attempt; repeated on UNAVAILABLE
  // when `repeatable`.
  template <typename Stub, typename Request, typename Response>
  absl::StatusOr<Response> Unary(
      Stub& stub,
      grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                   Response*),
      const Request& request, bool repeatable) const;
  // The same, answered into `response`.
  template <typename Stub, typename Request, typename Response>
  absl::Status UnaryInto(Stub& stub,
                         grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                      const Request&,
                                                      Response*),
                         const Request& request, bool repeatable,
                         Response* response) const;
  // A server stream of statuses, each handed to `on_status`; the last.
  template <typename Request, typename Status>
  absl::StatusOr<Status> Watch(
      std::unique_ptr<grpc::ClientReader<Status>> (v1::Engram::Stub::*method)(
          grpc::ClientContext*, const Request&),
      const Request& request,
      const std::function<void(const Status&)>& on_status) const;

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Engram::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  std::unique_ptr<cluster::v1::Router::Stub> router_;
};

// Retrieve's answers on a protobuf arena whose first block is kept from
// call to call: an answer of hundreds of results and their matches, which
// on the heap takes an allocation and a free each, parses into memory
// already there. Answers larger than the block take more, freed at the next
// Fresh. Not thread-safe: one per thread.
class AnswerArena {
 public:
  // 4 MiB holds 256 answers of 784 values with 10 matches each.
  explicit AnswerArena(size_t first_block_bytes = size_t{4} << 20);
  AnswerArena(const AnswerArena&) = delete;
  AnswerArena& operator=(const AnswerArena&) = delete;

  // An empty response on the arena. Every message Fresh returned before is
  // gone.
  v1::RetrieveResponse* Fresh();

 private:
  std::vector<char> first_block_;
  google::protobuf::Arena arena_;
};

}  // namespace engram::client

#endif  // ENGRAM_CLIENT_CLIENT_H_

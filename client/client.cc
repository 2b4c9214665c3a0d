#include "client/client.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/channel.h"
#include "server/base/call_arena.h"

namespace engram::client {

namespace {

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

void FillPatterns(absl::Span<const float> values, size_t dim,
                  absl::Span<const std::string> labels,
                  absl::Span<const v1::Pattern> details, size_t first,
                  size_t count,
                  google::protobuf::RepeatedPtrField<v1::Pattern>* out) {
  for (size_t r = first; r < first + count; ++r) {
    v1::Pattern* p = out->Add();
    if (!details.empty()) *p = details[r];
    p->mutable_values()->Assign(values.begin() + r * dim,
                                values.begin() + (r + 1) * dim);
    if (!labels.empty()) p->set_label(labels[r]);
  }
}

// A request that names `store`.
template <typename Request>
Request ForStore(const std::string& store) {
  Request request;
  request.set_store(store);
  return request;
}

}  // namespace

Client::Client(const ClientOptions& options,
               std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::Engram::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)),
      router_(cluster::v1::Router::NewStub(channel_)) {}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ClientOptions& options) {
  if (options.max_message_mb <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_message_mb is ", options.max_message_mb, "; it must be positive"));
  }
  ChannelOptions channel_options;
  channel_options.address = options.address;
  channel_options.max_message_bytes = size_t(options.max_message_mb) << 20;
  channel_options.tls_ca = options.tls_ca;
  channel_options.tls_cert = options.tls_cert;
  channel_options.tls_key = options.tls_key;
  channel_options.tls_server_name = options.tls_server_name;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      NewChannel(channel_options);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<Client>(new Client(options, *std::move(channel)));
}

void Client::Prepare(grpc::ClientContext& context, bool deadline) const {
  if (deadline) {
    context.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoMilliseconds(options_.timeout));
  }
  if (!options_.token.empty()) {
    context.AddMetadata("authorization", "Bearer " + options_.token);
  }
}

template <typename Stub, typename Request, typename Response>
absl::Status Client::UnaryInto(
    Stub& stub,
    grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                 Response*),
    const Request& request, bool repeatable, Response* response) const {
  thread_local std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  const int attempts = repeatable ? 1 + std::max(0, options_.retries) : 1;
  grpc::Status status;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    if (attempt > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(
          50.0 * (1 << std::min(attempt - 1, 10)) * jitter(rng)));
    }
    grpc::ClientContext context;
    Prepare(context);
    status = (stub.*method)(&context, request, response);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
  }
  return FromGrpc(status);
}

template <typename Stub, typename Request, typename Response>
absl::StatusOr<Response> Client::Unary(
    Stub& stub,
    grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                 Response*),
    const Request& request, bool repeatable) const {
  Response response;
  if (absl::Status s = UnaryInto(stub, method, request, repeatable, &response);
      !s.ok()) {
    return s;
  }
  return response;
}

template <typename Request, typename Status>
absl::StatusOr<Status> Client::Watch(
    std::unique_ptr<grpc::ClientReader<Status>> (v1::Engram::Stub::*method)(
        grpc::ClientContext*, const Request&),
    const Request& request,
    const std::function<void(const Status&)>& on_status) const {
  grpc::ClientContext context;
  Prepare(context, /*deadline=*/false);
  std::unique_ptr<grpc::ClientReader<Status>> reader =
      ((*stub_).*method)(&context, request);
  Status status, last;
  while (reader->Read(&status)) {
    if (on_status) on_status(status);
    last = status;
  }
  if (absl::Status s = FromGrpc(reader->Finish()); !s.ok()) return s;
  return last;
}

// --- Stores ---

absl::StatusOr<v1::Store> Client::CreateStore(const v1::Store& store) {
  v1::CreateStoreRequest request;
  *request.mutable_store() = store;
  return Unary(*stub_, &v1::Engram::Stub::CreateStore, request, false);
}

absl::StatusOr<v1::Store> Client::GetStore(const std::string& name) {
  v1::GetStoreRequest request;
  request.set_name(name);
  return Unary(*stub_, &v1::Engram::Stub::GetStore, request, true);
}

absl::StatusOr<std::vector<v1::Store>> Client::ListStores() {
  std::vector<v1::Store> stores;
  v1::ListStoresRequest request;
  request.set_page_size(1000);
  do {
    absl::StatusOr<v1::ListStoresResponse> page =
        Unary(*stub_, &v1::Engram::Stub::ListStores, request, true);
    if (!page.ok()) return page.status();
    stores.insert(stores.end(), page->stores().begin(), page->stores().end());
    request.set_page_token(page->next_page_token());
  } while (!request.page_token().empty());
  return stores;
}

absl::StatusOr<v1::Store> Client::UpdateStore(
    const v1::Store& store, const std::vector<std::string>& paths) {
  v1::UpdateStoreRequest request;
  *request.mutable_store() = store;
  for (const std::string& path : paths) {
    request.mutable_update_mask()->add_paths(path);
  }
  return Unary(*stub_, &v1::Engram::Stub::UpdateStore, request, false);
}

absl::Status Client::DeleteStore(const std::string& name) {
  v1::DeleteStoreRequest request;
  request.set_name(name);
  return Unary(*stub_, &v1::Engram::Stub::DeleteStore, request, false).status();
}

// --- Patterns ---

absl::StatusOr<v1::AddPatternsResponse> Client::AddPatterns(
    const std::string& store, absl::Span<const float> values, size_t dim,
    absl::Span<const std::string> labels) {
  v1::AddPatternsRequest request;
  request.set_store(store);
  FillPatterns(values, dim, labels, {}, 0, dim ? values.size() / dim : 0,
               request.mutable_patterns());
  return Unary(*stub_, &v1::Engram::Stub::AddPatterns, request, false);
}

absl::StatusOr<v1::ImportPatternsResponse> Client::Import(
    const std::string& store, absl::Span<const float> values, size_t dim,
    absl::Span<const std::string> labels, size_t batch_rows,
    const std::function<void(size_t)>& progress,
    absl::Span<const v1::Pattern> details) {
  grpc::ClientContext context;
  Prepare(context);
  v1::ImportPatternsResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::ImportPatternsRequest>> writer =
      stub_->ImportPatterns(&context, &response);
  const size_t rows = dim ? values.size() / dim : 0;
  batch_rows = std::max<size_t>(batch_rows, 1);
  const size_t messages =
      std::max<size_t>(1, (rows + batch_rows - 1) / batch_rows);
  for (size_t first = 0; first < rows; first += batch_rows) {
    v1::ImportPatternsRequest message;
    if (first == 0) message.set_store(store);
    const size_t count = std::min(batch_rows, rows - first);
    FillPatterns(values, dim, labels, details, first, count,
                 message.mutable_patterns());
    if (!writer->Write(message)) break;  // The server ended the call.
    if (progress) progress(first + count);
  }
  if (rows == 0) {
    v1::ImportPatternsRequest message;
    message.set_store(store);
    writer->Write(message);
  }
  writer->WritesDone();
  if (absl::Status s = FromGrpc(writer->Finish()); !s.ok()) return s;
  // A message the server could not read ends the stream for it, and it
  // answers for the messages before: say so rather than return success.
  if (response.batches() != messages) {
    return absl::DataLossError(absl::StrCat(
        "the server read ", response.batches(), " of the ", messages,
        " messages and added ", response.patterns_added(), " of the ", rows,
        " patterns; the rest were not added"));
  }
  return response;
}

absl::StatusOr<v1::Pattern> Client::GetPattern(const std::string& store,
                                               uint64_t id) {
  v1::GetPatternRequest request;
  request.set_store(store);
  request.set_id(id);
  return Unary(*stub_, &v1::Engram::Stub::GetPattern, request, true);
}

absl::StatusOr<v1::ListPatternsResponse> Client::ListPatterns(
    const std::string& store, const std::string& page_token, uint32_t page_size,
    bool omit_values) {
  v1::ListPatternsRequest request;
  request.set_store(store);
  request.set_page_token(page_token);
  request.set_page_size(page_size);
  request.set_omit_values(omit_values);
  return Unary(*stub_, &v1::Engram::Stub::ListPatterns, request, true);
}

absl::StatusOr<v1::DeletePatternsResponse> Client::DeletePatterns(
    const std::string& store, absl::Span<const uint64_t> ids) {
  v1::DeletePatternsRequest request;
  request.set_store(store);
  request.mutable_ids()->Assign(ids.begin(), ids.end());
  return Unary(*stub_, &v1::Engram::Stub::DeletePatterns, request, false);
}

// --- Retrieval ---

absl::StatusOr<v1::RetrieveResponse> Client::Retrieve(
    const std::string& store, absl::Span<const float> queries, size_t dim,
    const v1::RetrieveRequest& request) {
  v1::RetrieveResponse response;
  if (absl::Status s = Retrieve(store, queries, dim, request, &response);
      !s.ok()) {
    return s;
  }
  return response;
}

absl::Status Client::Retrieve(const std::string& store,
                              absl::Span<const float> queries, size_t dim,
                              const v1::RetrieveRequest& request,
                              v1::RetrieveResponse* response) {
  // The request is built on an arena: its hundreds of queries are each a
  // message of their own, allocated and freed once per call otherwise.
  google::protobuf::Arena arena(CallArenaOptions());
  v1::RetrieveRequest& built =
      *google::protobuf::Arena::CreateMessage<v1::RetrieveRequest>(&arena);
  built = request;
  built.set_store(store);
  built.clear_queries();
  const size_t rows = dim ? queries.size() / dim : 0;
  built.mutable_queries()->Reserve(static_cast<int>(rows));
  for (size_t r = 0; r < rows; ++r) {
    built.add_queries()->mutable_values()->Assign(
        queries.begin() + r * dim, queries.begin() + (r + 1) * dim);
  }
  return UnaryInto(*stub_, &v1::Engram::Stub::Retrieve, built, true, response);
}

namespace {

google::protobuf::ArenaOptions WithFirstBlock(std::vector<char>& block) {
  google::protobuf::ArenaOptions options;
  options.initial_block = block.data();
  options.initial_block_size = block.size();
  options.max_block_size = size_t{16} << 20;
  return options;
}

}  // namespace

AnswerArena::AnswerArena(size_t first_block_bytes)
    : first_block_(first_block_bytes), arena_(WithFirstBlock(first_block_)) {}

v1::RetrieveResponse* AnswerArena::Fresh() {
  arena_.Reset();
  return google::protobuf::Arena::CreateMessage<v1::RetrieveResponse>(&arena_);
}

// --- Stage I ---

absl::StatusOr<v1::FitStatus> Client::GetFitStatus(const std::string& store) {
  return Unary(*stub_, &v1::Engram::Stub::GetFitStatus,
               ForStore<v1::GetFitStatusRequest>(store), true);
}

absl::StatusOr<v1::FitStatus> Client::StartFit(const std::string& store) {
  return Unary(*stub_, &v1::Engram::Stub::StartFit,
               ForStore<v1::StartFitRequest>(store), false);
}

absl::StatusOr<v1::FitStatus> Client::CancelFit(const std::string& store) {
  return Unary(*stub_, &v1::Engram::Stub::CancelFit,
               ForStore<v1::CancelFitRequest>(store), true);
}

absl::StatusOr<v1::FitStatus> Client::WatchFit(
    const std::string& store,
    const std::function<void(const v1::FitStatus&)>& on_status) {
  return Watch(&v1::Engram::Stub::WatchFit,
               ForStore<v1::WatchFitRequest>(store), on_status);
}

// --- Backups ---

absl::Status Client::CreateBackup(
    const std::string& store,
    const std::function<absl::Status(const v1::BackupChunk&)>& on_chunk) {
  grpc::ClientContext context;
  Prepare(context, /*deadline=*/false);
  v1::CreateBackupRequest request;
  request.set_store(store);
  std::unique_ptr<grpc::ClientReader<v1::BackupChunk>> reader =
      stub_->CreateBackup(&context, request);
  v1::BackupChunk chunk;
  absl::Status failed;
  while (reader->Read(&chunk)) {
    failed = on_chunk(chunk);
    if (!failed.ok()) {
      context.TryCancel();
      break;
    }
  }
  absl::Status finished = FromGrpc(reader->Finish());
  return failed.ok() ? finished : failed;
}

absl::StatusOr<v1::Store> Client::RestoreStore(
    const v1::RestoreStoreRequest& request,
    absl::Span<const std::pair<std::string, std::string>> files,
    size_t piece_bytes) {
  grpc::ClientContext context;
  Prepare(context, /*deadline=*/false);
  v1::Store response;
  std::unique_ptr<grpc::ClientWriter<v1::RestoreStoreRequest>> writer =
      stub_->RestoreStore(&context, &response);
  v1::RestoreStoreRequest message = request;
  message.clear_chunk();
  bool open = writer->Write(message);
  piece_bytes = std::max<size_t>(piece_bytes, 1);
  for (const auto& [path, data] : files) {
    for (size_t at = 0; open && (at < data.size() || at == 0);
         at += piece_bytes) {
      message.Clear();
      message.mutable_chunk()->set_file(path);
      message.mutable_chunk()->set_data(data.substr(at, piece_bytes));
      open = writer->Write(message);  // False: the server ended the call.
      if (data.empty()) break;
    }
  }
  writer->WritesDone();
  if (absl::Status s = FromGrpc(writer->Finish()); !s.ok()) return s;
  return response;
}

// --- Calibration ---

absl::StatusOr<v1::CalibrationStatus> Client::StartCalibration(
    const std::string& store, std::optional<bool> apply) {
  auto request = ForStore<v1::StartCalibrationRequest>(store);
  if (apply) request.set_apply(*apply);
  return Unary(*stub_, &v1::Engram::Stub::StartCalibration, request, false);
}

absl::StatusOr<v1::CalibrationStatus> Client::GetCalibrationStatus(
    const std::string& store) {
  return Unary(*stub_, &v1::Engram::Stub::GetCalibrationStatus,
               ForStore<v1::GetCalibrationStatusRequest>(store), true);
}

absl::StatusOr<v1::CalibrationStatus> Client::CancelCalibration(
    const std::string& store) {
  return Unary(*stub_, &v1::Engram::Stub::CancelCalibration,
               ForStore<v1::CancelCalibrationRequest>(store), true);
}

absl::StatusOr<v1::CalibrationStatus> Client::WatchCalibration(
    const std::string& store,
    const std::function<void(const v1::CalibrationStatus&)>& on_status) {
  return Watch(&v1::Engram::Stub::WatchCalibration,
               ForStore<v1::WatchCalibrationRequest>(store), on_status);
}

absl::StatusOr<std::string> Client::Health(const std::string& service) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  absl::StatusOr<grpc::health::v1::HealthCheckResponse> response =
      Unary(*health_, &grpc::health::v1::Health::Stub::Check, request, true);
  if (!response.ok()) return response.status();
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
      response->status());
}

absl::StatusOr<cluster::v1::ClusterState> Client::ClusterStatus() {
  return Unary(*router_, &cluster::v1::Router::Stub::ClusterStatus,
               cluster::v1::ClusterStatusRequest(), true);
}

}  // namespace engram::client

#include "client/client.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>
#include <utility>

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace engram::client {

namespace {

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

void FillPatterns(absl::Span<const float> values, size_t dim,
                  absl::Span<const std::string> labels, size_t first,
                  size_t count,
                  google::protobuf::RepeatedPtrField<v1::Pattern>* out) {
  for (size_t r = first; r < first + count; ++r) {
    v1::Pattern* p = out->Add();
    p->mutable_values()->Assign(values.begin() + r * dim,
                                values.begin() + (r + 1) * dim);
    if (!labels.empty()) p->set_label(labels[r]);
  }
}

}  // namespace

Client::Client(const ClientOptions& options,
               std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::Engram::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_mb << 20);
  args.SetMaxSendMessageSize(options.max_message_mb << 20);
  // As the server: an 8 MiB stream window from the start (large answers).
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_ca;
    ssl.pem_cert_chain = options.tls_cert;
    ssl.pem_private_key = options.tls_key;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.address, credentials, args);
  if (!channel) {
    return absl::InvalidArgumentError("cannot create a channel to " +
                                      options.address);
  }
  return std::unique_ptr<Client>(new Client(options, std::move(channel)));
}

void Client::SetDeadline(grpc::ClientContext& context) const {
  context.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(options_.timeout));
  if (!options_.token.empty()) {
    context.AddMetadata("authorization", "Bearer " + options_.token);
  }
}

grpc::Status Client::Retrying(
    const std::function<grpc::Status(grpc::ClientContext*)>& call) const {
  thread_local std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  grpc::Status status;
  for (int attempt = 0; attempt <= options_.retries; ++attempt) {
    if (attempt > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(
          50.0 * (1 << (attempt - 1)) * jitter(rng)));
    }
    grpc::ClientContext context;
    SetDeadline(context);
    status = call(&context);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
  }
  return status;
}

absl::StatusOr<v1::Store> Client::CreateStore(const v1::Store& store) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::CreateStoreRequest request;
  *request.mutable_store() = store;
  v1::Store response;
  if (absl::Status s =
          FromGrpc(stub_->CreateStore(&context, request, &response));
      !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<v1::Store> Client::GetStore(const std::string& name) {
  v1::GetStoreRequest request;
  request.set_name(name);
  v1::Store response;
  if (absl::Status s = FromGrpc(Retrying([&](grpc::ClientContext* context) {
        return stub_->GetStore(context, request, &response);
      }));
      !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<std::vector<v1::Store>> Client::ListStores() {
  std::vector<v1::Store> stores;
  v1::ListStoresRequest request;
  request.set_page_size(1000);
  do {
    v1::ListStoresResponse response;
    if (absl::Status s = FromGrpc(Retrying([&](grpc::ClientContext* context) {
          return stub_->ListStores(context, request, &response);
        }));
        !s.ok()) {
      return s;
    }
    stores.insert(stores.end(), response.stores().begin(),
                  response.stores().end());
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  return stores;
}

absl::Status Client::DeleteStore(const std::string& name) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::DeleteStoreRequest request;
  request.set_name(name);
  v1::DeleteStoreResponse response;
  return FromGrpc(stub_->DeleteStore(&context, request, &response));
}

absl::StatusOr<v1::AddPatternsResponse> Client::AddPatterns(
    const std::string& store, absl::Span<const float> values, size_t dim,
    absl::Span<const std::string> labels) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::AddPatternsRequest request;
  request.set_store(store);
  FillPatterns(values, dim, labels, 0, dim ? values.size() / dim : 0,
               request.mutable_patterns());
  v1::AddPatternsResponse response;
  if (absl::Status s =
          FromGrpc(stub_->AddPatterns(&context, request, &response));
      !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<v1::Pattern> Client::GetPattern(const std::string& store,
                                               uint64_t id) {
  v1::GetPatternRequest request;
  request.set_store(store);
  request.set_id(id);
  v1::Pattern response;
  if (absl::Status s = FromGrpc(Retrying([&](grpc::ClientContext* context) {
        return stub_->GetPattern(context, request, &response);
      }));
      !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<v1::ImportPatternsResponse> Client::Import(
    const std::string& store, absl::Span<const float> values, size_t dim,
    absl::Span<const std::string> labels, size_t batch_rows,
    const std::function<void(size_t)>& progress) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::ImportPatternsResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::ImportPatternsRequest>> writer =
      stub_->ImportPatterns(&context, &response);
  const size_t rows = dim ? values.size() / dim : 0;
  batch_rows = std::max<size_t>(batch_rows, 1);
  for (size_t first = 0; first < rows; first += batch_rows) {
    v1::ImportPatternsRequest message;
    if (first == 0) message.set_store(store);
    const size_t count = std::min(batch_rows, rows - first);
    FillPatterns(values, dim, labels, first, count, message.mutable_patterns());
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
  return response;
}

absl::StatusOr<v1::RetrieveResponse> Client::Retrieve(
    const std::string& store, absl::Span<const float> queries, size_t dim,
    v1::RetrieveRequest request) {
  request.set_store(store);
  request.clear_queries();
  const size_t rows = dim ? queries.size() / dim : 0;
  for (size_t r = 0; r < rows; ++r) {
    request.add_queries()->mutable_values()->Assign(
        queries.begin() + r * dim, queries.begin() + (r + 1) * dim);
  }
  v1::RetrieveResponse response;
  if (absl::Status s = FromGrpc(Retrying([&](grpc::ClientContext* context) {
        return stub_->Retrieve(context, request, &response);
      }));
      !s.ok()) {
    return s;
  }
  return response;
}

namespace {

// A request that names `store`.
template <typename Request>
Request ForStore(const std::string& store) {
  Request request;
  request.set_store(store);
  return request;
}

// Runs one unary call: its response, or its status.
template <typename Response, typename Request, typename Call>
absl::StatusOr<Response> Unary(const Request& request, Call call) {
  Response response;
  if (absl::Status s = FromGrpc(call(request, &response)); !s.ok()) return s;
  return response;
}

}  // namespace

absl::StatusOr<v1::FitStatus> Client::GetFitStatus(const std::string& store) {
  grpc::ClientContext context;
  SetDeadline(context);
  return Unary<v1::FitStatus>(ForStore<v1::GetFitStatusRequest>(store),
                              [&](auto& r, auto* out) {
                                return stub_->GetFitStatus(&context, r, out);
                              });
}

absl::StatusOr<v1::FitStatus> Client::StartFit(const std::string& store) {
  grpc::ClientContext context;
  SetDeadline(context);
  return Unary<v1::FitStatus>(
      ForStore<v1::StartFitRequest>(store),
      [&](auto& r, auto* out) { return stub_->StartFit(&context, r, out); });
}

absl::StatusOr<v1::CalibrationStatus> Client::StartCalibration(
    const std::string& store, std::optional<bool> apply) {
  grpc::ClientContext context;
  SetDeadline(context);
  auto request = ForStore<v1::StartCalibrationRequest>(store);
  if (apply) request.set_apply(*apply);
  return Unary<v1::CalibrationStatus>(request, [&](auto& r, auto* out) {
    return stub_->StartCalibration(&context, r, out);
  });
}

absl::StatusOr<v1::CalibrationStatus> Client::GetCalibrationStatus(
    const std::string& store) {
  grpc::ClientContext context;
  SetDeadline(context);
  return Unary<v1::CalibrationStatus>(
      ForStore<v1::GetCalibrationStatusRequest>(store),
      [&](auto& r, auto* out) {
        return stub_->GetCalibrationStatus(&context, r, out);
      });
}

absl::StatusOr<v1::FitStatus> Client::CancelFit(const std::string& store) {
  grpc::ClientContext context;
  SetDeadline(context);
  return Unary<v1::FitStatus>(
      ForStore<v1::CancelFitRequest>(store),
      [&](auto& r, auto* out) { return stub_->CancelFit(&context, r, out); });
}

absl::StatusOr<v1::FitStatus> Client::WatchFit(
    const std::string& store,
    const std::function<void(const v1::FitStatus&)>& on_status) {
  grpc::ClientContext context;
  if (!options_.token.empty()) {
    context.AddMetadata("authorization", "Bearer " + options_.token);
  }
  v1::WatchFitRequest request;
  request.set_store(store);
  std::unique_ptr<grpc::ClientReader<v1::FitStatus>> reader =
      stub_->WatchFit(&context, request);
  v1::FitStatus status, last;
  while (reader->Read(&status)) {
    on_status(status);
    last = status;
  }
  if (absl::Status s = FromGrpc(reader->Finish()); !s.ok()) return s;
  return last;
}

absl::StatusOr<std::string> Client::Health(const std::string& service) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  if (absl::Status s = FromGrpc(Retrying([&](grpc::ClientContext* context) {
        return health_->Check(context, request, &response);
      }));
      !s.ok()) {
    return s;
  }
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
      response.status());
}

}  // namespace engram::client

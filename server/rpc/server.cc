#include "server/rpc/server.h"

#include <chrono>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace engram::rpc {

Server::Server(std::unique_ptr<EngramService> service, std::string host)
    : service_(std::move(service)), host_(std::move(host)) {}

Server::~Server() { Shutdown(absl::ZeroDuration()); }

namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (path.empty() || !in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": cannot read '", path, "'"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options, store::StoreRegistry* registry,
    jobs::FitScheduler* fits, metrics::Metrics* metrics) {
  TokenAuthorizer auth;
  if (!options.token_file.empty()) {
    absl::StatusOr<TokenAuthorizer> loaded =
        TokenAuthorizer::Load(options.token_file);
    if (!loaded.ok()) return loaded.status();
    auth = std::move(*loaded);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  std::unique_ptr<Server> server(new Server(
      std::make_unique<EngramService>(
          registry, fits, metrics, options.retrieval_threads, std::move(auth)),
      host));
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty() || !options.tls_key.empty()) {
    absl::StatusOr<std::string> cert = ReadFile(options.tls_cert, "--tls_cert");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile(options.tls_key, "--tls_key");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!options.tls_client_ca.empty()) {
      absl::StatusOr<std::string> ca =
          ReadFile(options.tls_client_ca, "--tls_client_ca");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request =
          GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    credentials = grpc::SslServerCredentials(ssl);
  } else if (!options.tls_client_ca.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca needs --tls_cert and --tls_key");
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  grpc::ResourceQuota quota("engramd");
  quota.SetMaxThreads(options.max_threads);
  builder.SetResourceQuota(quota);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen));
  }
  // Live as soon as it runs; ready when the caller says so.
  server->server_->GetHealthCheckService()->SetServingStatus("", true);
  server->SetReady(false);
  return server;
}

std::string Server::address() const { return absl::StrCat(host_, ":", port_); }

void Server::SetReady(bool ready) {
  server_->GetHealthCheckService()->SetServingStatus(
      v1::Engram::service_full_name(), ready);
}

void Server::Shutdown(absl::Duration grace) {
  if (!server_) return;
  SetReady(false);
  server_->Shutdown(std::chrono::system_clock::now() +
                    absl::ToChronoMilliseconds(grace));
  server_->Wait();
  server_.reset();
}

}  // namespace engram::rpc

#include "server/rpc/server.h"

#include <chrono>
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

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options, store::StoreRegistry* registry,
    jobs::FitScheduler* fits, metrics::Metrics* metrics) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  std::unique_ptr<Server> server(
      new Server(std::make_unique<EngramService>(registry, fits, metrics,
                                                 options.retrieval_threads),
                 host));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(),
                           &server->port_);
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

#include "server/rpc/server.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/server_interceptor.h"
#include "server/base/log.h"
#include "server/base/mib.h"
#include "server/base/millis.h"
#include "server/base/steady_clock.h"
#include "server/rpc/auth.h"
#include "server/rpc/listener.h"
#include "server/rpc/stream_flood.h"
#include "server/rpc/tls_files.h"
#include "server/rpc/unix_socket.h"

namespace engram::rpc {

Server::Server(std::string listen) : listen_(std::move(listen)) {}

Server::~Server() { Shutdown(absl::ZeroDuration()); }

namespace {

// gRPC answers a request whose bytes do not parse as the method's message
// with INTERNAL and no message, before any handler runs; this says what the
// bytes are not, as INVALID_ARGUMENT. For the methods that take one request
// (unary, server streaming): in a client's stream a message that does not
// parse ends the stream for its handler, and gRPC tells it nothing more.
class UnparsedRequest final : public grpc::experimental::Interceptor {
 public:
  explicit UnparsedRequest(const char* method) : method_(method) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* batch) override {
    using Hook = grpc::experimental::InterceptionHookPoints;
    if (batch->QueryInterceptionHookPoint(Hook::POST_RECV_MESSAGE) &&
        batch->GetRecvMessage() == nullptr) {
      unparsed_ = true;
    }
    if (unparsed_ && batch->QueryInterceptionHookPoint(Hook::PRE_SEND_STATUS)) {
      const grpc::Status sent = batch->GetSendStatus();
      if (sent.error_code() == grpc::StatusCode::INTERNAL &&
          sent.error_message().empty()) {
        batch->ModifySendStatus(
            grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                         absl::StrCat("the request's bytes are not an ",
                                      RequestType(method_))));
      }
    }
    batch->Proceed();
  }

 private:
  // "engram.v1.GetStoreRequest" for "/engram.v1.Engram/GetStore".
  static std::string RequestType(absl::string_view method) {
    const google::protobuf::MethodDescriptor* found = MethodAt(method);
    if (found == nullptr) {
      return absl::StrCat("request of ", absl::StripPrefix(method, "/"));
    }
    return found->input_type()->full_name();
  }

  const char* const method_;
  bool unparsed_ = false;
};

// gRPC's reflection service answers a stream of questions on a thread of
// the synchronous server for as long as its client keeps the stream open;
// it is not engram's code, so no Call takes a slot for it. This does: a
// reflection stream beyond the policy's stream slots is cancelled as it
// starts (the client sees CANCELLED), which ends its handler.
class ReflectionSlot final : public grpc::experimental::Interceptor {
 public:
  ReflectionSlot(StreamSlots* slots, grpc::ServerContextBase* context)
      : slots_(slots), context_(context) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* batch) override {
    using Hook = grpc::experimental::InterceptionHookPoints;
    if (!asked_ &&
        batch->QueryInterceptionHookPoint(Hook::POST_RECV_INITIAL_METADATA)) {
      asked_ = true;
      bool whole_full = false;
      held_ = slots_->TryTake(&whole_full);
      if (!held_) {
        Log(LogLevel::kWarning,
            "a reflection stream was cancelled: %u %s hold every slot "
            "(--rpc_threads)",
            whole_full ? slots_->whole()->limit() : slots_->limit(),
            whole_full ? "streams and writes" : "streams");
        context_->TryCancel();
      }
    }
    batch->Proceed();
  }

 private:
  StreamSlots* const slots_;
  grpc::ServerContextBase* const context_;
  bool asked_ = false;
  StreamSlots::Slot held_;
};

// Every answer and streamed message, from when gRPC is handed it until it
// is written or its call ends, for the AnswerWatch. (A call's batches may
// complete on different threads: End is safe to repeat, and nothing else
// is kept.)
class AnswerTimer final : public grpc::experimental::Interceptor {
 public:
  AnswerTimer(AnswerWatch* watch, grpc::ServerContextBase* context)
      : watch_(watch), context_(context) {}
  ~AnswerTimer() override { watch_->End(this); }

  void Intercept(grpc::experimental::InterceptorBatchMethods* batch) override {
    using Hook = grpc::experimental::InterceptionHookPoints;
    if (batch->QueryInterceptionHookPoint(Hook::PRE_SEND_MESSAGE)) {
      watch_->Begin(this, context_->peer(), SteadyNow());
    }
    if (batch->QueryInterceptionHookPoint(Hook::POST_SEND_MESSAGE)) {
      watch_->End(this);
    }
    batch->Proceed();
  }

 private:
  AnswerWatch* const watch_;
  grpc::ServerContextBase* const context_;
};

// Makes each call's interceptor with `make`, which returns null for a call
// it leaves alone.
class InterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  using Make = std::function<grpc::experimental::Interceptor*(
      grpc::experimental::ServerRpcInfo*)>;
  explicit InterceptorFactory(Make make) : make_(std::move(make)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return make_(info);
  }

 private:
  const Make make_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options, store::StoreRegistry* registry,
    jobs::JobRunner* jobs, metrics::Metrics* metrics) {
  ServiceOptions service;
  service.retrieval_threads = options.retrieval_threads;
  service.handler_threads = options.max_threads;
  return Start(options, metrics, [&](const CallPolicy* policy) {
    std::vector<std::unique_ptr<grpc::Service>> services;
    services.push_back(
        std::make_unique<EngramService>(registry, jobs, policy, service));
    return services;
  });
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options, metrics::Metrics* metrics,
    const Services& services) {
  TokenAuthorizer auth;
  if (!options.token_file.empty()) {
    absl::StatusOr<TokenAuthorizer> loaded =
        TokenAuthorizer::Load(options.token_file);
    if (!loaded.ok()) {
      return absl::Status(loaded.status().code(),
                          absl::StrCat("--token_file=", options.token_file,
                                       ": ", loaded.status().message()));
    }
    auth = std::move(*loaded);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::unique_ptr<Server> server(new Server(options.listen));
  if (std::optional<std::string> path = UnixSocketPath(options.listen)) {
    absl::StatusOr<std::unique_ptr<UnixSocketLock>> lock =
        UnixSocketLock::Take(*path);
    if (!lock.ok()) return lock.status();
    server->unix_lock_ = *std::move(lock);
  }
  rlimit open_files{};
  if (options.fd_reserve >= 0 && getrlimit(RLIMIT_NOFILE, &open_files) == 0 &&
      open_files.rlim_cur != RLIM_INFINITY &&
      static_cast<rlim_t>(options.fd_reserve) >= open_files.rlim_cur) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fd_reserve=", options.fd_reserve,
                     " is not below the open-file "
                     "limit (",
                     open_files.rlim_cur, "): no connection could be taken"));
  }
  // Bound before anything else starts: a port in use refuses at once.
  absl::StatusOr<std::unique_ptr<Listener>> listener =
      Listener::Bind(options.listen);
  if (!listener.ok()) return listener.status();
  server->listener_ = *std::move(listener);
  server->port_ = server->listener_->port();
  server->policy_ = std::make_unique<CallPolicy>();
  server->policy_->auth = std::move(auth);
  server->policy_->max_message_bytes = options.max_message_bytes;
  server->policy_->metrics = metrics;
  server->policy_->after_write = options.after_write;
  server->policy_->write_budget = options.write_budget;
  server->policy_->memory_guard = options.memory_guard;
  server->policy_->shares = options.shares.held != nullptr
                                ? options.shares
                                : ShareThreads(options.max_threads);
  server->services_ = services(server->policy_.get());
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty() || !options.tls_key.empty()) {
    absl::StatusOr<std::unique_ptr<TlsFiles>> tls_files = TlsFiles::Open(
        {options.tls_cert, options.tls_key, options.tls_client_ca});
    if (!tls_files.ok()) return tls_files.status();
    server->tls_ = *std::move(tls_files);
    // gRPC reads the checked in-memory copies every second (TlsFiles
    // changes them when the flags' files change and check).
    grpc::experimental::TlsServerCredentialsOptions tls(
        server->tls_->Provider());
    tls.watch_identity_key_cert_pairs();
    if (!options.tls_client_ca.empty()) {
      tls.watch_root_certs();
      tls.set_cert_request_type(
          GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    } else {
      tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    }
    credentials = grpc::experimental::TlsServerCredentials(tls);
    if (server->policy_->auth.enabled()) {
      // Tokens checked as headers arrive, before gRPC reads a request.
      credentials->SetAuthMetadataProcessor(
          std::make_shared<TokenMetadataProcessor>(&server->policy_->auth,
                                                   metrics));
    }
  } else if (!options.tls_client_ca.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca needs --tls_cert and --tls_key");
  }
  grpc::ServerBuilder builder;
  // Batches of queries and their answers are megabytes: a stream window of
  // 8 MiB from the start saves the flow-control round trips that growing it
  // costs (measured: 3 ms of a 40 ms call at 256 queries on loopback).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
  // Clients ping to find a connection gone silent (a router pings its
  // shards every second): take pings every 500 ms, between calls too,
  // where gRPC's default takes one in five minutes without data and closes
  // the connection on the third that comes sooner.
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // And engramd pings its clients: a client gone silent holds its streams
  // (and their threads, StreamSlots) only until a ping goes unanswered, not
  // until TCP gives up — which, for a stream engramd only reads from, is
  // never.
  const absl::Duration keepalive =
      std::max(options.keepalive, absl::Seconds(1));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             ChannelMillis(keepalive));
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      ChannelMillis(std::min(keepalive, absl::Seconds(20))));
  // However long the connection carried no data (a stream whose client
  // sends nothing for minutes, then goes silent): gRPC otherwise stops
  // pinging after two pings without data.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // A connection that has not finished its TLS handshake and sent HTTP/2's
  // settings within 20 s is closed (gRPC's default waits two minutes): a
  // descriptor held by a connection that never speaks is soon given back.
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 20000);
  if (options.max_open_streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               options.max_open_streams);
  }
  // The listener accepts; gRPC serves what it hands over (listener.h).
  server->acceptor_ = builder.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD,
      credentials);
  // The service enforces --max_message_mb on every request and message, so
  // that the refusal says what was committed and how to split; gRPC's own
  // limit (with a bare message) only stops what is twice as large.
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(2 * int64_t{options.max_message_bytes},
                                         std::numeric_limits<int>::max())));
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  grpc::ResourceQuota quota("engramd");
  quota.SetMaxThreads(options.max_threads);
  builder.SetResourceQuota(quota);
  for (const std::unique_ptr<grpc::Service>& service : server->services_) {
    builder.RegisterService(service.get());
  }
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  using grpc::experimental::Interceptor;
  using grpc::experimental::ServerRpcInfo;
  interceptors.push_back(std::make_unique<InterceptorFactory>(
      [](ServerRpcInfo* info) -> Interceptor* {
        // One request message each, parsed before the handler runs.
        using Type = ServerRpcInfo::Type;
        if (info->type() != Type::UNARY &&
            info->type() != Type::SERVER_STREAMING) {
          return nullptr;
        }
        return new UnparsedRequest(info->method());
      }));
  interceptors.push_back(std::make_unique<InterceptorFactory>(
      [slots = server->policy_->shares.streams.get()](
          ServerRpcInfo* info) -> Interceptor* {
        if (!absl::StartsWith(info->method(), "/grpc.reflection.")) {
          return nullptr;
        }
        return new ReflectionSlot(slots, info->server_context());
      }));
  AnswerWatch::Options answers;
  answers.patience = options.max_answer_wait;
  answers.pressure = std::max(2, options.max_threads / 4);
  // Or fewer threads left than other calls need, with streams and writes
  // holding theirs.
  answers.threads = options.max_threads;
  answers.held = [held = server->policy_->shares.held] {
    return static_cast<int>(held->used());
  };
  server->answers_ = std::make_unique<AnswerWatch>(answers);
  interceptors.push_back(std::make_unique<InterceptorFactory>(
      [watch = server->answers_.get()](ServerRpcInfo* info) -> Interceptor* {
        return new AnswerTimer(watch, info->server_context());
      }));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  server->server_ = builder.BuildAndStart();
  if (!server->server_) {
    return absl::UnavailableError(
        absl::StrCat("--listen=", options.listen,
                     ": gRPC's server did not start (its error above says "
                     "why)"));
  }
  server->listener_->Start(server->acceptor_.get(), options.fd_reserve,
                           [metrics](absl::string_view reason) {
                             if (metrics != nullptr)
                               metrics->RecordConnectionShed(reason);
                           });
  std::shared_ptr<CredentialState> state = StateOrNew(options.credential_state);
  if (server->tls_ != nullptr) {
    state->certificate_expiry = static_cast<double>(server->tls_->expiry());
  }
  if (!options.token_file.empty() || !options.tls_cert.empty()) {
    server->watcher_ = std::thread([raw = server.get(), options, state] {
      raw->WatchCredentials(options, *state);
    });
  }
  server->stream_guard_ = std::thread([raw = server.get(), options, metrics] {
    raw->GuardStreams(options, metrics);
  });
  // Live as soon as it runs; ready when the caller says so.
  server->server_->GetHealthCheckService()->SetServingStatus("", true);
  server->SetReady(false);
  return server;
}

std::string Server::address() const {
  if (IsUnixAddress(listen_)) return listen_;
  return absl::StrCat(listen_.substr(0, listen_.rfind(':')), ":", port_);
}

size_t Server::connection_reserve() const {
  return listener_ == nullptr ? 0 : listener_->reserve();
}

std::string Server::endpoint() const {
  if (IsUnixAddress(listen_)) return "Unix socket";
  return absl::StrCat("port ", port_);
}

void Server::SetReady(bool ready) {
  server_->GetHealthCheckService()->SetServingStatus(
      v1::Engram::service_full_name(), ready);
}

void Server::WatchCredentials(const ServerOptions& options,
                              CredentialState& state) {
  const absl::Duration refresh =
      std::max(options.credentials_refresh, absl::Seconds(1));
  while (Sleep(refresh, /*or_reread=*/true)) {
    if (!options.token_file.empty()) {
      const absl::StatusOr<bool> reloaded = policy_->auth.Reload();
      Report(reloaded, absl::StrCat("--token_file=", options.token_file),
             absl::StrCat(policy_->auth.size(), " tokens"),
             state.token_file_failed);
    }
    if (tls_ != nullptr) {
      MutexLock lock(&tls_mu_);
      const absl::StatusOr<bool> reloaded = tls_->Reload();
      if (Report(reloaded, "TLS files", tls_->describe(),
                 state.tls_files_failed)) {
        state.certificate_expiry = static_cast<double>(tls_->expiry());
      }
    }
  }
}

// What a connection must have sent for nothing before it is cut when
// memory runs out: past any header block gRPC takes (its metadata limit is
// 8 KiB by default) and the start of most messages.
constexpr int64_t kMemoryFloodBytes = int64_t{16} << 20;

// How often the guard looks at the connections.
constexpr absl::Duration kLookEvery = absl::Milliseconds(250);

void Server::GuardStreams(const ServerOptions& options,
                          metrics::Metrics* metrics) {
  StreamFloodGuard guard(
      {options.max_open_streams, options.max_stream_resets_per_s});
  // Cuts the TCP connection of this server's from `ip` and `port`, counted
  // under `reason`; false if there is none.
  auto cut = [&](const std::string& ip, int port, const char* reason) {
    if (ip.empty() || !listener_->Cut(ip, port, options.cut_ban)) {
      return false;
    }
    if (metrics != nullptr) metrics->RecordConnectionShed(reason);
    return true;
  };
  const std::string kept =
      options.cut_ban > absl::ZeroDuration()
          ? absl::StrCat("its address is kept out for ",
                         absl::FormatDuration(options.cut_ban))
          : std::string("its address is not kept out (--ban_s=0)");
  absl::Duration period = kLookEvery;
  while (Sleep(period)) {
    // What gRPC has read of each connection, taken before channelz's
    // counts: streams counted at a look come from bytes read before it.
    const Listener::BytesByPeer bytes = listener_->Bytes();
    const absl::Time now = SteadyNow();
    std::vector<SocketStreams> read;
    std::vector<int64_t> unread;
    for (const SocketRef& ref : ReadChannelzSocketRefs()) {
      if (ref.remote_ip.empty()) continue;  // Not TCP: none to cut.
      auto it = bytes.find({Unmapped(ref.remote_ip), ref.remote_port});
      const int64_t bytes_read = it == bytes.end() ? -1 : it->second.read;
      SocketStreams s;
      if (!guard.NeedsLook(now, ref.socket_id, bytes_read)) {
        unread.push_back(ref.socket_id);
      } else if (ReadChannelzSocket(ref.socket_id, &s)) {
        s.bytes_read = bytes_read;
        read.push_back(std::move(s));
      }
    }
    for (const AnswerWatch::Stalled& s : answers_->Look(now, bytes)) {
      if (!cut(s.ip, s.port, Listener::kUnreadAnswers)) continue;
      Log(LogLevel::kWarning,
          "--listen=%s: cut a connection from port %d: %d answers waited for "
          "its client, which took %lld bytes in %s (past "
          "--max_answer_wait_s=%lld%s; a client that does not read, or gives "
          "its streams no window, holds a thread with each call); %s",
          listen_.c_str(), s.port, s.waiting, static_cast<long long>(s.taken),
          absl::FormatDuration(absl::Trunc(s.for_, absl::Milliseconds(10)))
              .c_str(),
          static_cast<long long>(absl::ToInt64Seconds(options.max_answer_wait)),
          s.hurried ? ", cut sooner: such answers held a quarter of the "
                      "threads, or left other calls fewer than three"
                    : "",
          kept.c_str());
    }
    for (const SocketStreams& s : guard.Observe(now, read, unread)) {
      if (!cut(s.remote_ip, s.remote_port, Listener::kStreamFlood)) continue;
      Log(LogLevel::kWarning,
          "--listen=%s: cut a connection from port %d: of the %lld streams "
          "its client opened, %lld had not ended and %lld had failed, past "
          "--max_open_streams=%d (twice that open) or "
          "--max_stream_resets_per_s=%d (0: none) (HTTP/2 rapid reset?); %s",
          listen_.c_str(), s.remote_port, static_cast<long long>(s.started),
          static_cast<long long>(s.started - s.succeeded - s.failed),
          static_cast<long long>(s.failed), options.max_open_streams,
          options.max_stream_resets_per_s, kept.c_str());
    }
    // What is resident, read once a look (a statm read); 0 without a guard.
    const size_t resident =
        options.memory_guard != nullptr ? options.memory_guard->resident() : 0;
    // While memory is past half its limit and a connection has sent a
    // sixteenth of kMemoryFloodBytes for nothing, looks come five times as
    // often: eight connections of endless headers at once took engramd to
    // 519-712 MiB resident against a limit of 360 MiB with looks a quarter
    // second apart, and to 383-472 MiB with these.
    period = options.memory_guard != nullptr &&
                     resident > options.memory_guard->limit() / 2 &&
                     guard.AnyHeavier(kMemoryFloodBytes / 16)
                 ? kLookEvery / 5
                 : kLookEvery;
    // Out of memory: every connection that sent kMemoryFloodBytes or more
    // for nothing (a header block that never ends, which gRPC keeps whole)
    // goes, the heaviest first. Cut one a look, eight such connections at
    // once took engramd to 1 GiB past a limit of 360 MiB. Below
    // kMemoryFloodBytes none does: what is resident is not a connection's
    // doing. Past the limit at the reading above, Exceeded measures again
    // after the allocator gives back the freed pages it keeps.
    if (options.memory_guard == nullptr ||
        resident <= options.memory_guard->limit() ||
        !options.memory_guard->Exceeded()) {
      continue;
    }
    for (const StreamFloodGuard::Heavy& heavy :
         guard.Heaviest(kMemoryFloodBytes)) {
      if (!cut(heavy.socket.remote_ip, heavy.socket.remote_port,
               Listener::kMemoryFlood)) {
        continue;
      }
      Log(LogLevel::kWarning,
          "--listen=%s: cut a connection from port %d: engramd's memory is "
          "past %s and gRPC has read %s of it with no message received and "
          "no stream ended since (HTTP/2 headers that never end?); %s",
          listen_.c_str(), heavy.socket.remote_port,
          options.memory_guard->about().c_str(),
          MiB(static_cast<size_t>(heavy.bytes)).c_str(), kept.c_str());
    }
  }
}

bool Server::Sleep(absl::Duration period, bool or_reread) {
  MutexLock lock(&stop_mu_);
  stop_cv_.AwaitWithTimeout(
      &stop_mu_,
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stop_mu_) {
        return stopping_ || (or_reread && reread_);
      },
      period);
  if (or_reread) reread_ = false;
  return !stopping_;
}

bool Server::ReadCredentialsAgain() {
  if (!watcher_.joinable()) return false;
  {
    MutexLock lock(&stop_mu_);
    reread_ = true;
  }
  stop_cv_.SignalAll();
  return true;
}

std::string Server::certificate() const {
  if (tls_ == nullptr) return "";
  MutexLock lock(&tls_mu_);
  return tls_->describe();
}

void Server::Shutdown(absl::Duration grace) {
  if (watcher_.joinable() || stream_guard_.joinable()) {
    {
      MutexLock lock(&stop_mu_);
      stopping_ = true;
    }
    stop_cv_.SignalAll();
    if (watcher_.joinable()) watcher_.join();
    if (stream_guard_.joinable()) stream_guard_.join();
  }
  if (!server_) return;
  SetReady(false);
  // New connections are refused from here on; those open finish their
  // calls within the grace.
  listener_->Stop();
  server_->Shutdown(std::chrono::system_clock::now() +
                    absl::ToChronoMilliseconds(grace));
  server_->Wait();
  server_.reset();
}

}  // namespace engram::rpc

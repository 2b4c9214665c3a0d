// Builds and starts the gRPC server that engramd runs: the engram service,
// grpc.health.v1 (liveness "" and readiness "engram.v1.Engram"), server
// reflection, message-size and thread limits.
//
//   absl::StatusOr<std::unique_ptr<Server>> server =
//       Server::Start(options, &registry, &metrics);
//   (*server)->SetReady(true);
//   ...
//   (*server)->Shutdown(absl::Seconds(10));
//
// Thread-safe: all methods may be called concurrently.
#ifndef ENGRAM_SERVER_RPC_SERVER_H_
#define ENGRAM_SERVER_RPC_SERVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "server/base/mutex.h"
#include "server/metrics/metrics.h"
#include "server/rpc/answer_watch.h"
#include "server/rpc/call.h"
#include "server/rpc/credentials.h"
#include "server/rpc/listener.h"
#include "server/rpc/memory_guard.h"
#include "server/rpc/service.h"
#include "server/rpc/tls_files.h"
#include "server/rpc/unix_socket.h"
#include "server/rpc/write_budget.h"
#include "server/store/registry.h"

namespace engram::rpc {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // Port 0 picks a free port.
  int max_message_bytes = 256 << 20;
  int max_threads = 8;
  // How often each connection is pinged; one whose ping goes unanswered for
  // as long (at most 20 s) is closed, its calls ended (a client gone
  // silent: a partition, a host lost without a reset).
  absl::Duration keepalive = absl::Seconds(60);
  // File descriptors connections leave free (Listener::Start); -1:
  // Listener::ReserveFor the open-file limit. At least the limit refuses to
  // start.
  int fd_reserve = -1;
  // Streams a client may have open on one connection (HTTP/2's
  // MAX_CONCURRENT_STREAMS); one with more than twice as many started and
  // not ended (streams its client reset, still queued by gRPC) is cut, and
  // so is one whose client resets (or otherwise fails) more streams a
  // second than max_stream_resets_per_s; its address is then kept out for
  // cut_ban (stream_flood.h). 0: no limit.
  int max_open_streams = 128;
  // Off by default: calls a client cancels or lets run out of time count.
  int max_stream_resets_per_s = 0;
  // How long the address of a connection cut for what its client did (any
  // cut here) is kept out: its new connections are closed at once. Zero:
  // cut only (behind a proxy or NAT one address is many clients).
  absl::Duration cut_ban = absl::Seconds(10);
  // A connection with answers waiting that its client takes nothing of for
  // this long is cut, its address kept out for cut_ban
  // (answer_watch.h); for at most a second while such answers hold a
  // quarter of max_threads. Zero: never.
  absl::Duration max_answer_wait = absl::Seconds(10);
  // What streams, writes waiting for their request, and other writes may
  // hold of the threads, each and together (see call.h); none given
  // (null held): ShareThreads(max_threads).
  ThreadShares shares;
  // What writes in flight may hold (see write_budget.h); null: no limit.
  std::shared_ptr<WriteBudget> write_budget;
  // What the process may have resident (see memory_guard.h); null: no
  // limit.
  std::shared_ptr<MemoryGuard> memory_guard;
  int retrieval_threads = 1;  // Threads one Retrieve batch is split over.
  // TLS: PEM files; with a client CA, clients must present a certificate it
  // signed (mutual TLS). Empty: plaintext.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // Bearer tokens (see auth.h); empty: no token needed.
  std::string token_file;
  // How often the token file and the TLS files are looked at again: a
  // rotated token or certificate applies without a restart (new calls,
  // new connections); one that does not load is logged and the previous
  // kept. At least a second.
  absl::Duration credentials_refresh = absl::Seconds(60);
  // Kept current if set.
  std::shared_ptr<CredentialState> credential_state;
  // CallPolicy::after_write.
  AfterWrite after_write;
};

class Server {
 public:
  // Makes the services to serve, given the policy every call goes through
  // (tokens, message limit, metrics); the policy lives as long as the server.
  using Services = std::function<std::vector<std::unique_ptr<grpc::Service>>(
      const CallPolicy* policy)>;

  // `metrics` is borrowed and must outlive the server.
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerOptions& options, metrics::Metrics* metrics,
      const Services& services);
  // The engram service over `registry` and `jobs` (borrowed, like
  // `metrics`).
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerOptions& options, store::StoreRegistry* registry,
      jobs::JobRunner* jobs, metrics::Metrics* metrics);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const { return port_; }
  // Where it listens, for a log line: "port 50051", or "Unix socket".
  std::string endpoint() const;
  // The certificate served ("/CN=engram, valid until ..."); empty without
  // TLS. It may change (credentials_refresh).
  std::string certificate() const;
  // An address a client dials: host:port, or the unix: address listened on.
  std::string address() const;

  // The file descriptors connections leave free (Listener::reserve).
  size_t connection_reserve() const;
  // Readiness: whether the engram service takes requests.
  void SetReady(bool ready);

  // Reads the token file and the TLS files again now, rather than at the
  // next credentials_refresh (SIGHUP); false when there are none.
  bool ReadCredentialsAgain();

  // Stops accepting calls, gives in-flight calls `grace` to finish, then
  // cancels the rest. Returns when every handler has returned.
  void Shutdown(absl::Duration grace);

 private:
  explicit Server(std::string listen);

  // Until Shutdown: every options.credentials_refresh, reloads the token
  // file if it changed and checks changed TLS files (gRPC reloads those
  // itself), logging what it found and keeping `state` current.
  void WatchCredentials(const ServerOptions& options, CredentialState& state);
  // Until Shutdown: cuts the connections that reset streams by the
  // thousand (StreamFloodGuard), that send for nothing when memory runs out
  // and that take none of their answers (AnswerWatch), a few times a
  // second.
  void GuardStreams(const ServerOptions& options, metrics::Metrics* metrics);
  // Waits `period`, or less when Shutdown begins or (`or_reread`)
  // ReadCredentialsAgain is called: false when Shutdown has begun.
  bool Sleep(absl::Duration period, bool or_reread = false);

  std::unique_ptr<TlsFiles> tls_;  // Null: plaintext. Outlives server_.
  std::unique_ptr<CallPolicy> policy_;
  std::vector<std::unique_ptr<grpc::Service>> services_;
  const std::string listen_;  // As given (--listen).
  // Held while server_ lives (it is destroyed first): --listen=unix:PATH.
  std::unique_ptr<UnixSocketLock> unix_lock_;
  // Accepts --listen's connections and hands them to server_ through
  // acceptor_; stopped before server_ shuts down.
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;
  // The answers being sent (interceptors write, GuardStreams looks);
  // outlives server_.
  std::unique_ptr<AnswerWatch> answers_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  // Held while tls_ reloads or describes itself.
  mutable Mutex tls_mu_;
  // Shutdown stops the two threads below: they wait on stop_cv_ between
  // rounds (the watcher's cut short by ReadCredentialsAgain).
  Mutex stop_mu_;
  CondVar stop_cv_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  bool reread_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread watcher_;
  std::thread stream_guard_;
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_SERVER_H_

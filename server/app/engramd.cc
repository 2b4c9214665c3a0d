#include "server/app/engramd.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <functional>
#include <memory>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/app/allocator.h"
#include "server/app/job_metrics.h"
#include "server/app/restore_backup.h"
#include "server/app/signals.h"
#include "server/app/timed_storage.h"
#include "server/base/host_port.h"
#include "server/base/log.h"
#include "server/base/mib.h"
#include "server/base/mutex.h"
#include "server/base/steady_clock.h"
#include "server/cluster/router.h"
#include "server/cluster/shard_service.h"
#include "server/core/blas.h"
#include "server/core/cpu.h"
#include "server/core/precision.h"
#include "server/core/retrieval.h"
#include "server/jobs/expiry_sweeper.h"
#include "server/jobs/job_runner.h"
#include "server/rpc/service.h"
#include "server/rpc/unix_socket.h"
#include "server/store/registry.h"

namespace engram::app {

namespace {

// The metrics address as bound (port 0 picks one).
std::string BoundAddress(const std::string& listen, int port) {
  if (listen.empty()) return "(off)";
  return absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port);
}

// Loads every store; logs the damaged ones and counts what was loaded.
absl::Status LoadStores(store::StoreRegistry& registry,
                        metrics::Metrics& metrics) {
  const absl::Time start = SteadyNow();
  if (absl::Status status = registry.Load(); !status.ok()) return status;
  for (const store::StoreRegistry::DamagedStore& d : registry.Damaged()) {
    Log(LogLevel::kError, "store '%s' is damaged and out of service: %s",
        d.name, d.status.ToString());
  }
  metrics.SetDamagedStores(registry.Damaged().size());
  bool more = false;
  size_t stores = 0, patterns = 0;
  if (auto all = registry.List("", registry.limits().max_stores, more);
      all.ok()) {
    for (const auto& s : *all) {
      rpc::CountStore(metrics, *s);
      patterns += s->view()->size();
      ++stores;
    }
  }
  Log(LogLevel::kInfo, "loaded %zu stores, %zu patterns, %zu damaged in %.3fs",
      stores, patterns, registry.Damaged().size(), SecondsSince(start));
  return absl::OkStatus();
}

// Every connection takes a file descriptor, and a flood of connections
// must leave some for the storage's own files: the soft limit (1,024 on
// many systems) goes up to the hard one. Returns the limit, as logged.
std::string RaiseOpenFileLimit() {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return "unknown";
  const rlim_t was = limit.rlim_cur;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) limit.rlim_cur = was;
  }
  std::string out = limit.rlim_cur == RLIM_INFINITY
                        ? "unlimited"
                        : absl::StrCat(limit.rlim_cur);
  if (limit.rlim_cur != was) absl::StrAppend(&out, " (raised from ", was, ")");
  return out;
}

// The threads retrievals run on (engramd's, a shard's steps, a router's
// large ones): as many as there are cores, at least two — more add no speed,
// and each retrieval holds tens of MiB while it runs. Up to `rpc_threads`
// more wait, holding at most an eighth of `memory` (0: unbounded).
std::unique_ptr<rpc::Handlers> RetrievalHandlers(int rpc_threads,
                                                 size_t memory) {
  const size_t cores = std::max(2u, std::thread::hardware_concurrency());
  return std::make_unique<rpc::Handlers>(
      std::min(static_cast<size_t>(rpc_threads), cores),
      static_cast<size_t>(rpc_threads), memory > 0 ? memory / 8 : SIZE_MAX);
}

std::string MiBOrUnlimited(size_t bytes) {
  return bytes == 0 ? "unlimited" : MiB(bytes);
}

std::string WriteMemory(const rpc::WriteBudget* budget) {
  return MiBOrUnlimited(budget == nullptr ? 0 : budget->limit());
}

// "692 MiB (9/10 of 768 MiB, its cgroup's limit)", or "unlimited".
std::string ResidentLimit(const rpc::MemoryGuard* guard) {
  return guard == nullptr
             ? "unlimited"
             : absl::StrCat(MiB(guard->limit()), " (", guard->about(), ")");
}

// The gauges of one side's credentials (see rpc::CredentialState).
struct CredentialGaugeNames {
  const char* expiry;
  const char* tls_files_failed;
  const char* token_file_failed;
};
constexpr CredentialGaugeNames kServedCredentials = {
    "engram_tls_certificate_expiry_timestamp_seconds",
    "engram_tls_files_reload_failed", "engram_token_file_reload_failed"};
constexpr CredentialGaugeNames kShardCredentials = {
    "engram_shard_tls_certificate_expiry_timestamp_seconds",
    "engram_shard_tls_files_reload_failed",
    "engram_shard_token_file_reload_failed"};

// Those gauges for the files the flags named (each flag empty if not
// given).
void CredentialGauges(const rpc::CredentialState& state,
                      const CredentialGaugeNames& names,
                      absl::string_view cert_flag, absl::string_view tls_flags,
                      absl::string_view token_flag,
                      std::vector<metrics::ScrapedGauge>& out) {
  if (!cert_flag.empty()) {
    out.push_back({names.expiry,
                   absl::StrCat("When the certificate of ", cert_flag,
                                " in use expires, unix seconds."),
                   state.certificate_expiry.load()});
  }
  if (!tls_flags.empty()) {
    out.push_back({names.tls_files_failed,
                   absl::StrCat("1 while the TLS files (", tls_flags,
                                ") changed into a version that does not load "
                                "(the previous is still in use)."),
                   state.tls_files_failed.load() ? 1.0 : 0.0});
  }
  if (!token_flag.empty()) {
    out.push_back({names.token_file_failed,
                   absl::StrCat("1 while ", token_flag,
                                " changed into a version that does not load "
                                "(the previous is still in use)."),
                   state.token_file_failed.load() ? 1.0 : 0.0});
  }
}

// The gauges read at every scrape: the allocator's, the stores' memory, the
// write budget's, the memory guard's and the credentials' (a router's
// towards its shards too).
std::vector<metrics::ScrapedGauge> ScrapedGauges(
    const rpc::ServerOptions& server, const cluster::ShardPoolOptions& pool,
    const store::Limits& limits) {
  std::vector<metrics::ScrapedGauge> out = HeapGauges();
  if (server.credential_state != nullptr) {
    const bool tls = !server.tls_cert.empty();
    CredentialGauges(*server.credential_state, kServedCredentials,
                     tls ? "--tls_cert" : "",
                     tls ? "--tls_cert, --tls_key, --tls_client_ca" : "",
                     server.token_file.empty() ? "" : "--token_file", out);
  }
  if (pool.credential_state != nullptr) {
    CredentialGauges(*pool.credential_state, kShardCredentials,
                     pool.tls_cert_file.empty() ? "" : "--shard_tls_cert",
                     pool.tls_ca_file.empty()
                         ? ""
                         : "--shard_tls_ca, --shard_tls_cert, --shard_tls_key",
                     pool.token_file.empty() ? "" : "--shard_token_file", out);
  }
  const rpc::MemoryGuard* const guard = server.memory_guard.get();
  const rpc::WriteBudget* const budget = server.write_budget.get();
  if (guard != nullptr) {
    out.push_back({"engram_memory_limit_bytes",
                   "What engramd may have resident before it refuses work "
                   "that takes much memory: 9/10 of --max_memory_mb or of "
                   "the machine's or cgroup's memory.",
                   static_cast<double>(guard->limit())});
    out.push_back({"engram_memory_work_bytes",
                   "What the work admitted under engram_memory_limit_bytes "
                   "may still take (its estimated shares).",
                   static_cast<double>(guard->taken())});
  }
  if (limits.store_memory) {
    out.push_back({"engram_stores_memory_bytes",
                   "What every store's patterns take together.",
                   static_cast<double>(limits.store_memory->load())});
  }
  if (limits.max_store_memory_bytes > 0) {
    out.push_back({"engram_stores_memory_limit_bytes",
                   "What every store's patterns may take together "
                   "(--max_store_memory_mb); adds past it are refused.",
                   static_cast<double>(limits.max_store_memory_bytes)});
  }
  // Each share of the threads: its size and what of it is held.
  struct Share {
    const rpc::StreamSlots* slots;
    const char* limit_name;
    const char* limit_help;
    const char* used_name;
    const char* used_help;
  };
  for (const Share& s : {
           Share{server.shares.streams.get(), "engram_stream_slots",
                 "Streams (imports, restores, backups, watches, reflection) "
                 "that may be in flight at once: half of --rpc_threads.",
                 "engram_streams_in_flight",
                 "Streams in flight; at engram_stream_slots the next is "
                 "refused."},
           Share{server.shares.unread.get(), "engram_unread_write_slots",
                 "Writes that may wait for their request at once: a "
                 "quarter of --rpc_threads.",
                 "engram_writes_waiting_for_request",
                 "Writes whose request is still coming; at "
                 "engram_unread_write_slots the next is refused."},
           Share{server.shares.writes.get(), "engram_write_slots",
                 "Writes (not streams) that may be in flight at once, each "
                 "holding a thread until the storage has it on disk: half "
                 "of --rpc_threads.",
                 "engram_writes_in_flight",
                 "Writes in flight; at engram_write_slots the next is "
                 "refused (a slow or stalled disk?)."},
           Share{server.shares.held.get(), "engram_held_thread_slots",
                 "Streams and writes (of the three shares above) that may "
                 "hold a thread at once together: all of --rpc_threads but "
                 "an eighth (at least three), kept for reads.",
                 "engram_threads_held",
                 "Streams and writes in flight together; at "
                 "engram_held_thread_slots the next is refused."},
       }) {
    if (s.slots == nullptr) continue;
    out.push_back(
        {s.limit_name, s.limit_help, static_cast<double>(s.slots->limit())});
    out.push_back(
        {s.used_name, s.used_help, static_cast<double>(s.slots->used())});
  }
  if (budget != nullptr) {
    out.push_back({"engram_write_memory_limit_bytes",
                   "What writes in flight may hold (--max_write_memory_mb).",
                   static_cast<double>(budget->limit())});
    out.push_back({"engram_write_memory_reserved_bytes",
                   "What writes in flight hold now: 5 times the request of "
                   "each write of 1 MiB or more.",
                   static_cast<double>(budget->reserved())});
    out.push_back({"engram_writes_waiting_for_memory",
                   "Writes waiting for what earlier writes hold.",
                   static_cast<double>(budget->waiting())});
  }
  return out;
}

// Tokens without TLS: the one configuration in which a caller with no token
// still has its request read (rpc/auth.h).
void WarnOfTokensInClear(const rpc::ServerOptions& server) {
  if (server.token_file.empty() || !server.tls_cert.empty()) return;
  // On a Unix socket tokens never leave the host.
  const bool local = rpc::IsUnixAddress(server.listen);
  Log(LogLevel::kWarning,
      "--token_file without --tls_cert: %sa call is checked only once gRPC "
      "has read its request (up to %zu MiB), so a caller with no token can "
      "still make engramd read requests; beyond this host serve TLS, where "
      "calls without a token are refused before that",
      local ? "" : "tokens travel in clear, and ",
      server.max_message_bytes * 2 >> 20);
}

// Calls from anyone who reaches --listen, not checked as they arrive: gRPC
// 1.51 keeps each stream a client opens queued until one of its threads
// takes it, however soon the client resets it (HTTP/2 "rapid reset",
// CVE-2023-44487). engramd cuts such connections within a quarter second
// (rpc/stream_flood.h) and keeps their address out, but each one costs that
// quarter second of queue, and addresses are many. Over TLS with tokens or
// client certificates, streams without credentials are refused before they
// queue. Loopback and Unix sockets are left to the host.
void WarnOfUncheckedCallers(const rpc::ServerOptions& server) {
  if (rpc::IsUnixAddress(server.listen)) return;
  if (!server.tls_cert.empty() &&
      (!server.token_file.empty() || !server.tls_client_ca.empty())) {
    return;
  }
  absl::StatusOr<HostPort> where = SplitHostPort(server.listen, "--listen");
  if (where.ok() && (where->host == "localhost" || where->host == "::1" ||
                     absl::StartsWith(where->host, "127."))) {
    return;
  }
  Log(LogLevel::kWarning,
      "--listen=%s takes streams from anyone who reaches it without "
      "checking their credentials as they arrive (%s): gRPC 1.51 queues "
      "each stream a client opens and resets at once (HTTP/2 rapid reset, "
      "CVE-2023-44487); engramd cuts such connections "
      "(--max_open_streams), but beyond a trusted network serve TLS with "
      "--token_file or --tls_client_ca, which refuse them before they "
      "queue",
      server.listen.c_str(),
      server.tls_cert.empty() ? "plaintext" : "TLS without tokens");
}

// "plaintext", or "TLS with /CN=engram, valid until ..." ("mutual TLS
// with ...").
std::string Transport(const rpc::ServerOptions& options,
                      const rpc::Server& server) {
  if (options.tls_cert.empty()) return "plaintext";
  return absl::StrCat(options.tls_client_ca.empty() ? "TLS" : "mutual TLS",
                      " with ", server.certificate());
}

// "1024 (raised from 64), 128 kept from connections".
std::string OpenFiles(const std::string& limit, const rpc::Server& server) {
  if (server.connection_reserve() == 0) return limit;
  return absl::StrCat(limit, ", ", server.connection_reserve(),
                      " kept from connections");
}

void LogConfiguration(const EngramdOptions& o, const rpc::Server& server,
                      const std::string& metrics_address,
                      const std::string& open_files) {
  const store::Limits& l = o.limits;
  Log(LogLevel::kInfo,
      "engramd %s listening on %s (%s, %s, %s); metrics on %s; "
      "data_dir=%s; sync=%s; cpu %s; kernels %s (fused softmax batches "
      "<= %zu queries); 16-bit rows: %s; blas threads=%d; "
      "retrieval threads=%d; "
      "job workers=%d; rpc threads<=%d; open files<=%s; allocator %s; "
      "write memory<=%s; store memory<=%s; resident<=%s; "
      "max message %zu MiB; "
      "limits: "
      "dimension<=%u batch<=%zu queries<=%zu top_k<=%zu steps<=%u "
      "stores<=%zu patterns/store<=%zu label<=%zu bytes metadata<=%zu "
      "entries of <=%zu bytes low-rank values<=%zu calibration work<=%g",
      ENGRAM_VERSION, o.server.listen, server.endpoint(),
      Transport(o.server, server),
      o.server.token_file.empty() ? "no tokens" : "bearer tokens",
      metrics_address, o.data_dir, o.storage.sync ? "true" : "false",
      core::DescribeMachine(), std::string(core::KernelIsa()),
      core::DefaultFusedQueries(), std::string(core::HalfKernelIsa()),
      o.blas_threads, o.retrieval_threads, o.job_workers, o.server.max_threads,
      OpenFiles(open_files, server), DescribeAllocator(),
      WriteMemory(o.server.write_budget.get()),
      MiBOrUnlimited(l.max_store_memory_bytes),
      ResidentLimit(o.server.memory_guard.get()),
      o.server.max_message_bytes >> 20, l.max_dimension, l.max_batch,
      l.max_queries, l.max_top_k, l.max_steps, l.max_stores,
      l.max_patterns_per_store, l.max_label_bytes, l.max_metadata_entries,
      l.max_metadata_bytes, l.max_low_rank_values, l.max_calibration_work);
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kShard:
      return "shard";
    case Role::kRouter:
      return "router";
    default:
      return "standalone";
  }
}

// Until SIGTERM or SIGINT (returned); each SIGHUP has `read_again` read
// the credential files again (false: there are none).
int WaitForShutdown(const std::function<bool()>& read_again) {
  int signal;
  while ((signal = WaitForSignal()) == SIGHUP) {
    if (read_again()) {
      Log(LogLevel::kInfo, "SIGHUP: reading the credential files again");
    } else {
      Log(LogLevel::kInfo,
          "SIGHUP: no credential files to read again (no --token_file, "
          "--tls_cert or --shard_* credentials); nothing else is reloaded");
    }
  }
  return signal;
}

// A router: no storage, the API over its shards. Ready while every shard
// group has a ready replica.
int RunRouter(const EngramdOptions& o, metrics::Metrics& metrics,
              int metrics_port, const std::string& open_files) {
  cluster::ShardPoolOptions pool_options = o.cluster.pool;
  pool_options.metrics = &metrics;
  absl::StatusOr<std::unique_ptr<cluster::ShardPool>> pool =
      cluster::ShardPool::Create(o.cluster.topology, pool_options);
  if (!pool.ok()) {
    Log(LogLevel::kError, "%s", pool.status().ToString());
    return 1;
  }
  cluster::RouterOptions router;
  router.limits = o.limits;
  router.calibration_threads = o.retrieval_threads;
  router.max_restore_bytes = o.max_restore_bytes;
  std::unique_ptr<rpc::Handlers> handlers =
      RetrievalHandlers(o.server.max_threads, o.memory.bytes);
  router.handlers = handlers.get();
  absl::StatusOr<std::unique_ptr<rpc::Server>> server = rpc::Server::Start(
      o.server, &metrics, [&](const rpc::CallPolicy* policy) {
        std::vector<std::unique_ptr<grpc::Service>> services;
        services.push_back(
            std::make_unique<cluster::Router>(pool->get(), policy, router));
        services.push_back(std::make_unique<cluster::RouterAdmin>(
            pool->get(), policy, o.cluster.cluster));
        return services;
      });
  if (!server.ok()) {
    Log(LogLevel::kError, "%s", server.status().ToString());
    return 1;
  }
  WarnOfTokensInClear(o.server);
  WarnOfUncheckedCallers(o.server);
  Log(LogLevel::kInfo,
      "engramd %s router listening on %s (%s, %s); metrics on %s; "
      "cluster '%s': %zu shard groups of %zu replicas; open files<=%s; "
      "allocator %s; write memory<=%s; resident<=%s",
      ENGRAM_VERSION, o.server.listen, (*server)->endpoint(),
      Transport(o.server, **server),
      BoundAddress(o.metrics.listen, metrics_port), o.cluster.cluster,
      o.cluster.topology.groups.size(), o.cluster.topology.replicas(),
      OpenFiles(open_files, **server), DescribeAllocator(),
      WriteMemory(o.server.write_budget.get()),
      ResidentLimit(o.server.memory_guard.get()));
  Mutex mu;
  CondVar stop;
  bool stopping = false;
  std::thread readiness([&] {
    std::string last = "-";
    MutexLock lock(&mu);
    while (!stopping) {
      mu.Unlock();
      const absl::Status ready = (*pool)->Ready();
      (*server)->SetReady(ready.ok());
      const std::string now = ready.ok() ? "" : std::string(ready.message());
      if (now != last) {
        if (ready.ok()) {
          Log(LogLevel::kInfo, "every shard group has a ready replica; ready");
        } else {
          Log(LogLevel::kWarning, "not ready: %s", now);
        }
        last = now;
      }
      mu.Lock();
      stop.AwaitWithTimeout(
          &mu, [&] { return stopping; }, absl::Milliseconds(250));
    }
  });
  const int signal = WaitForShutdown([&] {
    const bool served = (*server)->ReadCredentialsAgain();
    const bool shards = (*pool)->ReadCredentialsAgain();
    return served || shards;
  });
  Log(LogLevel::kInfo, "signal %d: shutting down (grace %.1fs)", signal,
      absl::ToDoubleSeconds(o.shutdown_grace));
  {
    MutexLock lock(&mu);
    stopping = true;
    stop.SignalAll();
  }
  readiness.join();
  (*server)->Shutdown(o.shutdown_grace);
  Log(LogLevel::kInfo, "stopped");
  return 0;
}

}  // namespace

int RunEngramd(EngramdOptions o) {
  const std::string open_files = RaiseOpenFileLimit();
  core::blas::SetThreads(o.blas_threads);
  o.metrics.version = ENGRAM_VERSION;
  // Which machine and kernels the figures come from (a fleet of mixed CPUs
  // tells apart on a dashboard).
  o.metrics.build_labels = {{"cpu", core::DetectCpu().model},
                            {"blas_family", core::blas::CoreName()},
                            {"kernel_isa", std::string(core::KernelIsa())}};
  // The stores' memory, counted by the registry's stores, for the gauges.
  o.limits.store_memory = std::make_shared<std::atomic<size_t>>(0);
  o.server.credential_state = std::make_shared<rpc::CredentialState>();
  if (o.role == Role::kRouter) {
    o.cluster.pool.credential_state = std::make_shared<rpc::CredentialState>();
  }
  o.metrics.gauges = [server = o.server, pool = o.cluster.pool,
                      limits = o.limits] {
    return ScrapedGauges(server, pool, limits);
  };
  absl::StatusOr<metrics::PrometheusExport> exported =
      metrics::StartPrometheusMetrics(o.metrics);
  if (!exported.ok()) {
    Log(LogLevel::kError, "%s", exported.status().ToString());
    return 1;
  }
  metrics::Metrics& metrics = *exported->metrics;
  // Counted while the metrics live.
  struct CountDroppedLogLines {
    CountDroppedLogLines(LogWriter* writer, metrics::Metrics& metrics)
        : writer(writer) {
      if (writer == nullptr) return;
      writer->OnDropped(
          [&metrics](size_t lines) { metrics.RecordLogLinesDropped(lines); });
    }
    ~CountDroppedLogLines() {
      if (writer != nullptr) writer->OnDropped(nullptr);
    }
    LogWriter* const writer;
  } count_dropped_log_lines(o.log_writer, metrics);
  if (o.role == Role::kRouter) {
    return RunRouter(o, metrics, exported->port, open_files);
  }

  std::error_code error;
  std::filesystem::create_directories(o.data_dir, error);
  if (error) {
    Log(LogLevel::kError, "cannot create --data_dir=%s: %s", o.data_dir,
        error.message());
    return 1;
  }

  if (o.storage.path.empty()) {
    o.storage.path = (std::filesystem::path(o.data_dir) / "db").string();
  }
  if (!o.restore_from.empty()) {
    if (absl::Status status =
            RestoreServer(o.restore_from, o.storage, o.limits);
        !status.ok()) {
      Log(LogLevel::kError, "%s", status.ToString());
      return 1;
    }
  }
  absl::StatusOr<std::unique_ptr<store::RocksDbStorage>> storage =
      store::RocksDbStorage::Open(o.storage);
  if (!storage.ok()) {
    Log(LogLevel::kError, "%s (--data_dir=%s)", storage.status().ToString(),
        o.data_dir);
    return 1;
  }
  if (!(*storage)->open_report().empty()) {
    Log((*storage)->read_only() ? LogLevel::kWarning : LogLevel::kInfo,
        "storage: %s", (*storage)->open_report());
  }
  TimedStorage timed_storage(storage->get(), &metrics);
  store::StoreRegistry registry(o.limits, &timed_storage);

  JobMetrics job_metrics(&metrics);
  jobs::JobRunnerOptions job_options;
  job_options.workers = o.job_workers;
  job_options.observer = &job_metrics;
  job_options.calibration_threads = o.retrieval_threads;
  job_options.max_calibration_work = o.limits.max_calibration_work;
  job_options.automatic = o.role != Role::kShard;
  auto jobs = std::make_unique<jobs::JobRunner>(&registry, job_options);

  // Live (health "") from here on; ready once the stores are loaded.
  o.server.retrieval_threads = o.retrieval_threads;
  rpc::ServiceOptions service;
  service.retrieval_threads = o.retrieval_threads;
  std::unique_ptr<rpc::Handlers> handlers =
      RetrievalHandlers(o.server.max_threads, o.memory.bytes);
  service.handlers = handlers.get();
  service.max_restore_bytes = o.max_restore_bytes;
  cluster::ShardOptions shard;
  shard.cluster = o.cluster.cluster;
  shard.placement = o.limits.placement;
  shard.retrieval_threads = o.retrieval_threads;
  shard.handlers = handlers.get();
  shard.limits = o.limits;
  shard.jobs = jobs.get();
  if (o.role == Role::kShard) {
    o.server.after_write = cluster::StampRecorder();
  }
  absl::StatusOr<std::unique_ptr<rpc::Server>> server = rpc::Server::Start(
      o.server, &metrics, [&](const rpc::CallPolicy* policy) {
        std::vector<std::unique_ptr<grpc::Service>> services;
        services.push_back(std::make_unique<rpc::EngramService>(
            &registry, jobs.get(), policy, service));
        if (o.role == Role::kShard) {
          services.push_back(std::make_unique<cluster::ShardService>(
              &registry, policy, shard));
        }
        return services;
      });
  if (!server.ok()) {
    Log(LogLevel::kError, "%s", server.status().ToString());
    return 1;
  }
  Log(LogLevel::kInfo,
      "engramd %s (%s) live on %s (%s); loading stores from %s", ENGRAM_VERSION,
      RoleName(o.role), o.server.listen, (*server)->endpoint(), o.storage.path);
  if (o.role == Role::kShard) {
    Log(LogLevel::kInfo, "shard group %u of %u of cluster '%s'",
        o.limits.placement.group, o.limits.placement.groups, o.cluster.cluster);
  }
  if (absl::Status status = LoadStores(registry, metrics); !status.ok()) {
    Log(LogLevel::kError, "loading stores: %s", status.ToString());
    return 1;
  }
  jobs->ResumeAll();
  auto sweeper = std::make_unique<jobs::ExpirySweeper>(
      &registry, o.expiry_sweep,
      [&](const std::string& name, size_t count, double seconds) {
        metrics.RecordExpired(name, count, seconds);
        if (auto s = registry.Get(name); s.ok()) rpc::CountStore(metrics, **s);
      });
  // The configuration first: whoever waits for "ready" in the log has it.
  WarnOfTokensInClear(o.server);
  WarnOfUncheckedCallers(o.server);
  LogConfiguration(o, **server, BoundAddress(o.metrics.listen, exported->port),
                   open_files);
  (*server)->SetReady(true);
  Log(LogLevel::kInfo, "stores loaded, jobs resumed; ready");

  const int signal =
      WaitForShutdown([&] { return (*server)->ReadCredentialsAgain(); });
  Log(LogLevel::kInfo, "signal %d: shutting down (grace %.1fs)", signal,
      absl::ToDoubleSeconds(o.shutdown_grace));
  (*server)->Shutdown(o.shutdown_grace);
  sweeper.reset();
  jobs.reset();  // Cancels running jobs before storage closes.
  if (absl::Status status = (*storage)->Close(); !status.ok()) {
    Log(LogLevel::kError, "closing storage: %s", status.ToString());
    return 1;
  }
  Log(LogLevel::kInfo, "stopped");
  return 0;
}

}  // namespace engram::app

// engramd: the engram server.
#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <thread>

#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/base/log.h"
#include "server/core/blas.h"
#include "server/core/calibration.h"
#include "server/core/cpu.h"
#include "server/jobs/fit_scheduler.h"
#include "server/metrics/prometheus_metrics.h"
#include "server/rpc/server.h"
#include "server/store/registry.h"
#include "server/store/rocksdb_storage.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC address (host:port). Loopback by default: expose it only "
          "behind TLS and tokens.");
ABSL_FLAG(std::string, data_dir, "./engram-data",
          "Directory that holds the server's data; created if missing.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the server; with --tls_key, gRPC is served "
          "over TLS only.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: clients must present a certificate it signed "
          "(mutual TLS).");
ABSL_FLAG(std::string, token_file, "",
          "Bearer tokens, one per line: 'read TOKEN' or 'write TOKEN'. Every "
          "engram RPC then needs 'authorization: Bearer TOKEN'; read tokens "
          "cannot change data. Health checks need none.");
ABSL_FLAG(bool, sync, true,
          "fsync the write-ahead log before acknowledging a write. false: "
          "an acknowledged write survives kill -9 but may be lost if the "
          "machine loses power.");
ABSL_FLAG(bool, accept_data_loss, false,
          "Start even though the write-ahead log is damaged: recover every "
          "readable record and mark the stores that lost acknowledged writes "
          "DAMAGED (with what was lost). Without it such a start is refused.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics address (host:port); empty disables it.");
ABSL_FLAG(bool, metrics_per_store, true,
          "Label per-store metrics with the store name (off: one series).");
ABSL_FLAG(int, blas_threads, 1,
          "OpenBLAS threads per call. 1 (default): engram parallelises "
          "batches itself (--retrieval_threads), which measured faster than "
          "OpenBLAS's pool, whose idle threads spin between calls.");
ABSL_FLAG(int, retrieval_threads, 0,
          "Threads one Retrieve batch is split over, by queries; 0 = the "
          "number of cores. Requests under ~4 MFLOP use one thread.");
ABSL_FLAG(std::string, blas_coretype, "auto",
          "OpenBLAS kernel family. auto: the best family for the CPU's "
          "instruction sets (AVX-512 with BF16: Cooperlake, AVX-512: "
          "SkylakeX, AVX2: Haswell or Zen, ...), whatever OpenBLAS guesses "
          "from the CPU model and whatever OPENBLAS_CORETYPE says; default: "
          "OpenBLAS's own choice; or a family name such as SkylakeX.");
ABSL_FLAG(int, fit_workers, 1,
          "Threads running Stage I fits (niced, one fit per store at a time).");
ABSL_FLAG(int, rpc_threads, 0,
          "Maximum gRPC threads (pollers and handlers); 0 = 32 per core. "
          "Calls beyond it get RESOURCE_EXHAUSTED. Handlers mostly wait on "
          "retrieval threads, so this bounds memory, not CPU.");
ABSL_FLAG(int, max_message_mb, 256, "Largest gRPC message, in MiB.");
ABSL_FLAG(uint32_t, max_dimension, 65536, "Largest store dimension.");
ABSL_FLAG(uint64_t, max_batch, 100000,
          "Most patterns in one add, import message or delete.");
ABSL_FLAG(uint64_t, max_queries, 4096, "Most queries in one Retrieve.");
ABSL_FLAG(uint64_t, max_stores, 1000, "Most stores on the server.");
ABSL_FLAG(uint64_t, max_patterns_per_store, 50000000,
          "Most patterns in one store.");
ABSL_FLAG(double, max_calibration_work, engram::core::kDefaultCalibrationWork,
          "Multiply-adds one calibration may spend (1e12: about 8 s on 2 "
          "cores); past it, calibration samples fewer patterns, then a subset "
          "of the memories.");
ABSL_FLAG(uint64_t, max_low_rank_values, uint64_t{1} << 18,
          "Most doubles one store's low-rank sums may hold (rank x (dimension "
          "+ 1)); the store keeps the largest even Taylor degree that fits, "
          "none if degree 2 does not (docs/low-rank.md).");
ABSL_FLAG(double, shutdown_grace_s, 10,
          "Seconds in-flight RPCs get to finish after SIGTERM.");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");

namespace engram {
namespace {

constexpr char kVersion[] = "0.1.0";

// Times every storage write for the metrics; reads (the load) pass through.
class TimedStorage : public store::StorageBackend {
 public:
  TimedStorage(store::StorageBackend* storage, metrics::Metrics* metrics)
      : storage_(storage), metrics_(metrics) {}
  absl::Status PutStore(const store::StoreSettings& settings) override {
    return Timed([&] { return storage_->PutStore(settings); });
  }
  absl::Status DeleteStore(absl::string_view name) override {
    return Timed([&] { return storage_->DeleteStore(name); });
  }
  absl::Status PutMap(absl::string_view store, const store::FitRecord& record,
                      const core::FeatureMap& map) override {
    return Timed([&] { return storage_->PutMap(store, record, map); });
  }
  absl::Status WritePatterns(absl::string_view store,
                             absl::Span<const store::Pattern> added,
                             absl::Span<const uint64_t> deleted,
                             uint64_t next_id) override {
    return Timed([&] {
      return storage_->WritePatterns(store, added, deleted, next_id);
    });
  }
  absl::Status Load(LoadVisitor& visitor) override {
    return storage_->Load(visitor);
  }

 private:
  template <typename F>
  absl::Status Timed(F&& write) {
    const absl::Time start = absl::Now();
    absl::Status status = write();
    metrics_->RecordStorageWrite(absl::ToDoubleSeconds(absl::Now() - start),
                                 status.ok());
    return status;
  }

  store::StorageBackend* const storage_;
  metrics::Metrics* const metrics_;
};

// Reports the fit scheduler's activity as metrics.
class FitMetrics : public jobs::FitObserver {
 public:
  explicit FitMetrics(metrics::Metrics* metrics) : metrics_(metrics) {}
  void FitCounts(size_t running, size_t pending) override {
    metrics_->SetFits(running, pending);
  }
  void FitFinished(const std::string& store,
                   const jobs::FitStatus& status) override {
    using State = jobs::FitStatus::State;
    const char* result = status.state == State::kSucceeded   ? "succeeded"
                         : status.state == State::kCancelled ? "cancelled"
                                                             : "failed";
    metrics_->RecordFit(store, result, status.duration_seconds,
                        status.loss_after);
  }
  void CalibrationFinished(const std::string&,
                           const jobs::CalibrationStatus& status) override {
    using State = jobs::CalibrationStatus::State;
    const store::CalibrationReport& r = status.report;
    const char* result = status.state == State::kCancelled   ? "cancelled"
                         : status.state != State::kSucceeded ? "failed"
                         : r.applied                         ? "applied"
                         : r.improved                        ? "reported"
                                                             : "kept";
    metrics_->RecordCalibration(result, r.duration_seconds);
  }
  void CalibrationReported(const std::string& store,
                           const store::CalibrationReport& r) override {
    metrics_->SetCapacity(store,
                          {r.recall_at_1, r.error, r.well_separated_fraction,
                           r.theory_beta_median, r.beta});
  }

 private:
  metrics::Metrics* const metrics_;
};

int LogLevelFromName(const std::string& name) {
  if (name == "debug") return static_cast<int>(LogLevel::kDebug);
  if (name == "warning") return static_cast<int>(LogLevel::kWarning);
  if (name == "error") return static_cast<int>(LogLevel::kError);
  return static_cast<int>(LogLevel::kInfo);
}

// SIGTERM and SIGINT, whichever thread they reach (libraries start threads
// before main), are written to a pipe that Run() waits on.
int shutdown_pipe[2] = {-1, -1};

void OnShutdownSignal(int signal) {
  const unsigned char byte = static_cast<unsigned char>(signal);
  [[maybe_unused]] ssize_t written = write(shutdown_pipe[1], &byte, 1);
}

bool CatchShutdownSignals() {
  if (pipe2(shutdown_pipe, O_CLOEXEC) != 0) return false;
  struct sigaction action = {};
  action.sa_handler = OnShutdownSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  return sigaction(SIGTERM, &action, nullptr) == 0 &&
         sigaction(SIGINT, &action, nullptr) == 0;
}

// Blocks until SIGTERM or SIGINT; returns the signal.
int WaitForShutdownSignal() {
  unsigned char byte = 0;
  while (read(shutdown_pipe[0], &byte, 1) != 1) {
  }
  return byte;
}

int Run() {
  MinLogLevel() = LogLevelFromName(absl::GetFlag(FLAGS_log_level));

  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int blas_threads = std::max(1, absl::GetFlag(FLAGS_blas_threads));
  const int retrieval_threads = absl::GetFlag(FLAGS_retrieval_threads) > 0
                                    ? absl::GetFlag(FLAGS_retrieval_threads)
                                    : static_cast<int>(cores);
  core::blas::SetThreads(blas_threads);

  store::Limits limits;
  limits.max_dimension = absl::GetFlag(FLAGS_max_dimension);
  limits.max_batch = absl::GetFlag(FLAGS_max_batch);
  limits.max_queries = absl::GetFlag(FLAGS_max_queries);
  limits.max_stores = absl::GetFlag(FLAGS_max_stores);
  limits.max_patterns_per_store = absl::GetFlag(FLAGS_max_patterns_per_store);
  limits.max_low_rank_values = absl::GetFlag(FLAGS_max_low_rank_values);
  limits.max_calibration_work = absl::GetFlag(FLAGS_max_calibration_work);

  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  std::error_code error;
  std::filesystem::create_directories(data_dir, error);
  if (error) {
    Log(LogLevel::kError, "cannot create --data_dir=%s: %s", data_dir,
        error.message());
    return 1;
  }

  metrics::PrometheusOptions metrics_options;
  metrics_options.listen = absl::GetFlag(FLAGS_metrics_listen);
  metrics_options.per_store_labels = absl::GetFlag(FLAGS_metrics_per_store);
  metrics_options.version = kVersion;
  absl::StatusOr<metrics::PrometheusExport> exported =
      metrics::StartPrometheusMetrics(metrics_options);
  if (!exported.ok()) {
    Log(LogLevel::kError, "%s", exported.status().ToString());
    return 1;
  }
  metrics::Metrics* const metrics = exported->metrics.get();
  const std::string metrics_address =
      metrics_options.listen.empty()
          ? "(off)"
          : absl::StrCat(metrics_options.listen.substr(
                             0, metrics_options.listen.rfind(':')),
                         ":", exported->port);

  store::RocksDbOptions storage_options;
  storage_options.path = (std::filesystem::path(data_dir) / "db").string();
  storage_options.sync = absl::GetFlag(FLAGS_sync);
  storage_options.accept_data_loss = absl::GetFlag(FLAGS_accept_data_loss);
  absl::StatusOr<std::unique_ptr<store::RocksDbStorage>> storage =
      store::RocksDbStorage::Open(storage_options);
  if (!storage.ok()) {
    Log(LogLevel::kError, "%s (--data_dir=%s)", storage.status().ToString(),
        data_dir);
    return 1;
  }
  if (!(*storage)->open_report().empty()) {
    Log((*storage)->read_only() ? LogLevel::kWarning : LogLevel::kInfo,
        "storage: %s", (*storage)->open_report());
  }
  TimedStorage timed_storage(storage->get(), metrics);
  store::StoreRegistry registry(limits, &timed_storage);
  FitMetrics fit_metrics(metrics);
  jobs::FitSchedulerOptions fit_options;
  fit_options.workers = absl::GetFlag(FLAGS_fit_workers);
  fit_options.observer = &fit_metrics;
  fit_options.calibration_threads = retrieval_threads;
  fit_options.max_calibration_work = limits.max_calibration_work;
  auto fits = std::make_unique<jobs::FitScheduler>(&registry, fit_options);

  rpc::ServerOptions server_options;
  server_options.listen = absl::GetFlag(FLAGS_listen);
  server_options.max_message_bytes = absl::GetFlag(FLAGS_max_message_mb) << 20;
  server_options.retrieval_threads = retrieval_threads;
  server_options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  server_options.tls_key = absl::GetFlag(FLAGS_tls_key);
  server_options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  server_options.token_file = absl::GetFlag(FLAGS_token_file);
  server_options.max_threads = absl::GetFlag(FLAGS_rpc_threads) > 0
                                   ? absl::GetFlag(FLAGS_rpc_threads)
                                   : static_cast<int>(32 * cores);
  // Live (health "") from here on; ready once the stores are loaded.
  absl::StatusOr<std::unique_ptr<rpc::Server>> server =
      rpc::Server::Start(server_options, &registry, fits.get(), metrics);
  if (!server.ok()) {
    Log(LogLevel::kError, "%s", server.status().ToString());
    return 1;
  }
  Log(LogLevel::kInfo,
      "engramd %s live on %s (port %d); loading stores from %s", kVersion,
      server_options.listen, (*server)->port(), storage_options.path);
  const absl::Time load_start = absl::Now();
  if (absl::Status status = registry.Load(); !status.ok()) {
    Log(LogLevel::kError, "loading stores: %s", status.ToString());
    return 1;
  }
  for (const store::StoreRegistry::DamagedStore& d : registry.Damaged()) {
    Log(LogLevel::kError, "store '%s' is damaged and out of service: %s",
        d.name, d.status.ToString());
  }
  metrics->SetDamagedStores(registry.Damaged().size());
  bool more = false;
  size_t stores = 0, patterns = 0;
  if (auto all = registry.List("", limits.max_stores, more); all.ok()) {
    for (const auto& s : *all) {
      std::shared_ptr<const store::StoreView> view = s->view();
      metrics->SetPatternCount(s->name(), view->size());
      metrics->SetNorms(s->name(), view->norms().max_norm,
                        view->norms().mean_norm,
                        view->norms().max_feature_norm);
      patterns += s->view()->size();
      ++stores;
    }
  }
  (*server)->SetReady(true);
  Log(LogLevel::kInfo,
      "loaded %zu stores, %zu patterns, %zu damaged in %.3fs; ready", stores,
      patterns, registry.Damaged().size(),
      absl::ToDoubleSeconds(absl::Now() - load_start));

  Log(LogLevel::kInfo,
      "engramd %s listening on %s (port %d, %s, %s); metrics on %s; "
      "data_dir=%s; "
      "sync=%s; cpu %s; blas threads=%d; retrieval "
      "threads=%d; "
      "rpc threads<=%d; max message %d MiB; limits: dimension<=%u "
      "batch<=%zu queries<=%zu stores<=%zu patterns/store<=%zu low-rank "
      "values<=%zu",
      kVersion, server_options.listen, (*server)->port(),
      server_options.tls_cert.empty()        ? "plaintext"
      : server_options.tls_client_ca.empty() ? "TLS"
                                             : "mutual TLS",
      server_options.token_file.empty() ? "no tokens" : "bearer tokens",
      metrics_address, data_dir, storage_options.sync ? "true" : "false",
      core::DescribeMachine(), blas_threads, retrieval_threads,
      server_options.max_threads, absl::GetFlag(FLAGS_max_message_mb),
      limits.max_dimension, limits.max_batch, limits.max_queries,
      limits.max_stores, limits.max_patterns_per_store,
      limits.max_low_rank_values);

  const int signal = WaitForShutdownSignal();
  Log(LogLevel::kInfo, "signal %d: shutting down (grace %.1fs)", signal,
      absl::GetFlag(FLAGS_shutdown_grace_s));
  (*server)->Shutdown(absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_s)));
  fits.reset();  // Cancels running fits before storage closes.
  if (absl::Status status = (*storage)->Close(); !status.ok()) {
    Log(LogLevel::kError, "closing storage: %s", status.ToString());
    return 1;
  }
  Log(LogLevel::kInfo, "stopped");
  return 0;
}

}  // namespace
}  // namespace engram

// The kernel family is chosen before anything else: OpenBLAS reads its
// variable once, so core::UseBlasFamily may execute engramd again.
std::string RequestedBlasFamily(int argc, char** argv) {
  std::string requested = "auto";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--blas_coretype=", 0) == 0) requested = arg.substr(16);
  }
  return requested;
}

int main(int argc, char** argv) {
  engram::core::UseBlasFamily(RequestedBlasFamily(argc, argv), argv);
  engram::core::FlushDenormals();  // Inherited by every thread engramd starts.
  absl::InitializeSymbolizer(argv[0]);
  absl::FailureSignalHandlerOptions options;
  absl::InstallFailureSignalHandler(options);
  if (!engram::CatchShutdownSignals()) {  // After absl's, which takes SIGTERM
                                          // too.
    std::perror("engramd: installing the SIGTERM handler");
    return 1;
  }
  absl::SetProgramUsageMessage(
      "engram server: stores memory patterns and recalls them with "
      "modern-Hopfield retrieval.\nUsage: engramd [--listen=HOST:PORT] "
      "[--data_dir=DIR] [--metrics_listen=HOST:PORT] ...");
  absl::ParseCommandLine(argc, argv);
  return engram::Run();
}

// engramd: the engram server. Flags become an EngramdOptions; the wiring is
// server/app/engramd.cc.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "grpc/support/log.h"
#include "server/app/allocator.h"
#include "server/app/engramd.h"
#include "server/app/log_writer.h"
#include "server/app/signals.h"
#include "server/base/file_text.h"
#include "server/base/log.h"
#include "server/base/mib.h"
#include "server/base/mutex.h"
#include "server/base/standard_descriptors.h"
#include "server/core/calibration.h"
#include "server/core/cpu.h"
#include "server/rpc/call.h"
#include "server/rpc/memory_guard.h"
#include "server/rpc/write_budget.h"
#include "server/store/settings.h"

// The limits' defaults are Limits's (server/store/settings.h).
namespace {
const engram::store::Limits kLimits;
}  // namespace

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC address (host:port), or a Unix socket (unix:PATH). Loopback "
          "by default: expose it only behind TLS and tokens.");
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
ABSL_FLAG(int, credentials_refresh_s, 60,
          "How often, in seconds, --token_file and the TLS files are read "
          "again if they changed: a rotated token or certificate applies to "
          "new calls and connections without a restart; one that does not "
          "load is logged and the previous kept.");
ABSL_FLAG(int, keepalive_s, 60,
          "How often, in seconds, engramd pings each client connection: one "
          "whose ping goes unanswered for as long (at most 20 s) is closed "
          "and its calls ended, so that a client whose host or network went "
          "away stops holding a stream and its thread.");
ABSL_FLAG(int, fd_reserve, -1,
          "File descriptors new connections leave free for engramd's own "
          "files (the storage's logs and tables, a router's channels to its "
          "shards, metrics): a connection that would take one is closed at "
          "once. -1: an eighth of the open-file limit, at least 64 and at "
          "most half; 0: none.");
ABSL_FLAG(int, max_open_streams, 128,
          "Streams a client may have open on one connection (HTTP/2's "
          "MAX_CONCURRENT_STREAMS). gRPC queues every stream a client opens, "
          "however soon it is reset (HTTP/2 rapid reset): a connection with "
          "more than twice as many started and not yet ended is cut and its "
          "address kept out for --ban_s. 0: no limit.");
ABSL_FLAG(int, max_stream_resets_per_s, 0,
          "A connection whose client resets (or otherwise fails) more "
          "streams a second than this is cut and its address kept out for "
          "--ban_s. Calls a client cancels or lets run past their deadline "
          "count, so a busy well-behaved client can pass any figure: 0 (the "
          "default), no limit.");
ABSL_FLAG(int, max_answer_wait_s, 10,
          "A connection with two or more answers waiting for its client, "
          "which takes none of them (under 16 KiB) for this many seconds, "
          "is cut and its address kept out for --ban_s: a client that does "
          "not read (or gives its streams no HTTP/2 window) holds one of "
          "gRPC's threads with each call. 1 s while such answers hold a "
          "quarter of --rpc_threads, and then one answer waiting is enough. "
          "0: never.");
ABSL_FLAG(int, ban_s, 10,
          "How long, in seconds, the address of a connection cut for what "
          "its client did (a stream flood, headers that never end, answers "
          "it takes none of) is kept out: its new connections are closed at "
          "once. 0: cut only, never kept out (behind a proxy or NAT, where "
          "one address is many clients).");
ABSL_FLAG(bool, sync, true,
          "fsync the write-ahead log before acknowledging a write. false: "
          "an acknowledged write survives kill -9 but may be lost if the "
          "machine loses power.");
ABSL_FLAG(std::string, restore_from, "",
          "Restore every store of this backup directory (engram backup "
          "create) into an empty --data_dir, then serve.");
ABSL_FLAG(uint64_t, max_restore_mb, 8192,
          "Largest backup one RestoreStore call may send, in MiB (it is held "
          "in memory while it is checked and written).");
ABSL_FLAG(double, expiry_sweep_ms, 1000,
          "How often expired patterns are reclaimed from memory and storage "
          "(they are left out of every answer from their expiry on).");
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
          "Threads running background jobs: Stage I fits and calibrations "
          "(niced; one job of a kind per store at a time).");
ABSL_FLAG(int, rpc_threads, 0,
          "Maximum gRPC threads (pollers and handlers), and how many "
          "retrievals of more than a little work (a shard's steps, a "
          "router's retrievals of 1 MiB or more) may wait for the threads "
          "that run them (one per core, at least two; the waiting ones may "
          "hold at most an eighth of --max_memory_mb in requests); 0 = 32 per "
          "core. Calls beyond either get RESOURCE_EXHAUSTED. Handlers mostly "
          "wait on retrieval threads, so this bounds memory, not CPU.");
ABSL_FLAG(int, max_message_mb, 0,
          "Largest gRPC message, in MiB, at most 1023. 0 = 256, or where "
          "memory is small a fifth of --max_write_memory_mb (the largest "
          "write it can admit), at least 4: most requests are read in whole "
          "before any check, so a large limit in a small container lets one "
          "request take all its memory.");
ABSL_FLAG(int64_t, max_memory_mb, 0,
          "Memory engramd may use, in MiB; 0 = the machine's, or its "
          "cgroup's limit where lower. The defaults of "
          "--max_store_memory_mb (1/2), --max_write_memory_mb (1/4) and the "
          "waiting retrievals (1/8) derive from it, and work that takes much "
          "memory is refused while the resident memory is near 9/10 of it. "
          "Set it where engramd shares a machine; it may not exceed the "
          "cgroup's limit.");
ABSL_FLAG(int64_t, max_store_memory_mb, 0,
          "Memory every store's patterns may take together, in MiB (they "
          "stay in memory): an add, import message or restore that would "
          "take them past it is refused with RESOURCE_EXHAUSTED; loading "
          "the stores at start is not. 0 = half the memory engramd may use "
          "(--max_memory_mb); -1 = no limit.");
ABSL_FLAG(int64_t, max_write_memory_mb, 0,
          "Memory writes in flight may hold, in MiB: a write of 1 MiB or "
          "more counts 5 times its request (or stream message) and waits, "
          "up to its deadline and at most 60 s, while earlier writes hold "
          "the rest; one larger than the whole is refused. 0 = a quarter of "
          "the memory engramd may use (--max_memory_mb).");
ABSL_FLAG(uint32_t, max_dimension, kLimits.max_dimension,
          "Largest store dimension.");
ABSL_FLAG(uint64_t, max_batch, kLimits.max_batch,
          "Most patterns in one add, import message or delete.");
ABSL_FLAG(uint64_t, max_queries, kLimits.max_queries,
          "Most queries in one Retrieve.");
ABSL_FLAG(uint64_t, max_stores, kLimits.max_stores,
          "Most stores on the server.");
ABSL_FLAG(uint64_t, max_patterns_per_store, kLimits.max_patterns_per_store,
          "Most patterns in one store.");
ABSL_FLAG(uint64_t, max_top_k, kLimits.max_top_k,
          "Largest top_k of a store or request.");
ABSL_FLAG(uint32_t, max_steps, kLimits.max_steps,
          "Most update steps of a store or request.");
ABSL_FLAG(uint64_t, max_label_bytes, kLimits.max_label_bytes,
          "Longest pattern label, in bytes.");
ABSL_FLAG(uint64_t, max_metadata_entries, kLimits.max_metadata_entries,
          "Most metadata entries of one pattern.");
ABSL_FLAG(uint64_t, max_metadata_bytes, kLimits.max_metadata_bytes,
          "Longest metadata key or value, in bytes.");
ABSL_FLAG(double, max_calibration_work, kLimits.max_calibration_work,
          "Multiply-adds one calibration may spend (1e12: about 8 s on 2 "
          "cores); past it, calibration samples fewer patterns, then a subset "
          "of the memories.");
ABSL_FLAG(uint64_t, max_low_rank_values, kLimits.max_low_rank_values,
          "Most doubles one store's low-rank sums may hold (rank x (dimension "
          "+ 1)); the store keeps the largest even Taylor degree that fits, "
          "none if degree 2 does not (docs/low-rank.md).");
ABSL_FLAG(std::string, role, "standalone",
          "standalone (serves its own stores), shard (holds one group's part "
          "of a cluster's stores) or router (holds none; serves the API over "
          "--shards). docs/scale-out.md.");
ABSL_FLAG(std::string, cluster, "engram",
          "shard, router: the cluster's name; a router refuses shards of "
          "another.");
ABSL_FLAG(uint32_t, shard_group, 0, "shard: its group, 0 .. shard_groups-1.");
ABSL_FLAG(uint32_t, shard_groups, 1, "shard: the number of groups.");
ABSL_FLAG(std::string, shards, "",
          "router: the shards, groups separated by ';', replicas by ',' "
          "(host:port,host:port;host:port,host:port); a shard on this "
          "machine may be unix:PATH, its socket.");
ABSL_FLAG(std::string, topology_file, "",
          "router: a file with one group per line (replicas separated by "
          "',' or spaces; '#' comments), instead of --shards.");
ABSL_FLAG(std::string, shard_tls_ca, "",
          "router: PEM CA of the shards' certificates (TLS to the shards).");
ABSL_FLAG(std::string, shard_tls_cert, "",
          "router: PEM certificate for mutual TLS with the shards.");
ABSL_FLAG(std::string, shard_tls_key, "",
          "router: PEM key of --shard_tls_cert.");
ABSL_FLAG(std::string, shard_token_file, "",
          "router: a file holding the bearer token to send the shards. It "
          "and the --shard_tls_* files are read again when they change "
          "(--credentials_refresh_s).");
ABSL_FLAG(double, shutdown_grace_s, 10,
          "Seconds in-flight RPCs get to finish after SIGTERM.");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");
ABSL_FLAG(std::string, log_format, "text",
          "text (one line a message: time, level, message) or json (one "
          "object a line: time, level, msg), gRPC's own messages included.");

namespace {

using engram::LogLevel;

[[noreturn]] void FailOnFlag(const std::string& message);

int LogLevelFromName(const std::string& name) {
  if (name == "debug") return static_cast<int>(LogLevel::kDebug);
  if (name == "info") return static_cast<int>(LogLevel::kInfo);
  if (name == "warning") return static_cast<int>(LogLevel::kWarning);
  if (name == "error") return static_cast<int>(LogLevel::kError);
  FailOnFlag("--log_level=" + name +
             " is not one of debug, info, warning, error");
}

// gRPC's own messages (a TLS handshake that fails, a port it cannot bind)
// through engram's log, in its format.
void LogFromGrpc(gpr_log_func_args* args) {
  const LogLevel level =
      args->severity == GPR_LOG_SEVERITY_ERROR  ? LogLevel::kError
      : args->severity == GPR_LOG_SEVERITY_INFO ? LogLevel::kInfo
                                                : LogLevel::kDebug;
  absl::string_view file = args->file == nullptr ? "" : args->file;
  if (const size_t slash = file.rfind('/'); slash != file.npos) {
    file.remove_prefix(slash + 1);
  }
  engram::LogMessage(level, absl::StrCat("grpc: ", args->message, " (", file,
                                         ":", args->line, ")"));
}

void SetUpLogging() {
  engram::MinLogLevel() = LogLevelFromName(absl::GetFlag(FLAGS_log_level));
  const std::string format = absl::GetFlag(FLAGS_log_format);
  if (format != "text" && format != "json") {
    FailOnFlag("--log_format=" + format + " is not one of text, json");
  }
  engram::SetLogFormat(format == "json" ? engram::LogFormat::kJson
                                        : engram::LogFormat::kText);
  gpr_set_log_function(&LogFromGrpc);
  engram::app::LogWriter::ForStderr();
}

[[noreturn]] void FailOnFlag(const std::string& message) {
  std::fprintf(stderr, "engramd: %s\n", message.c_str());
  std::exit(1);
}

// A flag of whole seconds, `value`, which must be in [`lo`, `hi`]; `zero`
// says what 0 means where it is allowed.
absl::Duration SecondsFlag(const char* flag, int value, int lo, int hi,
                           const char* zero = nullptr) {
  if (value < lo || value > hi) {
    FailOnFlag(absl::StrCat(
        "--", flag, "=", value, ": must be in [", lo, ", ", hi, "]",
        zero == nullptr ? "" : absl::StrCat(" (0: ", zero, ")")));
  }
  return absl::Seconds(value);
}

// --max_memory_mb, or what the machine or the cgroup allows.
engram::app::MemoryLimit MemoryFromFlags() {
  engram::app::MemoryLimit detected = engram::app::DetectMemoryLimit();
  const int64_t mb = absl::GetFlag(FLAGS_max_memory_mb);
  if (mb == 0) return detected;
  if (mb < 0 || mb > (int64_t{1} << 30)) {
    FailOnFlag(absl::StrCat("--max_memory_mb=", mb,
                            ": must be a number of MiB, or 0 for what the "
                            "machine or the cgroup allows"));
  }
  const size_t bytes = static_cast<size_t>(mb) << 20;
  if (detected.bytes > 0 && bytes > detected.bytes) {
    FailOnFlag(absl::StrCat("--max_memory_mb=", mb, ": more than the ",
                            engram::MiB(detected.bytes),
                            " this process may use (", detected.source,
                            "); lower it or leave it 0"));
  }
  return {bytes, absl::StrCat("--max_memory_mb=", mb)};
}

// --role and what it needs.
void ClusterFromFlags(engram::app::EngramdOptions& o) {
  using engram::app::Role;
  const std::string role = absl::GetFlag(FLAGS_role);
  if (role == "standalone") {
    o.role = Role::kStandalone;
  } else if (role == "shard") {
    o.role = Role::kShard;
  } else if (role == "router") {
    o.role = Role::kRouter;
  } else {
    FailOnFlag("--role=" + role + " is not one of standalone, shard, router");
  }
  o.cluster.cluster = absl::GetFlag(FLAGS_cluster);
  o.cluster.pool.cluster = o.cluster.cluster;
  if (o.role == Role::kShard) {
    const uint32_t group = absl::GetFlag(FLAGS_shard_group);
    const uint32_t groups = absl::GetFlag(FLAGS_shard_groups);
    if (groups < 1 || groups > engram::store::kMaxGroups || group >= groups) {
      FailOnFlag(absl::StrCat(
          "--shard_group=", group, " --shard_groups=", groups,
          ": need 0 <= group < groups <= ", engram::store::kMaxGroups));
    }
    o.limits.placement = {group, groups};
  }
  if (o.role != Role::kRouter) return;
  const std::string file = absl::GetFlag(FLAGS_topology_file);
  const std::string shards = absl::GetFlag(FLAGS_shards);
  if (file.empty() == shards.empty()) {
    FailOnFlag("--role=router needs --shards or --topology_file (one)");
  }
  std::string text = shards;
  if (!file.empty()) {
    absl::StatusOr<std::string> read = engram::ReadFileText(file, 16 << 20);
    if (!read.ok()) {
      FailOnFlag(absl::StrCat("--topology_file: ", read.status().message()));
    }
    text = *std::move(read);
  }
  absl::StatusOr<engram::cluster::Topology> topology =
      engram::cluster::ParseTopology(
          text, file.empty() ? "--shards" : "--topology_file=" + file);
  if (!topology.ok()) FailOnFlag(std::string(topology.status().message()));
  o.cluster.topology = *std::move(topology);
  engram::cluster::ShardPoolOptions& pool = o.cluster.pool;
  // Read (and checked) by the pool as it starts, and again when they
  // change.
  pool.tls_ca_file = absl::GetFlag(FLAGS_shard_tls_ca);
  pool.tls_cert_file = absl::GetFlag(FLAGS_shard_tls_cert);
  pool.tls_key_file = absl::GetFlag(FLAGS_shard_tls_key);
  pool.token_file = absl::GetFlag(FLAGS_shard_token_file);
  pool.credentials_refresh =
      absl::Seconds(absl::GetFlag(FLAGS_credentials_refresh_s));
  pool.max_message_bytes = o.server.max_message_bytes;
}

engram::app::EngramdOptions OptionsFromFlags() {
  const int cores =
      static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  engram::app::EngramdOptions o;
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.storage.sync = absl::GetFlag(FLAGS_sync);
  o.storage.accept_data_loss = absl::GetFlag(FLAGS_accept_data_loss);
  o.restore_from = absl::GetFlag(FLAGS_restore_from);
  o.expiry_sweep =
      absl::Milliseconds(std::max(1.0, absl::GetFlag(FLAGS_expiry_sweep_ms)));
  o.max_restore_bytes = absl::GetFlag(FLAGS_max_restore_mb) << 20;

  engram::store::Limits& l = o.limits;
  l.max_dimension = absl::GetFlag(FLAGS_max_dimension);
  l.max_batch = absl::GetFlag(FLAGS_max_batch);
  l.max_queries = absl::GetFlag(FLAGS_max_queries);
  l.max_top_k = absl::GetFlag(FLAGS_max_top_k);
  l.max_steps = absl::GetFlag(FLAGS_max_steps);
  l.max_stores = absl::GetFlag(FLAGS_max_stores);
  l.max_patterns_per_store = absl::GetFlag(FLAGS_max_patterns_per_store);
  o.memory = MemoryFromFlags();
  const size_t memory = o.memory.bytes;
  const int64_t store_memory_mb = absl::GetFlag(FLAGS_max_store_memory_mb);
  if (store_memory_mb < -1 || store_memory_mb > (int64_t{1} << 30)) {
    FailOnFlag(absl::StrCat("--max_store_memory_mb=", store_memory_mb,
                            ": must be a number of MiB, 0 for the default "
                            "or -1 for no limit"));
  }
  l.max_store_memory_bytes = store_memory_mb > 0
                                 ? static_cast<size_t>(store_memory_mb) << 20
                             : store_memory_mb == 0 ? memory / 2
                                                    : 0;
  l.max_label_bytes = absl::GetFlag(FLAGS_max_label_bytes);
  l.max_metadata_entries = absl::GetFlag(FLAGS_max_metadata_entries);
  l.max_metadata_bytes = absl::GetFlag(FLAGS_max_metadata_bytes);
  l.max_low_rank_values = absl::GetFlag(FLAGS_max_low_rank_values);
  l.max_calibration_work = absl::GetFlag(FLAGS_max_calibration_work);

  o.metrics.listen = absl::GetFlag(FLAGS_metrics_listen);
  o.metrics.per_store_labels = absl::GetFlag(FLAGS_metrics_per_store);

  engram::rpc::ServerOptions& server = o.server;
  server.listen = absl::GetFlag(FLAGS_listen);
  const size_t write_memory =
      absl::GetFlag(FLAGS_max_write_memory_mb) > 0
          ? static_cast<size_t>(absl::GetFlag(FLAGS_max_write_memory_mb)) << 20
          : memory / 4;
  if (write_memory > 0) {
    server.write_budget = std::make_shared<engram::rpc::WriteBudget>(
        write_memory, "--max_write_memory_mb", &engram::app::ReturnFreedMemory);
  }
  if (memory > 0) {
    server.memory_guard = std::make_shared<engram::rpc::MemoryGuard>(
        memory / 10 * 9,
        absl::StrCat("9/10 of ", engram::MiB(memory), ", ", o.memory.source),
        &engram::rpc::ResidentBytes, &engram::app::ReturnFreedMemory);
  }
  const int max_message_mb = absl::GetFlag(FLAGS_max_message_mb);
  if (max_message_mb < 0 || max_message_mb > 1023) {
    FailOnFlag(absl::StrCat("--max_message_mb=", max_message_mb,
                            ": must be in [1, 1023], or 0 for the default"));
  }
  server.max_message_bytes =
      max_message_mb > 0 ? static_cast<size_t>(max_message_mb) << 20
                         : engram::rpc::DefaultMaxMessageBytes(write_memory);
  server.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  server.tls_key = absl::GetFlag(FLAGS_tls_key);
  server.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  server.token_file = absl::GetFlag(FLAGS_token_file);
  server.credentials_refresh =
      SecondsFlag("credentials_refresh_s",
                  absl::GetFlag(FLAGS_credentials_refresh_s), 1, 86400);
  server.keepalive =
      SecondsFlag("keepalive_s", absl::GetFlag(FLAGS_keepalive_s), 1, 7200);
  server.max_open_streams = absl::GetFlag(FLAGS_max_open_streams);
  server.max_stream_resets_per_s = absl::GetFlag(FLAGS_max_stream_resets_per_s);
  for (const auto& [flag, value] :
       {std::pair<const char*, int>{"max_open_streams",
                                    server.max_open_streams},
        {"max_stream_resets_per_s", server.max_stream_resets_per_s}}) {
    if (value < 0) {
      FailOnFlag(absl::StrCat("--", flag, "=", value,
                              ": must be at least 0 (0: no limit)"));
    }
  }
  server.max_answer_wait =
      SecondsFlag("max_answer_wait_s", absl::GetFlag(FLAGS_max_answer_wait_s),
                  0, 3600, "never");
  server.cut_ban = SecondsFlag("ban_s", absl::GetFlag(FLAGS_ban_s), 0, 3600,
                               "never kept out");
  server.fd_reserve = absl::GetFlag(FLAGS_fd_reserve);
  if (server.fd_reserve < -1) {
    FailOnFlag(absl::StrCat("--fd_reserve=", server.fd_reserve,
                            ": must be -1 (automatic) or at least 0"));
  }
  server.max_threads = absl::GetFlag(FLAGS_rpc_threads) > 0
                           ? absl::GetFlag(FLAGS_rpc_threads)
                           : 32 * cores;
  // Made here, so that the gauges read them.
  server.shares = engram::rpc::ShareThreads(server.max_threads);

  o.blas_threads = std::max(1, absl::GetFlag(FLAGS_blas_threads));
  o.retrieval_threads = absl::GetFlag(FLAGS_retrieval_threads) > 0
                            ? absl::GetFlag(FLAGS_retrieval_threads)
                            : cores;
  o.job_workers = std::max(1, absl::GetFlag(FLAGS_fit_workers));
  o.shutdown_grace = absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_s));
  ClusterFromFlags(o);
  return o;
}

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

}  // namespace

int main(int argc, char** argv) {
  if (!engram::OpenStandardDescriptors()) return 1;
  engram::SkipLockOrderChecks();
  engram::core::UseBlasFamily(RequestedBlasFamily(argc, argv), argv);
  engram::core::FlushDenormals();  // Inherited by every thread engramd starts.
  absl::InitializeSymbolizer(argv[0]);
  absl::FailureSignalHandlerOptions options;
  absl::InstallFailureSignalHandler(options);
  // Log lines still queued when engramd fails (gRPC's failed checks log
  // why, then abort) and the failing thread's stack go to stderr ahead of
  // Abseil's report.
  if (!engram::app::ReportFailuresFirst(
          &engram::app::LogWriter::WriteQueuedAtFailure)) {
    std::perror("engramd: installing the failure signal handlers");
    return 1;
  }
  // A write to a pipe or socket nobody reads any more (stderr's reader
  // gone) fails with EPIPE instead of ending the process.
  std::signal(SIGPIPE, SIG_IGN);
  if (!engram::app::CatchSignals()) {
    std::perror("engramd: installing the SIGTERM, SIGINT and SIGHUP handlers");
    return 1;
  }
  absl::FlagsUsageConfig usage;
  usage.version_string = [] {
    return std::string("engramd " ENGRAM_VERSION " (API engram.v1)\n");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "engram server: stores memory patterns and recalls them with "
      "modern-Hopfield retrieval.\nUsage: engramd [--listen=HOST:PORT] "
      "[--data_dir=DIR] [--metrics_listen=HOST:PORT] ...");
  absl::ParseCommandLine(argc, argv);
  SetUpLogging();
  engram::app::EngramdOptions engramd = OptionsFromFlags();
  engramd.log_writer = engram::app::LogWriter::ForStderr();
  return engram::app::RunEngramd(std::move(engramd));
}

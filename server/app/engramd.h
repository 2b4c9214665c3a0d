// engramd's wiring: from its configuration to a serving process, step by
// step (metrics, storage, registry, jobs, the gRPC server, the load), and
// back down on SIGTERM.
//
//   EngramdOptions options = ...;  // from flags (server/main.cc)
//   return RunEngramd(options);
//
// Thread-compatible: one call per process.
#ifndef ENGRAM_SERVER_APP_ENGRAMD_H_
#define ENGRAM_SERVER_APP_ENGRAMD_H_

#include <string>

#include "absl/time/time.h"
#include "server/app/allocator.h"
#include "server/app/log_writer.h"
#include "server/cluster/shard_pool.h"
#include "server/cluster/topology.h"
#include "server/metrics/prometheus_metrics.h"
#include "server/rpc/server.h"
#include "server/store/rocksdb_storage.h"
#include "server/store/settings.h"

namespace engram::app {

// What one engramd process is (docs/scale-out.md): a server of its own
// stores (the default), a shard of a cluster's stores, or a router that
// holds none and spreads them over shards.
enum class Role { kStandalone, kShard, kRouter };

struct ClusterOptions {
  std::string cluster = "engram";  // --cluster: shards and routers agree.
  // A router's shards (--shards or --topology_file, parsed), and how it
  // reaches them.
  cluster::Topology topology;
  cluster::ShardPoolOptions pool;
};

struct EngramdOptions {
  Role role = Role::kStandalone;
  ClusterOptions cluster;  // limits.placement is a shard's group.
  std::string data_dir = "./engram-data";
  // What engramd may use (--max_memory_mb or detected): for the waiting
  // retrievals' bound and the configuration line; the flags' defaults
  // (server/main.cc) derive from it too.
  MemoryLimit memory;
  store::RocksDbOptions storage;  // path: data_dir/db unless set.
  // A backup directory to restore the whole server from, into an empty
  // data_dir, before serving (server/app/restore_backup.h); empty: none.
  std::string restore_from;
  size_t max_restore_bytes = size_t{8} << 30;  // Of one RestoreStore call.
  // How often expired patterns are reclaimed (docs/expiry.md).
  absl::Duration expiry_sweep = absl::Seconds(1);
  store::Limits limits;
  metrics::PrometheusOptions metrics;
  rpc::ServerOptions server;
  int blas_threads = 1;
  int retrieval_threads = 1;
  int job_workers = 1;
  absl::Duration shutdown_grace = absl::Seconds(10);
  // The log's writer (LogWriter::ForStderr), whose dropped lines are
  // counted in the metrics; null: none.
  LogWriter* log_writer = nullptr;
};

// Serves until SIGTERM or SIGINT; the process's exit code.
int RunEngramd(EngramdOptions options);

}  // namespace engram::app

#endif  // ENGRAM_SERVER_APP_ENGRAMD_H_

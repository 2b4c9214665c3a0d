// A router's connections to its shards: one channel per replica, a probe
// that keeps each replica's readiness (reachable, of this cluster, holding
// the group the topology says), and the choice of replicas for reads
// (any ready one, in turn) and writes (every ready one).
//
//   absl::StatusOr<std::unique_ptr<ShardPool>> pool =
//       ShardPool::Create(topology, options);
//   absl::StatusOr<const Replica*> r = (*pool)->Pick(group);
//
// Thread-safe.
#ifndef ENGRAM_SERVER_CLUSTER_SHARD_POOL_H_
#define ENGRAM_SERVER_CLUSTER_SHARD_POOL_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engram/cluster/v1/shard.grpc.pb.h"
#include "engram/v1/engram.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "server/base/file_backed.h"
#include "server/base/mutex.h"
#include "server/cluster/topology.h"
#include "server/metrics/metrics.h"
#include "server/rpc/call_cutter.h"
#include "server/rpc/credentials.h"
#include "server/rpc/tls_files.h"

namespace engram::cluster {

struct ShardPoolOptions {
  std::string cluster;  // Shards must answer for this cluster.
  // TLS to the shards: files of the CA of their certificates (empty:
  // plaintext), and of the router's own certificate and key for mutual
  // TLS; read again when they change (rpc::TlsFiles).
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // A file holding the bearer token sent to the shards (empty: none); read
  // again when it changes.
  std::string token_file;
  // How often those files are looked at again.
  absl::Duration credentials_refresh = absl::Seconds(60);
  // Kept current with those files, for the router's gauges; may be null.
  std::shared_ptr<rpc::CredentialState> credential_state;
  absl::Duration probe_interval = absl::Milliseconds(500);
  absl::Duration probe_timeout = absl::Seconds(2);
  // A ping to every shard this often, answered within probe_timeout or the
  // connection is closed: a replica gone silent (a partition) fails the
  // calls waiting on it UNAVAILABLE in seconds — a read then asks a peer, a
  // write leaves it stale — instead of holding them to their deadline.
  absl::Duration keepalive = absl::Seconds(1);
  int max_message_bytes = 256 << 20;
  metrics::Metrics* metrics = nullptr;  // Borrowed; may be null.
};

struct Replica {
  uint32_t group = 0;
  uint32_t index = 0;  // Within the group.
  std::string address;
  std::unique_ptr<engram::v1::Engram::Stub> engram;
  std::unique_ptr<v1::Shard::Stub> shard;
};

// One replica's state, as the probe last saw it. A replica is ready when it
// answers, belongs to this cluster and group, and holds what the group's
// other ready replicas hold: one that came back after being unreachable, or
// missed a write, is stale until repaired from a ready peer. When every
// replica of a group is stale, the one that took the latest write serves.
struct ReplicaStatus {
  uint32_t group = 0;
  std::string address;
  bool ready = false;
  bool reachable = false;  // Answers, for this cluster and group.
  bool stale = false;      // Needs repair before it serves.
  bool probed = false;
  std::string detail;  // Why not ready, or what it holds.
  v1::ShardDescription description;
  int mismatches = 0;  // Probes in a row that found it differing...
  uint64_t mismatch_signature = 0;  // ...with the same holdings each time.
};

class ShardPool {
 public:
  static absl::StatusOr<std::unique_ptr<ShardPool>> Create(
      const Topology& topology, const ShardPoolOptions& options);
  ~ShardPool();  // Stops the probe.
  ShardPool(const ShardPool&) = delete;
  ShardPool& operator=(const ShardPool&) = delete;

  uint32_t groups() const { return static_cast<uint32_t>(groups_.size()); }

  // Probes every replica now (also done every probe_interval). Returns
  // FAILED_PRECONDITION naming the replica and the flag if a reachable
  // replica belongs to another cluster or another group: a topology that
  // is wrong, not a shard that is down.
  absl::Status Probe();

  // A ready replica of `group`, in turn; UNAVAILABLE naming the group and
  // why each replica is not ready.
  absl::StatusOr<const Replica*> Pick(uint32_t group);
  // Pick of every group, in group order; the first group's error if one
  // has no ready replica.
  absl::StatusOr<std::vector<const Replica*>> PickEach();
  // Every ready replica of `group`; UNAVAILABLE as Pick if there is none.
  absl::StatusOr<std::vector<const Replica*>> ReadyReplicas(uint32_t group);
  // ReadyReplicas of every group, in group order: what a change to a
  // store's existence or settings goes to; the first group's error if one
  // has none.
  absl::StatusOr<std::vector<const Replica*>> EveryReadyReplica();
  // OK if every group has a ready replica; else UNAVAILABLE naming them.
  absl::Status Ready() const;
  std::vector<ReplicaStatus> Status() const;
  // Has the prober's next round read --shard_token_file and the
  // --shard_tls_* files again, whatever credentials_refresh says
  // (SIGHUP); false when there are none.
  bool ReadCredentialsAgain();

  // Held shared (absl::ReaderMutexLock) by every client write from choosing
  // its replicas until each has answered. A repair ends by taking it alone,
  // when no write is in flight, to compare its two replicas and mark the
  // target ready: a write that chose the source alone before that and
  // landed after the compare would be missing from the target for good
  // (and a later disagreement could repair the source from the target).
  absl::Mutex& write_gate() const ABSL_LOCK_RETURNED(write_gate_) {
    return write_gate_;
  }

  // The token, the deadline and (if `stamped`) a write stamp of a call to a
  // shard. Stamps are the router's clock in nanoseconds, kept increasing; a
  // shard keeps the largest one of the writes it applied (x-engram-stamp).
  // A repair's calls carry none: what it copies leaves the target's stamp
  // at the last client write the target took, so that a replica left half
  // repaired never passes for the one that took the latest write.
  void Prepare(grpc::ClientContext& context, absl::Time deadline,
               bool stamped = true) const;
  // A context for a blocking call to a shard, prepared as Prepare does and
  // watched by cutter() (pass the call's status through cutter().Unwatch);
  // CANCELLED once the pool is stopping.
  absl::StatusOr<std::shared_ptr<grpc::ClientContext>> WatchedContext(
      absl::Time deadline, bool stamped = true) const;

  // Counts one call to a replica (metrics: calls, latency, bytes).
  void Record(const Replica& replica, absl::string_view method,
              const grpc::Status& status, absl::Duration took,
              size_t bytes_sent, size_t bytes_received) const;

  // A write reached the group's first replica but not `replica`: it serves
  // no more until repaired.
  void MarkStale(const Replica& replica, absl::string_view why);
  // A call found `replica` UNAVAILABLE: no call picks it until a probe
  // finds it back (and then, in a group of several, it is repaired first,
  // as any replica back from being unreachable).
  void MarkUnreachable(const Replica& replica, absl::string_view why);
  // Replicas repaired since the pool started (for the log and tests).
  size_t repairs() const { return repairs_.load(); }
  // The cluster its shards answer for (--cluster).
  const std::string& cluster() const { return options_.cluster; }

  // Every call to a shard is watched by it: cut when still out half a
  // second past its deadline by the steady clock, and when the pool stops
  // (a repair of a large store must not hold up a router's shutdown).
  rpc::CallCutter& cutter() const { return cutter_; }

 private:
  explicit ShardPool(const ShardPoolOptions& options);
  void ProbeLoop();
  // Compares each group's replicas and marks the ones that differ.
  void CheckAgreement() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies what `source` holds to `target` (stores, settings, patterns)
  // until their digests agree, then marks the target ready (FinishRepair).
  absl::Status Repair(const Replica& source, const Replica& target);
  // With no client write in flight (write_gate, waited for at most a
  // probe's timeout): whether both replicas hold the same, and if so the
  // target marked ready, before any write chooses its replicas again.
  absl::StatusOr<bool> FinishRepair(const Replica& source,
                                    const Replica& target);
  void RepairStale();
  void SetReady(ReplicaStatus& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Unavailable(uint32_t group) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Reads the credential files again if they changed, logging what it
  // found; every options_.credentials_refresh (or when asked), from the
  // prober.
  void ReloadCredentials();

  const ShardPoolOptions options_;
  // options_.credential_state, or one of the pool's own.
  const std::shared_ptr<rpc::CredentialState> credentials_;
  std::unique_ptr<rpc::TlsFiles> tls_;            // Null: plaintext.
  std::optional<FileBacked<std::string>> token_;  // None: no token sent.
  // Set by ReadCredentialsAgain: the prober's next round reads them.
  std::atomic<bool> reread_{false};
  // On SteadyNow()'s clock; set before the prober starts, then its only.
  absl::Time next_reload_;
  // groups_[g][r]; fixed after Create.
  std::vector<std::vector<std::unique_ptr<Replica>>> groups_;
  mutable absl::Mutex write_gate_;  // Taken before mu_, never after.
  mutable absl::Mutex mu_;
  std::vector<std::vector<ReplicaStatus>> status_ ABSL_GUARDED_BY(mu_);
  std::vector<std::atomic<uint32_t>> next_;  // Round-robin per group.
  std::atomic<size_t> repairs_{0};
  mutable std::atomic<uint64_t> last_stamp_{0};
  bool first_probe_done_ ABSL_GUARDED_BY(mu_) = false;
  Mutex stop_mu_;
  CondVar stop_cv_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  mutable rpc::CallCutter cutter_;
  std::thread prober_;
};

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_SHARD_POOL_H_

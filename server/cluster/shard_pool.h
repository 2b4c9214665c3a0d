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

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engram/cluster/v1/shard.grpc.pb.h"
#include "engram/v1/engram.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "server/cluster/topology.h"

namespace engram::cluster {

struct ShardPoolOptions {
  std::string cluster;  // Shards must answer for this cluster.
  // TLS to the shards: the CA of their certificates (PEM text; empty:
  // plaintext), and the router's own certificate and key for mutual TLS.
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string token;  // Sent to the shards as a bearer token, if set.
  absl::Duration probe_interval = absl::Milliseconds(500);
  absl::Duration probe_timeout = absl::Seconds(2);
  int max_message_bytes = 256 << 20;
};

struct Replica {
  uint32_t group = 0;
  uint32_t index = 0;  // Within the group.
  std::string address;
  std::unique_ptr<engram::v1::Engram::Stub> engram;
  std::unique_ptr<v1::Shard::Stub> shard;
};

// One replica's state, as the probe last saw it.
struct ReplicaStatus {
  uint32_t group = 0;
  std::string address;
  bool ready = false;
  std::string detail;  // Why not ready, or what it holds.
  v1::ShardDescription description;
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
  // Every ready replica of `group`; UNAVAILABLE as Pick if there is none.
  absl::StatusOr<std::vector<const Replica*>> ReadyReplicas(uint32_t group);
  // OK if every group has a ready replica; else UNAVAILABLE naming them.
  absl::Status Ready() const;
  std::vector<ReplicaStatus> Status() const;

  // The token and the deadline of a call to a shard.
  void Prepare(grpc::ClientContext& context, absl::Time deadline) const;

 private:
  explicit ShardPool(const ShardPoolOptions& options);
  void ProbeLoop();
  absl::Status Unavailable(uint32_t group) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const ShardPoolOptions options_;
  // groups_[g][r]; fixed after Create.
  std::vector<std::vector<std::unique_ptr<Replica>>> groups_;
  mutable absl::Mutex mu_;
  std::vector<std::vector<ReplicaStatus>> status_ ABSL_GUARDED_BY(mu_);
  std::vector<std::atomic<uint32_t>> next_;  // Round-robin per group.
  absl::Mutex stop_mu_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread prober_;
};

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_SHARD_POOL_H_

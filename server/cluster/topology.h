// A cluster's shape: N shard groups of R replicas each, named by address.
//
//   --shards='shard-0a:50051,shard-0b:50051;shard-1a:50051,shard-1b:50051'
//
// groups are separated by ';' (or lines, in a --topology_file, where '#'
// starts a comment), replicas by ',' or spaces. A shard on this machine may
// be dialled on its Unix socket: --shards='unix:/run/engram/s0.sock;...'. Group
// g holds the patterns whose ids place in g (server/store/placement.h), on
// every replica.
#ifndef ENGRAM_SERVER_CLUSTER_TOPOLOGY_H_
#define ENGRAM_SERVER_CLUSTER_TOPOLOGY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace engram::cluster {

// The metadata key of the write stamp a router sends with every call to a
// shard (shard_pool.h), which a shard keeps for the stores it writes
// (shard_service.h).
inline constexpr char kStampHeader[] = "x-engram-stamp";

struct Topology {
  // Addresses "host:port", or "unix:PATH" / "unix:///PATH" for a shard on a
  // Unix socket of this machine.
  std::vector<std::vector<std::string>> groups;

  size_t replicas() const { return groups.empty() ? 0 : groups[0].size(); }
};

// Parses and checks a topology: at least one group, at most 65535, every
// group of the same size, no address (or socket) twice, every address
// host:port with a port of 1 to 65535 or a Unix socket's path that fits one.
// Errors name `source` (the flag, or the file) and the address or group.
absl::StatusOr<Topology> ParseTopology(absl::string_view text,
                                       absl::string_view source);

}  // namespace engram::cluster

#endif  // ENGRAM_SERVER_CLUSTER_TOPOLOGY_H_

#include "server/cluster/topology.h"

#include <sys/un.h>

#include <algorithm>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/base/clip.h"
#include "server/rpc/unix_socket.h"
#include "server/store/placement.h"

namespace engram::cluster {
namespace {

// The bytes a Unix socket's path may hold, its terminating zero aside
// (sockaddr_un::sun_path).
constexpr size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;

// What makes two addresses the same shard: the address itself for
// host:port, the socket's path for unix:PATH and unix:///PATH (one socket,
// two spellings). An error says what the address is not.
absl::StatusOr<std::string> AddressKey(absl::string_view address) {
  if (const std::optional<std::string> path = rpc::UnixSocketPath(address)) {
    // unix://NAME/... would name a host; gRPC takes only unix:///PATH.
    if (path->empty() || (absl::StartsWith(address, "unix://") &&
                          !absl::StartsWith(*path, "/"))) {
      return absl::InvalidArgumentError(
          "is not a Unix socket unix:PATH or unix:///ABSOLUTE/PATH");
    }
    if (path->size() > kMaxSocketPath) {
      return absl::InvalidArgumentError(absl::StrCat(
          "names a socket path of ", path->size(),
          " bytes; a Unix socket's path holds at most ", kMaxSocketPath));
    }
    return absl::StrCat("unix:", *path);
  }
  const size_t colon = address.rfind(':');
  uint32_t port = 0;
  const absl::string_view digits =
      colon == absl::string_view::npos ? "" : address.substr(colon + 1);
  // Digits only: SimpleAtoi also takes a sign, and "h:+1" would dial as
  // another shard than "h:1" while naming the same.
  if (colon == absl::string_view::npos || colon == 0 || digits.empty() ||
      digits.size() > 5 ||
      !std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(digits, &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(
        "is not an address host:port or unix:PATH");
  }
  return std::string(address);
}

}  // namespace

absl::StatusOr<Topology> ParseTopology(absl::string_view text,
                                       absl::string_view source) {
  Topology t;
  absl::flat_hash_map<std::string, size_t> seen;  // Address -> group.
  for (absl::string_view line : absl::StrSplit(text, absl::ByAnyChar(";\n"))) {
    line = line.substr(0, line.find('#'));
    std::vector<std::string> group;
    for (absl::string_view a :
         absl::StrSplit(line, absl::ByAnyChar(", \t\r"), absl::SkipEmpty())) {
      const std::string address(a);
      if (absl::StatusOr<std::string> key = AddressKey(a); !key.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": '", Clip(address), "' ", key.status().message(),
            " (group ", t.groups.size(), ")"));
      } else if (auto [it, inserted] = seen.emplace(*key, t.groups.size());
                 !inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": shard ", Clip(address), " is named twice (group ",
            it->second, " and group ", t.groups.size(), ")"));
      }
      group.push_back(address);
    }
    if (group.empty()) continue;
    if (!t.groups.empty() && group.size() != t.groups[0].size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": group ", t.groups.size(), " (", group[0], ", ...) has ",
          group.size(), " replicas; group 0 has ", t.groups[0].size(),
          ": every group needs the same number"));
    }
    t.groups.push_back(std::move(group));
  }
  if (t.groups.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source,
                     ": no shards (groups separated by ';' or lines, "
                     "replicas by ',')"));
  }
  if (t.groups.size() > store::kMaxGroups) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": ", t.groups.size(), " groups; at most ", store::kMaxGroups));
  }
  return t;
}

}  // namespace engram::cluster

// Where a pattern of a sharded store lives (docs/scale-out.md). A store is
// spread over `groups` shard groups; each pattern lives in exactly one,
// decided by its id alone, so any router finds it without a directory:
//
// - ids a shard assigns itself carry (group + 1) in their top 16 bits: group
//   g hands out (g + 1) << 48 | 1, (g + 1) << 48 | 2, ...;
// - any id with top bits h != 0 lives in group (h - 1) mod groups;
// - ids a client chose below 2^48 are spread by a hash of the id.
//
// An unsharded server is group 0 of 1: every id is its own, automatic ids
// start at 1.
#ifndef ENGRAM_SERVER_STORE_PLACEMENT_H_
#define ENGRAM_SERVER_STORE_PLACEMENT_H_

#include <cstdint>

namespace engram::store {

inline constexpr int kGroupShift = 48;
// Groups have top-bit prefixes 1 .. 65535.
inline constexpr uint32_t kMaxGroups = 65535;

struct Placement {
  uint32_t group = 0;
  uint32_t groups = 1;

  bool sharded() const { return groups > 1; }
};

// The group of pattern `id` among `groups` (>= 1).
inline uint32_t GroupOf(uint64_t id, uint32_t groups) {
  if (groups <= 1) return 0;
  const uint64_t high = id >> kGroupShift;
  if (high != 0) return static_cast<uint32_t>((high - 1) % groups);
  // SplitMix64's finaliser: neighbouring ids land in unrelated groups.
  uint64_t z = id + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<uint32_t>(z % groups);
}

// The first id a store of this placement assigns itself.
inline uint64_t FirstAutoId(const Placement& p) {
  return p.sharded() ? (uint64_t{p.group} + 1) << kGroupShift | 1 : 1;
}

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_PLACEMENT_H_

// Seeded samples of memory indices (calibration's queries and subsets, a
// shard's share of a fit's sample).
//
// Thread-safe: pure functions of their arguments.
#ifndef ENGRAM_SERVER_CORE_SAMPLE_H_
#define ENGRAM_SERVER_CORE_SAMPLE_H_

#include <cstddef>
#include <random>
#include <vector>

#include "absl/container/flat_hash_set.h"

namespace engram::core {

// `count` distinct indices in [0, range), sorted, by Floyd's algorithm;
// `taken` are excluded (and must be fewer than range - count).
std::vector<size_t> SampleIndices(size_t range, size_t count,
                                  const absl::flat_hash_set<size_t>& taken,
                                  std::mt19937_64& rng);

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_SAMPLE_H_

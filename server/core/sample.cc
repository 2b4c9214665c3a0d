#include "server/core/sample.h"

#include <algorithm>

namespace engram::core {

std::vector<size_t> SampleIndices(size_t range, size_t count,
                                  const absl::flat_hash_set<size_t>& taken,
                                  std::mt19937_64& rng) {
  absl::flat_hash_set<size_t> chosen;
  const size_t pool = range - taken.size();
  // Floyd's algorithm draws from [0, pool); rank r maps to the r-th index
  // not in `taken` (taken is small, so a sorted list does the mapping).
  std::vector<size_t> skip(taken.begin(), taken.end());
  std::sort(skip.begin(), skip.end());
  for (size_t j = pool - count; j < pool; ++j) {
    std::uniform_int_distribution<size_t> pick(0, j);
    const size_t t = pick(rng);
    chosen.insert(chosen.contains(t) ? j : t);
  }
  std::vector<size_t> out;
  out.reserve(count);
  for (size_t rank : chosen) {
    // The smallest index i with i - |{skip < = i}| == rank.
    size_t index = rank;
    for (size_t s : skip) {
      if (s <= index) ++index;
    }
    out.push_back(index);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace engram::core

// Test memories: random rows in blocks of uneven sizes, as a store's chunks
// are, optionally with keys under a random feature map.
#ifndef ENGRAM_TESTS_CORE_MEMORIES_H_
#define ENGRAM_TESTS_CORE_MEMORIES_H_

#include <memory>
#include <random>
#include <vector>

#include "server/core/feature_map.h"
#include "server/core/retrieval.h"

namespace engram::core {

// Memory `index` of a float32 set, in place (rows stay contiguous within a
// block).
inline const float* FloatRow(const MemorySet& set, size_t index) {
  const auto [block, r] = set.Locate(index);
  return static_cast<const float*>(block->rows) + r * set.dim;
}

// Memories split into blocks of uneven sizes, as a store's chunks are.
struct Fixture {
  size_t dim;
  std::vector<std::vector<float>> rows;  // One vector per block.
  std::vector<std::vector<float>> norms;
  std::vector<std::vector<float>> keys;  // Phi(rows), when a map is set.
  std::vector<std::vector<float>> key_norms;
  std::unique_ptr<FeatureMap> map;
  MemorySet set;

  // Gives the memories keys under a random map to `out_dim` features.
  void UseMap(size_t out_dim, uint64_t seed) {
    map = std::make_unique<FeatureMap>(
        FeatureMap::RandomNormal(dim, out_dim, seed));
    keys.clear();
    key_norms.clear();
    for (size_t b = 0; b < rows.size(); ++b) {
      const size_t n = rows[b].size() / dim;
      keys.emplace_back(n * out_dim);
      key_norms.emplace_back(n);
      map->Apply(rows[b].data(), n, keys.back().data());
      for (size_t i = 0; i < n; ++i) {
        double s = 0;
        for (size_t k = 0; k < out_dim; ++k)
          s += double{keys.back()[i * out_dim + k]} *
               keys.back()[i * out_dim + k];
        key_norms.back()[i] = static_cast<float>(s);
      }
    }
    for (size_t b = 0; b < rows.size(); ++b) {
      set.blocks[b].keys = keys[b].data();
      set.blocks[b].key_sq_norms = key_norms[b].data();
    }
    set.map = map.get();
  }

  Fixture(size_t d, std::vector<size_t> block_sizes, uint32_t seed,
          float scale = 1.0f)
      : dim(d) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, scale);
    for (size_t n : block_sizes) {
      rows.emplace_back(n * d);
      norms.emplace_back(n);
      for (float& v : rows.back()) v = normal(rng);
      for (size_t i = 0; i < n; ++i) {
        double s = 0;
        for (size_t k = 0; k < d; ++k)
          s += double{rows.back()[i * d + k]} * rows.back()[i * d + k];
        norms.back()[i] = static_cast<float>(s);
      }
    }
    set.dim = d;
    for (size_t b = 0; b < rows.size(); ++b) {
      set.blocks.push_back({rows[b].data(), norms[b].data(), block_sizes[b]});
    }
  }
};

}  // namespace engram::core

#endif  // ENGRAM_TESTS_CORE_MEMORIES_H_

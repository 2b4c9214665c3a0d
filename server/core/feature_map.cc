#include "server/core/feature_map.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "server/core/internal/vector_loops.h"

namespace engram::core {

FeatureMap::FeatureMap(size_t in_dim, size_t out_dim,
                       std::vector<float> weights)
    : in_dim_(in_dim),
      out_dim_(out_dim),
      identity_(false),
      weights_(std::move(weights)) {
  double sq = 0;
  for (float w : weights_) sq += double{w} * w;
  frobenius_norm_ = std::sqrt(sq);
}

FeatureMap FeatureMap::Identity(size_t dim) {
  FeatureMap map(dim, dim, {});
  map.identity_ = true;
  map.frobenius_norm_ = 1;
  return map;
}

FeatureMap FeatureMap::RandomNormal(size_t in_dim, size_t out_dim,
                                    uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> weights(in_dim * out_dim);
  for (float& w : weights) w = normal(rng);
  return FeatureMap(in_dim, out_dim, std::move(weights));
}

void FeatureMap::Apply(const float* x, size_t n, float* out) const {
  if (identity_) {
    std::copy_n(x, n * in_dim_, out);
    return;
  }
  internal::ProductsNT(n, out_dim_, in_dim_, 1.0f, x, weights_.data(), out);
}

}  // namespace engram::core

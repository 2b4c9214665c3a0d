// The U-Hop feature map Phi(x) = W x, with W of size out_dim x in_dim
// (row-major). Immutable once built, so one map can be shared by every
// snapshot that retrieves with it.
//
// Thread-safe: immutable.
#ifndef ENGRAM_SERVER_CORE_FEATURE_MAP_H_
#define ENGRAM_SERVER_CORE_FEATURE_MAP_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace engram::core {

class FeatureMap {
 public:
  // `weights` has out_dim * in_dim entries, row-major.
  FeatureMap(size_t in_dim, size_t out_dim, std::vector<float> weights);

  // Phi(x) = x, represented without a matrix.
  static FeatureMap Identity(size_t dim);
  // Entries drawn from N(0, 1) with a seeded generator (the reference's
  // randn initialisation); the same seed gives the same map.
  static FeatureMap RandomNormal(size_t in_dim, size_t out_dim, uint64_t seed);

  size_t in_dim() const { return in_dim_; }
  size_t out_dim() const { return out_dim_; }
  bool identity() const { return identity_; }
  // out_dim * in_dim, row-major; empty for the identity.
  const std::vector<float>& weights() const { return weights_; }

  // out (n x out_dim) = x (n x in_dim) W^T.
  void Apply(const float* x, size_t n, float* out) const;

  // ||W||_F (1 for the identity): ||Phi x|| <= frobenius_norm() * ||x||.
  double frobenius_norm() const { return frobenius_norm_; }

 private:
  size_t in_dim_;
  size_t out_dim_;
  bool identity_;
  std::vector<float> weights_;
  double frobenius_norm_;
};

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_FEATURE_MAP_H_

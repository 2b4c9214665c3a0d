// U-Hop Stage I: fit Phi(x) = W x so that the stored patterns spread out on
// the unit sphere of feature space (Wu et al., ICML 2024). With
// Phi^ = Phi / ||Phi|| and t = 2 the separation loss is
//
//   mean: L = log mean_{mu<nu} exp(-t ||Phi^ xi_mu - Phi^ xi_nu||^2)
//   max:  L = max_{mu<nu} (-t ||Phi^ xi_mu - Phi^ xi_nu||^2)
//
// Its gradient is analytic: with G = Phi^ Phi^^T, ||a - b||^2 = 2 - 2 G_ab, so
// dL/dPhi^ = C Phi^ for pair weights C (softmax weights of the pairs for
// mean, the closest pair for max), then through the normalisation,
// dL/dPhi = (I - Phi^ Phi^^T) dL/dPhi^ / ||Phi||, and dL/dW = (dL/dPhi)^T X.
// Every product is one BLAS call.
//
// The reference optimiser is plain SGD for `epochs` steps: max with a
// constant rate 10, mean with rate 1 divided by sqrt(i + 1) after step i (the
// division compounds, as in the public reference code). Adam is an option.
// One epoch is one step on all patterns, or, above `batch_size` patterns, on
// a fresh seeded sample of `batch_size` of them, so memory and time per epoch
// stay bounded whatever the number of patterns.
//
// Thread-safe: pure functions; deterministic for a fixed seed and thread
// count.
#ifndef ENGRAM_SERVER_CORE_UHOP_FIT_H_
#define ENGRAM_SERVER_CORE_UHOP_FIT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "server/core/feature_map.h"
#include "server/core/retrieval.h"

namespace engram::core {

enum class SeparationLoss { kMean, kMax };
enum class FitOptimizer { kSgd, kAdam };

struct FitOptions {
  SeparationLoss loss = SeparationLoss::kMax;
  FitOptimizer optimizer = FitOptimizer::kSgd;
  uint32_t epochs = 100;
  // 0: the reference's rate (10 for max, 1 for mean); 0.01 for Adam.
  double learning_rate = 0;
  size_t batch_size = 1024;
  uint64_t seed = 0;
  double temperature = 2.0;  // t
};

struct FitProgress {
  uint32_t epoch = 0;  // Epochs done.
  double loss = 0;     // Loss of the last epoch's batch.
};

struct FitResult {
  FeatureMap map;
  // The loss at the initial and at the fitted W, both on the first epoch's
  // batch (every pattern up to batch_size, else a seeded sample).
  double loss_before = 0;
  double loss_after = 0;
  uint32_t epochs = 0;
};

// The loss at `weights` (out_dim x d) for `n` patterns `x` (n x d), and its
// gradient dL/dW (out_dim x d) into `gradient` if not null.
double SeparationLossAndGradient(const float* x, size_t n, size_t d,
                                 const std::vector<float>& weights,
                                 size_t out_dim, SeparationLoss loss,
                                 double temperature,
                                 std::vector<float>* gradient);

// Fits a map from `initial` over the patterns of `patterns` (values only).
// `on_epoch` runs after every epoch; a non-OK status stops the fit and is
// returned (cancellation).
absl::StatusOr<FitResult> FitFeatureMap(
    const MemorySet& patterns, const FeatureMap& initial,
    const FitOptions& options,
    const std::function<absl::Status(const FitProgress&)>& on_epoch = nullptr);

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_UHOP_FIT_H_

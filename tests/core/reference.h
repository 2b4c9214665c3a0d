// Plain reference computations the core's tests compare against.
#ifndef ENGRAM_TESTS_CORE_REFERENCE_H_
#define ENGRAM_TESTS_CORE_REFERENCE_H_

#include <vector>

#include "absl/types/span.h"
#include "server/core/separation.h"

namespace engram::core {

// The normalised weights of one row of scores, densely.
inline std::vector<double> Separate(Separation separation,
                                    absl::Span<const double> z) {
  const double tau = SeparationThreshold(separation, z);
  std::vector<double> weights(z.size());
  double total = 0;
  for (size_t i = 0; i < z.size(); ++i) {
    weights[i] = SeparationWeight(separation, z[i], tau);
    total += weights[i];
  }
  for (double& w : weights) w /= total;
  return weights;
}

}  // namespace engram::core

#endif  // ENGRAM_TESTS_CORE_REFERENCE_H_

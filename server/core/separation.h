// Separation functions: turn a row of scores z = beta * s(xi, x) into weights
// that sum to one. Softmax is dense; sparsemax and alpha = 1.5 entmax are
// sparse and computed with their exact sort-based thresholds.
//
// Thread-safe: pure functions.
#ifndef ENGRAM_SERVER_CORE_SEPARATION_H_
#define ENGRAM_SERVER_CORE_SEPARATION_H_

#include <cstddef>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace engram::core {

enum class Separation { kSoftmax, kSparsemax, kEntmax15 };

absl::string_view SeparationName(Separation separation);

// Only scores above max(z) - SupportMargin can carry weight: sparsemax's
// threshold is at least max - 1, entmax15's (on z / 2) at least max / 2 - 1.
// Infinite for softmax.
double SupportMargin(Separation separation);

// The threshold tau of sparsemax: weights are max(0, z - tau).
// `z` need not be sorted and must not be empty.
double SparsemaxThreshold(absl::Span<const double> z);

// The threshold tau of 1.5-entmax: weights are max(0, z / 2 - tau)^2.
double Entmax15Threshold(absl::Span<const double> z);

// The threshold of `separation` (unused for softmax, where it is log-sum-exp).
double SeparationThreshold(Separation separation, absl::Span<const double> z);

// The unnormalised weight of score z given the threshold; for softmax the
// threshold is the log-sum-exp and the weight exp(z - tau).
double SeparationWeight(Separation separation, double z, double threshold);

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_SEPARATION_H_

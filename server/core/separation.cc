#include "server/core/separation.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

namespace engram::core {

absl::string_view SeparationName(Separation separation) {
  switch (separation) {
    case Separation::kSoftmax:
      return "softmax";
    case Separation::kSparsemax:
      return "sparsemax";
    case Separation::kEntmax15:
      return "entmax15";
  }
  return "unknown";
}

double SupportMargin(Separation separation) {
  switch (separation) {
    case Separation::kSoftmax:
      return std::numeric_limits<double>::infinity();
    case Separation::kSparsemax:
      return 1.0;
    case Separation::kEntmax15:
      return 2.0;
  }
  return std::numeric_limits<double>::infinity();
}

namespace {

std::vector<double> SortedDescending(absl::Span<const double> z) {
  std::vector<double> sorted(z.begin(), z.end());
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  return sorted;
}

double LogSumExp(absl::Span<const double> z) {
  double max = -std::numeric_limits<double>::infinity();
  for (double v : z) max = std::max(max, v);
  double sum = 0;
  for (double v : z) sum += std::exp(v - max);
  return max + std::log(sum);
}

}  // namespace

double SparsemaxThreshold(absl::Span<const double> z) {
  // The support is the largest k with 1 + k z_(k) > sum_{j<=k} z_(j), with z
  // sorted descending; then tau = (sum_{j<=k} z_(j) - 1) / k.
  const std::vector<double> sorted = SortedDescending(z);
  double cumulative = 0, tau = sorted[0] - 1;
  for (size_t k = 1; k <= sorted.size(); ++k) {
    cumulative += sorted[k - 1];
    if (1 + k * sorted[k - 1] > cumulative) {
      tau = (cumulative - 1) / k;
    } else {
      break;
    }
  }
  return tau;
}

double Entmax15Threshold(absl::Span<const double> z) {
  // With u = z / 2 sorted descending and a support of size k, sum (u - tau)^2
  // = 1 gives tau_k = mean_k - sqrt(1/k - (mean of squares_k - mean_k^2)).
  // The support size is the number of k with tau_k <= u_(k) (Peters et al.
  // 2019). Shifting by max(u) keeps the variance free of cancellation.
  const std::vector<double> sorted = SortedDescending(z);
  const double shift = sorted[0] / 2;
  std::vector<double> taus(sorted.size());
  double sum = 0, sum_squares = 0;
  size_t support = 0;
  for (size_t k = 1; k <= sorted.size(); ++k) {
    const double u = sorted[k - 1] / 2 - shift;
    sum += u;
    sum_squares += u * u;
    const double mean = sum / k;
    const double variance = sum_squares / k - mean * mean;
    taus[k - 1] = mean - std::sqrt(std::max(1.0 / k - variance, 0.0));
    if (taus[k - 1] <= u) ++support;
  }
  return taus[std::max<size_t>(support, 1) - 1] + shift;
}

double SeparationThreshold(Separation separation, absl::Span<const double> z) {
  switch (separation) {
    case Separation::kSoftmax:
      return LogSumExp(z);
    case Separation::kSparsemax:
      return SparsemaxThreshold(z);
    case Separation::kEntmax15:
      return Entmax15Threshold(z);
  }
  return 0;
}

double SeparationWeight(Separation separation, double z, double threshold) {
  switch (separation) {
    case Separation::kSoftmax:
      return std::exp(z - threshold);
    case Separation::kSparsemax:
      return std::max(0.0, z - threshold);
    case Separation::kEntmax15: {
      const double u = std::max(0.0, z / 2 - threshold);
      return u * u;
    }
  }
  return 0;
}

}  // namespace engram::core

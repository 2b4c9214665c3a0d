// Where a vector of floats stops being finite: the check every request's
// values go through (patterns added, queries), at memory speed; and the
// bound on norms and scores that keeps a retrieval's arithmetic finite.
//
//   size_t bad = FirstNonFinite(values);
//   if (bad < values.size()) return Refuse(bad, values[bad]);
//
// Thread-safe: a pure function.
#ifndef ENGRAM_SERVER_CORE_FINITE_H_
#define ENGRAM_SERVER_CORE_FINITE_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/types/span.h"

namespace engram::core {

// The index of the first NaN or infinity in `values`, or values.size() when
// all are finite. Blocks of 16 are checked without a branch per value (the
// compiler vectorizes them: all exponent bits set means NaN or infinity);
// only a block that holds a bad value is looked at one value at a time.
inline size_t FirstNonFinite(absl::Span<const float> values) {
  constexpr size_t kBlock = 16;
  constexpr uint32_t kExponent = 0x7f800000u;
  const float* v = values.data();  // Unchecked: Span's [] may be hardened.
  const size_t n = values.size();
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    uint32_t bad = 0;
    for (size_t k = 0; k < kBlock; ++k) {
      uint32_t bits;
      std::memcpy(&bits, v + i + k, sizeof(bits));
      bad |= static_cast<uint32_t>((bits & kExponent) == kExponent);
    }
    if (bad != 0) break;
  }
  for (; i < n; ++i) {
    if (!std::isfinite(v[i])) return i;
  }
  return n;
}

// ||values||^2 in float, eight sums at a time (an overflow gives infinity,
// which is over any bound it is compared with).
inline float SquaredNorm(absl::Span<const float> values) {
  const float* v = values.data();
  const size_t n = values.size();
  float sums[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t k = 0; k < 8; ++k) sums[k] += v[i + k] * v[i + k];
  }
  for (; i < n; ++i) sums[0] += v[i] * v[i];
  return ((sums[0] + sums[1]) + (sums[2] + sums[3])) +
         ((sums[4] + sums[5]) + (sums[6] + sums[7]));
}

// ||values||, in float when its square fits, else in double.
inline double Norm(absl::Span<const float> values) {
  const float sq = SquaredNorm(values);
  if (sq <= 3e38f) return std::sqrt(double{sq});
  double wide = 0;
  for (float v : values) wide += double{v} * v;
  return std::sqrt(wide);
}

// Finite values can still overflow a score: retrieval keeps every score
// below kMaxScore in magnitude, so that its differences, squared norms and
// beta times it stay within float's range (3.4e38) with a margin.
inline constexpr double kMaxScore = 1e37;

// The largest norm a pattern may have: the scores of two such patterns stay
// below kMaxScore at beta = 1 for every similarity (sqrt(kMaxScore) / 2).
inline constexpr double kMaxNorm = 1.5e18;

// An upper bound on |beta * score| and on every intermediate a score is
// computed from, for query-side vectors of norm at most `query_norm` and
// keys of norm at most `key_norm` in `dim` dimensions: |<q, k>| <= |q| |k|,
// ||q - k||^2 <= (|q| + |k|)^2, ||q - k||_1 <= sqrt(dim) (|q| + |k|), and a
// cosine's squared norms (a cosine itself is at most 1, beta times that
// cannot overflow).
inline double ScoreBound(double beta, double query_norm, double key_norm,
                         size_t dim) {
  const double r = query_norm + key_norm;
  return std::max(beta, 1.0) *
         std::max(r * r, std::sqrt(static_cast<double>(dim)) * r);
}

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_FINITE_H_

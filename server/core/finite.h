// Where a vector of floats stops being finite: the check every request's
// values go through (patterns added, queries), at memory speed.
//
//   size_t bad = FirstNonFinite(values);
//   if (bad < values.size()) return Refuse(bad, values[bad]);
//
// Thread-safe: a pure function.
#ifndef ENGRAM_SERVER_CORE_FINITE_H_
#define ENGRAM_SERVER_CORE_FINITE_H_

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

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_FINITE_H_

// The precisions memories can be kept in, and the conversions between them
// and float32 (docs/precision.md).
//
//   std::vector<uint16_t> half(n);
//   Narrow(Precision::kBFloat16, values, n, half.data());  // Round to nearest.
//   Widen(Precision::kBFloat16, half.data(), n, values);   // Exact.
//
// bfloat16 keeps float32's 8 exponent bits and 7 of its 23 fraction bits
// (relative error <= 2^-9); float16 (IEEE binary16) has 5 exponent bits and
// 10 fraction bits (relative error <= 2^-12, magnitudes up to 65504, and
// subnormals down to 2^-24). Narrowing rounds to nearest, ties to even;
// bfloat16 flushes float32 subnormals (below 2^-126) to a signed zero, as
// the CPU's own conversion instruction does, so every path gives the same
// bits. Widening is exact.
//
// The conversions and the kernels of server/core/internal/half_loops.h use
// AVX-512 or AVX2/F16C where the CPU has them, chosen at run time, with a
// portable fallback giving the same bits.
//
// Thread-safe: pure functions.
#ifndef ENGRAM_SERVER_CORE_PRECISION_H_
#define ENGRAM_SERVER_CORE_PRECISION_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"

namespace engram::core {

enum class Precision : uint8_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

absl::string_view PrecisionName(Precision precision);

// Bytes per value.
inline size_t ElementBytes(Precision precision) {
  return precision == Precision::kFloat32 ? 4 : 2;
}

// `base` advanced by `elements` values of `precision`.
inline const void* Advance(Precision precision, const void* base,
                           size_t elements) {
  return static_cast<const char*>(base) + elements * ElementBytes(precision);
}

// The largest finite float16, and the smallest magnitude that rounds to
// infinity in float16.
inline constexpr float kFloat16Max = 65504.0f;
inline constexpr float kFloat16Overflow = 65520.0f;

// out (n values of `precision`) <- in rounded to nearest, ties to even; a
// copy for float32. For float16, inputs of magnitude >= kFloat16Overflow
// become infinities: callers refuse them first.
void Narrow(Precision precision, const float* in, size_t n, void* out);

// out (n floats) <- in (n values of `precision`), exactly.
void Widen(Precision precision, const void* in, size_t n, float* out);

// x as `precision` keeps it (Widen(Narrow(x))).
float Round(Precision precision, float x);

// The n values at `values` (of `precision`) as float32: `values` itself for
// float32, else widened into `buffer` (resized to n).
const float* AsFloats(Precision precision, const void* values, size_t n,
                      std::vector<float>& buffer);

// The instruction sets the conversions and half kernels run with on this
// CPU (e.g. "AVX-512 conversions, AVX2+F16C kernels", "AVX2+F16C",
// "portable"), for logs and benchmarks.
absl::string_view HalfKernelIsa();

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_PRECISION_H_

// The single-query kernels of the fused retrieval pass over rows kept in
// bfloat16 or float16 (server/core/precision.h): each widens the rows in
// registers as it reads them, so the rows stream from memory at 2 bytes a
// value and the arithmetic stays float32. AVX2 + FMA + F16C where the CPU
// has them (on AVX-512 CPUs too: see KernelTable in precision.cc), chosen
// once at run time; a portable loop otherwise, with the same results up to
// the order of float32 additions. Defined in precision.cc, beside the
// conversions they share. Internal to server/core.
//
// Thread-safe: pure functions.
#ifndef ENGRAM_SERVER_CORE_INTERNAL_HALF_LOOPS_H_
#define ENGRAM_SERVER_CORE_INTERNAL_HALF_LOOPS_H_

#include <cstddef>
#include <cstdint>

#include "server/core/precision.h"

namespace engram::core::internal {

// out[r] = <q, x_r> for four rows x0..x3 of d values of `precision`
// (bfloat16 or float16).
void DotHalf4(Precision precision, const float* q, const uint16_t* x0,
              const uint16_t* x1, const uint16_t* x2, const uint16_t* x3,
              size_t d, float* out);

// y (d) += w[0] x0 + w[1] x1 + w[2] x2 + w[3] x3 for rows of `precision`.
void AddScaledHalf4(Precision precision, const float* w, const uint16_t* x0,
                    const uint16_t* x1, const uint16_t* x2, const uint16_t* x3,
                    float* y, size_t d);

// The portable conversions of one value, which the SIMD ones must equal
// bit for bit (tests).
uint16_t PortableNarrow(Precision precision, float x);
float PortableWiden(Precision precision, uint16_t h);

}  // namespace engram::core::internal

#endif  // ENGRAM_SERVER_CORE_INTERNAL_HALF_LOOPS_H_

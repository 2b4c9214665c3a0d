#include "server/core/internal/vector_loops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
// GCC 12's AVX-512 reductions start from _mm512_undefined_ps(), which it
// then warns about in its own header (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

#include "server/core/blas.h"

// One build runs on every x86-64 CPU and uses AVX2 or AVX-512 where present.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define ENGRAM_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ENGRAM_CLONES
#endif

namespace engram::core::internal {

ENGRAM_CLONES float Dot(const float* a, const float* b, size_t d) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t k = 0; k < d; ++k) sum += a[k] * b[k];
  return sum;
}

ENGRAM_CLONES void AddScaled4(const float* w, const float* x0, const float* x1,
                              const float* x2, const float* x3, float* y,
                              size_t d) {
  const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
#pragma omp simd
  for (size_t k = 0; k < d; ++k) {
    y[k] += w0 * x0[k] + w1 * x1[k] + w2 * x2[k] + w3 * x3[k];
  }
}

ENGRAM_CLONES float L1Distance(const float* a, const float* b, size_t d) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t k = 0; k < d; ++k) sum += std::fabs(a[k] - b[k]);
  return sum;
}

ENGRAM_CLONES void AddScaled(float alpha, const float* x, float* y, size_t d) {
#pragma omp simd
  for (size_t k = 0; k < d; ++k) y[k] += alpha * x[k];
}

void ProductsNT(size_t m, size_t n, size_t k, float alpha, const float* a,
                const float* b, float* c) {
  if (m >= kGemmMinRows) {
    blas::GemmNT(m, n, k, alpha, a, k, b, k, 0.0f, c, n);
    return;
  }
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < n; ++j)
      c[i * n + j] = alpha * Dot(a + i * k, b + j * k, k);
  }
}

void AccumulateNN(size_t m, size_t n, size_t k, const float* a, const float* b,
                  float* c) {
  if (m >= kGemmMinRows) {
    blas::GemmNN(m, n, k, 1.0f, a, k, b, n, 1.0f, c, n);
    return;
  }
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < k; ++j) {
      const float w = a[i * k + j];
      if (w != 0.0f) AddScaled(w, b + j * n, c + i * n, n);
    }
  }
}

namespace {

// exp(x) for x <= 0: x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 split in two
// parts so n ln 2 is exact), e^r by its degree-7 Taylor polynomial (error
// below 1e-8 relative), times 2^n. The same steps in three widths: scalar,
// AVX2 (8 lanes, 2^n built in the exponent bits) and AVX-512 (16 lanes, 2^n
// by vscalefps). Written with intrinsics because GCC does not vectorise the
// scalar form (the clamp and the float-to-int step defeat it).
constexpr float kLog2e = 1.44269504089f;
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.428606765330187e-6f;
constexpr float kExpMin = -87.0f;
constexpr float kC[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24,
                         1.0f / 6,    0.5f,       1.0f,       1.0f};

inline float ExpNonPositive(float x) {
  x = x < kExpMin ? kExpMin : x;
  const float n = std::nearbyint(x * kLog2e);
  const float r = x - n * kLn2Hi - n * kLn2Lo;
  float p = kC[0];
  for (int i = 1; i < 8; ++i) p = p * r + kC[i];
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline __m256 Exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(kExpMin));
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kC[0]);
  for (int i = 1; i < 8; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC[i]));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

__attribute__((target("avx512f"))) inline __m512 Exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(kExpMin));
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kC[0]);
  for (int i = 1; i < 8; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC[i]));
  return _mm512_scalef_ps(p, n);
}

// The lanes j < n of a 16-lane block.
__attribute__((target("avx512f"))) inline __mmask16 Lanes(size_t n) {
  return static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1);
}

template <bool kWrite>
__attribute__((target("avx512f"))) float ExpSum512(float* row, size_t n,
                                                   float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 sum = _mm512_setzero_ps();
  for (size_t j = 0; j < n; j += 16) {
    const __mmask16 m = Lanes(n - j);
    const __m512 e = Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), s));
    if (kWrite) _mm512_mask_storeu_ps(row + j, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

template <bool kWrite>
__attribute__((target("avx2,fma"))) float ExpSum256(float* row, size_t n,
                                                    float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), s));
    if (kWrite) _mm256_storeu_ps(row + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0;
  for (float v : lanes) total += v;
  for (; j < n; ++j) {
    const float e = ExpNonPositive(row[j] - shift);
    if (kWrite) row[j] = e;
    total += e;
  }
  return total;
}

__attribute__((target("avx512f"))) float Max512(const float* row, size_t n) {
  __m512 max = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (size_t j = 0; j < n; j += 16) {
    max = _mm512_mask_max_ps(max, Lanes(n - j), max,
                             _mm512_maskz_loadu_ps(Lanes(n - j), row + j));
  }
  return _mm512_reduce_max_ps(max);
}

__attribute__((target("avx2"))) float Max256(const float* row, size_t n) {
  __m256 max = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  size_t j = 0;
  for (; j + 8 <= n; j += 8) max = _mm256_max_ps(max, _mm256_loadu_ps(row + j));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, max);
  float best = -std::numeric_limits<float>::infinity();
  for (float v : lanes) best = std::max(best, v);
  for (; j < n; ++j) best = std::max(best, row[j]);
  return best;
}
#endif

// The widest of the three this CPU runs (sanitizer builds: scalar, which
// they instrument).
enum class Width { kScalar, kAvx2, kAvx512 };
Width CpuWidth() {
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
  static const Width width = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return Width::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return Width::kAvx2;
    }
    return Width::kScalar;
  }();
  return width;
#else
  return Width::kScalar;
#endif
}

template <bool kWrite>
float ExpSum(float* row, size_t n, float shift) {
#if defined(__x86_64__)
  switch (CpuWidth()) {
    case Width::kAvx512:
      return ExpSum512<kWrite>(row, n, shift);
    case Width::kAvx2:
      return ExpSum256<kWrite>(row, n, shift);
    case Width::kScalar:
      break;
  }
#endif
  float sum = 0;
  for (size_t j = 0; j < n; ++j) {
    const float e = ExpNonPositive(row[j] - shift);
    if (kWrite) row[j] = e;
    sum += e;
  }
  return sum;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) void Dot4x512(const float* q,
                                                 const float* const* x,
                                                 size_t d, float* out) {
  // One row after another: rows stored next to each other are then read as
  // one sequential stream, which the hardware prefetchers follow (reading
  // the four rows side by side made four short streams: measured 2.5x
  // slower per thread). Four accumulators hide the FMA latency.
  for (int r = 0; r < 4; ++r) {
    const float* row = x[r];
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    size_t k = 0;
    for (; k + 64 <= d; k += 64) {
      a0 =
          _mm512_fmadd_ps(_mm512_loadu_ps(q + k), _mm512_loadu_ps(row + k), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + k + 16),
                           _mm512_loadu_ps(row + k + 16), a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + k + 32),
                           _mm512_loadu_ps(row + k + 32), a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + k + 48),
                           _mm512_loadu_ps(row + k + 48), a3);
    }
    for (; k < d; k += 16) {
      const __mmask16 m = Lanes(d - k);
      a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + k),
                           _mm512_maskz_loadu_ps(m, row + k), a0);
    }
    out[r] = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}

__attribute__((target("avx2,fma"))) void Dot4x256(const float* q,
                                                  const float* const* x,
                                                  size_t d, float* out) {
  // Row after row, as Dot4x512.
  for (int r = 0; r < 4; ++r) {
    const float* row = x[r];
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 32 <= d; k += 32) {
      a0 =
          _mm256_fmadd_ps(_mm256_loadu_ps(q + k), _mm256_loadu_ps(row + k), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + k + 8),
                           _mm256_loadu_ps(row + k + 8), a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + k + 16),
                           _mm256_loadu_ps(row + k + 16), a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + k + 24),
                           _mm256_loadu_ps(row + k + 24), a3);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(
        lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    float sum = 0;
    for (float v : lanes) sum += v;
    for (; k < d; ++k) sum += q[k] * row[k];
    out[r] = sum;
  }
}
#endif

}  // namespace

void Dot4(const float* q, const float* x0, const float* x1, const float* x2,
          const float* x3, size_t d, float* out) {
  const float* const x[4] = {x0, x1, x2, x3};
#if defined(__x86_64__)
  switch (CpuWidth()) {
    case Width::kAvx512:
      return Dot4x512(q, x, d, out);
    case Width::kAvx2:
      return Dot4x256(q, x, d, out);
    case Width::kScalar:
      break;
  }
#endif
  for (int r = 0; r < 4; ++r) out[r] = Dot(q, x[r], d);
}

float ExpInPlace(float* row, size_t n, float shift) {
  return ExpSum<true>(row, n, shift);
}

float SumExp(const float* row, size_t n, float shift) {
  return ExpSum<false>(const_cast<float*>(row), n, shift);
}

float Max(const float* row, size_t n) {
#if defined(__x86_64__)
  switch (CpuWidth()) {
    case Width::kAvx512:
      return Max512(row, n);
    case Width::kAvx2:
      return Max256(row, n);
    case Width::kScalar:
      break;
  }
#endif
  float max = -std::numeric_limits<float>::infinity();
  for (size_t j = 0; j < n; ++j) max = std::max(max, row[j]);
  return max;
}

}  // namespace engram::core::internal

#if defined(__x86_64__)
#pragma GCC diagnostic pop
#endif

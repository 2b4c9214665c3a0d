#include "server/core/internal/vector_loops.h"

#include <cmath>
#include <cstdint>
#include <cstring>

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
// below 1e-8 relative), times 2^n built in the exponent bits. Written so the
// compiler vectorises the loops that call it.
inline float ExpNonPositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.44269504089f + 0.5f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-6f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace

ENGRAM_CLONES float ExpInPlace(float* row, size_t n, float shift) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t j = 0; j < n; ++j) {
    row[j] = ExpNonPositive(row[j] - shift);
    sum += row[j];
  }
  return sum;
}

ENGRAM_CLONES float SumExp(const float* row, size_t n, float shift) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t j = 0; j < n; ++j) sum += ExpNonPositive(row[j] - shift);
  return sum;
}

}  // namespace engram::core::internal

#include "server/core/internal/vector_loops.h"

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

}  // namespace engram::core::internal

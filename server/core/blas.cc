#include "server/core/blas.h"

#include <cblas.h>

namespace engram::core::blas {

namespace {

// cblas_?gemm, row-major, with the sizes as BLAS wants them.
void Gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, size_t m, size_t n, size_t k,
          float alpha, const float* a, size_t lda, const float* b, size_t ldb,
          float beta, float* c, size_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}
void Gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, size_t m, size_t n, size_t k,
          double alpha, const double* a, size_t lda, const double* b,
          size_t ldb, double beta, double* c, size_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

}  // namespace

void GemmNT(size_t m, size_t n, size_t k, float alpha, const float* a,
            size_t lda, const float* b, size_t ldb, float beta, float* c,
            size_t ldc) {
  Gemm(CblasNoTrans, CblasTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void GemmNN(size_t m, size_t n, size_t k, float alpha, const float* a,
            size_t lda, const float* b, size_t ldb, float beta, float* c,
            size_t ldc) {
  Gemm(CblasNoTrans, CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
       ldc);
}

void GemmTN(size_t m, size_t n, size_t k, float alpha, const float* a,
            size_t lda, const float* b, size_t ldb, float beta, float* c,
            size_t ldc) {
  Gemm(CblasTrans, CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void GemmNN(size_t m, size_t n, size_t k, double alpha, const double* a,
            size_t lda, const double* b, size_t ldb, double beta, double* c,
            size_t ldc) {
  Gemm(CblasNoTrans, CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
       ldc);
}

void GemmTN(size_t m, size_t n, size_t k, double alpha, const double* a,
            size_t lda, const double* b, size_t ldb, double beta, double* c,
            size_t ldc) {
  Gemm(CblasTrans, CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void Gemv(size_t m, size_t n, double alpha, const double* a, size_t lda,
          const double* x, double beta, double* y) {
  if (m == 0) return;
  cblas_dgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), alpha, a, static_cast<int>(lda), x, 1, beta,
              y, 1);
}

void SyrkUpper(size_t n, size_t k, float alpha, const float* a, size_t lda,
               float beta, float* c, size_t ldc) {
  if (n == 0) return;
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), beta, c,
              static_cast<int>(ldc));
}

void Axpy(size_t n, float alpha, const float* x, float* y) {
  cblas_saxpy(static_cast<int>(n), alpha, x, 1, y, 1);
}

void SetThreads(int threads) {
  openblas_set_num_threads(threads < 1 ? 1 : threads);
}

std::string CoreName() { return openblas_get_corename(); }

}  // namespace engram::core::blas

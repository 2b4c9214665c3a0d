#include "server/core/blas.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

// LAPACK as OpenBLAS exports it (Fortran: every argument by address, the
// characters' lengths last). Debian ships no header for it with OpenBLAS.
extern "C" {
void dsyevr_(const char* jobz, const char* range, const char* uplo,
             const int* n, double* a, const int* lda, const double* vl,
             const double* vu, const int* il, const int* iu,
             const double* abstol, int* m, double* w, double* z, const int* ldz,
             int* isuppz, double* work, const int* lwork, int* iwork,
             const int* liwork, int* info, size_t jobz_len, size_t range_len,
             size_t uplo_len);
}

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

std::optional<double> LargestEigenvalue(size_t n, const double* s,
                                        double tolerance) {
  if (n == 0) return std::nullopt;
  // A symmetric matrix is its own transpose: row- and column-major alike.
  std::vector<double> a(s, s + n * n);
  std::vector<double> values(n);
  const int size = static_cast<int>(n);
  const int one = 1;
  const double unused = 0;
  int found = 0, info = 0;
  double z = 0;
  int isuppz[2] = {0, 0};
  // Only the n-th (largest), no vectors: bisection on the tridiagonal form
  // (every eigenvalue by LAPACK's root-free QR measured 1.5x slower).
  const auto largest = [&](double* work, int lwork, int* iwork, int liwork) {
    dsyevr_("N", "I", "U", &size, a.data(), &size, &unused, &unused, &size,
            &size, &tolerance, &found, values.data(), &z, &one, isuppz, work,
            &lwork, iwork, &liwork, &info, 1, 1, 1);
  };
  double work_size = 0;
  int iwork_size = 0;
  largest(&work_size, -1, &iwork_size, -1);  // First: how much workspace.
  if (info != 0) return std::nullopt;
  std::vector<double> work(std::max(static_cast<int>(work_size), 26 * size));
  std::vector<int> iwork(std::max(iwork_size, 10 * size));
  largest(work.data(), static_cast<int>(work.size()), iwork.data(),
          static_cast<int>(iwork.size()));
  if (info != 0 || found != 1) return std::nullopt;
  return values[0];
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

// The one place engram calls BLAS (and the LAPACK routine OpenBLAS carries
// that it needs). Every matrix is row-major; shapes are given as
// (rows x cols) and leading dimensions in elements.
//
// Thread-safe: OpenBLAS serialises what it must; callers may run concurrently.
#ifndef ENGRAM_SERVER_CORE_BLAS_H_
#define ENGRAM_SERVER_CORE_BLAS_H_

#include <cstddef>
#include <optional>
#include <string>

namespace engram::core::blas {

// C (m x n) = alpha * A (m x k) * B^T + beta * C, with B of size n x k.
void GemmNT(size_t m, size_t n, size_t k, float alpha, const float* a,
            size_t lda, const float* b, size_t ldb, float beta, float* c,
            size_t ldc);

// C (m x n) = alpha * A (m x k) * B + beta * C, with B of size k x n.
void GemmNN(size_t m, size_t n, size_t k, float alpha, const float* a,
            size_t lda, const float* b, size_t ldb, float beta, float* c,
            size_t ldc);

// C (m x n) = alpha * A^T * B + beta * C, with A of size k x m, B k x n.
void GemmTN(size_t m, size_t n, size_t k, float alpha, const float* a,
            size_t lda, const float* b, size_t ldb, float beta, float* c,
            size_t ldc);

// The same two products in double precision (the low-rank sums).
void GemmNN(size_t m, size_t n, size_t k, double alpha, const double* a,
            size_t lda, const double* b, size_t ldb, double beta, double* c,
            size_t ldc);
void GemmTN(size_t m, size_t n, size_t k, double alpha, const double* a,
            size_t lda, const double* b, size_t ldb, double beta, double* c,
            size_t ldc);

// y (m) = alpha * A (m x n) * x (n) + beta * y, in double precision.
void Gemv(size_t m, size_t n, double alpha, const double* a, size_t lda,
          const double* x, double beta, double* y);

// C (n x n) = alpha * A A^T + beta * C for A of size n x k; only the upper
// triangle of C (j >= i) is written.
void SyrkUpper(size_t n, size_t k, float alpha, const float* a, size_t lda,
               float beta, float* c, size_t ldc);

// The largest eigenvalue of the symmetric n x n matrix s (LAPACK dsyevr),
// within `tolerance` or about n * 2^-52 of s's norm, whichever is larger;
// nullopt if LAPACK fails.
std::optional<double> LargestEigenvalue(size_t n, const double* s,
                                        double tolerance);

// y (n) += alpha * x (n).
void Axpy(size_t n, float alpha, const float* x, float* y);

// Sets the number of threads OpenBLAS uses for one call (>= 1).
void SetThreads(int threads);

// The kernel family OpenBLAS chose for this CPU (e.g. "Haswell", "SkylakeX").
std::string CoreName();

}  // namespace engram::core::blas

#endif  // ENGRAM_SERVER_CORE_BLAS_H_

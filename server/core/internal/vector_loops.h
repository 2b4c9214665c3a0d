// Vectorised loops: products too small for sgemm (one to a few rows), and
// the passes over scores around the products (maximum, exp and sums, in
// AVX-512 or AVX2 where the CPU has them). They run in the calling thread,
// so small requests never queue behind large products in OpenBLAS's shared
// thread pool. Internal to server/core.
//
// Thread-safe: pure functions.
#ifndef ENGRAM_SERVER_CORE_INTERNAL_VECTOR_LOOPS_H_
#define ENGRAM_SERVER_CORE_INTERNAL_VECTOR_LOOPS_H_

#include <cstddef>

namespace engram::core::internal {

// Below this many rows on the short side, products use these loops.
inline constexpr size_t kGemmMinRows = 4;

// <a, b> for vectors of size d.
float Dot(const float* a, const float* b, size_t d);

// out[r] = <q, x_r> for four vectors x0..x3 of size d: one pass over q, and
// enough independent sums to keep the FMA units busy.
void Dot4(const float* q, const float* x0, const float* x1, const float* x2,
          const float* x3, size_t d, float* out);

// y (d) += w[0] x0 + w[1] x1 + w[2] x2 + w[3] x3: four rows folded into y
// with one read and one write of y.
void AddScaled4(const float* w, const float* x0, const float* x1,
                const float* x2, const float* x3, float* y, size_t d);

// z (nq x nx, row stride ldz) = <q_i, x_j> for nq vectors q and nx rows x,
// each of size d and stored one after another: the scores of a few queries
// against a span of rows, in blocks of four queries by six rows with
// AVX-512 (two by four with AVX2), each loaded vector serving several
// products, without sgemm's packing.
void DotsNT(const float* q, size_t nq, const float* x, size_t nx, size_t d,
            float* z, size_t ldz);

// Up to how many queries scoring and accumulating spans of rows with DotsNT
// and AccumulateRows beats sgemm's pair of products, with the instruction
// set the loops run with: AVX-512 128, AVX2 16. Measured at d = 784 on an
// AMD EPYC (M = 10,000 and 60,000, alternating): AVX-512 1.4x faster at
// L = 16, 5-10% at 64-128, level at 256 and 512 (left to sgemm, the path
// measured on Intel too); AVX2 level at 16, 20% slower from 32.
size_t FusedQueries();

// y (nq x d) += w (nq x nx, row stride ldw) x (nx x d, rows one after
// another): a span of rows folded into a few outputs, each output tile
// loaded and stored once per call.
void AccumulateRows(const float* w, size_t nq, size_t ldw, const float* x,
                    size_t nx, size_t d, float* y);

// sum_k |a_k - b_k| for vectors of size d.
float L1Distance(const float* a, const float* b, size_t d);

// sum_k a_k^2, each term and the sum in double.
double SquaredNormWide(const float* a, size_t d);

// sum_k (b_k - a_k)^2, each difference and the sum in double.
double SquaredDistanceWide(const float* a, const float* b, size_t d);

// y (d) += alpha * x (d).
void AddScaled(float alpha, const float* x, float* y, size_t d);

// c (m x n) = alpha * a (m x k) b^T (b: n x k): sgemm from kGemmMinRows rows
// of a, loops below.
void ProductsNT(size_t m, size_t n, size_t k, float alpha, const float* a,
                const float* b, float* c);

// c (m x n) += a (m x k) b (k x n), skipping zero entries of a below
// kGemmMinRows rows.
void AccumulateNN(size_t m, size_t n, size_t k, const float* a, const float* b,
                  float* c);

// row[j] <- exp(row[j] - shift) for j < n; returns their sum. For arguments
// <= 0 (shift is at least the row's max) the relative error is below 1e-7;
// results below 1e-38 flush to 0.
float ExpInPlace(float* row, size_t n, float shift);

// sum_j exp(row[j] - shift), without writing.
float SumExp(const float* row, size_t n, float shift);

// max_j row[j] (-inf for n = 0).
float Max(const float* row, size_t n);

}  // namespace engram::core::internal

#endif  // ENGRAM_SERVER_CORE_INTERNAL_VECTOR_LOOPS_H_

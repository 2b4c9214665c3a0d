#include "server/core/internal/vector_loops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "server/core/blas.h"
#include "server/core/internal/intrinsics.h"
#include "server/core/internal/isa.h"

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

ENGRAM_CLONES double SquaredNormWide(const float* a, size_t d) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t k = 0; k < d; ++k) sum += double{a[k]} * a[k];
  return sum;
}

ENGRAM_CLONES double SquaredDistanceWide(const float* a, const float* b,
                                         size_t d) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t k = 0; k < d; ++k) {
    const double diff = double{b[k]} - a[k];
    sum += diff * diff;
  }
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
  DotsNT(a, m, b, n, k, c, n);
  if (alpha != 1.0f) {
    for (size_t i = 0; i < m * n; ++i) c[i] *= alpha;
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
  // NaN clamps to kExpMin, as the vector forms' max does (a score that
  // overflowed, inf - inf); the cast below must see a small integer.
  x = x >= kExpMin ? std::min(x, 88.0f) : kExpMin;
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

// The instruction set the loops run with (sanitizer builds: portable, which
// they instrument).
Isa LoopIsa() {
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
  return CurrentIsa();
#else
  return Isa::kPortable;
#endif
}

#if defined(__x86_64__)
// The kernel of the loops' instruction set: `avx512` or `avx2`, or nullptr
// for the portable loop.
template <typename Fn>
Fn* Pick(Fn* avx512, Fn* avx2) {
  switch (LoopIsa()) {
    case Isa::kAvx512:
      return avx512;
    case Isa::kAvx2:
      return avx2;
    case Isa::kPortable:
      break;
  }
  return nullptr;
}
#endif

template <bool kWrite>
float ExpSum(float* row, size_t n, float shift) {
#if defined(__x86_64__)
  if (auto* kernel = Pick(ExpSum512<kWrite>, ExpSum256<kWrite>))
    return kernel(row, n, shift);
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

// Calls block(std::integral_constant<int, N>{}, i) for the queries
// [i, i + N): blocks of N = kBlock, then one block of the N < kBlock left.
template <int N, typename Block>
void QueryRemainder(size_t left, size_t i, const Block& block) {
  if constexpr (N > 0) {
    if (left == N) return block(std::integral_constant<int, N>{}, i);
    QueryRemainder<N - 1>(left, i, block);
  }
}

template <int kBlock, typename Block>
void InQueryBlocks(size_t nq, const Block& block) {
  size_t i = 0;
  for (; i + kBlock <= nq; i += kBlock) {
    block(std::integral_constant<int, kBlock>{}, i);
  }
  QueryRemainder<kBlock - 1>(nq - i, i, block);
}

// Lane a of the result = the sum of the lanes of v[a]: sixteen horizontal
// sums in 15 additions (pairs of vectors, then of 64-bit halves, then of
// 128-bit blocks twice) instead of sixteen separate reductions.
__attribute__((target("avx512f"))) inline __m512 Sum16(const __m512 v[16]) {
  __m512 a[8], b[4];
#pragma GCC unroll 16
  for (int p = 0; p < 8; ++p) {
    a[p] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]),
                         _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]));
  }
#pragma GCC unroll 16
  for (int p = 0; p < 4; ++p) {
    const __m512d x = _mm512_castps_pd(a[2 * p]);
    const __m512d y = _mm512_castps_pd(a[2 * p + 1]);
    b[p] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  constexpr int kEven = _MM_SHUFFLE(2, 0, 2, 0), kOdd = _MM_SHUFFLE(3, 1, 3, 1);
  const __m512 c0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], kEven),
                                  _mm512_shuffle_f32x4(b[0], b[1], kOdd));
  const __m512 c1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], kEven),
                                  _mm512_shuffle_f32x4(b[2], b[3], kOdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, kEven),
                       _mm512_shuffle_f32x4(c0, c1, kOdd));
}

// One step of DotsBlock512: lanes [k, k + 16) of m.
template <int NQ, int R>
__attribute__((target("avx512f"), always_inline)) inline void DotsStep512(
    const float* q, const float* x, size_t d, size_t k, __mmask16 m,
    const float* next, __m512 (&acc)[NQ][R]) {
  __m512 row[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) row[r] = _mm512_maskz_loadu_ps(m, x + r * d + k);
  if (next != nullptr) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(next + r * d + k),
                   _MM_HINT_T0);
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < NQ; ++i) {
    const __m512 qi = _mm512_maskz_loadu_ps(m, q + i * d + k);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      acc[i][r] = _mm512_fmadd_ps(qi, row[r], acc[i][r]);
    }
  }
}

// z[i * ldz + r] = <q_i, x_r> for NQ queries and R rows (both of stride
// d): NQ x R sums in registers (4 x 6: ten loads per 24 FMAs), reduced by
// trees of additions at the end. The loops over registers must unroll, or
// the sums live in memory (3x slower). `next`, if set, is prefetched: the
// rows the next call reads from RAM.
template <int NQ, int R>
__attribute__((target("avx512f"))) void DotsBlock512(const float* q,
                                                     const float* x, size_t d,
                                                     float* z, size_t ldz,
                                                     const float* next) {
  static_assert(R == 4 || R == 6);
  __m512 acc[NQ][R];
#pragma GCC unroll 32
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  }
  size_t k = 0;
  for (; k + 16 <= d; k += 16) {
    DotsStep512<NQ, R>(q, x, d, k, 0xffff, next, acc);
  }
  if (k < d) DotsStep512<NQ, R>(q, x, d, k, Lanes(d - k), next, acc);
  // Rows 0-3 of every query: lane 4 i + r.
  __m512 v[16];
#pragma GCC unroll 16
  for (int a = 0; a < 16; ++a) {
    v[a] = a < 4 * NQ ? acc[a / 4][a % 4] : _mm512_setzero_ps();
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, Sum16(v));
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i) {
    for (int r = 0; r < 4; ++r) z[i * ldz + r] = lanes[4 * i + r];
  }
  if constexpr (R == 6) {
    // Rows 4-5: lane 2 i + r - 4.
#pragma GCC unroll 16
    for (int a = 0; a < 16; ++a) {
      v[a] = a < 2 * NQ ? acc[a / 2][4 + a % 2] : _mm512_setzero_ps();
    }
    _mm512_store_ps(lanes, Sum16(v));
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      z[i * ldz + 4] = lanes[2 * i];
      z[i * ldz + 5] = lanes[2 * i + 1];
    }
  }
}

// Every query against R rows, blocks of four queries then the remainder.
template <int R>
__attribute__((target("avx512f"))) void DotsRows512(const float* q, size_t nq,
                                                    const float* rows, size_t d,
                                                    float* z, size_t ldz,
                                                    const float* next) {
  InQueryBlocks<4>(nq, [&](auto n, size_t i) {
    DotsBlock512<decltype(n)::value, R>(q + i * d, rows, d, z + i * ldz, ldz,
                                        i == 0 ? next : nullptr);
  });
}

__attribute__((target("avx512f"))) void DotsNT512(const float* q, size_t nq,
                                                  const float* x, size_t nx,
                                                  size_t d, float* z,
                                                  size_t ldz) {
  // Six rows at a time, four for the rest. The first block of queries reads
  // the rows from RAM and fetches the next rows meanwhile.
  size_t j = 0;
  for (; j + 6 <= nx; j += 6) {
    const float* rows = x + j * d;
    DotsRows512<6>(q, nq, rows, d, z + j, ldz,
                   j + 12 <= nx ? rows + 6 * d : nullptr);
  }
  for (; j + 4 <= nx; j += 4) {
    DotsRows512<4>(q, nq, x + j * d, d, z + j, ldz, nullptr);
  }
  for (; j < nx; ++j) {
    for (size_t i = 0; i < nq; ++i)
      z[i * ldz + j] = Dot(q + i * d, x + j * d, d);
  }
}

// y_i[k0, k0 + 16 V) += sum_j w[i * ldw + j] x_j[k0, k0 + 16 V) for NQ
// outputs: an NQ x V tile of y in registers over all nx rows; the last
// vector masked to `last` lanes.
template <int NQ, int V>
__attribute__((target("avx512f"))) void AccumulateTile512(
    const float* w, size_t ldw, const float* x, size_t nx, size_t d, float* y,
    __mmask16 last) {
  __m512 acc[NQ][V];
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const __mmask16 m = v == V - 1 ? last : 0xffff;
      acc[i][v] = _mm512_maskz_loadu_ps(m, y + i * d + 16 * v);
    }
  }
  for (size_t j = 0; j < nx; ++j) {
    const float* row = x + j * d;
    __m512 xv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const __mmask16 m = v == V - 1 ? last : 0xffff;
      xv[v] = _mm512_maskz_loadu_ps(m, row + 16 * v);
    }
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      const __m512 wi = _mm512_set1_ps(w[i * ldw + j]);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        acc[i][v] = _mm512_fmadd_ps(wi, xv[v], acc[i][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const __mmask16 m = v == V - 1 ? last : 0xffff;
      _mm512_mask_storeu_ps(y + i * d + 16 * v, m, acc[i][v]);
    }
  }
}

template <int NQ>
__attribute__((target("avx512f"))) void AccumulateQueries512(
    const float* w, size_t ldw, const float* x, size_t nx, size_t d, float* y) {
  size_t k = 0;
  for (; k + 64 <= d; k += 64) {
    AccumulateTile512<NQ, 4>(w, ldw, x + k, nx, d, y + k, 0xffff);
  }
  for (; k < d; k += 16) {
    AccumulateTile512<NQ, 1>(w, ldw, x + k, nx, d, y + k, Lanes(d - k));
  }
}

__attribute__((target("avx512f"))) void AccumulateRows512(const float* w,
                                                          size_t nq, size_t ldw,
                                                          const float* x,
                                                          size_t nx, size_t d,
                                                          float* y) {
  InQueryBlocks<4>(nq, [&](auto n, size_t i) {
    AccumulateQueries512<decltype(n)::value>(w + i * ldw, ldw, x, nx, d,
                                             y + i * d);
  });
}

// The AVX2 forms, with sixteen registers: two queries by four rows of dot
// products, two outputs by four vectors of accumulation.
template <int NQ>
__attribute__((target("avx2,fma"))) void DotsBlock256(const float* q,
                                                      const float* x, size_t d,
                                                      float* z, size_t ldz) {
  __m256 acc[NQ][4];
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 16
    for (int r = 0; r < 4; ++r) acc[i][r] = _mm256_setzero_ps();
  }
  size_t k = 0;
  for (; k + 8 <= d; k += 8) {
    __m256 row[4];
#pragma GCC unroll 16
    for (int r = 0; r < 4; ++r) row[r] = _mm256_loadu_ps(x + r * d + k);
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      const __m256 qi = _mm256_loadu_ps(q + i * d + k);
#pragma GCC unroll 16
      for (int r = 0; r < 4; ++r) {
        acc[i][r] = _mm256_fmadd_ps(qi, row[r], acc[i][r]);
      }
    }
  }
  for (int i = 0; i < NQ; ++i) {
    for (int r = 0; r < 4; ++r) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[i][r]);
      float sum = 0;
      for (float v : lanes) sum += v;
      for (size_t t = k; t < d; ++t) sum += q[i * d + t] * x[r * d + t];
      z[i * ldz + r] = sum;
    }
  }
}

__attribute__((target("avx2,fma"))) void DotsNT256(const float* q, size_t nq,
                                                   const float* x, size_t nx,
                                                   size_t d, float* z,
                                                   size_t ldz) {
  size_t j = 0;
  for (; j + 4 <= nx; j += 4) {
    const float* rows = x + j * d;
    InQueryBlocks<2>(nq, [&](auto n, size_t i) {
      DotsBlock256<decltype(n)::value>(q + i * d, rows, d, z + i * ldz + j,
                                       ldz);
    });
  }
  for (; j < nx; ++j) {
    for (size_t i = 0; i < nq; ++i)
      z[i * ldz + j] = Dot(q + i * d, x + j * d, d);
  }
}

template <int NQ, int V>
__attribute__((target("avx2,fma"))) void AccumulateTile256(
    const float* w, size_t ldw, const float* x, size_t nx, size_t d, float* y) {
  __m256 acc[NQ][V];
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[i][v] = _mm256_loadu_ps(y + i * d + 8 * v);
  }
  for (size_t j = 0; j < nx; ++j) {
    const float* row = x + j * d;
    __m256 xv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) xv[v] = _mm256_loadu_ps(row + 8 * v);
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      const __m256 wi = _mm256_broadcast_ss(w + i * ldw + j);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        acc[i][v] = _mm256_fmadd_ps(wi, xv[v], acc[i][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(y + i * d + 8 * v, acc[i][v]);
  }
}

template <int NQ>
__attribute__((target("avx2,fma"))) void AccumulateQueries256(
    const float* w, size_t ldw, const float* x, size_t nx, size_t d, float* y) {
  size_t k = 0;
  for (; k + 32 <= d; k += 32) {
    AccumulateTile256<NQ, 4>(w, ldw, x + k, nx, d, y + k);
  }
  for (; k + 8 <= d; k += 8) {
    AccumulateTile256<NQ, 1>(w, ldw, x + k, nx, d, y + k);
  }
  for (; k < d; ++k) {
    for (int i = 0; i < NQ; ++i) {
      float sum = y[i * d + k];
      for (size_t j = 0; j < nx; ++j) sum += w[i * ldw + j] * x[j * d + k];
      y[i * d + k] = sum;
    }
  }
}

__attribute__((target("avx2,fma"))) void AccumulateRows256(
    const float* w, size_t nq, size_t ldw, const float* x, size_t nx, size_t d,
    float* y) {
  InQueryBlocks<2>(nq, [&](auto n, size_t i) {
    AccumulateQueries256<decltype(n)::value>(w + i * ldw, ldw, x, nx, d,
                                             y + i * d);
  });
}
#endif

}  // namespace

size_t FusedQueries() { return LoopIsa() == Isa::kAvx512 ? 128 : 16; }

void DotsNT(const float* q, size_t nq, const float* x, size_t nx, size_t d,
            float* z, size_t ldz) {
#if defined(__x86_64__)
  if (auto* kernel = Pick(DotsNT512, DotsNT256))
    return kernel(q, nq, x, nx, d, z, ldz);
#endif
  size_t j = 0;
  for (; j + 4 <= nx; j += 4) {
    const float* rows = x + j * d;
    for (size_t i = 0; i < nq; ++i) {
      float out[4];
      Dot4(q + i * d, rows, rows + d, rows + 2 * d, rows + 3 * d, d, out);
      for (int r = 0; r < 4; ++r) z[i * ldz + j + r] = out[r];
    }
  }
  for (; j < nx; ++j) {
    for (size_t i = 0; i < nq; ++i)
      z[i * ldz + j] = Dot(q + i * d, x + j * d, d);
  }
}

void AccumulateRows(const float* w, size_t nq, size_t ldw, const float* x,
                    size_t nx, size_t d, float* y) {
#if defined(__x86_64__)
  if (auto* kernel = Pick(AccumulateRows512, AccumulateRows256))
    return kernel(w, nq, ldw, x, nx, d, y);
#endif
  for (size_t i = 0; i < nq; ++i) {
    const float* wi = w + i * ldw;
    float* yi = y + i * d;
    size_t j = 0;
    for (; j + 4 <= nx; j += 4) {
      const float* rows = x + j * d;
      AddScaled4(wi + j, rows, rows + d, rows + 2 * d, rows + 3 * d, yi, d);
    }
    for (; j < nx; ++j) AddScaled(wi[j], x + j * d, yi, d);
  }
}

void Dot4(const float* q, const float* x0, const float* x1, const float* x2,
          const float* x3, size_t d, float* out) {
  const float* const x[4] = {x0, x1, x2, x3};
#if defined(__x86_64__)
  if (auto* kernel = Pick(Dot4x512, Dot4x256)) return kernel(q, x, d, out);
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
  if (auto* kernel = Pick(Max512, Max256)) return kernel(row, n);
#endif
  float max = -std::numeric_limits<float>::infinity();
  for (size_t j = 0; j < n; ++j) max = std::max(max, row[j]);
  return max;
}

}  // namespace engram::core::internal

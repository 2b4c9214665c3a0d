#include "server/core/precision.h"

#include <cmath>
#include <cstring>

#include "server/core/cpu.h"
#include "server/core/internal/half_loops.h"
#include "server/core/internal/intrinsics.h"
#include "server/core/internal/isa.h"

namespace engram::core {

absl::string_view PrecisionName(Precision precision) {
  switch (precision) {
    case Precision::kFloat32:
      return "float32";
    case Precision::kBFloat16:
      return "bfloat16";
    case Precision::kFloat16:
      return "float16";
  }
  return "unknown";
}

namespace {

inline uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// --- Portable conversions (the reference every SIMD path must equal) ---

uint16_t ToBFloat16(float f) {
  const uint32_t x = Bits(f);
  if ((x & 0x7f800000u) == 0) return static_cast<uint16_t>((x >> 16) & 0x8000);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40);  // Quiet NaN.
  }
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

float FromBFloat16(uint16_t h) { return FromBits(uint32_t{h} << 16); }

uint16_t ToFloat16(float f) {
  uint32_t x = Bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // Infinity or NaN.
    return static_cast<uint16_t>(sign | 0x7c00u |
                                 (x > 0x7f800000u ? 0x200 : 0));
  }
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (x < 0x38800000u) {  // Below 2^-14: a subnormal float16 or zero.
    if (x <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25.
    const uint32_t e = x >> 23;
    const uint32_t m = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // value / 2^-24 = m / 2^shift.
    uint32_t half = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  const uint32_t r = x - 0x38000000u;  // Exponent rebiased from 127 to 15.
  return static_cast<uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1)) >> 13));
}

float FromFloat16(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t e = (h >> 10) & 0x1f;
  const uint32_t m = h & 0x3ff;
  if (e == 0) {
    const float f = static_cast<float>(m) * 5.9604644775390625e-8f;  // 2^-24
    return sign ? -f : f;
  }
  if (e == 31) return FromBits(sign | 0x7f800000u | (m << 13));
  return FromBits(sign | ((e + 112) << 23) | (m << 13));
}

inline uint16_t NarrowOne(Precision p, float x) {
  return p == Precision::kBFloat16 ? ToBFloat16(x) : ToFloat16(x);
}

inline float WidenOne(Precision p, uint16_t h) {
  return p == Precision::kBFloat16 ? FromBFloat16(h) : FromFloat16(h);
}

void NarrowPortable(Precision p, const float* in, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = NarrowOne(p, in[i]);
}

void WidenPortable(Precision p, const uint16_t* in, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = WidenOne(p, in[i]);
}

void DotPortable(Precision p, const float* q, const uint16_t* const* x,
                 size_t d, float* out) {
  for (int r = 0; r < 4; ++r) {
    float sum = 0;
    for (size_t k = 0; k < d; ++k) sum += q[k] * WidenOne(p, x[r][k]);
    out[r] = sum;
  }
}

void AddScaledPortable(Precision p, const float* w, const uint16_t* const* x,
                       float* y, size_t d) {
  for (size_t k = 0; k < d; ++k) {
    y[k] += w[0] * WidenOne(p, x[0][k]) + w[1] * WidenOne(p, x[1][k]) +
            w[2] * WidenOne(p, x[2][k]) + w[3] * WidenOne(p, x[3][k]);
  }
}

#if defined(__x86_64__)

// --- AVX-512: 16 values at a time; tails through a zero-padded copy ---

template <Precision P>
__attribute__((target("avx512f"))) inline __m512 Load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if (P == Precision::kBFloat16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_cvtph_ps(h);
}

template <Precision P>
__attribute__((target("avx512f"))) inline __m512 LoadTail16(const uint16_t* p,
                                                            size_t n) {
  uint16_t padded[16] = {};
  std::memcpy(padded, p, n * sizeof(uint16_t));
  return Load16<P>(padded);
}

template <Precision P>
__attribute__((target("avx512f"))) void Widen512(const uint16_t* in, size_t n,
                                                 float* out) {
  size_t k = 0;
  for (; k + 16 <= n; k += 16) _mm512_storeu_ps(out + k, Load16<P>(in + k));
  if (k < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - k)) - 1);
    _mm512_mask_storeu_ps(out + k, m, LoadTail16<P>(in + k, n - k));
  }
}

// Narrowing with the CPU's own conversions: VCVTNEPS2BF16 (AVX512_BF16)
// and VCVTPS2PH (AVX-512F), both round to nearest even.
__attribute__((target("avx512f,avx512bf16"))) void NarrowBFloat16Avx512(
    const float* in, size_t n, uint16_t* out) {
  size_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(in + k));
    std::memcpy(out + k, &h, 32);
  }
  NarrowPortable(Precision::kBFloat16, in + k, n - k, out + k);
}

__attribute__((target("avx512f"))) void NarrowFloat16Avx512(const float* in,
                                                            size_t n,
                                                            uint16_t* out) {
  size_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m256i h =
        _mm512_cvtps_ph(_mm512_loadu_ps(in + k), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), h);
  }
  NarrowPortable(Precision::kFloat16, in + k, n - k, out + k);
}

// --- AVX2 (+F16C for float16): 8 values at a time ---

template <Precision P>
__attribute__((target("avx2,fma,f16c"))) inline __m256 Load8(
    const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (P == Precision::kBFloat16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  return _mm256_cvtph_ps(h);
}

template <Precision P>
__attribute__((target("avx2,fma,f16c"))) void Widen256(const uint16_t* in,
                                                       size_t n, float* out) {
  size_t k = 0;
  for (; k + 8 <= n; k += 8) _mm256_storeu_ps(out + k, Load8<P>(in + k));
  WidenPortable(P, in + k, n - k, out + k);
}

__attribute__((target("avx2,fma,f16c"))) inline float Sum8(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  float total = 0;
  for (float x : lanes) total += x;
  return total;
}

template <Precision P>
__attribute__((target("avx2,fma,f16c"))) void Dot256(const float* q,
                                                     const uint16_t* const* x,
                                                     size_t d, float* out) {
  for (int r = 0; r < 4; ++r) {
    const uint16_t* row = x[r];
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= d; k += 16) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + k), Load8<P>(row + k), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + k + 8), Load8<P>(row + k + 8),
                           a1);
    }
    float sum = Sum8(_mm256_add_ps(a0, a1));
    for (; k < d; ++k) sum += q[k] * WidenOne(P, row[k]);
    out[r] = sum;
  }
}

template <Precision P>
__attribute__((target("avx2,fma,f16c"))) void AddScaled256(
    const float* w, const uint16_t* const* x, float* y, size_t d) {
  const __m256 w0 = _mm256_set1_ps(w[0]), w1 = _mm256_set1_ps(w[1]);
  const __m256 w2 = _mm256_set1_ps(w[2]), w3 = _mm256_set1_ps(w[3]);
  size_t k = 0;
  for (; k + 8 <= d; k += 8) {
    __m256 a = _mm256_mul_ps(w0, Load8<P>(x[0] + k));
    a = _mm256_fmadd_ps(w1, Load8<P>(x[1] + k), a);
    a = _mm256_fmadd_ps(w2, Load8<P>(x[2] + k), a);
    a = _mm256_fmadd_ps(w3, Load8<P>(x[3] + k), a);
    _mm256_storeu_ps(y + k, _mm256_add_ps(_mm256_loadu_ps(y + k), a));
  }
  const uint16_t* const rest[4] = {x[0] + k, x[1] + k, x[2] + k, x[3] + k};
  AddScaledPortable(P, w, rest, y + k, d - k);
}

__attribute__((target("avx2,fma,f16c"))) void NarrowFloat16Avx2(const float* in,
                                                                size_t n,
                                                                uint16_t* out) {
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m128i h =
        _mm256_cvtps_ph(_mm256_loadu_ps(in + k), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), h);
  }
  NarrowPortable(Precision::kFloat16, in + k, n - k, out + k);
}

#endif  // __x86_64__

// The kernels of one precision on this CPU.
struct Kernels {
  void (*narrow)(const float*, size_t, uint16_t*);
  void (*widen)(const uint16_t*, size_t, float*);
  void (*dot4)(const float*, const uint16_t* const*, size_t, float*);
  void (*add_scaled4)(const float*, const uint16_t* const*, float*, size_t);
};

template <Precision P>
Kernels PortableKernels() {
  return {[](const float* in, size_t n, uint16_t* out) {
            NarrowPortable(P, in, n, out);
          },
          [](const uint16_t* in, size_t n, float* out) {
            WidenPortable(P, in, n, out);
          },
          [](const float* q, const uint16_t* const* x, size_t d, float* out) {
            DotPortable(P, q, x, d, out);
          },
          [](const float* w, const uint16_t* const* x, float* y, size_t d) {
            AddScaledPortable(P, w, x, y, d);
          }};
}

using internal::Isa;

struct KernelTable {
  Isa isa = Isa::kPortable;
  Kernels bfloat16 = PortableKernels<Precision::kBFloat16>();
  Kernels float16 = PortableKernels<Precision::kFloat16>();

  explicit KernelTable(Isa chosen) : isa(chosen) {
#if defined(__x86_64__)
    // The single-query kernels are 8 lanes wide on AVX-512 CPUs too: on
    // CPUs that split 512-bit operations in two, 16-lane ones cost more
    // than twice as much. Measured on an AMD EPYC, one query over 60,000
    // rows took 5.0-5.6 ms (bfloat16) with 512-bit kernels and 4.1-4.9 ms
    // with 256-bit ones; float16 1.54-1.66x faster than float32 against
    // 1.83-1.95x (1,000,000 rows: 1.45x against 1.76x). A single query is
    // bound by memory, which 8 lanes keep up with on any AVX-512 CPU.
    if (isa != Isa::kPortable) {
      bfloat16.widen = Widen256<Precision::kBFloat16>;
      bfloat16.dot4 = Dot256<Precision::kBFloat16>;
      bfloat16.add_scaled4 = AddScaled256<Precision::kBFloat16>;
      float16 = {NarrowFloat16Avx2, Widen256<Precision::kFloat16>,
                 Dot256<Precision::kFloat16>,
                 AddScaled256<Precision::kFloat16>};
    }
    // Conversions 16 values at a time.
    if (isa == Isa::kAvx512) {
      if (DetectCpu().avx512_bf16) bfloat16.narrow = NarrowBFloat16Avx512;
      bfloat16.widen = Widen512<Precision::kBFloat16>;
      float16.narrow = NarrowFloat16Avx512;
      float16.widen = Widen512<Precision::kFloat16>;
    }
#endif
  }

  const Kernels& of(Precision p) const {
    return p == Precision::kBFloat16 ? bfloat16 : float16;
  }
};

// The table of each instruction set, built once.
const KernelTable* TableFor(Isa isa) {
  static const KernelTable* const tables[] = {new KernelTable(Isa::kPortable),
                                              new KernelTable(Isa::kAvx2),
                                              new KernelTable(Isa::kAvx512)};
  return tables[static_cast<int>(isa)];
}

const KernelTable& Table() { return *TableFor(internal::CurrentIsa()); }

}  // namespace

void Narrow(Precision precision, const float* in, size_t n, void* out) {
  if (precision == Precision::kFloat32) {
    std::memcpy(out, in, n * sizeof(float));
    return;
  }
  Table().of(precision).narrow(in, n, static_cast<uint16_t*>(out));
}

void Widen(Precision precision, const void* in, size_t n, float* out) {
  if (precision == Precision::kFloat32) {
    std::memcpy(out, in, n * sizeof(float));
    return;
  }
  Table().of(precision).widen(static_cast<const uint16_t*>(in), n, out);
}

float Round(Precision precision, float x) {
  if (precision == Precision::kFloat32) return x;
  return WidenOne(precision, NarrowOne(precision, x));
}

const float* AsFloats(Precision precision, const void* values, size_t n,
                      std::vector<float>& buffer) {
  if (precision == Precision::kFloat32) {
    return static_cast<const float*>(values);
  }
  buffer.resize(n);
  Widen(precision, values, n, buffer.data());
  return buffer.data();
}

absl::string_view HalfKernelIsa() {
  switch (Table().isa) {
    case Isa::kAvx512:
      return "AVX-512 conversions, AVX2+F16C kernels";
    case Isa::kAvx2:
      return "AVX2+F16C";
    case Isa::kPortable:
      break;
  }
  return "portable";
}

namespace internal {

void DotHalf4(Precision precision, const float* q, const uint16_t* x0,
              const uint16_t* x1, const uint16_t* x2, const uint16_t* x3,
              size_t d, float* out) {
  const uint16_t* const x[4] = {x0, x1, x2, x3};
  Table().of(precision).dot4(q, x, d, out);
}

void AddScaledHalf4(Precision precision, const float* w, const uint16_t* x0,
                    const uint16_t* x1, const uint16_t* x2, const uint16_t* x3,
                    float* y, size_t d) {
  const uint16_t* const x[4] = {x0, x1, x2, x3};
  Table().of(precision).add_scaled4(w, x, y, d);
}

uint16_t PortableNarrow(Precision precision, float x) {
  return NarrowOne(precision, x);
}

float PortableWiden(Precision precision, uint16_t h) {
  return WidenOne(precision, h);
}

}  // namespace internal

}  // namespace engram::core

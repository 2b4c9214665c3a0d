#include "server/core/precision.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "server/core/internal/half_loops.h"
#include "server/core/retrieval.h"
#include "tests/core/kernel_isa.h"
#include "tests/core/memories.h"

namespace engram::core {
namespace {

constexpr Precision kHalves[] = {Precision::kBFloat16, Precision::kFloat16};

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Values that probe rounding: ties at both parities, subnormals of both
// formats, the edges of float16's range, signed zeros, random magnitudes.
std::vector<float> Probes() {
  std::vector<float> v = {
      0.0f,           -0.0f,         1.0f,          -1.0f,
      1.00390625f,    1.01171875f,   65504.0f,      65519.99f,
      -65504.0f,      6.1035156e-5f, 5.9604645e-8f, 2.9802322e-8f,
      2.98023259e-8f, 1e-40f,        -1e-40f,       1.17549435e-38f,
      3.0e38f,        0.1f,          1.0f / 3,      2049.0f,
      2051.0f,        4097.0f,       -4099.0f};
  std::mt19937 rng(3);
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  for (int i = 0; i < 20000; ++i) {
    const float f = FromBits(bits(rng));
    if (std::isfinite(f)) v.push_back(f);
  }
  std::normal_distribution<float> normal(0.0f, 100.0f);
  for (int i = 0; i < 20000; ++i) v.push_back(normal(rng));
  // Exact ties of bfloat16 and of float16.
  for (uint32_t m : {0x3f808000u, 0x3f818000u, 0x3f801000u, 0x3f803000u}) {
    v.push_back(FromBits(m));
  }
  return v;
}

// Each test runs with the kernels of every instruction set this CPU has.
class PrecisionTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    isa_ = std::make_unique<ScopedKernelIsa>(GetParam());
    if (!isa_->ok()) GTEST_SKIP() << "this CPU lacks " << GetParam();
  }
  void TearDown() override { isa_.reset(); }

 private:
  std::unique_ptr<ScopedKernelIsa> isa_;
};

INSTANTIATE_TEST_SUITE_P(Isas, PrecisionTest, ::testing::ValuesIn(kKernelIsas));

TEST_P(PrecisionTest, NarrowingMatchesThePortableConversionBitForBit) {
  const std::vector<float> in = Probes();
  for (Precision p : kHalves) {
    std::vector<uint16_t> out(in.size());
    Narrow(p, in.data(), in.size(), out.data());
    for (size_t i = 0; i < in.size(); ++i) {
      ASSERT_EQ(out[i], internal::PortableNarrow(p, in[i]))
          << PrecisionName(p) << " of " << in[i] << " (bits " << std::hex
          << Bits(in[i]) << ") on " << HalfKernelIsa();
    }
  }
}

TEST(PrecisionRoundingTest, RoundingIsToNearestEven) {
  // bfloat16 keeps 7 fraction bits: 1 + 2^-8 is halfway, to even (1).
  EXPECT_EQ(Round(Precision::kBFloat16, 1.00390625f), 1.0f);
  EXPECT_EQ(Round(Precision::kBFloat16, 1.01171875f), 1.015625f);
  // float16 keeps 10: 2049 is halfway between 2048 and 2050.
  EXPECT_EQ(Round(Precision::kFloat16, 2049.0f), 2048.0f);
  EXPECT_EQ(Round(Precision::kFloat16, 2051.0f), 2052.0f);
  EXPECT_EQ(Round(Precision::kFloat16, 65504.0f), 65504.0f);
  EXPECT_TRUE(std::isinf(Round(Precision::kFloat16, 65520.0f)));
  EXPECT_EQ(Round(Precision::kFloat16, 65519.0f), 65504.0f);
  // float16 subnormals, and the halfway point below the smallest.
  EXPECT_EQ(Round(Precision::kFloat16, 5.9604645e-8f), 5.9604645e-8f);
  EXPECT_EQ(Round(Precision::kFloat16, 2.9802322e-8f), 0.0f);
  EXPECT_EQ(Round(Precision::kFloat16, 3.0e-8f), 5.9604645e-8f);
  // bfloat16 flushes float32 subnormals, keeping the sign.
  EXPECT_EQ(Bits(Round(Precision::kBFloat16, -1e-40f)), 0x80000000u);
  EXPECT_NEAR(Round(Precision::kBFloat16, 3.0e38f), 3.0e38f, 3.0e38f / 256);
  EXPECT_TRUE(std::isfinite(Round(Precision::kBFloat16, 3.0e38f)));
  EXPECT_EQ(Round(Precision::kFloat32, 0.1f), 0.1f);
  // Relative error bounds.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1000.0f, 1000.0f);
  for (int i = 0; i < 10000; ++i) {
    const float x = u(rng);
    EXPECT_LE(std::fabs(Round(Precision::kBFloat16, x) - x),
              std::ldexp(std::fabs(x), -8));
    EXPECT_LE(std::fabs(Round(Precision::kFloat16, x) - x),
              std::ldexp(std::fabs(x), -11));
  }
}

TEST_P(PrecisionTest, WideningIsExactAndInvertsNarrowing) {
  for (Precision p : kHalves) {
    std::vector<uint16_t> all(65536);
    for (uint32_t h = 0; h < 65536; ++h) all[h] = static_cast<uint16_t>(h);
    std::vector<float> wide(all.size());
    Widen(p, all.data(), all.size(), wide.data());
    for (uint32_t h = 0; h < 65536; ++h) {
      const float portable = internal::PortableWiden(p, all[h]);
      if (std::isnan(portable)) continue;
      ASSERT_EQ(Bits(wide[h]), Bits(portable)) << PrecisionName(p) << " " << h;
      // bfloat16 subnormals are never produced (flushed on narrowing).
      const bool flushed =
          p == Precision::kBFloat16 && (h & 0x7f80) == 0 && (h & 0x7f) != 0;
      if (flushed) continue;
      uint16_t back = 0;
      Narrow(p, &wide[h], 1, &back);
      ASSERT_EQ(back, all[h]) << PrecisionName(p) << " " << h;
    }
  }
}

TEST_P(PrecisionTest, HalfKernelsEqualFloatLoopsOnWidenedRows) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (Precision p : kHalves) {
    for (size_t d : {1, 7, 16, 17, 33, 784}) {
      std::vector<float> q(d), rows(4 * d), y(d), expected_y(d);
      for (float& v : q) v = normal(rng);
      for (float& v : rows) v = Round(p, normal(rng));
      for (size_t k = 0; k < d; ++k) y[k] = expected_y[k] = normal(rng);
      std::vector<uint16_t> half(4 * d);
      Narrow(p, rows.data(), rows.size(), half.data());
      float dots[4];
      internal::DotHalf4(p, q.data(), half.data(), half.data() + d,
                         half.data() + 2 * d, half.data() + 3 * d, d, dots);
      const float w[4] = {0.5f, -1.25f, 2.0f, 0.125f};
      internal::AddScaledHalf4(p, w, half.data(), half.data() + d,
                               half.data() + 2 * d, half.data() + 3 * d,
                               y.data(), d);
      for (int r = 0; r < 4; ++r) {
        double dot = 0, scale = 0;
        for (size_t k = 0; k < d; ++k) {
          dot += double{q[k]} * rows[r * d + k];
          scale += std::fabs(double{q[k]} * rows[r * d + k]);
        }
        EXPECT_NEAR(dots[r], dot, 1e-5 * (1 + scale)) << d;
      }
      for (size_t k = 0; k < d; ++k) {
        double sum = expected_y[k];
        for (int r = 0; r < 4; ++r) sum += double{w[r]} * rows[r * d + k];
        EXPECT_NEAR(y[k], sum, 1e-5 * (1 + std::fabs(sum))) << d;
      }
    }
  }
}

// The same memories as float32 blocks and as 16-bit blocks (their values
// rounded first): every similarity and separation, one query (the fused
// pass) and a batch, agree up to float32 summation order.
TEST_P(PrecisionTest, RetrievalOverHalfRowsEqualsRetrievalOverTheirValues) {
  for (Precision p : kHalves) {
    Fixture f(24, {70, 5, 130}, 17, 0.3f);
    for (auto& block : f.rows) {
      for (float& v : block) v = Round(p, v);
    }
    for (size_t b = 0; b < f.rows.size(); ++b) {
      const size_t n = f.rows[b].size() / f.dim;
      for (size_t i = 0; i < n; ++i) {
        double s = 0;
        for (size_t k = 0; k < f.dim; ++k) {
          s += double{f.rows[b][i * f.dim + k]} * f.rows[b][i * f.dim + k];
        }
        f.norms[b][i] = static_cast<float>(s);
      }
    }
    f.UseMap(24, 5);
    for (auto& block : f.keys) {
      for (float& v : block) v = Round(p, v);
    }
    for (size_t b = 0; b < f.keys.size(); ++b) {
      const size_t n = f.keys[b].size() / 24;
      for (size_t i = 0; i < n; ++i) {
        double s = 0;
        for (size_t k = 0; k < 24; ++k) {
          s += double{f.keys[b][i * 24 + k]} * f.keys[b][i * 24 + k];
        }
        f.key_norms[b][i] = static_cast<float>(s);
      }
    }
    // The 16-bit copy of every block.
    std::vector<std::vector<uint16_t>> rows16, keys16;
    MemorySet half = f.set;
    for (size_t b = 0; b < f.rows.size(); ++b) {
      rows16.emplace_back(f.rows[b].size());
      Narrow(p, f.rows[b].data(), f.rows[b].size(), rows16.back().data());
      keys16.emplace_back(f.keys[b].size());
      Narrow(p, f.keys[b].data(), f.keys[b].size(), keys16.back().data());
      half.blocks[b].rows = rows16.back().data();
      half.blocks[b].keys = keys16.back().data();
      half.blocks[b].precision = p;
    }
    std::vector<float> queries(3 * f.dim);
    for (size_t i = 0; i < queries.size(); ++i) {
      queries[i] = FloatRow(f.set, 40 + i / f.dim)[i % f.dim] * 0.7f;
    }
    for (Similarity sim :
         {Similarity::kDot, Similarity::kL2, Similarity::kManhattan,
          Similarity::kCosine, Similarity::kKernelDot, Similarity::kKernelL2}) {
      for (Separation sep : {Separation::kSoftmax, Separation::kSparsemax,
                             Separation::kEntmax15}) {
        RetrievalParams params{sim, sep, 2.0f, 2, 0.0f, 3};
        for (size_t l : {1, 3}) {
          auto want = RetrieveExact(f.set, queries.data(), l, params);
          auto got = RetrieveExact(half, queries.data(), l, params);
          ASSERT_TRUE(want.ok() && got.ok());
          for (size_t i = 0; i < want->states.size(); ++i) {
            EXPECT_NEAR(got->states[i], want->states[i], 1e-4)
                << PrecisionName(p) << " " << SimilarityName(sim) << " L=" << l;
          }
          for (size_t q = 0; q < l; ++q) {
            ASSERT_EQ(got->matches[q].size(), want->matches[q].size());
            EXPECT_EQ(got->matches[q][0].index, want->matches[q][0].index);
            EXPECT_NEAR(got->energies[q], want->energies[q],
                        1e-4 * (1 + std::fabs(want->energies[q])));
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace engram::core

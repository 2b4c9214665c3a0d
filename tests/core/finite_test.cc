// FirstNonFinite: the first NaN or infinity wherever it sits (in a block of
// 16, in the tail, first, last), and nothing for finite extremes.
#include "server/core/finite.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace engram::core {
namespace {

TEST(FiniteTest, FindsTheFirstBadValueWhereverItSits) {
  constexpr float kBad[] = {std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
  for (size_t n : {0, 1, 15, 16, 17, 33, 784}) {
    std::vector<float> values(n, 1.5f);
    EXPECT_EQ(FirstNonFinite(values), n);
    for (size_t at = 0; at < n; ++at) {
      for (float bad : kBad) {
        values[at] = bad;
        ASSERT_EQ(FirstNonFinite(values), at) << "n=" << n << " value=" << bad;
        if (at + 5 < n) {  // A later bad value does not hide this one.
          values[at + 5] = kBad[2];
          ASSERT_EQ(FirstNonFinite(values), at);
          values[at + 5] = 1.5f;
        }
        values[at] = 1.5f;
      }
    }
  }
}

TEST(FiniteTest, FiniteExtremesAreFinite) {
  const std::vector<float> values = {std::numeric_limits<float>::max(),
                                     -std::numeric_limits<float>::max(),
                                     std::numeric_limits<float>::min(),
                                     std::numeric_limits<float>::denorm_min(),
                                     -std::numeric_limits<float>::denorm_min(),
                                     0.0f,
                                     -0.0f,
                                     1e38f,
                                     -3.0f,
                                     7.0f,
                                     2.0f,
                                     1.0f,
                                     0.5f,
                                     0.25f,
                                     -1e-38f,
                                     9.0f,
                                     std::numeric_limits<float>::max()};
  EXPECT_EQ(FirstNonFinite(values), values.size());
}

TEST(FiniteTest, NormsPastFloatAreMeasuredInDouble) {
  EXPECT_FLOAT_EQ(Norm(std::vector<float>(17, 2.0f)), 2 * std::sqrt(17.0));
  EXPECT_EQ(Norm({}), 0.0);
  const std::vector<float> big(9, 3e38f);  // Its square overflows float.
  EXPECT_NEAR(Norm(big), 9e38, 1e32);
}

// ScoreBound holds every similarity's score (and the squared norms a score
// is computed from) for vectors of random directions and norms.
TEST(FiniteTest, ScoreBoundHoldsEverySimilarity) {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  for (size_t dim : {1, 2, 7, 64, 784}) {
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<double> q(dim), k(dim);
      const double qs = std::pow(10.0, normal(rng) * 3);
      const double ks = std::pow(10.0, normal(rng) * 3);
      for (size_t j = 0; j < dim; ++j) {
        q[j] = normal(rng) * qs;
        k[j] = normal(rng) * ks;
      }
      double dot = 0, qq = 0, kk = 0, l2 = 0, l1 = 0;
      for (size_t j = 0; j < dim; ++j) {
        dot += q[j] * k[j];
        qq += q[j] * q[j];
        kk += k[j] * k[j];
        l2 += (q[j] - k[j]) * (q[j] - k[j]);
        l1 += std::abs(q[j] - k[j]);
      }
      const double beta = std::pow(10.0, normal(rng));
      const double bound =
          ScoreBound(beta, std::sqrt(qq), std::sqrt(kk), dim) * (1 + 1e-12);
      for (double score : {dot, l2, l1}) {
        EXPECT_LE(beta * std::abs(score), bound) << dim;
      }
      EXPECT_LE(std::max(qq, kk), bound) << dim;  // A cosine's norms.
    }
  }
}

}  // namespace
}  // namespace engram::core

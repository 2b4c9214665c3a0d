#include "server/core/separation.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/core/reference.h"

namespace engram::core {
namespace {

std::vector<double> RandomScores(std::mt19937& rng, size_t n, double scale) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> z(n);
  for (double& v : z) v = normal(rng);
  return z;
}

// 1.5-entmax by bisection on tau (independent of the sort-based threshold).
std::vector<double> Entmax15Bisection(const std::vector<double>& z) {
  const double max = *std::max_element(z.begin(), z.end()) / 2;
  double lo = max - 1, hi = max;
  for (int i = 0; i < 200; ++i) {
    const double tau = (lo + hi) / 2;
    double sum = 0;
    for (double v : z) sum += std::pow(std::max(0.0, v / 2 - tau), 2);
    (sum > 1 ? lo : hi) = tau;
  }
  std::vector<double> p(z.size());
  for (size_t i = 0; i < z.size(); ++i) {
    p[i] = std::pow(std::max(0.0, z[i] / 2 - (lo + hi) / 2), 2);
  }
  return p;
}

TEST(SeparationTest, EveryKindSumsToOneAndIsNonNegative) {
  std::mt19937 rng(1);
  for (Separation s :
       {Separation::kSoftmax, Separation::kSparsemax, Separation::kEntmax15}) {
    for (double scale : {0.01, 0.5, 3.0, 100.0}) {
      const std::vector<double> p = Separate(s, RandomScores(rng, 50, scale));
      EXPECT_NEAR(std::accumulate(p.begin(), p.end(), 0.0), 1.0, 1e-12);
      for (double w : p) EXPECT_GE(w, 0.0);
    }
  }
}

TEST(SeparationTest, SparsemaxIsTheProjectionOntoTheSimplex) {
  // KKT: p_i = z_i - tau on the support, and z_i <= tau off it.
  std::mt19937 rng(2);
  for (int trial = 0; trial < 100; ++trial) {
    const std::vector<double> z = RandomScores(rng, 1 + trial % 40, 1.0);
    const double tau = SparsemaxThreshold(z);
    const std::vector<double> p = Separate(Separation::kSparsemax, z);
    double sum = 0;
    for (size_t i = 0; i < z.size(); ++i) {
      if (p[i] > 0) {
        EXPECT_NEAR(p[i], z[i] - tau, 1e-12);
      } else {
        EXPECT_LE(z[i], tau + 1e-12);
      }
      sum += std::max(0.0, z[i] - tau);
    }
    EXPECT_NEAR(sum, 1.0, 1e-12) << "the threshold itself is exact";
  }
}

TEST(SeparationTest, SparsemaxIsSparseWhenScoresAreSpread) {
  const std::vector<double> z = {5.0, 1.0, 0.5, -2.0};
  const std::vector<double> p = Separate(Separation::kSparsemax, z);
  EXPECT_DOUBLE_EQ(p[0], 1.0);
  EXPECT_EQ(p[1], 0.0);
  // Close scores share the mass: (0.3, 0.1) -> tau = -0.3 -> (0.6, 0.4).
  const std::vector<double> q = Separate(Separation::kSparsemax, {0.3, 0.1});
  EXPECT_NEAR(q[0], 0.6, 1e-12);
  EXPECT_NEAR(q[1], 0.4, 1e-12);
}

TEST(SeparationTest, Entmax15MatchesBisection) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 100; ++trial) {
    const std::vector<double> z =
        RandomScores(rng, 1 + trial % 60, 0.2 + trial * 0.05);
    const std::vector<double> exact = Separate(Separation::kEntmax15, z);
    const std::vector<double> reference = Entmax15Bisection(z);
    double sum = 0;
    for (size_t i = 0; i < z.size(); ++i) {
      EXPECT_NEAR(exact[i], reference[i], 1e-9) << "trial " << trial;
      sum += std::pow(std::max(0.0, z[i] / 2 - Entmax15Threshold(z)), 2);
    }
    EXPECT_NEAR(sum, 1.0, 1e-9);
  }
}

TEST(SeparationTest, Entmax15IsSparseAndBetweenSoftmaxAndSparsemax) {
  const std::vector<double> z = {3.0, 2.5, 0.0, -1.0, -4.0};
  const std::vector<double> ent = Separate(Separation::kEntmax15, z);
  const std::vector<double> sparse = Separate(Separation::kSparsemax, z);
  EXPECT_EQ(ent[4], 0.0);
  EXPECT_GT(ent[1], sparse[1]);  // Smoother than sparsemax.
}

TEST(SeparationTest, ThresholdsIgnoreScoresBelowTheMargin) {
  // Only scores within SupportMargin of the max can matter: appending far
  // lower scores leaves the threshold unchanged.
  for (Separation s : {Separation::kSparsemax, Separation::kEntmax15}) {
    std::vector<double> z = {1.0, 0.7, 0.2};
    const double tau = SeparationThreshold(s, z);
    z.push_back(1.0 - SupportMargin(s) - 1e-9);
    z.push_back(-50);
    EXPECT_NEAR(SeparationThreshold(s, z), tau, 1e-12) << SeparationName(s);
  }
}

TEST(SeparationTest, SoftmaxIsStableForHugeScores) {
  const std::vector<double> p = Separate(Separation::kSoftmax, {1000.0, 999.0});
  EXPECT_NEAR(p[0], 1 / (1 + std::exp(-1.0)), 1e-12);
}

}  // namespace
}  // namespace engram::core

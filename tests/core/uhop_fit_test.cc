#include "server/core/uhop_fit.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace engram::core {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

MemorySet Set(const std::vector<float>& rows, const std::vector<float>& norms,
              size_t d) {
  MemorySet set;
  set.dim = d;
  set.blocks.push_back({rows.data(), norms.data(), rows.size() / d});
  return set;
}

class GradientTest : public ::testing::TestWithParam<SeparationLoss> {};

TEST_P(GradientTest, MatchesCentralFiniteDifferences) {
  const size_t n = 7, d = 5, p = 4;
  const std::vector<float> x = Random(n * d, 1);
  std::vector<float> w = Random(p * d, 2);
  std::vector<float> gradient;
  SeparationLossAndGradient(x.data(), n, d, w, p, GetParam(), 2.0, &gradient);
  double max_abs = 0;
  for (float g : gradient) max_abs = std::max(max_abs, double{std::fabs(g)});
  ASSERT_GT(max_abs, 1e-3);
  for (size_t i = 0; i < w.size(); ++i) {
    const float h = 1e-2f, saved = w[i];
    w[i] = saved + h;
    const double up = SeparationLossAndGradient(x.data(), n, d, w, p,
                                                GetParam(), 2.0, nullptr);
    w[i] = saved - h;
    const double down = SeparationLossAndGradient(x.data(), n, d, w, p,
                                                  GetParam(), 2.0, nullptr);
    w[i] = saved;
    EXPECT_NEAR(gradient[i], (up - down) / (2 * h), 2e-2 * max_abs)
        << "entry " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(BothLosses, GradientTest,
                         ::testing::Values(SeparationLoss::kMean,
                                           SeparationLoss::kMax),
                         [](const auto& info) {
                           return info.param == SeparationLoss::kMean ? "mean"
                                                                      : "max";
                         });

TEST(UhopFitTest, LossIsTheReferenceFormula) {
  // Two unit vectors at 90 degrees: ||a - b||^2 = 2, so both losses are -2t.
  const std::vector<float> x = {1, 0, 0, 1};
  const std::vector<float> identity = {1, 0, 0, 1};
  for (SeparationLoss loss : {SeparationLoss::kMean, SeparationLoss::kMax}) {
    EXPECT_NEAR(SeparationLossAndGradient(x.data(), 2, 2, identity, 2, loss,
                                          2.0, nullptr),
                -4.0, 1e-6);
  }
}

struct FitCase {
  SeparationLoss loss;
  FitOptimizer optimizer;
};

class FitTest : public ::testing::TestWithParam<FitCase> {};

TEST_P(FitTest, LossDecreasesAndTheFitIsDeterministic) {
  const size_t m = 60, d = 12;
  // Clustered patterns: close pairs the fit has to push apart.
  std::vector<float> x = Random(m * d, 3, 0.1f);
  for (size_t i = 0; i < m; ++i) x[i * d + i % 3] += 1.0f;
  std::vector<float> norms(m, 0.0f);
  const MemorySet set = Set(x, norms, d);
  FitOptions options;
  options.loss = GetParam().loss;
  options.optimizer = GetParam().optimizer;
  options.epochs = 60;
  options.seed = 5;
  const FeatureMap initial = FeatureMap::RandomNormal(d, d, 5);
  int epochs_seen = 0;
  absl::StatusOr<FitResult> fit =
      FitFeatureMap(set, initial, options, [&](const FitProgress& p) {
        EXPECT_EQ(p.epoch, static_cast<uint32_t>(++epochs_seen));
        return absl::OkStatus();
      });
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->epochs, 60u);
  EXPECT_EQ(epochs_seen, 60);
  EXPECT_LT(fit->loss_after, fit->loss_before);
  const std::vector<float> fitted(fit->map.weights());
  const double before = SeparationLossAndGradient(
      x.data(), m, d, initial.weights(), d, options.loss, 2.0, nullptr);
  const double after = SeparationLossAndGradient(x.data(), m, d, fitted, d,
                                                 options.loss, 2.0, nullptr);
  EXPECT_LT(after, before);
  absl::StatusOr<FitResult> again = FitFeatureMap(set, initial, options);
  EXPECT_EQ(again->map.weights(), fitted) << "same seed, same map";
}

INSTANTIATE_TEST_SUITE_P(
    Optimisers, FitTest,
    ::testing::Values(FitCase{SeparationLoss::kMax, FitOptimizer::kSgd},
                      FitCase{SeparationLoss::kMean, FitOptimizer::kSgd},
                      FitCase{SeparationLoss::kMax, FitOptimizer::kAdam},
                      FitCase{SeparationLoss::kMean, FitOptimizer::kAdam}));

TEST(UhopFitTest, MinibatchesBoundTheWorkAndStillHelp) {
  const size_t m = 3000, d = 16;
  std::vector<float> x = Random(m * d, 4, 0.2f);
  for (size_t i = 0; i < m; ++i) x[i * d] += 1.0f;
  std::vector<float> norms(m, 0.0f);
  FitOptions options;
  options.loss = SeparationLoss::kMean;
  options.batch_size = 128;
  options.epochs = 40;
  const FeatureMap initial = FeatureMap::Identity(d);
  absl::StatusOr<FitResult> fit =
      FitFeatureMap(Set(x, norms, d), initial, options);
  ASSERT_TRUE(fit.ok());
  std::vector<float> identity(d * d, 0.0f);
  for (size_t k = 0; k < d; ++k) identity[k * d + k] = 1.0f;
  // Judged on a fixed sample of 500 patterns.
  EXPECT_LT(SeparationLossAndGradient(x.data(), 500, d, fit->map.weights(), d,
                                      SeparationLoss::kMean, 2.0, nullptr),
            SeparationLossAndGradient(x.data(), 500, d, identity, d,
                                      SeparationLoss::kMean, 2.0, nullptr));
}

TEST(UhopFitTest, CancelStopsBetweenEpochs) {
  const std::vector<float> x = Random(40 * 4, 6);
  std::vector<float> norms(40, 0.0f);
  absl::StatusOr<FitResult> fit = FitFeatureMap(
      Set(x, norms, 4), FeatureMap::Identity(4), FitOptions{},
      [](const FitProgress& p) {
        return p.epoch == 3 ? absl::CancelledError("stop") : absl::OkStatus();
      });
  EXPECT_EQ(fit.status().code(), absl::StatusCode::kCancelled);
}

TEST(UhopFitTest, NeedsTwoPatterns) {
  const std::vector<float> x = {1, 2};
  std::vector<float> norms(1, 0.0f);
  EXPECT_EQ(FitFeatureMap(Set(x, norms, 2), FeatureMap::Identity(2), {})
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace engram::core

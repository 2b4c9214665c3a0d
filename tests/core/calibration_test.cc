#include "server/core/calibration.h"

#include <cmath>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace engram::core {
namespace {

// Memories with their squared norms, as one block.
struct Memories {
  Memories(std::vector<float> values, size_t dim) : rows(std::move(values)) {
    const size_t n = rows.size() / dim;
    for (size_t i = 0; i < n; ++i) {
      double sq = 0;
      for (size_t k = 0; k < dim; ++k)
        sq += double{rows[i * dim + k]} * rows[i * dim + k];
      sq_norms.push_back(static_cast<float>(sq));
    }
    set.dim = dim;
    set.blocks.push_back({rows.data(), sq_norms.data(), n});
  }
  std::vector<float> rows;
  std::vector<float> sq_norms;
  MemorySet set;
};

// n patterns in [0, 1]^dim with norms spread over a factor of three, like
// images of different brightness: the dot product favours the bright ones.
std::vector<float> Patterns(size_t n, size_t dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::vector<float> v(n * dim);
  for (size_t i = 0; i < n; ++i) {
    const float brightness = 0.33f + 0.67f * unit(rng);
    for (size_t k = 0; k < dim; ++k) {
      v[i * dim + k] = unit(rng) < 0.5f ? brightness * unit(rng) : 0.0f;
    }
  }
  return v;
}

TEST(CorruptTest, DropoutZeroesAboutLevelAndScalesTheRest) {
  std::vector<float> rows(10000, 1.0f);
  Corrupt(Corruption::kDropout, 0.25f, 3, rows.data(), 100, 100);
  size_t zeros = 0;
  for (float v : rows) {
    if (v == 0.0f) {
      ++zeros;
    } else {
      EXPECT_FLOAT_EQ(v, 1.0f / 0.75f);
    }
  }
  EXPECT_NEAR(zeros / 10000.0, 0.25, 0.02);
}

TEST(CorruptTest, MaskZeroesExactlyTheFractionPerRow) {
  std::vector<float> rows(7 * 40, 2.0f);
  Corrupt(Corruption::kMask, 0.3f, 5, rows.data(), 7, 40);
  for (size_t r = 0; r < 7; ++r) {
    size_t zeros = 0;
    for (size_t k = 0; k < 40; ++k) {
      zeros += rows[r * 40 + k] == 0.0f;
      if (rows[r * 40 + k] != 0.0f) {
        EXPECT_EQ(rows[r * 40 + k], 2.0f);
      }
    }
    EXPECT_EQ(zeros, 12u) << "row " << r;
  }
}

TEST(CorruptTest, GaussianAddsNoiseOfLevelAndIsSeeded) {
  std::vector<float> a(20000, 0.0f), b(20000, 0.0f), c(20000, 0.0f);
  Corrupt(Corruption::kGaussian, 0.5f, 9, a.data(), 200, 100);
  Corrupt(Corruption::kGaussian, 0.5f, 9, b.data(), 200, 100);
  Corrupt(Corruption::kGaussian, 0.5f, 10, c.data(), 200, 100);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  double sq = 0;
  for (float v : a) sq += double{v} * v;
  EXPECT_NEAR(std::sqrt(sq / a.size()), 0.5, 0.02);
}

CalibrationOptions Options(uint64_t seed) {
  CalibrationOptions o;
  o.corruption = Corruption::kGaussian;
  o.level = 0.3f;
  o.sample_size = 96;
  o.seed = seed;
  return o;
}

TEST(CalibrateTest, FindsABetterBetaThanAPoorOne) {
  Memories m(Patterns(400, 32, 1), 32);
  RetrievalParams poor{Similarity::kL2, Separation::kSoftmax, 1e-3f};
  absl::StatusOr<CalibrationResult> r = Calibrate(m.set, poor, Options(7));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->improved);
  EXPECT_LT(r->best.error, 0.5 * r->current.error);
  EXPECT_GE(r->best.recall_at_1, r->current.recall_at_1);
  EXPECT_GT(r->best.params.beta, 1.0f);
  EXPECT_EQ(r->best.params.similarity, Similarity::kL2);  // Not searched.
  EXPECT_EQ(r->sample_size, 96u);
  EXPECT_EQ(r->memories_used, 400u);
  // 1 + 12 coarse + extensions + 4 refinements.
  EXPECT_GE(r->evaluated.size(), 17u);
  EXPECT_LE(r->evaluated.size(), 21u);
}

TEST(CalibrateTest, SameSeedSameResultOtherSeedOtherSample) {
  Memories m(Patterns(300, 24, 2), 24);
  RetrievalParams start{Similarity::kDot, Separation::kSoftmax, 1.0f};
  CalibrationOptions o = Options(11);
  o.search_similarity = o.search_separation = true;
  absl::StatusOr<CalibrationResult> a = Calibrate(m.set, start, o);
  absl::StatusOr<CalibrationResult> b = Calibrate(m.set, start, o);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->evaluated.size(), b->evaluated.size());
  for (size_t i = 0; i < a->evaluated.size(); ++i) {
    EXPECT_EQ(a->evaluated[i].params.beta, b->evaluated[i].params.beta);
    EXPECT_EQ(a->evaluated[i].error, b->evaluated[i].error);
    EXPECT_EQ(a->evaluated[i].recall_at_1, b->evaluated[i].recall_at_1);
  }
  EXPECT_EQ(a->best.params.similarity, b->best.params.similarity);
  EXPECT_EQ(a->best.params.separation, b->best.params.separation);
  EXPECT_EQ(a->best.params.beta, b->best.params.beta);
  EXPECT_EQ(a->well_separated_fraction, b->well_separated_fraction);
  EXPECT_EQ(a->theory_beta_median, b->theory_beta_median);

  absl::StatusOr<CalibrationResult> c = Calibrate(m.set, start, Options(12));
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->current.error, c->current.error);  // Another sample.
}

TEST(CalibrateTest, SearchingTheSimilarityLeavesTheDotProduct) {
  // Brightness varies, so <xi, x> prefers bright patterns to the right one.
  Memories m(Patterns(300, 32, 3), 32);
  RetrievalParams start{Similarity::kDot, Separation::kSoftmax, 1.0f};
  CalibrationOptions o = Options(5);
  o.search_similarity = true;
  absl::StatusOr<CalibrationResult> r = Calibrate(m.set, start, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->current.recall_at_1, 0.5);
  EXPECT_NE(r->best.params.similarity, Similarity::kDot);
  EXPECT_GT(r->best.recall_at_1, r->current.recall_at_1 + 0.25);
  EXPECT_TRUE(r->improved);
  // Kernel forms are not tried without a feature map.
  for (const CalibrationScore& s : r->evaluated) {
    EXPECT_FALSE(IsKernel(s.params.similarity));
  }
}

TEST(CalibrateTest, NeverChoosesAWorseSetting) {
  Memories m(Patterns(200, 16, 4), 16);
  std::mt19937_64 rng(99);
  const Similarity sims[] = {Similarity::kDot, Similarity::kL2,
                             Similarity::kManhattan, Similarity::kCosine};
  const Separation seps[] = {Separation::kSoftmax, Separation::kSparsemax,
                             Separation::kEntmax15};
  for (int trial = 0; trial < 12; ++trial) {
    RetrievalParams start{
        sims[trial % 4], seps[trial % 3],
        std::pow(10.0f, std::uniform_real_distribution<float>(-3, 3)(rng))};
    CalibrationOptions o = Options(trial);
    o.search_similarity = trial % 2 == 0;
    o.search_separation = trial % 3 == 0;
    absl::StatusOr<CalibrationResult> r = Calibrate(m.set, start, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_LE(r->best.error, r->current.error) << "trial " << trial;
    EXPECT_GE(r->best.recall_at_1, r->current.recall_at_1) << "trial " << trial;
    if (!r->improved) {
      EXPECT_EQ(r->best.params.beta, start.beta);
      EXPECT_EQ(r->best.params.similarity, start.similarity);
    }
    // Calibrating again from the chosen setting keeps it or improves on it.
    absl::StatusOr<CalibrationResult> again =
        Calibrate(m.set, r->best.params, o);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->current.error, r->best.error);
    EXPECT_LE(again->best.error, r->best.error);
  }
}

TEST(CalibrateTest, LargeStoresAreSampledWithinTheWorkBudget) {
  const size_t n = 60000, d = 16;
  Memories m(Patterns(n, d, 6), d);
  RetrievalParams start{Similarity::kL2, Separation::kSoftmax, 1.0f};
  CalibrationOptions o = Options(3);
  o.sample_size = 512;
  o.max_work = 2e9;
  absl::StatusOr<CalibrationResult> r = Calibrate(m.set, start, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sample_size, 64u);  // First fewer queries...
  EXPECT_LT(r->memories_used, n);  // ...then fewer memories.
  EXPECT_GE(r->memories_used, 128u);
  EXPECT_LE(r->work, o.max_work);
  EXPECT_GT(r->work, 0.3 * o.max_work);

  // A budget the store fits in uses everything.
  o.max_work = 1e13;
  o.sample_size = 32;
  r = Calibrate(m.set, start, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->sample_size, 32u);
  EXPECT_EQ(r->memories_used, n);
}

TEST(CalibrateTest, SeparationReportOnOrthogonalAndDuplicatePatterns) {
  const size_t n = 50;
  std::vector<float> basis(n * n, 0.0f);
  for (size_t i = 0; i < n; ++i) basis[i * n + i] = 1.0f;
  Memories m(basis, n);
  RetrievalParams start{Similarity::kDot, Separation::kSoftmax, 64.0f};
  CalibrationOptions o = Options(1);
  o.corruption = Corruption::kMask;
  o.level = 0.1f;
  absl::StatusOr<CalibrationResult> r = Calibrate(m.set, start, o);
  ASSERT_TRUE(r.ok()) << r.status();
  // Gap 1 against a margin log(49) / beta for every beta calibration keeps.
  EXPECT_EQ(r->well_separated_fraction,
            r->best.params.beta >= std::log(49.0) ? 1.0 : 0.0);
  // The theory's beta: Delta = 1, m = 1, M = 50.
  const double beta = r->theory_beta_median;
  const auto f = [&](double b) {
    return (2.0 / n + std::log(2.0 * (n - 1) * n * b)) / b;
  };
  EXPECT_LE(f(beta), 1.0 + 1e-6);
  EXPECT_GT(f(beta * 0.99), 1.0);
  EXPECT_EQ(r->theory_beta_p90, beta);

  // Every pattern twice: no pattern beats its twin.
  std::vector<float> twice = basis;
  twice.insert(twice.end(), basis.begin(), basis.end());
  Memories dup(twice, n);
  r = Calibrate(dup.set, start, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->well_separated_fraction, 0.0);
  EXPECT_TRUE(std::isinf(r->theory_beta_median));
}

TEST(CalibrateTest, RejectsBadLevelsAndTinyStores) {
  Memories m(Patterns(10, 4, 1), 4);
  RetrievalParams start;
  CalibrationOptions o;
  o.level = 1.0f;
  EXPECT_EQ(Calibrate(m.set, start, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.corruption = Corruption::kGaussian;
  o.level = -1.0f;
  EXPECT_EQ(Calibrate(m.set, start, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  Memories one(Patterns(1, 4, 1), 4);
  o.level = 0.5f;
  EXPECT_EQ(Calibrate(one.set, start, o).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(CalibrateTest, CancellationStopsIt) {
  Memories m(Patterns(100, 8, 1), 8);
  CalibrationOptions o = Options(1);
  int calls = 0;
  o.retrieval.check = [&calls]() -> absl::Status {
    return ++calls > 5 ? absl::CancelledError("stop") : absl::OkStatus();
  };
  EXPECT_EQ(Calibrate(m.set, RetrievalParams{}, o).status().code(),
            absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace engram::core

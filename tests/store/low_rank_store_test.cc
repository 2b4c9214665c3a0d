// The store's low-rank sums and the path planner.
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/low_rank.h"
#include "server/store/retrieve.h"
#include "server/store/storage.h"
#include "server/store/store.h"

namespace engram::store {
namespace {

using ::testing::HasSubstr;

// `count` patterns of norm `norm` in random directions, ids first_id...
std::vector<Pattern> RandomPatterns(size_t count, uint32_t dim, double norm,
                                    uint64_t first_id, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::vector<Pattern> patterns(count);
  for (size_t i = 0; i < count; ++i) {
    Pattern& p = patterns[i];
    p.id = first_id + i;
    p.values.resize(dim);
    double sq = 0;
    for (float& v : p.values) {
      v = normal(rng);
      sq += double{v} * v;
    }
    for (float& v : p.values) v = static_cast<float>(v * norm / std::sqrt(sq));
  }
  return patterns;
}

StoreSettings DotSettings(uint32_t dim) {
  StoreSettings s;
  s.name = "s";
  s.dimension = dim;
  s.retrieval.top_k = 0;
  return s;
}

// The view's sums against sums built from scratch over its patterns.
void ExpectSumsMatchARebuild(const StoreView& view) {
  ASSERT_NE(view.low_rank(), nullptr);
  const core::LowRankSums& sums = *view.low_rank();
  core::LowRankSums rebuilt(
      std::make_shared<const core::TaylorBasis>(sums.basis()), sums.dim(),
      sums.keys_are_rows());
  for (const core::MemoryBlock& block : view.memories().blocks) {
    std::vector<float> rows(block.count * view.settings().dimension);
    std::vector<float> keys(block.keys ? block.count * view.map()->out_dim()
                                       : 0);
    for (size_t r = 0; r < block.count; ++r) {
      block.CopyRow(r, view.settings().dimension,
                    rows.data() + r * view.settings().dimension);
      if (block.keys) {
        block.CopyKey(r, view.map()->out_dim(),
                      keys.data() + r * view.map()->out_dim());
      }
    }
    rebuilt.Add(sums.keys_are_rows() ? rows.data() : keys.data(), rows.data(),
                block.count, 1.0);
  }
  rebuilt.Finish();
  EXPECT_NEAR(sums.count(), static_cast<double>(view.size()), 1e-9);
  for (size_t i = 0; i < sums.a().size(); ++i) {
    ASSERT_NEAR(sums.a()[i], rebuilt.a()[i],
                1e-9 * (1 + std::abs(rebuilt.a()[i])))
        << i;
  }
  for (size_t i = 0; i < sums.z().size(); ++i) {
    ASSERT_NEAR(sums.z()[i], rebuilt.z()[i],
                1e-9 * (1 + std::abs(rebuilt.z()[i])))
        << i;
  }
}

TEST(LowRankStoreTest, SumsFollowAddsAndDeletesExactly) {
  std::mt19937_64 rng(1);
  EphemeralStorage storage;
  Store store(DotSettings(6), Limits{}, &storage);
  EXPECT_EQ(store.view()->low_rank_state().degree, 4u);
  EXPECT_EQ(store.view()->low_rank_state().rank, core::TaylorRank(6, 4));
  ASSERT_TRUE(store.Add(RandomPatterns(500, 6, 1.0, 1, rng)).ok());
  ASSERT_TRUE(store.Add(RandomPatterns(1, 6, 1.0, 1000, rng)).ok());
  ExpectSumsMatchARebuild(*store.view());
  std::vector<uint64_t> gone;
  for (uint64_t id = 3; id <= 500; id += 7) gone.push_back(id);
  ASSERT_TRUE(store.Delete(gone).ok());
  ExpectSumsMatchARebuild(*store.view());
  ASSERT_TRUE(store.Add(RandomPatterns(40, 6, 2.0, 2000, rng)).ok());
  ExpectSumsMatchARebuild(*store.view());
  // An old view keeps the sums of its own patterns.
  std::shared_ptr<const StoreView> old = store.view();
  ASSERT_TRUE(store.Delete({1000}).ok());
  ExpectSumsMatchARebuild(*old);
  ExpectSumsMatchARebuild(*store.view());
}

TEST(LowRankStoreTest, KernelSumsAreRebuiltWithANewMap) {
  std::mt19937_64 rng(2);
  EphemeralStorage storage;
  StoreSettings settings = DotSettings(5);
  settings.retrieval.similarity = core::Similarity::kKernelDot;
  settings.feature_map.kind = FeatureMapKind::kUhop;
  settings.feature_map.feature_dim = 3;
  Store store(settings, Limits{}, &storage);
  ASSERT_TRUE(store.Add(RandomPatterns(200, 5, 1.0, 1, rng)).ok());
  ExpectSumsMatchARebuild(*store.view());
  EXPECT_FALSE(store.view()->low_rank()->keys_are_rows());
  std::vector<float> w(15, 0.0f);
  for (int i = 0; i < 3; ++i) w[i * 5 + i] = 0.5f;
  ASSERT_TRUE(store
                  .PublishMap(std::make_shared<core::FeatureMap>(5, 3, w),
                              FitRecord{1, 0, 0, 1, 0, 200})
                  .ok());
  ExpectSumsMatchARebuild(*store.view());
  EXPECT_NEAR(store.view()->map_norm(), 0.5, 0.005);
  ASSERT_TRUE(store.Add(RandomPatterns(20, 5, 1.0, 500, rng)).ok());
  ExpectSumsMatchARebuild(*store.view());
}

TEST(LowRankStoreTest, SettingsDecideWhetherSumsAreKept) {
  EphemeralStorage storage;
  Limits limits;
  limits.max_low_rank_values = 153 * 17;  // d = 16: degree 2 only.
  Store store(DotSettings(16), limits, &storage);
  EXPECT_EQ(store.view()->low_rank_state().degree, 2u);
  EXPECT_EQ(store.view()->low_rank_state().rank, 153u);
  ASSERT_TRUE(store
                  .UpdateSettings([](StoreSettings& s) {
                    s.retrieval.separation = core::Separation::kSparsemax;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(store.view()->low_rank(), nullptr);
  EXPECT_THAT(store.view()->low_rank_state().detail,
              HasSubstr("separation sparsemax has no low-rank form"));
  Limits tiny;
  tiny.max_low_rank_values = 100;
  Store small(DotSettings(16), tiny, &storage);
  EXPECT_EQ(small.view()->low_rank(), nullptr);
  EXPECT_THAT(
      small.view()->low_rank_state().detail,
      HasSubstr("153 x 17 values; the limit max_low_rank_values is 100"));
}

class PlannerTest : public ::testing::Test {
 protected:
  // M patterns of norm `norm` in `dim` dimensions, dot similarity.
  void Fill(size_t count, uint32_t dim, double norm,
            StoreSettings settings = DotSettings(0)) {
    std::mt19937_64 rng(7);
    if (settings.dimension == 0) settings = DotSettings(dim);
    store_ = std::make_unique<Store>(settings, Limits{}, &storage_);
    ASSERT_TRUE(store_->Add(RandomPatterns(count, dim, norm, 1, rng)).ok());
    queries_.clear();
    for (const Pattern& p : RandomPatterns(8, dim, norm, 1, rng)) {
      queries_.insert(queries_.end(), p.values.begin(), p.values.end());
    }
  }

  absl::StatusOr<RetrieveResult> Run(PathChoice path,
                                     std::optional<double> tolerance = {},
                                     std::optional<float> beta = {}) {
    RetrieveRequest request;
    request.queries = queries_;
    request.num_queries =
        queries_.size() / store_->view()->settings().dimension;
    request.path = path;
    request.tolerance = tolerance;
    request.beta = beta;
    return Retrieve(*store_->view(), request, Limits{}, {});
  }

  EphemeralStorage storage_;
  std::unique_ptr<Store> store_;
  std::vector<float> queries_;
};

TEST_F(PlannerTest, AutoTakesTheSmallestDegreeThatMeetsTheTolerance) {
  Fill(20000, 8, 0.4);
  absl::StatusOr<RetrieveResult> loose = Run(PathChoice::kAuto, 1e-2);
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_EQ(loose->path.path, PathChoice::kLowRank) << loose->path.reason;
  EXPECT_EQ(loose->path.degree, 2u);
  EXPECT_EQ(loose->path.rank, core::TaylorRank(8, 2));
  EXPECT_LE(loose->path.error_bound, 1e-2);
  absl::StatusOr<RetrieveResult> tight = Run(PathChoice::kAuto, 1e-5);
  ASSERT_TRUE(tight.ok()) << tight.status();
  EXPECT_EQ(tight->path.path, PathChoice::kLowRank) << tight->path.reason;
  EXPECT_EQ(tight->path.degree, 4u);
  EXPECT_LE(tight->path.error_bound, 1e-5);
  EXPECT_THAT(tight->path.reason, HasSubstr("low-rank: bound"));

  // The answer is within the bound of exact.
  absl::StatusOr<RetrieveResult> exact = Run(PathChoice::kExact);
  ASSERT_TRUE(exact.ok());
  EXPECT_EQ(exact->path.path, PathChoice::kExact);
  EXPECT_EQ(exact->path.reason, "EXACT requested");
  for (const RetrieveResult* r : {&*loose, &*tight}) {
    for (size_t i = 0; i < 8; ++i) {
      double sq = 0;
      for (size_t j = 0; j < 8; ++j) {
        const double e = r->states[i * 8 + j] - exact->states[i * 8 + j];
        sq += e * e;
      }
      EXPECT_LE(std::sqrt(sq), r->path.error_bound + 1e-6);
    }
  }
  // The store's tolerance applies when the request gives none (1e-3).
  absl::StatusOr<RetrieveResult> store_default = Run(PathChoice::kAuto);
  ASSERT_TRUE(store_default.ok());
  EXPECT_LE(store_default->path.error_bound, 1e-3);
}

// An outsized pattern added and deleted again: subtracting its terms from
// the sums would leave rounding far beyond the error bound (measured before
// the store rebuilt such sums: 0.019 off exact under a bound of 1e-6), so
// the sums are rebuilt and the answer stays within the bound.
TEST_F(PlannerTest, AnOutsizedPatternDeletedLeavesTheBoundTrue) {
  Fill(20000, 8, 0.4);
  std::mt19937_64 rng(8);
  for (double norm : {1e3, 1e8, 1e15}) {
    ASSERT_TRUE(store_->Add(RandomPatterns(1, 8, norm, 100000, rng)).ok());
    ASSERT_TRUE(store_->Delete({100000}).ok());
    ExpectSumsMatchARebuild(*store_->view());
    absl::StatusOr<RetrieveResult> low = Run(PathChoice::kLowRank, 1e-3);
    absl::StatusOr<RetrieveResult> exact = Run(PathChoice::kExact);
    ASSERT_TRUE(low.ok()) << low.status();
    ASSERT_TRUE(exact.ok());
    for (size_t i = 0; i < 8; ++i) {
      double sq = 0;
      for (size_t j = 0; j < 8; ++j) {
        const double e = low->states[i * 8 + j] - exact->states[i * 8 + j];
        sq += e * e;
      }
      EXPECT_LE(std::sqrt(sq), low->path.error_bound + 1e-6) << norm;
    }
  }
}

TEST_F(PlannerTest, AutoRunsExactWhenTheBoundIsTooLarge) {
  Fill(20000, 8, 3.0);
  absl::StatusOr<RetrieveResult> result = Run(PathChoice::kAuto);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->path.path, PathChoice::kExact);
  EXPECT_THAT(result->path.reason,
              HasSubstr("exact: the error bound at the largest kept degree "
                        "g = 4 is"));
  EXPECT_EQ(result->path.error_bound, 0);
  // LOW_RANK refuses, naming the bound; a smaller beta brings it in reach.
  absl::StatusOr<RetrieveResult> forced = Run(PathChoice::kLowRank);
  ASSERT_EQ(forced.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(
      forced.status().message(),
      HasSubstr("path LOW_RANK cannot meet the tolerance on store 's'"));
  EXPECT_THAT(forced.status().message(), HasSubstr("over tolerance 0.001"));
  absl::StatusOr<RetrieveResult> cooler =
      Run(PathChoice::kLowRank, std::nullopt, 0.01f);
  ASSERT_TRUE(cooler.ok()) << cooler.status();
  EXPECT_EQ(cooler->path.path, PathChoice::kLowRank);
}

TEST_F(PlannerTest, AutoRunsExactWhenItIsCheaper) {
  // r = 45 at g = 2: 45 * 16 + a top-k scan of 60 * 8 > 60 * 16.
  StoreSettings with_top_k = DotSettings(8);
  with_top_k.retrieval.top_k = 5;
  Fill(60, 8, 0.4, with_top_k);
  absl::StatusOr<RetrieveResult> result = Run(PathChoice::kAuto, 1e-2);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->path.path, PathChoice::kExact);
  EXPECT_THAT(result->path.reason, HasSubstr("meets the tolerance but cost"));
  // LOW_RANK asked for runs, with its matches.
  absl::StatusOr<RetrieveResult> forced = Run(PathChoice::kLowRank, 1e-2);
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(forced->path.path, PathChoice::kLowRank);
  EXPECT_EQ(forced->matches[0].size(), 5u);
}

TEST_F(PlannerTest, SimilaritiesWithoutALowRankFormAlwaysRunExact) {
  struct Case {
    core::Similarity similarity;
    core::Separation separation;
    std::string detail;
  };
  for (const Case& c :
       {Case{core::Similarity::kL2, core::Separation::kSoftmax,
             "similarity l2 has no low-rank form"},
        Case{core::Similarity::kCosine, core::Separation::kSoftmax,
             "similarity cosine has no low-rank form"},
        Case{core::Similarity::kManhattan, core::Separation::kSoftmax,
             "similarity manhattan"},
        Case{core::Similarity::kDot, core::Separation::kSparsemax,
             "separation sparsemax has no low-rank form"},
        Case{core::Similarity::kDot, core::Separation::kEntmax15,
             "separation entmax15"}}) {
    StoreSettings settings = DotSettings(8);
    settings.retrieval.similarity = c.similarity;
    settings.retrieval.separation = c.separation;
    Fill(5000, 8, 0.1, settings);
    absl::StatusOr<RetrieveResult> result = Run(PathChoice::kAuto, 1.0);
    ASSERT_TRUE(result.ok());
    EXPECT_EQ(result->path.path, PathChoice::kExact);
    EXPECT_THAT(result->path.reason, HasSubstr(c.detail));
    absl::StatusOr<RetrieveResult> forced = Run(PathChoice::kLowRank, 1.0);
    EXPECT_EQ(forced.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(forced.status().message(), HasSubstr(c.detail));
  }
}

}  // namespace
}  // namespace engram::store

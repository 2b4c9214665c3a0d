#include "server/cluster/low_rank_cache.h"

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/cluster/map_record.h"

namespace engram::cluster {
namespace {

using ::testing::HasSubstr;

constexpr size_t kDim = 3;

std::vector<float> Rows(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 0.3f);
  std::vector<float> rows(n * kDim);
  for (float& v : rows) v = normal(rng);
  return rows;
}

// The sums of `rows` (n x kDim) at `degree`: over the rows themselves (dot),
// or over their images under `map` (kernel_dot).
std::shared_ptr<core::LowRankSums> SumsOf(const std::vector<float>& rows,
                                          uint32_t degree,
                                          const core::FeatureMap* map) {
  const size_t n = rows.size() / kDim;
  const size_t keys_dim = map ? map->out_dim() : kDim;
  auto sums = std::make_shared<core::LowRankSums>(
      std::make_shared<const core::TaylorBasis>(keys_dim, degree), kDim,
      map == nullptr);
  std::vector<float> keys = rows;
  if (map != nullptr) {
    keys.resize(n * keys_dim);
    map->Apply(rows.data(), n, keys.data());
  }
  sums->Add(keys.data(), rows.data(), n, 1);
  sums->Finish();
  return sums;
}

// A shard's answer for the part of a store that holds `rows`, as the shard
// service writes it.
std::shared_ptr<const v1::LowRankSums> PartOf(const std::vector<float>& rows,
                                              uint32_t degree,
                                              const core::FeatureMap* map,
                                              uint64_t version) {
  const std::shared_ptr<core::LowRankSums> sums = SumsOf(rows, degree, map);
  auto part = std::make_shared<v1::LowRankSums>();
  part->set_store_version(version);
  part->set_map_version(map ? 1 : 0);
  part->set_degree(degree);
  part->set_feature_dim(static_cast<uint32_t>(sums->basis().dim()));
  part->set_dimension(kDim);
  part->set_keys_are_rows(map == nullptr);
  part->mutable_a()->Assign(sums->a().begin(), sums->a().end());
  part->mutable_z()->Assign(sums->z().begin(), sums->z().end());
  part->set_sq_norm_sum(sums->sq_norm_sum());
  part->set_max_norm(1);
  part->set_max_feature_norm(1);
  part->set_map_norm(1);
  part->set_pattern_count(rows.size() / kDim);
  if (map != nullptr) {
    store::FitRecord fit;
    fit.version = 1;
    FeatureMapToProto("s", *map, fit, *part->mutable_map());
  }
  return part;
}

// Sums in double of the same float keys agree to rounding; keys a map took
// in float (kernel_dot) by ulps of float, as the map's product ran over 2
// rows or 6.
void ExpectNear(const std::vector<double>& got, const std::vector<double>& want,
                double relative = 1e-12) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], relative * (1 + std::abs(want[i]))) << i;
  }
}

TEST(MergePartsTest, TheSumOfThePartsIsTheSumsOfTheWhole) {
  const std::vector<float> all = Rows(12, 1);
  const std::vector<float> first(all.begin(), all.begin() + 5 * kDim);
  const std::vector<float> rest(all.begin() + 5 * kDim, all.end());
  absl::StatusOr<std::shared_ptr<MergedLowRank>> merged = MergeParts(
      "s", {PartOf(first, 4, nullptr, 3), PartOf(rest, 4, nullptr, 9)});
  ASSERT_TRUE(merged.ok()) << merged.status();
  const std::shared_ptr<core::LowRankSums> whole = SumsOf(all, 4, nullptr);
  ASSERT_NE((*merged)->sums, nullptr);
  EXPECT_EQ((*merged)->form.sums, (*merged)->sums.get());
  EXPECT_EQ((*merged)->form.patterns, 12u);
  EXPECT_EQ((*merged)->map, nullptr);
  EXPECT_EQ((*merged)->versions, (std::vector<uint64_t>{3, 9}));
  EXPECT_EQ((*merged)->sums->basis().degree(), 4u);
  ExpectNear((*merged)->sums->a(), whole->a());
  ExpectNear((*merged)->sums->z(), whole->z());
  ExpectNear((*merged)->sums->feature_moment(), whole->feature_moment());
  EXPECT_NEAR((*merged)->sums->sq_norm_sum(), whole->sq_norm_sum(), 1e-12);
}

TEST(MergePartsTest, PartsOfDifferentDegreesMergeAtTheSmallest) {
  const std::vector<float> all = Rows(8, 2);
  const std::vector<float> first(all.begin(), all.begin() + 3 * kDim);
  const std::vector<float> rest(all.begin() + 3 * kDim, all.end());
  absl::StatusOr<std::shared_ptr<MergedLowRank>> merged = MergeParts(
      "s", {PartOf(first, 4, nullptr, 1), PartOf(rest, 2, nullptr, 1)});
  ASSERT_TRUE(merged.ok()) << merged.status();
  const std::shared_ptr<core::LowRankSums> whole = SumsOf(all, 2, nullptr);
  EXPECT_EQ((*merged)->sums->basis().degree(), 2u);
  ExpectNear((*merged)->sums->a(), whole->a());
  ExpectNear((*merged)->sums->z(), whole->z());
}

TEST(MergePartsTest, KernelPartsCarryTheirMap) {
  const core::FeatureMap map = core::FeatureMap::RandomNormal(kDim, 2, 5);
  const std::vector<float> all = Rows(6, 3);
  const std::vector<float> first(all.begin(), all.begin() + 2 * kDim);
  const std::vector<float> rest(all.begin() + 2 * kDim, all.end());
  absl::StatusOr<std::shared_ptr<MergedLowRank>> merged =
      MergeParts("s", {PartOf(first, 2, &map, 1), PartOf(rest, 2, &map, 1)});
  ASSERT_TRUE(merged.ok()) << merged.status();
  ASSERT_NE((*merged)->map, nullptr);
  EXPECT_EQ((*merged)->map->weights(), map.weights());
  ExpectNear((*merged)->sums->z(), SumsOf(all, 2, &map)->z(), 1e-6);

  // A map of another shape than the sums' keys is refused.
  auto part = std::make_shared<v1::LowRankSums>(*PartOf(first, 2, &map, 1));
  part->mutable_map()->set_in_dim(2);
  part->mutable_map()->set_out_dim(3);
  merged = MergeParts("s", {part});
  ASSERT_FALSE(merged.ok());
  EXPECT_EQ(merged.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(merged.status().message(),
              HasSubstr("shard group 0 sent a 3x2 map for 2x3 sums"));
}

TEST(MergePartsTest, APartWithoutSumsOrAnotherMapLeavesTheStoreExact) {
  const std::vector<float> rows = Rows(4, 4);
  auto none = std::make_shared<v1::LowRankSums>();
  none->set_detail("the sums at degree 2 would hold too many values");
  none->set_pattern_count(7);
  absl::StatusOr<std::shared_ptr<MergedLowRank>> merged =
      MergeParts("s", {PartOf(rows, 4, nullptr, 1), none});
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ((*merged)->sums, nullptr);
  EXPECT_EQ((*merged)->form.patterns, 11u);
  EXPECT_EQ((*merged)->form.detail,
            "shard group 1: the sums at degree 2 would hold too many values");

  const core::FeatureMap map = core::FeatureMap::RandomNormal(kDim, 2, 5);
  auto other = std::make_shared<v1::LowRankSums>(*PartOf(rows, 2, &map, 1));
  other->set_map_version(2);
  merged = MergeParts("s", {PartOf(rows, 2, &map, 1), other});
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ((*merged)->sums, nullptr);
  EXPECT_EQ((*merged)->form.detail,
            "shard groups 0 and 1 hold feature maps v1 and v2");
}

TEST(MergePartsTest, PartsOfDifferentShapesAreRefused) {
  const std::vector<float> rows = Rows(4, 5);
  const core::FeatureMap map = core::FeatureMap::RandomNormal(kDim, 2, 5);
  absl::StatusOr<std::shared_ptr<MergedLowRank>> merged =
      MergeParts("s", {PartOf(rows, 2, nullptr, 1), PartOf(rows, 2, &map, 1)});
  ASSERT_FALSE(merged.ok());
  EXPECT_EQ(merged.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(merged.status().message(),
              HasSubstr("shard groups 0 and 1 have different shapes"));
}

// A part whose numbers do not hold what its shape says (a damaged or
// hostile answer) is refused before anything is sized by it.
TEST(MergePartsTest, RefusesAPartThatIsNotWhatItsShapeSays) {
  const std::vector<float> rows = Rows(4, 6);
  const std::shared_ptr<const v1::LowRankSums> good =
      PartOf(rows, 2, nullptr, 1);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  struct Case {
    const char* why;
    std::function<void(v1::LowRankSums&)> damage;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"odd degree", [](v1::LowRankSums& p) { p.set_degree(3); },
       "degree 3 (an even number in [2, 8])"},
      {"degree over the limit", [](v1::LowRankSums& p) { p.set_degree(10); },
       "degree 10"},
      {"a vast degree", [](v1::LowRankSums& p) { p.set_degree(4000000000u); },
       "degree 4000000000"},
      {"no features", [](v1::LowRankSums& p) { p.set_feature_dim(0); },
       "feature_dim 0 and dimension 3"},
      {"no dimension", [](v1::LowRankSums& p) { p.set_dimension(0); },
       "dimension 0"},
      {"vast features",
       [](v1::LowRankSums& p) {
         p.set_feature_dim(0xffffffffu);
         p.set_degree(8);
       },
       "10 values in z"},
      {"z short", [](v1::LowRankSums& p) { p.mutable_z()->RemoveLast(); },
       "9 values in z (10 monomials of degree <= 2 in 3 variables)"},
      {"z long", [](v1::LowRankSums& p) { p.add_z(1); }, "11 values in z"},
      {"a short", [](v1::LowRankSums& p) { p.mutable_a()->RemoveLast(); },
       "29 values in a (10 x 3)"},
      {"a for a wider store", [](v1::LowRankSums& p) { p.set_dimension(4); },
       "30 values in a (10 x 4)"},
      {"NaN in a", [nan](v1::LowRankSums& p) { p.set_a(7, nan); },
       "a value that is not finite"},
      {"infinity in z", [inf](v1::LowRankSums& p) { p.set_z(0, inf); },
       "not finite"},
      {"infinite norm", [inf](v1::LowRankSums& p) { p.set_max_norm(inf); },
       "not finite"},
      {"NaN norm sum", [nan](v1::LowRankSums& p) { p.set_sq_norm_sum(nan); },
       "not finite"},
  };
  for (const Case& c : cases) {
    auto damaged = std::make_shared<v1::LowRankSums>(*good);
    c.damage(*damaged);
    const std::shared_ptr<const v1::LowRankSums> bad = damaged;
    using Parts = std::vector<std::shared_ptr<const v1::LowRankSums>>;
    // Alone (the sums would be sized by it) and after a good part.
    for (const auto& [parts, group] :
         {std::make_pair(Parts{bad}, "shard group 0"),
          std::make_pair(Parts{good, bad}, "shard group 1")}) {
      absl::StatusOr<std::shared_ptr<MergedLowRank>> merged =
          MergeParts("faces", parts);
      ASSERT_FALSE(merged.ok()) << c.why;
      EXPECT_EQ(merged.status().code(), absl::StatusCode::kInternal) << c.why;
      EXPECT_THAT(merged.status().message(),
                  HasSubstr(absl::StrCat(
                      group, " sent low-rank sums of store 'faces' with ")))
          << c.why;
      EXPECT_THAT(merged.status().message(), HasSubstr(c.message)) << c.why;
    }
  }
}

TEST(CheckSumsFitTest, SumsMustBeOfTheStoresDimensionAndSimilarity) {
  const std::vector<float> rows = Rows(4, 7);
  const core::FeatureMap map = core::FeatureMap::RandomNormal(kDim, 2, 5);
  absl::StatusOr<std::shared_ptr<MergedLowRank>> dot =
      MergeParts("s", {PartOf(rows, 2, nullptr, 1)});
  absl::StatusOr<std::shared_ptr<MergedLowRank>> kernel =
      MergeParts("s", {PartOf(rows, 2, &map, 1)});
  ASSERT_TRUE(dot.ok() && kernel.ok());
  using core::Similarity;
  EXPECT_TRUE(CheckSumsFit(**dot, kDim, Similarity::kDot).ok());
  EXPECT_TRUE(CheckSumsFit(**kernel, kDim, Similarity::kKernelDot).ok());
  for (const auto& [merged, dimension, similarity] :
       {std::make_tuple(*dot, kDim + 1, Similarity::kDot),
        std::make_tuple(*dot, kDim - 1, Similarity::kDot),
        std::make_tuple(*dot, kDim, Similarity::kKernelDot),
        std::make_tuple(*kernel, kDim, Similarity::kDot),
        std::make_tuple(*kernel, kDim + 1, Similarity::kKernelDot)}) {
    const absl::Status s = CheckSumsFit(*merged, dimension, similarity);
    EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << dimension;
    EXPECT_THAT(s.message(), HasSubstr("store 's' changed in the shard "
                                       "groups during the query"));
  }
  MergedLowRank none;
  EXPECT_TRUE(CheckSumsFit(none, 99, Similarity::kDot).ok());
}

}  // namespace
}  // namespace engram::cluster

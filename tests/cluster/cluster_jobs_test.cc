#include "server/cluster/cluster_jobs.h"

#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace engram::cluster {
namespace {

using ::testing::HasSubstr;

engram::v1::Store Described() {
  store::StoreSettings settings;
  settings.name = "faces";
  settings.dimension = 16;
  engram::v1::Store store;
  store::SettingsToProto(settings, store);
  store.set_pattern_count(40);
  return store;
}

TEST(DescribedSettingsTest, TakesAShardsDescriptionAsItIs) {
  absl::StatusOr<store::StoreSettings> settings =
      DescribedSettings(Described(), store::Limits{});
  ASSERT_TRUE(settings.ok()) << settings.status();
  EXPECT_EQ(settings->name, "faces");
  EXPECT_EQ(settings->dimension, 16u);
}

TEST(DescribedSettingsTest, TakesAnOlderShardsDescriptionWithoutNewerFields) {
  engram::v1::Store store = Described();
  store.mutable_calibration()->clear_sample_size();
  store.mutable_feature_map()->clear_epochs();
  EXPECT_TRUE(DescribedSettings(store, store::Limits{}).ok());
}

// Regression: a fit sized its initial map by a damaged description's
// feature dimension and threw std::length_error, ending the router.
TEST(DescribedSettingsTest, RefusesADescriptionOutOfTheRoutersRange) {
  store::Limits limits;
  limits.max_dimension = 1024;
  struct Case {
    const char* why;
    void (*damage)(engram::v1::Store&);
    const char* message;
  };
  const Case cases[] = {
      {"a vast feature dimension",
       [](engram::v1::Store& s) {
         s.mutable_feature_map()->set_feature_dim(4000000000u);
       },
       "store.feature_map.feature_dim must be at most 1024"},
      {"a vast dimension",
       [](engram::v1::Store& s) { s.set_dimension(4000000000u); },
       "store.dimension 4000000000 exceeds the limit max_dimension 1024"},
      {"no dimension", [](engram::v1::Store& s) { s.set_dimension(0); },
       "store.dimension must be at least 1"},
      {"a vast top_k",
       [](engram::v1::Store& s) { s.mutable_retrieval()->set_top_k(1u << 30); },
       "store.retrieval.top_k must be at most"},
      {"NaN beta",
       [](engram::v1::Store& s) {
         s.mutable_retrieval()->set_beta(
             std::numeric_limits<float>::quiet_NaN());
       },
       "store.retrieval.beta"},
      {"an unknown similarity",
       [](engram::v1::Store& s) {
         s.mutable_retrieval()->set_similarity(
             static_cast<engram::v1::Similarity>(99));
       },
       "similarity"},
  };
  for (const Case& c : cases) {
    engram::v1::Store store = Described();
    c.damage(store);
    absl::StatusOr<store::StoreSettings> settings =
        DescribedSettings(store, limits);
    ASSERT_FALSE(settings.ok()) << c.why;
    EXPECT_EQ(settings.status().code(), absl::StatusCode::kFailedPrecondition)
        << c.why;
    EXPECT_THAT(settings.status().message(),
                HasSubstr("the shards describe store 'faces' out of this "
                          "router's range: "))
        << c.why;
    EXPECT_THAT(settings.status().message(), HasSubstr(c.message)) << c.why;
  }
}

}  // namespace
}  // namespace engram::cluster

#include "server/store/settings.h"

#include <cmath>

#include "gtest/gtest.h"

namespace engram::store {
namespace {

v1::Store Described(float zero) {
  v1::Store store;
  store.set_name("s");
  store.set_dimension(4);
  store.mutable_retrieval()->set_beta(2);
  store.mutable_retrieval()->set_eps(zero);
  store.mutable_feature_map()->set_learning_rate(zero);
  store.mutable_calibration()->set_level(0.5f);
  return store;
}

TEST(SettingsTest, RoundTripsEverySetting) {
  v1::Store in = Described(0.0f);
  in.mutable_retrieval()->set_top_k(7);
  in.mutable_low_rank()->set_max_degree(6);
  in.mutable_calibration()->set_sample_size(99);
  absl::StatusOr<StoreSettings> settings = SettingsFromProto(in, true);
  ASSERT_TRUE(settings.ok()) << settings.status();
  v1::Store out;
  SettingsToProto(*settings, out);
  absl::StatusOr<StoreSettings> again = SettingsFromProto(out, false);
  ASSERT_TRUE(again.ok()) << again.status();
  v1::Store twice;
  SettingsToProto(*again, twice);
  EXPECT_EQ(out.SerializeAsString(), twice.SerializeAsString());
  EXPECT_EQ(again->retrieval.top_k, 7u);
  EXPECT_EQ(again->low_rank.max_degree, 6u);
  EXPECT_EQ(again->calibration.sample_size, 99u);
}

// Regression: a replica whose settings held -0.0 (eps, from a repair that
// copied a damaged answer) wrote other bytes than its peers' 0.0, so its
// settings digest never matched theirs and no repair could make it agree.
TEST(SettingsTest, NegativeZeroIsReadAsZero) {
  for (const bool fill_defaults : {true, false}) {
    absl::StatusOr<StoreSettings> negative =
        SettingsFromProto(Described(-0.0f), fill_defaults);
    absl::StatusOr<StoreSettings> positive =
        SettingsFromProto(Described(0.0f), fill_defaults);
    ASSERT_TRUE(negative.ok() && positive.ok());
    EXPECT_FALSE(std::signbit(negative->retrieval.eps));
    EXPECT_FALSE(std::signbit(negative->feature_map.learning_rate));
    v1::Store a, b;
    SettingsToProto(*negative, a);
    SettingsToProto(*positive, b);
    a.clear_create_time();
    b.clear_create_time();
    EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString()) << fill_defaults;
  }
}

}  // namespace
}  // namespace engram::store

#include "server/cluster/map_record.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace engram::cluster {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

store::FitRecord SomeFit() {
  store::FitRecord fit;
  fit.version = 7;
  fit.loss_before = 2.5;
  fit.loss_after = 0.25;
  fit.epochs = 100;
  fit.duration_seconds = 1.5;
  fit.patterns_fitted = 1000;
  return fit;
}

TEST(MapRecordTest, RoundTripsAFittedMapAndItsFit) {
  const core::FeatureMap map = core::FeatureMap::RandomNormal(5, 3, 42);
  v1::FeatureMapRecord record;
  FeatureMapToProto("faces", map, SomeFit(), record);
  EXPECT_EQ(record.store(), "faces");
  EXPECT_EQ(record.out_dim(), 3u);
  EXPECT_EQ(record.in_dim(), 5u);
  absl::StatusOr<std::shared_ptr<const core::FeatureMap>> back =
      FeatureMapFromProto(record);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->in_dim(), 5u);
  EXPECT_EQ((*back)->out_dim(), 3u);
  EXPECT_FALSE((*back)->identity());
  EXPECT_THAT((*back)->weights(), ElementsAreArray(map.weights()));
  const store::FitRecord fit = FitRecordFromProto(record);
  EXPECT_EQ(fit.version, 7u);
  EXPECT_EQ(fit.loss_before, 2.5);
  EXPECT_EQ(fit.loss_after, 0.25);
  EXPECT_EQ(fit.epochs, 100u);
  EXPECT_EQ(fit.duration_seconds, 1.5);
  EXPECT_EQ(fit.patterns_fitted, 1000u);
}

TEST(MapRecordTest, WritesTheIdentityOutAsItsMatrix) {
  v1::FeatureMapRecord record;
  FeatureMapToProto("s", core::FeatureMap::Identity(3), store::FitRecord{},
                    record);
  EXPECT_THAT(record.weights(), ElementsAre(1, 0, 0, 0, 1, 0, 0, 0, 1));
  absl::StatusOr<std::shared_ptr<const core::FeatureMap>> back =
      FeatureMapFromProto(record);
  ASSERT_TRUE(back.ok()) << back.status();
  const float x[3] = {1.5f, -2, 4};
  float y[3];
  (*back)->Apply(x, 1, y);
  EXPECT_THAT(y, ElementsAre(1.5f, -2, 4));
}

TEST(MapRecordTest, RefusesAMapThatIsNotItsShapeInFiniteValues) {
  v1::FeatureMapRecord good;
  FeatureMapToProto("s", core::FeatureMap::RandomNormal(4, 2, 1),
                    store::FitRecord{}, good);
  struct Case {
    const char* why;
    void (*damage)(v1::FeatureMapRecord&);
    const char* message;
  };
  const Case cases[] = {
      {"no rows", [](v1::FeatureMapRecord& r) { r.set_out_dim(0); },
       "weights has 8 values for a 0x4 map"},
      {"no columns", [](v1::FeatureMapRecord& r) { r.set_in_dim(0); },
       "for a 2x0 map"},
      {"a value short",
       [](v1::FeatureMapRecord& r) { r.mutable_weights()->RemoveLast(); },
       "weights has 7 values for a 2x4 map"},
      {"a value over", [](v1::FeatureMapRecord& r) { r.add_weights(1); },
       "weights has 9 values"},
      {"a huge shape",
       [](v1::FeatureMapRecord& r) {
         r.set_out_dim(0xffffffffu);
         r.set_in_dim(0xffffffffu);
       },
       "for a 4294967295x4294967295 map"},
      {"NaN",
       [](v1::FeatureMapRecord& r) {
         r.set_weights(5, std::numeric_limits<float>::quiet_NaN());
       },
       "weights must be finite"},
      {"infinity",
       [](v1::FeatureMapRecord& r) {
         r.set_weights(0, -std::numeric_limits<float>::infinity());
       },
       "weights must be finite"},
  };
  for (const Case& c : cases) {
    v1::FeatureMapRecord record = good;
    c.damage(record);
    absl::StatusOr<std::shared_ptr<const core::FeatureMap>> map =
        FeatureMapFromProto(record);
    ASSERT_FALSE(map.ok()) << c.why;
    EXPECT_EQ(map.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(map.status().message(), HasSubstr(c.message)) << c.why;
  }
}

}  // namespace
}  // namespace engram::cluster

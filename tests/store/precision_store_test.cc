// Stores kept in bfloat16 and float16 (docs/precision.md).
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/core/calibration.h"
#include "server/core/precision.h"
#include "server/store/records.h"
#include "server/store/retrieve.h"
#include "server/store/store.h"

namespace engram::store {
namespace {

using core::Precision;

constexpr uint32_t kDim = 16;
constexpr Precision kHalves[] = {Precision::kBFloat16, Precision::kFloat16};

StoreSettings Settings(const std::string& name, Precision precision) {
  StoreSettings s;
  s.name = name;
  s.dimension = kDim;
  s.precision = precision;
  s.retrieval.beta = 4;
  s.retrieval.top_k = 3;
  s.low_rank.tolerance = 1e-2;
  return s;
}

std::vector<Pattern> Random(size_t n, uint32_t seed, size_t first_id = 1) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 0.5f);
  std::vector<Pattern> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i].id = first_id + i;
    out[i].values.resize(kDim);
    for (float& v : out[i].values) v = normal(rng);
    out[i].label = absl::StrCat("c", i % 4);
  }
  return out;
}

std::vector<Pattern> RoundedCopy(std::vector<Pattern> patterns, Precision p) {
  for (Pattern& pattern : patterns) {
    for (float& v : pattern.values) v = core::Round(p, v);
  }
  return patterns;
}

RetrieveResult Recall(const StoreView& view, size_t l, Filter filter = {},
                      PathChoice path = PathChoice::kExact) {
  std::vector<float> q(l * kDim);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * i);
  RetrieveRequest r;
  r.queries = q;
  r.num_queries = l;
  r.path = path;
  r.filter = std::move(filter);
  absl::StatusOr<RetrieveResult> out = Retrieve(view, r, Limits{}, {});
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : RetrieveResult{};
}

TEST(PrecisionStoreTest, KeepsRoundedValuesAndHashesThemAsFloat32Would) {
  for (Precision p : kHalves) {
    EphemeralStorage storage;
    Store half(Settings("h", p), Limits{}, &storage);
    Store reference(Settings("r", Precision::kFloat32), Limits{}, &storage);
    const std::vector<Pattern> patterns = Random(300, 1);
    ASSERT_TRUE(half.Add(patterns).ok());
    ASSERT_TRUE(reference.Add(RoundedCopy(patterns, p)).ok());
    EXPECT_EQ(half.view()->digest(), reference.view()->digest());
    EXPECT_EQ(half.Get(7)->values, reference.Get(7)->values);
    EXPECT_NE(half.Get(7)->values, patterns[6].values);
    EXPECT_EQ(half.view()->norms().max_norm,
              reference.view()->norms().max_norm);
    // Deletes move 16-bit rows; the digest follows.
    ASSERT_TRUE(half.Delete({3, 150, 299}).ok());
    ASSERT_TRUE(reference.Delete({3, 150, 299}).ok());
    EXPECT_EQ(half.view()->digest(), reference.view()->digest());
    // Retrieval agrees with the float32 store of the same values.
    const RetrieveResult got = Recall(*half.view(), 1);
    const RetrieveResult want = Recall(*reference.view(), 1);
    ASSERT_EQ(got.matches[0].size(), want.matches[0].size());
    EXPECT_EQ(got.matches[0][0].id, want.matches[0][0].id);
    for (size_t k = 0; k < kDim; ++k) {
      EXPECT_NEAR(got.states[k], want.states[k], 1e-5);
    }
  }
}

TEST(PrecisionStoreTest, TakesAboutHalfTheMemory) {
  EphemeralStorage storage;
  std::vector<size_t> bytes;
  for (Precision p :
       {Precision::kFloat32, Precision::kBFloat16, Precision::kFloat16}) {
    StoreSettings s = Settings(std::string(core::PrecisionName(p)), p);
    s.dimension = 784;
    Store store(s, Limits{}, &storage);
    std::vector<Pattern> patterns(2000);
    for (size_t i = 0; i < patterns.size(); ++i) {
      patterns[i].values.assign(784, 0.001f * static_cast<float>(i));
    }
    ASSERT_TRUE(store.Add(patterns).ok());
    bytes.push_back(store.view()->memory_bytes());
  }
  EXPECT_LT(static_cast<double>(bytes[1]) / bytes[0], 0.55);
  EXPECT_LT(static_cast<double>(bytes[2]) / bytes[0], 0.55);
}

TEST(PrecisionStoreTest, CalibrationMeasuresTheStoredValues) {
  for (Precision p : kHalves) {
    EphemeralStorage storage;
    StoreSettings s = Settings("h", p);
    s.retrieval.similarity = core::Similarity::kL2;
    Store half(s, Limits{}, &storage);
    s.name = "r";
    s.precision = Precision::kFloat32;
    Store reference(s, Limits{}, &storage);
    const std::vector<Pattern> patterns = Random(300, 6);
    ASSERT_TRUE(half.Add(patterns).ok());
    ASSERT_TRUE(reference.Add(RoundedCopy(patterns, p)).ok());
    core::CalibrationOptions options;
    options.sample_size = 64;
    options.seed = 3;
    absl::StatusOr<core::CalibrationResult> got = core::Calibrate(
        half.view()->memories(), half.view()->settings().retrieval, options);
    absl::StatusOr<core::CalibrationResult> want =
        core::Calibrate(reference.view()->memories(),
                        reference.view()->settings().retrieval, options);
    ASSERT_TRUE(got.ok() && want.ok());
    EXPECT_EQ(got->best.params.beta, want->best.params.beta);
    EXPECT_EQ(got->best.recall_at_1, want->best.recall_at_1);
    EXPECT_NEAR(got->best.error, want->best.error,
                1e-4 * (1 + want->best.error));
  }
}

TEST(PrecisionStoreTest, RefusesValuesBeyondTheRangeAndChangesNothing) {
  EphemeralStorage storage;
  Store store(Settings("s", Precision::kFloat16), Limits{}, &storage);
  std::vector<Pattern> patterns = Random(2, 2);
  patterns[1].values[5] = 70000.0f;
  absl::Status refused = store.Add(patterns).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("patterns[1].values[5]"), std::string::npos)
      << refused;
  EXPECT_NE(refused.message().find("65504"), std::string::npos);
  EXPECT_EQ(store.view()->size(), 0u);
  patterns[1].values[5] = 65504.0f;  // The largest float16 is fine.
  EXPECT_TRUE(store.Add(patterns).ok());
}

// A write batch is sized by EncodedPatternBound before the records are
// encoded: it must cover every format.
TEST(PrecisionStoreTest, EncodedPatternBoundCoversEveryFormat) {
  const Pattern plain{1, {0.1f, 0.2f, 0.3f}, "", {}, 0};
  Pattern expiring = plain;
  expiring.expire_ns = 1'900'000'000'000'000'000;
  Pattern labelled{2,
                   std::vector<float>(784, 0.7f),
                   std::string(256, 'l'),
                   {{"a", std::string(256, 'v')}, {std::string(256, 'k'), ""}},
                   0};
  Pattern half{3, {0.5f, -3.0f, 1.0f}, "x", {{"k", "v"}}, 0};  // Format 3.
  Pattern empty{4, {}, "", {}, 0};
  for (const Pattern& p : {plain, expiring, labelled, half, empty}) {
    EXPECT_GE(EncodedPatternBound(p), EncodePattern(p).size()) << p.id;
    EXPECT_LE(EncodedPatternBound(p), EncodePattern(p).size() + 16) << p.id;
  }
}

TEST(PrecisionStoreTest, RecordsTakeTwoBytesAValueAndDecodeExactly) {
  Pattern p{9, {0.5f, -3.0f, 1.0f / 3}, "x", {{"k", "v"}}, 0};
  p.values[2] = core::Round(Precision::kBFloat16, p.values[2]);
  const std::string bytes = EncodePattern(p);
  EXPECT_EQ(bytes[0], '\x03');
  absl::StatusOr<Pattern> back = DecodePattern(9, bytes);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->values, p.values);
  EXPECT_EQ(back->metadata, p.metadata);
  EXPECT_EQ(back->expire_ns, 0);
  p.expire_ns = 1'900'000'000'000'000'000;
  EXPECT_EQ(DecodePattern(9, EncodePattern(p))->expire_ns, p.expire_ns);
  // Damage is refused.
  std::string bad = bytes;
  bad[1] = '\x07';  // No such precision.
  EXPECT_EQ(DecodePattern(9, bad).status().code(), absl::StatusCode::kDataLoss);
  std::string cut = bytes.substr(0, 9);
  EXPECT_EQ(DecodePattern(9, cut).status().code(), absl::StatusCode::kDataLoss);
}

TEST(PrecisionStoreTest, FilteredRecallEqualsAStoreOfOnlyTheMatches) {
  for (Precision p : kHalves) {
    EphemeralStorage storage;
    Store store(Settings("all", p), Limits{}, &storage);
    Store only(Settings("only", p), Limits{}, &storage);
    const std::vector<Pattern> patterns = Random(400, 3);
    ASSERT_TRUE(store.Add(patterns).ok());
    std::vector<Pattern> matching;
    for (const Pattern& pattern : patterns) {
      if (pattern.label == "c1") matching.push_back(pattern);
    }
    ASSERT_TRUE(only.Add(matching).ok());
    for (size_t l : {1, 5}) {
      const RetrieveResult got =
          Recall(*store.view(), l, Filter{{"c1"}, {}, false});
      const RetrieveResult want = Recall(*only.view(), l);
      EXPECT_EQ(got.states, want.states) << core::PrecisionName(p);
      for (size_t q = 0; q < l; ++q) {
        EXPECT_EQ(got.matches[q][0].id, want.matches[q][0].id);
      }
    }
  }
}

TEST(PrecisionStoreTest, UhopFeaturesAndLowRankSumsWorkOnHalfStores) {
  for (Precision p : kHalves) {
    EphemeralStorage storage;
    StoreSettings s = Settings("u", p);
    s.feature_map.kind = FeatureMapKind::kUhop;
    s.retrieval.similarity = core::Similarity::kKernelDot;
    s.retrieval.beta = 0.05f;
    Store store(s, Limits{}, &storage);
    ASSERT_TRUE(store.Add(Random(200, 4)).ok());
    std::vector<float> w(kDim * kDim);
    std::mt19937 rng(9);
    std::normal_distribution<float> normal(0, 0.3f);
    for (float& v : w) v = normal(rng);
    ASSERT_TRUE(
        store
            .PublishMap(std::make_shared<core::FeatureMap>(kDim, kDim, w),
                        FitRecord{1, 0, 0, 1, 0, 200})
            .ok());
    ASSERT_TRUE(store.Add(Random(50, 5, 1000)).ok());
    std::shared_ptr<const StoreView> view = store.view();
    const core::MemorySet set = view->memories();
    // Every key is Phi(row) as the store keeps it: rounded once.
    std::vector<float> row(kDim), key(kDim), want(kDim);
    for (size_t i = 0; i < view->size(); i += 17) {
      const auto [block, r] = set.Locate(i);
      block->CopyRow(r, kDim, row.data());
      block->CopyKey(r, kDim, key.data());
      view->map()->Apply(row.data(), 1, want.data());
      for (size_t k = 0; k < kDim; ++k) {
        EXPECT_EQ(key[k], core::Round(p, want[k])) << i;
      }
    }
    // The low-rank path answers near the exact one.
    ASSERT_NE(view->low_rank(), nullptr);
    const RetrieveResult exact = Recall(*view, 2);
    const RetrieveResult low = Recall(*view, 2, {}, PathChoice::kLowRank);
    ASSERT_EQ(low.states.size(), exact.states.size());
    for (size_t i = 0; i < exact.states.size(); ++i) {
      EXPECT_NEAR(low.states[i], exact.states[i], 0.05);
    }
  }
}

}  // namespace
}  // namespace engram::store

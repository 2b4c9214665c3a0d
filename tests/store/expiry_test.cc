#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/store/records.h"
#include "server/store/retrieve.h"
#include "server/store/store.h"

namespace engram::store {
namespace {

constexpr uint32_t kDim = 8;

StoreSettings Settings(const std::string& name) {
  StoreSettings s;
  s.name = name;
  s.dimension = kDim;
  s.retrieval.beta = 3;
  s.retrieval.top_k = 5;
  s.low_rank.tolerance = 1e-2;
  return s;
}

std::vector<Pattern> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 0.1f);
  std::vector<Pattern> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i].values.resize(kDim);
    for (float& v : out[i].values) v = normal(rng);
    out[i].label = absl::StrCat("c", i % 3);
  }
  return out;
}

int64_t InMs(int ms) {
  return absl::ToUnixNanos(absl::Now() + absl::Milliseconds(ms));
}

void WaitUntil(int64_t ns) {
  while (absl::GetCurrentTimeNanos() <= ns) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

RetrieveResult Recall(const StoreView& view, PathChoice path, Filter f = {}) {
  std::vector<float> q(2 * kDim, 0.05f);
  q[3] = -0.1f;
  RetrieveRequest r;
  r.queries = q;
  r.num_queries = 2;
  r.path = path;
  r.filter = std::move(f);
  absl::StatusOr<RetrieveResult> out = Retrieve(view, r, Limits{}, {});
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : RetrieveResult{};
}

TEST(ExpiryTest, RecordsCarryTheExpiryAndFormatOneStillReads) {
  // Values no 16-bit precision holds exactly, so formats 1 and 2 apply.
  Pattern p{7, {0.1f, 0.2f}, "x", {{"k", "v"}}, 1'900'000'000'000'000'000};
  absl::StatusOr<Pattern> back = DecodePattern(7, EncodePattern(p));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->expire_ns, p.expire_ns);
  EXPECT_EQ(back->metadata, p.metadata);
  p.expire_ns = 0;
  const std::string v1 = EncodePattern(p);
  EXPECT_EQ(v1[0], '\x01');  // Patterns that never expire keep format 1.
  EXPECT_EQ(DecodePattern(7, v1)->expire_ns, 0);
  std::string cut = EncodePattern({7, {0.1f, 0.2f}, "x", {}, 5});
  cut.pop_back();
  EXPECT_EQ(DecodePattern(7, cut).status().code(), absl::StatusCode::kDataLoss);
}

TEST(ExpiryTest, AddRefusesThePastAndAppliesTheDefaultTtl) {
  EphemeralStorage storage;
  StoreSettings settings = Settings("s");
  settings.expiry.default_ttl = absl::Hours(1);
  Store store(settings, Limits{}, &storage);
  std::vector<Pattern> past = Random(1, 1);
  past[0].expire_ns = absl::GetCurrentTimeNanos() - 1;
  absl::Status refused = store.Add(past).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("patterns[0].expire_time"),
            std::string::npos);
  std::vector<Pattern> two = Random(2, 2);
  two[1].expire_ns = InMs(5000);
  ASSERT_TRUE(store.Add(two).ok());
  const int64_t hour = absl::ToInt64Nanoseconds(absl::Hours(1));
  EXPECT_NEAR(static_cast<double>(store.Get(1)->expire_ns),
              static_cast<double>(absl::GetCurrentTimeNanos() + hour), 5e9);
  EXPECT_EQ(store.Get(2)->expire_ns, two[1].expire_ns);
}

// From its expiry on, a pattern is absent from every answer, before any
// sweep; the answers equal those of a store that never held it.
TEST(ExpiryTest, ExactAtReadTimeBeforeAnySweep) {
  EphemeralStorage storage;
  Store store(Settings("s"), Limits{}, &storage);
  Store reference(Settings("r"), Limits{}, &storage);
  std::vector<Pattern> all = Random(60, 3);
  // Far enough ahead for the adds below on any machine, sanitizers included.
  const int64_t soon = InMs(1500);
  std::vector<Pattern> kept;
  for (size_t i = 0; i < all.size(); ++i) {
    all[i].id = i + 1;
    if (i % 4 == 1) {
      all[i].expire_ns = soon;
    } else {
      kept.push_back(all[i]);
    }
  }
  ASSERT_TRUE(store.Add(all).ok());
  ASSERT_TRUE(reference.Add(kept).ok());
  std::shared_ptr<const StoreView> view = store.view();
  ASSERT_EQ(view->LiveCount(absl::GetCurrentTimeNanos()), 60u);
  EXPECT_TRUE(store.Get(2).ok());
  WaitUntil(soon);

  // The same snapshot, read after the expiry.
  const int64_t now = absl::GetCurrentTimeNanos();
  EXPECT_TRUE(view->HasExpired(now));
  EXPECT_EQ(view->LiveCount(now), 45u);
  EXPECT_DOUBLE_EQ(view->LiveNorms(now).mean_norm,
                   reference.view()->norms().mean_norm);
  EXPECT_DOUBLE_EQ(view->LiveNorms(now).max_norm,
                   reference.view()->norms().max_norm);
  absl::Status gone = store.Get(2).status();
  EXPECT_EQ(gone.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(gone.message().find("expired"), std::string::npos);
  Store::Page page = store.List(0, 100, true);
  EXPECT_EQ(page.patterns.size(), 45u);
  for (const Pattern& p : page.patterns) EXPECT_NE(p.id % 4, 2u);

  // Retrieval leaves them out (exact, whatever the path asked), and gives
  // what a store of the others gives; LOW_RANK waits for the sweep.
  const RetrieveResult a = Recall(*view, PathChoice::kAuto);
  const RetrieveResult b = Recall(*reference.view(), PathChoice::kExact);
  EXPECT_EQ(a.states, b.states);
  EXPECT_EQ(a.energies, b.energies);
  for (size_t q = 0; q < a.matches.size(); ++q) {
    ASSERT_EQ(a.matches[q].size(), b.matches[q].size());
    for (size_t k = 0; k < a.matches[q].size(); ++k) {
      EXPECT_EQ(a.matches[q][k].id, b.matches[q][k].id);
    }
  }
  EXPECT_NE(a.path.reason.find("15 expired"), std::string::npos)
      << a.path.reason;
  RetrieveRequest low;
  std::vector<float> q(kDim, 0.05f);
  low.queries = q;
  low.num_queries = 1;
  low.path = PathChoice::kLowRank;
  EXPECT_EQ(Retrieve(*view, low, Limits{}, {}).status().code(),
            absl::StatusCode::kUnavailable);
  // A filter on top of expiry.
  const RetrieveResult fa =
      Recall(*view, PathChoice::kAuto, Filter{{"c1"}, {}, false});
  const RetrieveResult fb =
      Recall(*reference.view(), PathChoice::kAuto, Filter{{"c1"}, {}, false});
  EXPECT_EQ(fa.states, fb.states);

  // The sweep deletes them; the store then equals the reference in content,
  // and LOW_RANK runs again.
  absl::StatusOr<size_t> reclaimed = store.ExpireDue(now);
  ASSERT_TRUE(reclaimed.ok());
  EXPECT_EQ(*reclaimed, 15u);
  EXPECT_EQ(store.view()->size(), 45u);
  EXPECT_EQ(store.view()->expired_count(), 15u);
  EXPECT_FALSE(store.view()->HasExpired(now));
  EXPECT_EQ(store.view()->digest(), reference.view()->digest());
  EXPECT_EQ(*store.ExpireDue(now), 0u);
  absl::StatusOr<RetrieveResult> after =
      Retrieve(*store.view(), low, Limits{}, {});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->path.path, PathChoice::kLowRank);
  // The old snapshot still answers as before.
  EXPECT_EQ(Recall(*view, PathChoice::kAuto).states, a.states);
}

}  // namespace
}  // namespace engram::store

#include "server/store/store.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/base/mutex.h"
#include "server/core/feature_map.h"
#include "server/store/registry.h"
#include "server/store/retrieve.h"
#include "tests/store/test_storage.h"

namespace engram::store {
namespace {

using ::testing::HasSubstr;

StoreSettings Settings(const std::string& name, uint32_t dim) {
  StoreSettings s;
  s.name = name;
  s.dimension = dim;
  return s;
}

Pattern MakePattern(uint64_t id, uint32_t dim, float value) {
  return Pattern{id, std::vector<float>(dim, value), absl::StrCat("l", id), {}};
}

TEST(StoreTest, AssignsIdsAboveEveryIdInUseOrInTheBatch) {
  EphemeralStorage storage;
  Store store(Settings("s", 2), Limits{}, &storage);
  absl::StatusOr<std::vector<uint64_t>> ids = store.Add(
      {MakePattern(0, 2, 1), MakePattern(7, 2, 2), MakePattern(0, 2, 3)});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<uint64_t>{8, 7, 9}));
  ids = store.Add({MakePattern(0, 2, 4)});
  EXPECT_EQ(*ids, (std::vector<uint64_t>{10}));
  EXPECT_EQ(store.Get(7)->values, (std::vector<float>{2, 2}));
  EXPECT_EQ(store.Get(7)->label, "l7");
}

TEST(StoreTest, AShardAssignsIdsOfItsGroupAndRefusesOthers) {
  EphemeralStorage storage;
  Limits limits;
  limits.placement = {2, 3};  // Group 2 of 3.
  Store store(Settings("s", 1), limits, &storage);
  absl::StatusOr<std::vector<uint64_t>> ids =
      store.Add({MakePattern(0, 1, 1), MakePattern(0, 1, 2)});
  ASSERT_TRUE(ids.ok()) << ids.status();
  const uint64_t first = (uint64_t{3} << kGroupShift) | 1;
  EXPECT_EQ(*ids, (std::vector<uint64_t>{first, first + 1}));
  for (uint64_t id : *ids) EXPECT_EQ(GroupOf(id, 3), 2u);
  // Client-chosen ids below 2^48 are placed by hash: one of this group is
  // taken, one of another group refused, naming both groups.
  uint64_t mine = 1, theirs = 1;
  while (GroupOf(mine, 3) != 2) ++mine;
  while (GroupOf(theirs, 3) == 2) ++theirs;
  EXPECT_TRUE(store.Add({MakePattern(mine, 1, 3)}).ok());
  absl::Status refused = store.Add({MakePattern(theirs, 1, 4)}).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("belongs to shard group"),
            absl::string_view::npos)
      << refused;
  EXPECT_EQ(store.view()->size(), 3u);
  // Every group gets a share of many client-chosen ids.
  size_t counts[3] = {};
  for (uint64_t id = 1; id <= 3000; ++id) ++counts[GroupOf(id, 3)];
  for (size_t c : counts) EXPECT_GT(c, 900u);
}

// Regression: after an explicit id 2^64 - 2, automatic ids gave 2^64 - 1
// twice and then 0, overwriting acknowledged patterns.
TEST(StoreTest, IdsNeverWrapAndExhaustionIsResourceExhausted) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  EphemeralStorage storage;
  Store store(Settings("s", 1), Limits{}, &storage);
  ASSERT_TRUE(store.Add({MakePattern(kMax - 1, 1, 1)}).ok());
  absl::StatusOr<std::vector<uint64_t>> ids = store.Add({MakePattern(0, 1, 2)});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<uint64_t>{kMax}));
  // No automatic id is left: refused, nothing written, and so it stays.
  for (int i = 0; i < 2; ++i) {
    ids = store.Add({MakePattern(0, 1, 3)});
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_NE(ids.status().message().find("explicit ids"), std::string::npos)
        << ids.status();
  }
  EXPECT_EQ(store.view()->size(), 2u);
  EXPECT_EQ(store.Get(kMax)->values[0], 2.0f);
  // Explicit ids still work, and do not bring automatic ones back.
  ids = store.Add({MakePattern(5, 1, 4)});
  EXPECT_TRUE(ids.ok()) << ids.status();
  EXPECT_FALSE(store.Add({MakePattern(0, 1, 5)}).ok());
  // A batch that needs more automatic ids than are left is refused whole.
  Store near(Settings("near", 1), Limits{}, &storage);
  ASSERT_TRUE(near.Add({MakePattern(kMax - 2, 1, 1)}).ok());
  EXPECT_EQ(near.Add({MakePattern(0, 1, 1), MakePattern(0, 1, 1),
                      MakePattern(0, 1, 1)})
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(near.view()->size(), 1u);
  // The explicit maximum itself leaves no automatic id either.
  Store top(Settings("top", 1), Limits{}, &storage);
  ASSERT_TRUE(top.Add({MakePattern(kMax, 1, 1)}).ok());
  EXPECT_FALSE(top.Add({MakePattern(0, 1, 1)}).ok());
  // And "none left" survives a restart: RestoreNextId(0).
  Store restored(Settings("r", 1), Limits{}, &storage);
  restored.RestoreNextId(0);
  EXPECT_EQ(restored.Add({MakePattern(0, 1, 1)}).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(StoreTest, BadBatchesChangeNothing) {
  EphemeralStorage storage;
  Store store(Settings("s", 3), Limits{}, &storage);
  ASSERT_TRUE(store.Add({MakePattern(1, 3, 1)}).ok());
  const uint64_t version = store.view()->version();

  Pattern nan = MakePattern(0, 3, 1);
  nan.values[1] = std::nanf("");
  Pattern inf = MakePattern(0, 3, 1);
  inf.values[2] = INFINITY;
  Pattern label = MakePattern(0, 3, 1);
  label.label = std::string(300, 'x');
  Pattern metadata = MakePattern(0, 3, 1);
  for (int i = 0; i < 17; ++i)
    metadata.metadata.emplace_back(absl::StrCat(i), "v");

  struct Case {
    std::vector<Pattern> batch;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{}, absl::StatusCode::kInvalidArgument, "must not be empty"},
      {{MakePattern(0, 3, 1), MakePattern(0, 2, 1)},
       absl::StatusCode::kInvalidArgument,
       "patterns[1].values has 2 values"},
      {{MakePattern(0, 3, 1), nan},
       absl::StatusCode::kInvalidArgument,
       "patterns[1].values[1] is nan"},
      {{inf},
       absl::StatusCode::kInvalidArgument,
       "patterns[0].values[2] is inf"},
      {{MakePattern(5, 3, 1), MakePattern(5, 3, 1)},
       absl::StatusCode::kInvalidArgument,
       "patterns[1].id 5 repeats"},
      {{MakePattern(2, 3, 1), MakePattern(1, 3, 1)},
       absl::StatusCode::kAlreadyExists,
       "patterns[1].id 1 already exists"},
      {{label}, absl::StatusCode::kInvalidArgument, "label has 300 bytes"},
      {{metadata}, absl::StatusCode::kInvalidArgument, "metadata has 17"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::vector<uint64_t>> result = store.Add(c.batch);
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    EXPECT_NE(result.status().message().find(c.message), std::string::npos)
        << result.status();
  }
  EXPECT_EQ(store.view()->size(), 1u);
  EXPECT_EQ(store.view()->version(), version);
  EXPECT_FALSE(store.Get(2).ok());
}

TEST(StoreTest, LimitsAreResourceExhausted) {
  EphemeralStorage storage;
  Limits limits;
  limits.max_batch = 2;
  limits.max_patterns_per_store = 3;
  Store store(Settings("s", 1), limits, &storage);
  EXPECT_EQ(
      store.Add(std::vector<Pattern>(3, MakePattern(0, 1, 1))).status().code(),
      absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(store.Add(std::vector<Pattern>(2, MakePattern(0, 1, 1))).ok());
  absl::StatusOr<std::vector<uint64_t>> over =
      store.Add(std::vector<Pattern>(2, MakePattern(0, 1, 1)));
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("max_patterns_per_store"),
            std::string::npos);
}

TEST(StoreTest, StorageFailureChangesNothing) {
  FaultyStorage storage;
  Store store(Settings("s", 2), Limits{}, &storage);
  ASSERT_TRUE(store.Add({MakePattern(1, 2, 1)}).ok());
  storage.fail = true;
  EXPECT_EQ(store.Add({MakePattern(2, 2, 1)}).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(store.Delete({1}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(store.view()->size(), 1u);
  EXPECT_TRUE(store.Get(1).ok());
  EXPECT_FALSE(store.Get(2).ok());
  storage.fail = false;
  EXPECT_TRUE(store.Add({MakePattern(2, 2, 1)}).ok());
}

TEST(StoreTest, DeleteSwapsTheLastRowInAndKeepsOldViewsIntact) {
  EphemeralStorage storage;
  Store store(Settings("s", 4), Limits{}, &storage);
  // Several chunks: capacity for dim 4 is large, so use many patterns.
  const size_t capacity = ChunkCapacity(4);
  std::vector<Pattern> batch;
  for (size_t i = 1; i <= capacity + 10; ++i) {
    batch.push_back(MakePattern(i, 4, static_cast<float>(i)));
  }
  ASSERT_TRUE(store.Add(batch).ok());
  std::shared_ptr<const StoreView> before = store.view();

  ASSERT_TRUE(store.Delete({3, capacity + 10, 1}).ok());
  std::shared_ptr<const StoreView> after = store.view();
  EXPECT_EQ(after->size(), capacity + 7);
  // The old view still sees every original row unchanged.
  for (size_t g = 0; g < before->size(); ++g) {
    EXPECT_EQ(before->info(g).id, g + 1);
    EXPECT_EQ(before->Row(g)[0], static_cast<float>(g + 1));
  }
  // Every survivor is found at its (possibly moved) row with its values.
  for (size_t id = 1; id <= capacity + 10; ++id) {
    absl::StatusOr<Pattern> p = store.Get(id);
    if (id == 1 || id == 3 || id == capacity + 10) {
      EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
    } else {
      ASSERT_TRUE(p.ok()) << id;
      EXPECT_EQ(p->values[0], static_cast<float>(id));
    }
  }
  // And the new view's rows agree with their ids.
  for (size_t g = 0; g < after->size(); ++g) {
    EXPECT_EQ(after->Row(g)[0], static_cast<float>(after->info(g).id));
  }
  EXPECT_NEAR(after->norms().max_norm, 2.0 * (capacity + 9), 1e-6 * capacity);
}

// Deletes count again only the chunks they changed; the statistics stay
// those of the rows left, the largest norm included.
TEST(StoreTest, NormStatisticsFollowDeletesAcrossChunks) {
  EphemeralStorage storage;
  Store store(Settings("s", 784), Limits{}, &storage);
  const size_t capacity = store.view()->chunk_capacity();
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> uniform(-1, 1);
  std::vector<Pattern> batch(2 * capacity + 300);
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i].values.resize(784);
    for (float& v : batch[i].values) v = uniform(rng) * (1 + i % 97);
  }
  ASSERT_TRUE(store.Add(batch).ok());
  for (int round = 0; round < 6; ++round) {
    std::shared_ptr<const StoreView> view = store.view();
    // The row with the largest norm goes first, then random ones.
    size_t largest = 0;
    double largest_norm = 0;
    for (size_t g = 0; g < view->size(); ++g) {
      double sq = 0;
      for (float v : view->Row(g)) sq += double{v} * v;
      if (sq > largest_norm) largest_norm = sq, largest = g;
    }
    std::vector<uint64_t> ids = {view->info(largest).id};
    for (int n = 0; n < 40 * round; ++n) {
      const uint64_t id = view->info(rng() % view->size()).id;
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    }
    ASSERT_TRUE(store.Delete(ids).ok());
    view = store.view();
    double max_norm = 0, sum_norm = 0, max_abs = 0;
    for (size_t g = 0; g < view->size(); ++g) {
      double sq = 0;
      for (float v : view->Row(g)) {
        sq += double{v} * v;
        max_abs = std::max(max_abs, double{std::abs(v)});
      }
      max_norm = std::max(max_norm, std::sqrt(sq));
      sum_norm += std::sqrt(sq);
    }
    const NormStats& norms = view->norms();
    EXPECT_NEAR(norms.max_norm, max_norm, 1e-5 * max_norm) << round;
    EXPECT_NEAR(norms.mean_norm, sum_norm / view->size(), 1e-5 * max_norm);
    EXPECT_EQ(norms.max_abs_entry, max_abs) << round;
    EXPECT_EQ(norms.max_feature_norm, norms.max_norm);
  }
}

TEST(StoreTest, AppendAfterDeleteDoesNotOverwriteRowsOldViewsSee) {
  EphemeralStorage storage;
  Store store(Settings("s", 2), Limits{}, &storage);
  ASSERT_TRUE(store.Add({MakePattern(1, 2, 1), MakePattern(2, 2, 2)}).ok());
  std::shared_ptr<const StoreView> old = store.view();
  ASSERT_TRUE(store.Delete({2}).ok());
  ASSERT_TRUE(store.Add({MakePattern(3, 2, 3)}).ok());
  EXPECT_EQ(old->Row(1)[0], 2.0f);
  EXPECT_EQ(old->info(1).id, 2u);
  EXPECT_EQ(store.view()->Row(1)[0], 3.0f);
}

TEST(StoreTest, PublishingAMapSharesRowsWithoutExposingOldViewsToWrites) {
  EphemeralStorage storage;
  StoreSettings settings = Settings("u", 2);
  settings.feature_map.kind = FeatureMapKind::kUhop;
  Store store(settings, Limits{}, &storage);
  ASSERT_TRUE(store.Add({MakePattern(1, 2, 1), MakePattern(2, 2, 2)}).ok());
  std::shared_ptr<const StoreView> old = store.view();
  ASSERT_TRUE(store.Delete({2}).ok());
  auto doubling =
      std::make_shared<core::FeatureMap>(2, 2, std::vector<float>{2, 0, 0, 2});
  ASSERT_TRUE(store.PublishMap(doubling, FitRecord{1, 0, 0, 1, 0, 1}).ok());
  ASSERT_TRUE(store.Add({MakePattern(3, 2, 3)}).ok());
  // The first view still sees pattern 2 in row 1, with identity keys.
  EXPECT_EQ(old->info(1).id, 2u);
  EXPECT_EQ(old->Row(1)[0], 2.0f);
  EXPECT_EQ(static_cast<const float*>(old->memories().blocks[0].keys)[2], 2.0f);
  // The new view sees pattern 3 there, with doubled keys.
  std::shared_ptr<const StoreView> now = store.view();
  EXPECT_EQ(now->info(1).id, 3u);
  EXPECT_EQ(static_cast<const float*>(now->memories().blocks[0].keys)[2], 6.0f);
  EXPECT_EQ(static_cast<const float*>(now->memories().blocks[0].keys)[0], 2.0f);
  EXPECT_EQ(now->fit().version, 1u);
  // Maps only go forward: the same or an older version is refused and
  // changes nothing (a router's publication sent twice, or late).
  auto tripling =
      std::make_shared<core::FeatureMap>(2, 2, std::vector<float>{3, 0, 0, 3});
  EXPECT_EQ(store.PublishMap(tripling, FitRecord{1, 0, 0, 1, 0, 1}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      static_cast<const float*>(store.view()->memories().blocks[0].keys)[0],
      2.0f);
  EXPECT_TRUE(store.PublishMap(tripling, FitRecord{2, 0, 0, 1, 0, 1}).ok());
  EXPECT_EQ(
      static_cast<const float*>(store.view()->memories().blocks[0].keys)[0],
      3.0f);
}

TEST(StoreTest, DeleteValidatesEveryIdFirst) {
  EphemeralStorage storage;
  Store store(Settings("s", 1), Limits{}, &storage);
  ASSERT_TRUE(store.Add({MakePattern(1, 1, 1), MakePattern(2, 1, 2)}).ok());
  EXPECT_EQ(store.Delete({1, 9}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.Delete({1, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Delete({}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.view()->size(), 2u);
}

TEST(StoreTest, CheckDeleteAnswersAsDeleteAndDeletesNothing) {
  EphemeralStorage storage;
  Store store(Settings("s", 1), Limits{}, &storage);
  ASSERT_TRUE(store.Add({MakePattern(1, 1, 1), MakePattern(2, 1, 2)}).ok());
  const uint64_t version = store.view()->version();
  for (const std::vector<uint64_t>& ids :
       std::vector<std::vector<uint64_t>>{{1, 9}, {1, 1}, {}, {2, 1}}) {
    const absl::Status checked = store.CheckDelete(ids);
    EXPECT_EQ(store.view()->size(), 2u);
    EXPECT_EQ(store.view()->version(), version);
    EXPECT_EQ(checked, store.Delete(ids)) << ids.size();
  }
  EXPECT_EQ(store.view()->size(), 0u);  // The last pair was deletable.
}

TEST(StoreTest, ListPagesInIdOrder) {
  EphemeralStorage storage;
  Store store(Settings("s", 1), Limits{}, &storage);
  ASSERT_TRUE(store
                  .Add({MakePattern(5, 1, 5), MakePattern(2, 1, 2),
                        MakePattern(9, 1, 9)})
                  .ok());
  Store::Page page = store.List(0, 2, false);
  ASSERT_EQ(page.patterns.size(), 2u);
  EXPECT_EQ(page.patterns[0].id, 2u);
  EXPECT_EQ(page.patterns[1].id, 5u);
  EXPECT_TRUE(page.patterns[0].values.empty());
  EXPECT_TRUE(page.more);
  page = store.List(5, 2, true);
  ASSERT_EQ(page.patterns.size(), 1u);
  EXPECT_EQ(page.patterns[0].values[0], 9.0f);
  EXPECT_FALSE(page.more);
}

TEST(StoreTest, UpdateSettingsValidatesAndKeepsIdentity) {
  EphemeralStorage storage;
  Store store(Settings("s", 2), Limits{}, &storage);
  EXPECT_TRUE(store
                  .UpdateSettings([](StoreSettings& s) {
                    s.retrieval.beta = 3;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(store.view()->settings().retrieval.beta, 3.0f);
  absl::Status bad = store.UpdateSettings([](StoreSettings& s) {
    s.retrieval.beta = -1;
    return absl::OkStatus();
  });
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("store.retrieval.beta"), std::string::npos);
  EXPECT_EQ(store
                .UpdateSettings([](StoreSettings& s) {
                  s.dimension = 3;
                  return absl::OkStatus();
                })
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.view()->settings().retrieval.beta, 3.0f);
}

TEST(StoreTest, ConcurrentWritersAndReadersSeeConsistentViews) {
  EphemeralStorage storage;
  Store store(Settings("s", 8), Limits{}, &storage);
  std::atomic<bool> done{false};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      while (!done) {
        std::shared_ptr<const StoreView> view = store.view();
        for (size_t g = 0; g < view->size(); ++g) {
          // Every row holds its own id in every coordinate.
          ASSERT_EQ(view->Row(g)[7], static_cast<float>(view->info(g).id));
        }
        if (view->size() > 0) {
          std::vector<float> query(8, 1.0f);
          RetrieveRequest request;
          request.queries = query;
          request.num_queries = 1;
          ASSERT_TRUE(Retrieve(*view, request, Limits{}, {}).ok());
        }
      }
    });
  }
  // Pages are listed while rows move under deletes: each pattern still
  // carries its own values, in id order.
  readers.emplace_back([&] {
    while (!done) {
      uint64_t after = 0;
      Store::Page page;
      do {
        page = store.List(after, 50, true);
        for (const Pattern& p : page.patterns) {
          ASSERT_GT(p.id, after);
          ASSERT_EQ(p.values, std::vector<float>(8, static_cast<float>(p.id)));
          after = p.id;
        }
      } while (page.more);
    }
  });
  std::thread writer([&] {
    uint64_t next = 1;
    for (int round = 0; round < 200; ++round) {
      std::vector<Pattern> batch;
      for (int i = 0; i < 20; ++i, ++next) {
        batch.push_back(MakePattern(next, 8, static_cast<float>(next)));
      }
      ASSERT_TRUE(store.Add(batch).ok());
      ASSERT_TRUE(store.Delete({next - 3, next - 11}).ok());
    }
  });
  writer.join();
  done = true;
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(store.view()->size(), 200u * 18);
}

TEST(RegistryTest, CreateGetListDelete) {
  EphemeralStorage storage;
  StoreRegistry registry(Limits{}, &storage);
  ASSERT_TRUE(registry.Load().ok());
  for (const char* name : {"b", "a", "c"}) {
    ASSERT_TRUE(registry.Create(Settings(name, 2)).ok());
  }
  EXPECT_EQ(registry.Create(Settings("a", 2)).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.Create(Settings("Bad Name", 2)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Create(Settings("z", 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  bool more = false;
  std::vector<std::shared_ptr<Store>> page = *registry.List("", 2, more);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0]->name(), "a");
  EXPECT_TRUE(more);
  page = *registry.List("b", 2, more);
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(page[0]->name(), "c");
  EXPECT_FALSE(more);

  absl::StatusOr<std::shared_ptr<Store>> a = registry.Get("a");
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(registry.Delete("a").ok());
  EXPECT_EQ(registry.Get("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.Delete("a").code(), absl::StatusCode::kNotFound);
  // A writer holding the deleted store cannot write to it any more.
  EXPECT_EQ((*a)->Add({MakePattern(1, 2, 1)}).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(RegistryTest, AnswersUnavailableUntilLoaded) {
  EphemeralStorage storage;
  StoreRegistry registry(Limits{}, &storage);
  EXPECT_EQ(registry.Create(Settings("a", 2)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(registry.Get("a").status().code(), absl::StatusCode::kUnavailable);
  bool more;
  EXPECT_EQ(registry.List("", 1, more).status().code(),
            absl::StatusCode::kUnavailable);
  ASSERT_TRUE(registry.Load().ok());
  EXPECT_TRUE(registry.Create(Settings("a", 2)).ok());
}

TEST(RegistryTest, MaxStoresIsResourceExhausted) {
  EphemeralStorage storage;
  Limits limits;
  limits.max_stores = 1;
  StoreRegistry registry(limits, &storage);
  ASSERT_TRUE(registry.Load().ok());
  ASSERT_TRUE(registry.Create(Settings("a", 2)).ok());
  absl::StatusOr<std::shared_ptr<Store>> second =
      registry.Create(Settings("b", 2));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(second.status().message().find("max_stores"), std::string::npos);
}

TEST(RegistryTest, TheStoresShareACeilingOnTheMemoryOfTheirPatterns) {
  EphemeralStorage storage;
  size_t chunk = 0;  // What a store's first chunk takes.
  {
    StoreRegistry scratch(Limits{}, &storage);
    ASSERT_TRUE(scratch.Load().ok());
    std::shared_ptr<Store> x = *scratch.Create(Settings("x", 64));
    ASSERT_TRUE(x->Add({MakePattern(0, 64, 1.0f)}).ok());
    chunk = x->view()->memory_bytes();
  }
  const size_t row = Chunk::RowBytes(64, 0, core::Precision::kFloat32);
  ASSERT_GT(chunk, 20 * row);
  Limits limits;
  limits.max_store_memory_bytes = chunk + 10 * row;
  StoreRegistry registry(limits, &storage);
  ASSERT_TRUE(registry.Load().ok());
  std::shared_ptr<Store> a = *registry.Create(Settings("a", 64));
  auto add = [](Store& store, size_t n) {
    std::vector<Pattern> patterns;
    for (size_t i = 0; i < n; ++i) patterns.push_back(MakePattern(0, 64, 1.0f));
    return store.Add(patterns).status();
  };
  ASSERT_TRUE(add(*a, 1).ok());
  absl::Status refused = add(*a, 11);  // chunk + 11 rows: past the ceiling.
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.message(), HasSubstr("max_store_memory_mb"));
  EXPECT_EQ(a->view()->size(), 1u);
  ASSERT_TRUE(add(*a, 5).ok());
  // A second store's first chunk takes the rest, for both.
  std::shared_ptr<Store> b = *registry.Create(Settings("b", 64));
  ASSERT_TRUE(add(*b, 1).ok());
  EXPECT_EQ(add(*a, 1).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(add(*b, 1).code(), absl::StatusCode::kResourceExhausted);
  // Once it is gone, its memory is free again.
  ASSERT_TRUE(registry.Delete("b").ok());
  b.reset();
  EXPECT_TRUE(add(*a, 1).ok());
}

// Runs `checks` on a thread of its own and fails (instead of hanging) if
// they do not finish within a minute: they must not wait for the storage
// write held by the test.
void WithoutWaitingFor(GatedStorage& storage,
                       const std::function<void()>& checks) {
  Mutex mu;
  CondVar finished_cv;
  bool finished = false;
  std::thread t([&] {
    checks();
    MutexLock lock(&mu);
    finished = true;
    finished_cv.Signal();
  });
  {
    const absl::Time deadline = absl::Now() + absl::Minutes(1);
    MutexLock lock(&mu);
    while (!finished && absl::Now() < deadline) {
      finished_cv.WaitWithTimeout(&mu, deadline - absl::Now());
    }
    EXPECT_TRUE(finished) << "the checks waited for the held storage write";
  }
  storage.Release();  // Let a blocked check finish, so the thread joins.
  t.join();
}

TEST(RegistryTest, ReadsGoOnWhileAStoreIsBeingCreatedOrDeleted) {
  GatedStorage storage;
  Limits limits;
  limits.max_stores = 2;
  StoreRegistry registry(limits, &storage);
  ASSERT_TRUE(registry.Load().ok());
  ASSERT_TRUE(registry.Create(Settings("b", 2)).ok());
  ASSERT_TRUE((*registry.Get("b"))->Add({MakePattern(0, 2, 1)}).ok());

  // A create whose storage write hangs.
  storage.Hold();
  std::thread create(
      [&] { EXPECT_TRUE(registry.Create(Settings("a", 2)).ok()); });
  storage.WaitHeld(1);
  WithoutWaitingFor(storage, [&] {
    absl::StatusOr<std::shared_ptr<Store>> b = registry.Get("b");
    ASSERT_TRUE(b.ok());
    EXPECT_EQ((*b)->view()->size(), 1u);
    bool more = false;
    EXPECT_EQ(registry.List("", 10, more)->size(), 1u);
    EXPECT_EQ(registry.Get("a").status().code(), absl::StatusCode::kNotFound);
    for (absl::Status status :
         {registry.Create(Settings("a", 2)).status(), registry.Delete("a")}) {
      EXPECT_EQ(status.code(), absl::StatusCode::kAborted);
      EXPECT_NE(status.message().find("store 'a' is being created; retry"),
                std::string::npos)
          << status;
    }
    // The store being created counts against max_stores.
    absl::Status third = registry.Create(Settings("c", 2)).status();
    EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_NE(third.message().find("holds 2 stores"), std::string::npos)
        << third;
  });
  create.join();
  ASSERT_TRUE(registry.Get("a").ok());

  // A delete whose storage write hangs: the store serves reads meanwhile.
  storage.Hold();
  std::thread drop([&] { EXPECT_TRUE(registry.Delete("b").ok()); });
  storage.WaitHeld(1);
  WithoutWaitingFor(storage, [&] {
    absl::StatusOr<std::shared_ptr<Store>> b = registry.Get("b");
    ASSERT_TRUE(b.ok());
    EXPECT_EQ((*b)->view()->size(), 1u);
    EXPECT_TRUE(registry.Get("a").ok());
    absl::Status again = registry.Create(Settings("b", 2)).status();
    EXPECT_EQ(again.code(), absl::StatusCode::kAborted);
    EXPECT_NE(again.message().find("store 'b' is being deleted; retry"),
              std::string::npos)
        << again;
  });
  drop.join();
  EXPECT_EQ(registry.Get("b").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(registry.Create(Settings("b", 2)).ok());
}

// Finite values can still overflow a score: a pattern over kMaxNorm is
// refused, and a retrieval whose scores could pass kMaxScore names what to
// change (the query, beta, or the store's outsized patterns), for the plain
// similarities and, through the feature map, the kernel ones.
TEST(RetrieveTest, RefusesWhatWouldOverflowFloat) {
  EphemeralStorage storage;
  Store store(Settings("s", 2), Limits{}, &storage);
  absl::StatusOr<std::vector<uint64_t>> huge =
      store.Add({MakePattern(1, 2, 1), Pattern{2, {2e18f, 1}, "", {}}});
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(huge.status().message(),
              HasSubstr("patterns[1].values has norm 2e+18; a pattern's norm "
                        "must be at most 1.5e+18"));
  ASSERT_TRUE(store.Add({MakePattern(1, 2, 1), MakePattern(2, 2, -1)}).ok());
  std::vector<float> queries = {1, 0, 3e20f, 0, 2e20f, 0};
  RetrieveRequest request;
  request.queries = queries;
  request.num_queries = 3;
  absl::Status big = Retrieve(*store.view(), request, Limits{}, {}).status();
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(big.message(),
              HasSubstr("queries[1] has norm 3e+20: with beta 1 and the "
                        "store's patterns of norms up to 1.41 its scores "
                        "could reach 9e+40"));
  queries = {1, 0, 1e18f, 0, 0, 1};  // At beta 1 they fit.
  ASSERT_TRUE(Retrieve(*store.view(), request, Limits{}, {}).ok());
  request.beta = 1e20f;
  absl::Status hot = Retrieve(*store.view(), request, Limits{}, {}).status();
  EXPECT_EQ(hot.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(hot.message(), HasSubstr("queries[1] has norm 1e+18"));
  queries = {1, 0, 0, 1, 0, 1};
  request.beta = 1e37f;
  hot = Retrieve(*store.view(), request, Limits{}, {}).status();
  EXPECT_EQ(hot.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(hot.message(), HasSubstr("at beta 1e+37 their scores could "
                                       "reach 8e+37, past the 1e+37"));
  EXPECT_THAT(hot.message(), HasSubstr("; lower beta"));
  // The store's own beta: its state, not the request.
  StoreSettings hot_settings = Settings("hot", 2);
  hot_settings.retrieval.beta = 1e37f;
  Store hot_store(hot_settings, Limits{}, &storage);
  ASSERT_TRUE(hot_store.Add({MakePattern(1, 2, 1)}).ok());
  request.beta.reset();
  EXPECT_EQ(Retrieve(*hot_store.view(), request, Limits{}, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // kernel_dot: scores are of features, ||Phi x|| <= ||W||_F ||x||.
  StoreSettings kernel = Settings("k", 2);
  kernel.retrieval.similarity = core::Similarity::kKernelDot;
  kernel.feature_map.kind = FeatureMapKind::kUhop;
  kernel.feature_map.feature_dim = 2;
  Store kernel_store(kernel, Limits{}, &storage);
  ASSERT_TRUE(kernel_store.Add({MakePattern(1, 2, 1e9f)}).ok());
  ASSERT_TRUE(kernel_store
                  .PublishMap(std::make_shared<core::FeatureMap>(
                                  2, 2, std::vector<float>{1e10f, 0, 0, 1e10f}),
                              FitRecord{1, 0, 0, 1, 0, 1})
                  .ok());
  queries = {1, 0, 0, 1, 0, 1};
  absl::Status mapped =
      Retrieve(*kernel_store.view(), request, Limits{}, {}).status();
  EXPECT_EQ(mapped.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(mapped.message(),
              HasSubstr("store 'k' has patterns of feature norms up to "
                        "1.41e+19"));
  ASSERT_TRUE(kernel_store
                  .PublishMap(std::make_shared<core::FeatureMap>(
                                  2, 2, std::vector<float>{1e-9f, 0, 0, 1e-9f}),
                              FitRecord{2, 0, 0, 1, 0, 1})
                  .ok());
  EXPECT_TRUE(Retrieve(*kernel_store.view(), request, Limits{}, {}).ok());
  queries = {1, 0, 0, 1, 1e18f, 0};  // Features of norm 1.4e9: fine.
  EXPECT_TRUE(Retrieve(*kernel_store.view(), request, Limits{}, {}).ok());
  request.beta = 1e20f;
  mapped = Retrieve(*kernel_store.view(), request, Limits{}, {}).status();
  EXPECT_EQ(mapped.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mapped.message(), HasSubstr("queries[2] has norm 1e+18"));
}

TEST(RetrieveTest, ValidatesQueriesAndOverrides) {
  EphemeralStorage storage;
  Store store(Settings("s", 2), Limits{}, &storage);
  std::vector<float> queries = {1, 2};
  RetrieveRequest request;
  request.queries = queries;
  request.num_queries = 1;
  EXPECT_EQ(Retrieve(*store.view(), request, Limits{}, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store.Add({MakePattern(1, 2, 1)}).ok());
  EXPECT_TRUE(Retrieve(*store.view(), request, Limits{}, {}).ok());

  RetrieveRequest bad = request;
  bad.beta = 0.0f;
  EXPECT_EQ(Retrieve(*store.view(), bad, Limits{}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = request;
  bad.steps = 0;
  EXPECT_EQ(Retrieve(*store.view(), bad, Limits{}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = request;
  bad.top_k = 100000;
  EXPECT_EQ(Retrieve(*store.view(), bad, Limits{}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> nan = {1, std::nanf("")};
  bad = request;
  bad.queries = nan;
  absl::Status status = Retrieve(*store.view(), bad, Limits{}, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("queries[0].values[1]"), std::string::npos);
  Limits small;
  small.max_queries = 0;
  EXPECT_EQ(Retrieve(*store.view(), request, small, {}).status().code(),
            absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace engram::store

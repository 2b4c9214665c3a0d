#include <algorithm>
#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/store/filter_index.h"
#include "server/store/retrieve.h"
#include "server/store/store.h"

namespace engram::store {
namespace {

constexpr uint32_t kDim = 16;

StoreSettings Settings(const std::string& name, core::Similarity similarity,
                       bool uhop = false, uint32_t dim = kDim) {
  StoreSettings s;
  s.name = name;
  s.dimension = dim;
  s.retrieval.similarity = similarity;
  s.retrieval.beta = 4;
  s.retrieval.steps = 3;
  s.retrieval.top_k = 7;
  if (uhop) s.feature_map.kind = FeatureMapKind::kUhop;
  return s;
}

// `n` patterns with labels c0..c9, a tenant t0..t2 on most, a colour on
// some and the half of the store they were added in; then every 15th deleted
// (rows move) and 100 more added.
std::vector<Pattern> Fill(Store& store, uint64_t n = 3000) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  const size_t d = store.view()->settings().dimension;
  auto make = [&](uint64_t i) {
    Pattern p;
    p.values.resize(d);
    for (float& v : p.values) v = normal(rng);
    p.label = absl::StrCat("c", i % 10);
    if (i % 7 != 0) p.metadata.emplace_back("color", i % 2 ? "red" : "blue");
    if (i % 5 != 0) p.metadata.emplace_back("tenant", absl::StrCat("t", i % 3));
    p.metadata.emplace_back("half", i < n / 2 ? "first" : "second");
    return p;
  };
  std::vector<Pattern> batch;
  for (uint64_t i = 0; i < n; ++i) batch.push_back(make(i));
  EXPECT_TRUE(store.Add(batch).ok());
  std::vector<uint64_t> gone;
  for (uint64_t id = 1; id <= n; id += 15) gone.push_back(id);
  EXPECT_TRUE(store.Delete(gone).ok());
  batch.clear();
  for (uint64_t i = n; i < n + 100; ++i) batch.push_back(make(i));
  EXPECT_TRUE(store.Add(batch).ok());
  return batch;
}

bool Matches(const Filter& f, const Chunk::RowInfo& info) {
  bool label = f.labels.empty();
  for (const std::string& l : f.labels) label = label || l == info.label;
  if (f.conditions.empty()) return label;
  bool all = true, any = false;
  for (const auto& condition : f.conditions) {
    bool holds = false;
    for (const auto& entry : info.metadata) holds = holds || entry == condition;
    all = all && holds;
    any = any || holds;
  }
  return label && (f.any ? any : all);
}

std::vector<Filter> Filters() {
  Filter labels{{"c1", "c3"}, {}, false};
  Filter tenant{{}, {{"tenant", "t1"}}, false};
  Filter both{{"c2", "c5", "c9"}, {{"color", "red"}, {"tenant", "t0"}}, false};
  Filter any{{}, {{"color", "blue"}, {"tenant", "t2"}}, true};
  Filter rare{{"c3"}, {{"tenant", "t2"}, {"color", "red"}}, false};
  // Every label: the rows stay in place (runs of a chunk are not copied).
  Filter every{
      {"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"}, {}, false};
  // The first half: long runs of rows, some of them across chunks.
  Filter first{{}, {{"half", "first"}}, false};
  return {labels, tenant, both, any, rare, every, first};
}

RetrieveRequest Request(const std::vector<float>& queries, size_t dim,
                        const Filter& f) {
  RetrieveRequest r;
  r.queries = queries;
  r.num_queries = queries.size() / dim;
  r.filter = f;
  return r;
}

// The filtered retrieval equals a retrieval over a store that holds only the
// matching patterns (added in the same row order), bit for bit; `threads`
// share the retrieval and the copies of scattered rows.
void ExpectEqualToAStoreOfOnlyThem(const StoreSettings& settings,
                                   uint64_t patterns = 3000, int threads = 1) {
  EphemeralStorage storage;
  Store store(settings, Limits{}, &storage);
  Fill(store, patterns);
  core::RetrievalOptions options;
  options.threads = threads;
  const uint32_t d = settings.dimension;
  if (settings.feature_map.kind == FeatureMapKind::kUhop) {
    std::vector<float> w(d * d, 0);
    for (uint32_t i = 0; i < d; ++i) w[i * d + i] = 0.5f + 0.1f * (i % 16);
    ASSERT_TRUE(store
                    .PublishMap(std::make_shared<core::FeatureMap>(d, d, w),
                                FitRecord{1, 0, 0, 1, 0, 1})
                    .ok());
  }
  std::shared_ptr<const StoreView> view = store.view();
  // Four queries (the batched path) and one (the fused single-query pass).
  std::vector<float> batch(4 * d);
  for (size_t q = 0; q < 4; ++q) {
    const std::vector<float> row = view->Row(q * 101);
    for (size_t k = 0; k < d; ++k) batch[q * d + k] = row[k] * 0.8f;
  }
  const std::vector<float> one(batch.begin() + d, batch.begin() + 2 * d);
  std::vector<std::pair<Filter, const std::vector<float>*>> cases;
  for (const Filter& f : Filters()) {
    cases.push_back({f, &batch});
    cases.push_back({f, &one});
  }
  for (const auto& [filter, batch_of] : cases) {
    const std::vector<float>& queries = *batch_of;
    std::vector<uint32_t> expected;
    for (size_t i = 0; i < view->size(); ++i) {
      if (Matches(filter, view->info(i))) expected.push_back(i);
    }
    ASSERT_EQ(*view->Matching(filter), expected);
    ASSERT_FALSE(expected.empty());

    StoreSettings only_settings = settings;
    only_settings.name = "only";
    Store only(only_settings, Limits{}, &storage);
    std::vector<Pattern> patterns;
    for (uint32_t i : expected) patterns.push_back(view->pattern(i));
    ASSERT_TRUE(only.Add(patterns).ok());
    if (view->map()) {
      ASSERT_TRUE(only.PublishMap(view->map(), view->fit()).ok());
    }
    absl::StatusOr<RetrieveResult> filtered =
        Retrieve(*view, Request(queries, d, filter), Limits{}, options);
    absl::StatusOr<RetrieveResult> reference = Retrieve(
        *only.view(), Request(queries, d, Filter{}), Limits{}, options);
    ASSERT_TRUE(filtered.ok()) << filtered.status();
    ASSERT_TRUE(reference.ok()) << reference.status();
    EXPECT_EQ(filtered->states, reference->states);
    EXPECT_EQ(filtered->energies, reference->energies);
    EXPECT_EQ(filtered->steps, reference->steps);
    ASSERT_EQ(filtered->matches.size(), reference->matches.size());
    for (size_t q = 0; q < filtered->matches.size(); ++q) {
      ASSERT_EQ(filtered->matches[q].size(), reference->matches[q].size());
      for (size_t k = 0; k < filtered->matches[q].size(); ++k) {
        EXPECT_EQ(filtered->matches[q][k].id, reference->matches[q][k].id);
        EXPECT_EQ(filtered->matches[q][k].weight,
                  reference->matches[q][k].weight);
      }
    }
    EXPECT_NE(filtered->path.reason.find("filtered to"), std::string::npos);
  }
}

TEST(FilterTest, DotSoftmaxEqualsAStoreOfOnlyTheMatches) {
  ExpectEqualToAStoreOfOnlyThem(Settings("dot", core::Similarity::kDot));
}

TEST(FilterTest, L2EqualsAStoreOfOnlyTheMatches) {
  ExpectEqualToAStoreOfOnlyThem(Settings("l2", core::Similarity::kL2));
}

TEST(FilterTest, KernelFeaturesAreGatheredToo) {
  ExpectEqualToAStoreOfOnlyThem(
      Settings("k", core::Similarity::kKernelL2, /*uhop=*/true));
}

// Enough matches that two threads share the retrieval.
TEST(FilterTest, TwoThreadsEqualAStoreOfOnlyThem) {
  ExpectEqualToAStoreOfOnlyThem(Settings("dot", core::Similarity::kDot), 30000,
                                2);
  ExpectEqualToAStoreOfOnlyThem(
      Settings("k", core::Similarity::kKernelL2, /*uhop=*/true), 30000, 2);
}

// d = 784: chunks of 1,337 rows, so the matches span several blocks, some
// read in place (runs within a chunk) and some listed row by row.
TEST(FilterTest, ManyChunksInPlaceAndListedEqualAStoreOfOnlyThem) {
  ExpectEqualToAStoreOfOnlyThem(
      Settings("dot", core::Similarity::kDot, false, 784), 6000, 2);
  ExpectEqualToAStoreOfOnlyThem(
      Settings("k", core::Similarity::kKernelDot, /*uhop=*/true, 784), 6000, 1);
}

TEST(FilterTest, AViewSeesItsOwnRowsWhateverCameAfter) {
  EphemeralStorage storage;
  Store store(Settings("s", core::Similarity::kDot), Limits{}, &storage);
  Fill(store);
  const Filter red{{}, {{"color", "red"}}, false};
  std::shared_ptr<const StoreView> before = store.view();
  const std::vector<uint32_t> rows = *before->Matching(red);
  // Adds append to the index the old view shares; deletes move rows and
  // start a new one. The old view's answer does not change.
  Pattern p{0, std::vector<float>(kDim, 1), "c1", {{"color", "red"}}};
  ASSERT_TRUE(store.Add({p, p}).ok());
  EXPECT_EQ(*before->Matching(red), rows);
  EXPECT_EQ(store.view()->Matching(red)->size(), rows.size() + 2);
  ASSERT_TRUE(store.Delete({before->info(rows[0]).id}).ok());
  EXPECT_EQ(*before->Matching(red), rows);
  EXPECT_EQ(store.view()->Matching(red)->size(), rows.size() + 1);
  std::shared_ptr<const StoreView> after = store.view();
  const std::vector<uint32_t> matching = *after->Matching(red);
  for (uint32_t r : matching) EXPECT_TRUE(Matches(red, after->info(r)));
}

// The brute-force answer: the rows of `view` that `f` matches.
std::vector<uint32_t> Scan(const StoreView& view, const Filter& f) {
  std::vector<uint32_t> rows;
  for (size_t g = 0; g < view.size(); ++g) {
    if (Matches(f, view.info(g))) rows.push_back(static_cast<uint32_t>(g));
  }
  return rows;
}

// Random adds and deletes; reads build and extend the index. Every view,
// the latest and older ones kept aside, answers as a scan of its own rows.
TEST(FilterTest, TheIndexReadsBuildAgreesWithEveryViewThroughAddsAndDeletes) {
  EphemeralStorage storage;
  Store store(Settings("s", core::Similarity::kDot), Limits{}, &storage);
  std::mt19937 rng(11);
  const std::vector<Filter> filters = {
      {{"a"}, {}, false},
      {{}, {{"k", "1"}}, false},
      {{"a", "b"}, {{"k", "0"}, {"j", "x"}}, true},
      {{"b"}, {{"k", "1"}, {"j", "x"}}, false}};
  auto pattern = [&] {
    Pattern p;
    p.values.assign(kDim, 0.25f);
    p.label = std::string(1, "abc"[rng() % 3]);
    if (rng() % 2) p.metadata.emplace_back("k", std::to_string(rng() % 2));
    if (rng() % 3 == 0) p.metadata.emplace_back("j", "x");
    return p;
  };
  std::vector<std::pair<std::shared_ptr<const StoreView>,
                        std::vector<std::vector<uint32_t>>>>
      kept;
  for (int round = 0; round < 60; ++round) {
    std::shared_ptr<const StoreView> view = store.view();
    if (view->size() > 0 && rng() % 3 == 0) {
      std::vector<uint64_t> ids;
      for (size_t n = 1 + rng() % 8; n > 0; --n) {
        const uint64_t id = view->info(rng() % view->size()).id;
        if (std::find(ids.begin(), ids.end(), id) == ids.end()) {
          ids.push_back(id);
        }
      }
      ASSERT_TRUE(store.Delete(ids).ok());
    } else {
      std::vector<Pattern> batch(1 + rng() % 40);
      for (Pattern& p : batch) p = pattern();
      ASSERT_TRUE(store.Add(batch).ok());
    }
    view = store.view();
    if (rng() % 2 == 0) continue;  // Some views are never read.
    std::vector<std::vector<uint32_t>> answers;
    for (const Filter& f : filters) {
      answers.push_back(*view->Matching(f));
      EXPECT_EQ(answers.back(), Scan(*view, f)) << "round " << round;
    }
    if (round % 5 == 0) kept.emplace_back(view, answers);
  }
  for (const auto& [view, answers] : kept) {
    for (size_t i = 0; i < filters.size(); ++i) {
      EXPECT_EQ(*view->Matching(filters[i]), answers[i]);
    }
  }
}

// Readers build and extend one index while the writer adds and deletes
// (for the thread sanitizer; every answer is also checked).
TEST(FilterTest, ConcurrentReadsBuildOneIndexWhileWritesGoOn) {
  EphemeralStorage storage;
  Store store(Settings("s", core::Similarity::kDot), Limits{}, &storage);
  Fill(store, 600);
  const std::vector<Filter> filters = Filters();
  std::atomic<bool> done{false};
  std::atomic<int> mismatches{0};
  auto read = [&] {
    while (!done.load()) {
      std::shared_ptr<const StoreView> view = store.view();
      for (const Filter& f : filters) {
        if (*view->Matching(f) != Scan(*view, f)) ++mismatches;
      }
    }
  };
  std::thread a(read), b(read);
  std::mt19937 rng(5);
  for (int round = 0; round < 40; ++round) {
    std::shared_ptr<const StoreView> view = store.view();
    if (round % 3 == 2) {
      ASSERT_TRUE(store.Delete({view->info(rng() % view->size()).id}).ok());
    } else {
      Pattern p{0,
                std::vector<float>(kDim, 1),
                absl::StrCat("c", round % 10),
                {{"color", "red"}, {"tenant", "t1"}}};
      ASSERT_TRUE(store.Add({p, p}).ok());
    }
  }
  done = true;
  a.join();
  b.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(FilterTest, AnIndexingCutShortByItsCheckIsResumedByTheNextReader) {
  EphemeralStorage storage;
  Store store(Settings("s", core::Similarity::kDot), Limits{}, &storage);
  Fill(store, 40000);  // Three blocks of rows to index (16,384 each).
  std::shared_ptr<const StoreView> view = store.view();
  const Filter tenant{{}, {{"tenant", "t1"}}, false};
  int checks = 0;
  auto second_fails = [&checks]() -> absl::Status {
    return ++checks == 2 ? absl::DeadlineExceededError("the deadline passed")
                         : absl::OkStatus();
  };
  absl::StatusOr<std::vector<uint32_t>> cut =
      view->Matching(tenant, second_fails);
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(checks, 2);  // One block indexed, then stopped.
  // The next reader indexes only the two blocks left.
  checks = 0;
  auto counted = [&checks]() -> absl::Status {
    ++checks;
    return absl::OkStatus();
  };
  absl::StatusOr<std::vector<uint32_t>> resumed =
      view->Matching(tenant, counted);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(checks, 2);
  EXPECT_EQ(*resumed, Scan(*view, tenant));
  // A retrieval whose deadline passes while the index is built says so.
  ASSERT_TRUE(store.Delete({2}).ok());  // A new, empty index.
  core::RetrievalOptions options;
  options.check = [] { return absl::DeadlineExceededError("too late"); };
  std::vector<float> query(kDim, 0.5f);
  RetrieveRequest request;
  request.queries = query;
  request.num_queries = 1;
  request.filter = tenant;
  EXPECT_EQ(Retrieve(*store.view(), request, Limits{}, options).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(FilterTest, RefusesWhatItCannotServe) {
  EphemeralStorage storage;
  Store store(Settings("s", core::Similarity::kDot), Limits{}, &storage);
  Fill(store);
  const std::vector<float> query(kDim, 0.5f);
  auto code = [&](const Filter& f, PathChoice path = PathChoice::kAuto) {
    RetrieveRequest r = Request(query, kDim, f);
    r.path = path;
    return Retrieve(*store.view(), r, Limits{}, {}).status();
  };
  absl::Status none = code(Filter{{"no-such-label"}, {}, false});
  EXPECT_EQ(none.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(none.message().find("matches no pattern"), std::string::npos);
  EXPECT_EQ(code(Filter{{"c1"}, {}, false}, PathChoice::kLowRank).code(),
            absl::StatusCode::kFailedPrecondition);
  Filter many;
  many.labels.assign(1001, "x");
  EXPECT_EQ(code(many).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Filter{{}, {{"", "v"}}, false}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(code(Filter{{"c1"}, {}, false}).ok());
}

}  // namespace
}  // namespace engram::store

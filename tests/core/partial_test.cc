#include "server/core/partial.h"

#include <limits>
#include <memory>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/core/memories.h"

namespace engram::core {
namespace {

// A part of the fixture's memories: some of its blocks.
MemorySet Part(const Fixture& f, size_t first_block, size_t end_block) {
  MemorySet part;
  part.dim = f.dim;
  part.map = f.set.map;
  part.blocks.assign(f.set.blocks.begin() + first_block,
                     f.set.blocks.begin() + end_block);
  return part;
}

class PartialTest
    : public ::testing::TestWithParam<std::tuple<Similarity, Separation>> {};

// Three parts merged give the step one retrieval over all memories gives:
// the next state, the energy, the matches and their weights.
TEST_P(PartialTest, MergedPartsEqualOneRetrieval) {
  const auto [similarity, separation] = GetParam();
  Fixture f(8, {37, 50, 13, 100}, 7);
  if (IsKernel(similarity)) f.UseMap(6, 3);
  // Ids are global memory indices + 1, as a shard's pattern ids would be.
  const size_t m = f.set.size();
  std::vector<uint64_t> ids(m);
  for (size_t i = 0; i < m; ++i) ids[i] = i + 1;
  const size_t bounds[] = {0, 1, 3, 4};  // Blocks of each part.
  std::vector<MemorySet> parts;
  std::vector<size_t> first_id;
  size_t seen = 0;
  for (size_t p = 0; p < 3; ++p) {
    parts.push_back(Part(f, bounds[p], bounds[p + 1]));
    first_id.push_back(seen);
    seen += parts.back().size();
  }
  // Queries: memories with noise, and one far from all.
  std::mt19937 rng(11);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  const size_t count = 5, d = f.dim;
  std::vector<float> queries(count * d);
  for (size_t q = 0; q < count; ++q) {
    const float* row = FloatRow(f.set, (q * 41) % m);
    for (size_t k = 0; k < d; ++k) queries[q * d + k] = row[k] + noise(rng);
  }
  for (size_t k = 0; k < d; ++k) queries[(count - 1) * d + k] = 5.0f;

  for (float beta : {0.002f, 0.05f, 1.0f, 4.0f}) {
    RetrievalParams params{similarity, separation, beta, 1, 0.0f, 7};
    absl::StatusOr<RetrievalOutput> whole =
        RetrieveExact(f.set, queries.data(), count, params);
    ASSERT_TRUE(whole.ok()) << whole.status();
    std::vector<std::vector<PartialRow>> partial;
    for (size_t p = 0; p < parts.size(); ++p) {
      absl::StatusOr<std::vector<PartialRow>> rows = PartialStep(
          parts[p],
          absl::MakeConstSpan(ids).subspan(first_id[p], parts[p].size()),
          queries.data(), count, params);
      ASSERT_TRUE(rows.ok()) << rows.status();
      partial.push_back(*std::move(rows));
    }
    size_t lookups = 0;
    const ValuesLookup lookup =
        [&](uint64_t id) -> absl::StatusOr<std::vector<float>> {
      ++lookups;
      const float* row = FloatRow(f.set, id - 1);
      return std::vector<float>(row, row + d);
    };
    for (size_t q = 0; q < count; ++q) {
      std::vector<const PartialRow*> rows;
      for (const auto& p : partial) rows.push_back(&p[q]);
      absl::StatusOr<MergedRow> merged = MergeRows(params, rows, d, lookup);
      ASSERT_TRUE(merged.ok()) << merged.status();
      for (size_t k = 0; k < d; ++k) {
        EXPECT_NEAR(merged->next[k], whole->states[q * d + k], 1e-5)
            << "beta " << beta << " query " << q;
      }
      EXPECT_NEAR(merged->energy, whole->energies[q],
                  1e-6 * std::max(1.0, std::abs(whole->energies[q])));
      ASSERT_EQ(merged->matches.size(), whole->matches[q].size());
      for (size_t i = 0; i < merged->matches.size(); ++i) {
        EXPECT_EQ(merged->matches[i].id, whole->matches[q][i].index + 1);
        EXPECT_NEAR(merged->matches[i].weight, whole->matches[q][i].weight,
                    1e-6);
        EXPECT_EQ(merged->matches[i].score, whole->matches[q][i].score);
      }
    }
    if (separation != Separation::kSoftmax && beta < 0.01f) {
      EXPECT_GT(lookups, 0u) << "a wide support needs values no part sent";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    EverySimilarityAndSeparation, PartialTest,
    ::testing::Combine(
        ::testing::Values(Similarity::kDot, Similarity::kL2,
                          Similarity::kManhattan, Similarity::kCosine,
                          Similarity::kKernelDot, Similarity::kKernelL2),
        ::testing::Values(Separation::kSoftmax, Separation::kSparsemax,
                          Separation::kEntmax15)));

TEST(PartialTest, EmptyPartsAreSkippedAndAllEmptyIsRefused) {
  Fixture f(4, {10}, 1);
  std::vector<uint64_t> ids(10);
  for (size_t i = 0; i < 10; ++i) ids[i] = 100 + i;
  RetrievalParams params;
  absl::StatusOr<std::vector<PartialRow>> rows =
      PartialStep(f.set, ids, FloatRow(f.set, 3), 1, params);
  ASSERT_TRUE(rows.ok());
  const PartialRow empty;
  const PartialRow* both[] = {&(*rows)[0], &empty};
  absl::StatusOr<MergedRow> merged = MergeRows(params, both, 4, nullptr);
  ASSERT_TRUE(merged.ok());
  EXPECT_EQ(merged->matches.front().id, 103u);
  const PartialRow* none[] = {&empty};
  EXPECT_EQ(MergeRows(params, none, 4, nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(PartialStep(f.set, absl::MakeConstSpan(ids).first(3),
                        FloatRow(f.set, 0), 1, params)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// A part is another process's answer; one that does not fit the others, or
// holds numbers no row has, is INTERNAL, never merged (regression: a
// sparsemax part whose maximum no candidate reached was merged with an
// empty support and crashed the router).
TEST(PartialTest, PartsThatDoNotFitAreRefused) {
  Fixture f(4, {10}, 1);
  std::vector<uint64_t> ids(10);
  for (size_t i = 0; i < 10; ++i) ids[i] = 100 + i;
  for (const Separation separation :
       {Separation::kSoftmax, Separation::kSparsemax, Separation::kEntmax15}) {
    RetrievalParams params;
    params.separation = separation;
    absl::StatusOr<std::vector<PartialRow>> rows =
        PartialStep(f.set, ids, FloatRow(f.set, 3), 1, params);
    ASSERT_TRUE(rows.ok());
    const PartialRow good = (*rows)[0];
    const auto lookup = [](uint64_t) -> absl::StatusOr<std::vector<float>> {
      return std::vector<float>(4, 0.5f);
    };
    std::vector<std::pair<const char*, PartialRow>> bad;
    PartialRow row = good;
    row.max = std::numeric_limits<double>::quiet_NaN();
    bad.emplace_back("NaN maximum", row);
    row = good;
    row.max = std::numeric_limits<double>::infinity();
    bad.emplace_back("infinite maximum", row);
    row = good;
    row.sum = 0;
    bad.emplace_back("no sum", row);
    row = good;
    row.sum = std::numeric_limits<double>::infinity();
    bad.emplace_back("infinite sum", row);
    row = good;
    if (separation == Separation::kSoftmax) {
      row.weighted.pop_back();
      bad.emplace_back("a weighted sum short", row);
    } else {
      row.max += 100;  // Above every candidate either part sent.
      bad.emplace_back("a maximum above its candidates", row);
    }
    for (const auto& [why, part] : bad) {
      for (const bool first : {true, false}) {
        const PartialRow* parts[] = {first ? &part : &good,
                                     first ? &good : &part};
        EXPECT_EQ(MergeRows(params, parts, 4, lookup).status().code(),
                  absl::StatusCode::kInternal)
            << SeparationName(separation) << ": " << why;
      }
    }
  }
}

}  // namespace
}  // namespace engram::core

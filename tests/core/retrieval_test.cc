#include "server/core/retrieval.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "server/core/low_rank.h"
#include "server/core/precision.h"
#include "tests/core/kernel_isa.h"
#include "tests/core/memories.h"
#include "tests/core/reference.h"

namespace engram::core {
namespace {

std::vector<double> ApplyMap(const FeatureMap& map, const float* x) {
  std::vector<double> out(map.out_dim(), 0.0);
  for (size_t r = 0; r < map.out_dim(); ++r) {
    for (size_t k = 0; k < map.in_dim(); ++k) {
      out[r] += double{map.weights()[r * map.in_dim() + k]} * x[k];
    }
  }
  return out;
}

double ReferenceSimilarity(Similarity s, const float* a, const float* b,
                           size_t d, const FeatureMap* map = nullptr) {
  if (IsKernel(s)) {
    const std::vector<double> fa = ApplyMap(*map, a), fb = ApplyMap(*map, b);
    double dot = 0, l2 = 0;
    for (size_t k = 0; k < fa.size(); ++k) {
      dot += fa[k] * fb[k];
      l2 += (fa[k] - fb[k]) * (fa[k] - fb[k]);
    }
    return s == Similarity::kKernelDot ? dot : -std::sqrt(l2);
  }
  double dot = 0, na = 0, nb = 0, l2 = 0, l1 = 0;
  for (size_t k = 0; k < d; ++k) {
    dot += double{a[k]} * b[k];
    na += double{a[k]} * a[k];
    nb += double{b[k]} * b[k];
    l2 += (double{a[k]} - b[k]) * (double{a[k]} - b[k]);
    l1 += std::fabs(double{a[k]} - b[k]);
  }
  switch (s) {
    case Similarity::kDot:
      return dot;
    case Similarity::kL2:
      return -std::sqrt(l2);
    case Similarity::kManhattan:
      return -l1;
    case Similarity::kCosine:
      return na > 0 && nb > 0 ? dot / std::sqrt(na * nb) : 0;
    default:
      return 0;
  }
}

struct ReferenceResult {
  std::vector<double> state;
  std::vector<double> weights;
  double energy;
};

// One plain double-precision update: x <- Xi Sep(beta s(Xi, x)).
ReferenceResult ReferenceStep(const MemorySet& set,
                              const std::vector<double>& x,
                              const RetrievalParams& p) {
  const size_t m = set.size(), d = set.dim;
  std::vector<float> xf(x.begin(), x.end());
  std::vector<double> z(m);
  for (size_t i = 0; i < m; ++i) {
    z[i] = p.beta * ReferenceSimilarity(p.similarity, FloatRow(set, i),
                                        xf.data(), d, set.map);
  }
  double max = z[0], sum = 0, sq = 0;
  for (double v : z) max = std::max(max, v);
  for (double v : z) sum += std::exp(v - max);
  if (IsKernel(p.similarity)) {
    for (double v : ApplyMap(*set.map, xf.data())) sq += v * v;
  } else {
    for (double v : x) sq += v * v;
  }
  ReferenceResult r;
  r.weights = Separate(p.separation, z);
  r.state.assign(d, 0.0);
  for (size_t i = 0; i < m; ++i) {
    for (size_t k = 0; k < d; ++k)
      r.state[k] += r.weights[i] * FloatRow(set, i)[k];
  }
  r.energy =
      -(max + std::log(sum)) / p.beta + 0.5 * SelfSimilarity(p.similarity, sq);
  return r;
}

class ParityTest : public ::testing::TestWithParam<
                       std::tuple<Similarity, Separation, const char*>> {};

TEST_P(ParityTest, MatchesDoublePrecisionReference) {
  const auto [similarity, separation, isa_name] = GetParam();
  ScopedKernelIsa isa(isa_name);
  if (!isa.ok()) GTEST_SKIP() << "this CPU lacks " << isa_name;
  const size_t d = 27;  // Not a multiple of 8 or 16: every kernel's tail.
  Fixture memories(d, {37, 5, 64, 1}, 7, 0.6f);
  // Scaled so kernel scores are of the order of the raw ones.
  if (IsKernel(similarity)) memories.UseMap(10, 3);
  // Under softmax, up to RetrievalOptions::fused_queries queries take the
  // fused passes (1: the one-query pass; 2, 3, 9, 37: blocks of four
  // queries, or two with AVX2, and every remainder), more go through sgemm;
  // fused_queries = 1 sends all but one query through sgemm (2 and 3: the
  // loops below sgemm's threshold), 0 chooses by the instruction set. The
  // sparse separations always score through the products.
  for (const size_t num_queries :
       {size_t{1}, size_t{2}, size_t{3}, size_t{9}, size_t{37}}) {
    std::mt19937 rng(11);
    std::normal_distribution<float> noise(0.0f, 0.3f);
    std::vector<float> queries(num_queries * d);
    for (size_t i = 0; i < num_queries; ++i) {
      const float* base =
          FloatRow(memories.set, (i * 13) % memories.set.size());
      for (size_t k = 0; k < d; ++k) queries[i * d + k] = base[k] + noise(rng);
    }
    for (const auto& [beta_in, fused_queries, budget] :
         {std::tuple<float, size_t, size_t>{0.3f, 0, 40},
          {2.0f, 0, 40},
          {2.0f, 64, RetrievalOptions{}.max_score_floats},
          {0.3f, 1, 40},
          {2.0f, 1, RetrievalOptions{}.max_score_floats}}) {
      float beta = beta_in;
      if (IsKernel(similarity))
        beta /= 4;  // Features of a N(0,1) map are larger.
      RetrievalParams params;
      params.similarity = similarity;
      params.separation = separation;
      params.beta = beta;
      params.steps = 3;
      params.top_k = 4;
      RetrievalOptions options;
      // 40: many tiles, some inside blocks.
      options.max_score_floats = budget;
      options.fused_queries = fused_queries;
      absl::StatusOr<RetrievalOutput> out = RetrieveExact(
          memories.set, queries.data(), num_queries, params, options);
      ASSERT_TRUE(out.ok()) << out.status();
      for (size_t i = 0; i < num_queries; ++i) {
        std::vector<double> x(queries.begin() + i * d,
                              queries.begin() + (i + 1) * d);
        ReferenceResult r;
        for (uint32_t t = 0; t < params.steps; ++t) {
          const std::vector<double> before = x;
          r = ReferenceStep(memories.set, x, params);
          if (t + 1 < params.steps) x = r.state;
          if (t + 1 == params.steps) {
            // Energy is of the state the last update started from.
            EXPECT_NEAR(out->energies[i], r.energy,
                        1e-3 * (1 + std::fabs(r.energy)));
          }
        }
        for (size_t k = 0; k < d; ++k) {
          EXPECT_NEAR(out->states[i * d + k], r.state[k], 2e-4)
              << SimilarityName(similarity) << "/" << SeparationName(separation)
              << " beta " << beta << " queries " << num_queries << " fused "
              << fused_queries << " budget " << budget << " query " << i
              << " coordinate " << k;
        }
        EXPECT_EQ(out->steps[i], params.steps);
        ASSERT_EQ(out->matches[i].size(), 4u);
        double previous = INFINITY;
        for (const Match& m : out->matches[i]) {
          EXPECT_LE(m.score, previous);
          previous = m.score;
          EXPECT_NEAR(m.weight, r.weights[m.index], 1e-4);
        }
        // The best match is the reference's highest weight.
        size_t best = 0;
        for (size_t j = 1; j < r.weights.size(); ++j) {
          if (r.weights[j] > r.weights[best]) best = j;
        }
        EXPECT_NEAR(r.weights[out->matches[i][0].index], r.weights[best], 1e-6);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllCombinations, ParityTest,
    ::testing::Combine(
        ::testing::Values(Similarity::kDot, Similarity::kL2,
                          Similarity::kManhattan, Similarity::kCosine,
                          Similarity::kKernelDot, Similarity::kKernelL2),
        ::testing::Values(Separation::kSoftmax, Separation::kSparsemax,
                          Separation::kEntmax15),
        ::testing::ValuesIn(kKernelIsas)),
    [](const auto& info) {
      return std::string(SimilarityName(std::get<0>(info.param))) + "_" +
             std::string(SeparationName(std::get<1>(info.param))) + "_" +
             std::get<2>(info.param);
    });

TEST(RetrievalTest, RecallsAStoredPatternFromANoisyQuery) {
  const size_t d = 64;
  Fixture memories(d, {200}, 3);
  std::vector<float> query(FloatRow(memories.set, 17),
                           FloatRow(memories.set, 17) + d);
  for (size_t k = 0; k < d; k += 2) query[k] = 0;  // Drop half the entries.
  RetrievalParams params;
  params.beta = 4.0f;
  params.top_k = 1;
  absl::StatusOr<RetrievalOutput> out =
      RetrieveExact(memories.set, query.data(), 1, params);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->matches[0][0].index, 17u);
  for (size_t k = 0; k < d; ++k) {
    EXPECT_NEAR(out->states[k], FloatRow(memories.set, 17)[k], 1e-3);
  }
}

TEST(RetrievalTest, StopsAtEpsAndReportsConvergence) {
  const size_t d = 16;
  Fixture memories(d, {50}, 5);
  std::vector<float> query(FloatRow(memories.set, 3),
                           FloatRow(memories.set, 3) + d);
  RetrievalParams params;
  params.beta = 8.0f;
  params.steps = 50;
  params.eps = 1e-4f;
  absl::StatusOr<RetrievalOutput> out =
      RetrieveExact(memories.set, query.data(), 1, params);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->converged[0]);
  EXPECT_LT(out->steps[0], 50u);
  EXPECT_GE(out->steps[0], 1u);
}

TEST(RetrievalTest, ScoreBufferStaysWithinBudgetWhateverM) {
  // 3 queries with a 6-float budget: tiles of 2 memories; results unchanged.
  const size_t d = 8;
  Fixture memories(d, {1000}, 9);
  std::vector<float> queries(FloatRow(memories.set, 0),
                             FloatRow(memories.set, 0) + 3 * d);
  RetrievalParams params;
  RetrievalOptions small;
  small.max_score_floats = 6;
  absl::StatusOr<RetrievalOutput> tiled =
      RetrieveExact(memories.set, queries.data(), 3, params, small);
  absl::StatusOr<RetrievalOutput> whole =
      RetrieveExact(memories.set, queries.data(), 3, params);
  ASSERT_TRUE(tiled.ok() && whole.ok());
  for (size_t k = 0; k < 3 * d; ++k) {
    EXPECT_NEAR(tiled->states[k], whole->states[k],
                1e-5 * (1 + std::fabs(whole->states[k])));
  }
}

TEST(RetrievalTest, CheckAbortsBetweenTiles) {
  Fixture memories(4, {100}, 1);
  std::vector<float> query(4, 0.5f);
  RetrievalOptions options;
  options.max_score_floats = 10;
  int calls = 0;
  options.check = [&calls]() {
    return ++calls > 3 ? absl::DeadlineExceededError("late") : absl::OkStatus();
  };
  absl::StatusOr<RetrievalOutput> out =
      RetrieveExact(memories.set, query.data(), 1, RetrievalParams{}, options);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(calls, 4);
}

TEST(RetrievalTest, RejectsEmptyMemoriesAndBadParameters) {
  MemorySet empty;
  empty.dim = 4;
  std::vector<float> query(4, 1.0f);
  EXPECT_EQ(RetrieveExact(empty, query.data(), 1, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  Fixture memories(4, {3}, 1);
  RetrievalParams bad;
  bad.beta = -1;
  EXPECT_EQ(RetrieveExact(memories.set, query.data(), 1, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad.beta = 1;
  bad.steps = 0;
  EXPECT_EQ(RetrieveExact(memories.set, query.data(), 1, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RetrievalTest, CosineOfAZeroVectorIsZeroNotNan) {
  Fixture memories(4, {3}, 1);
  std::vector<float> query(4, 0.0f);
  RetrievalParams params;
  params.similarity = Similarity::kCosine;
  absl::StatusOr<RetrievalOutput> out =
      RetrieveExact(memories.set, query.data(), 1, params);
  ASSERT_TRUE(out.ok());
  for (float v : out->states) EXPECT_TRUE(std::isfinite(v));
  EXPECT_NEAR(out->matches[0][0].weight, 1.0 / 3, 1e-6);
}

}  // namespace
}  // namespace engram::core

namespace engram::core {
namespace {

// Regression: the GEMM form of the L2 distance cancelled to ~1e-3 when the
// query equalled a stored pattern, so converged states got wrong scores.
TEST(RetrievalTest, L2ScoreOfAQueryEqualToAPatternIsZero) {
  Fixture memories(128, {20}, 4, 3.0f);
  std::vector<float> query(FloatRow(memories.set, 5),
                           FloatRow(memories.set, 5) + 128);
  RetrievalParams params;
  params.similarity = Similarity::kL2;
  params.beta = 100.0f;
  params.top_k = 1;
  absl::StatusOr<RetrievalOutput> out =
      RetrieveExact(memories.set, query.data(), 1, params);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->matches[0][0].index, 5u);
  EXPECT_NEAR(out->matches[0][0].score, 0.0f, 1e-6);
}

}  // namespace
}  // namespace engram::core

namespace engram::core {
namespace {

TEST(RetrievalTest, KernelSimilarityNeedsItsMap) {
  Fixture memories(4, {3}, 1);
  std::vector<float> query(4, 1.0f);
  RetrievalParams params;
  params.similarity = Similarity::kKernelDot;
  EXPECT_EQ(
      RetrieveExact(memories.set, query.data(), 1, params).status().code(),
      absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace engram::core

namespace engram::core {
namespace {

// Two runs of the same retrieval agree up to float rounding: states,
// energies, and every match with its weight.
void ExpectSameOutput(const RetrievalOutput& a, const RetrievalOutput& b) {
  ASSERT_EQ(a.states.size(), b.states.size());
  for (size_t k = 0; k < a.states.size(); ++k) {
    EXPECT_NEAR(a.states[k], b.states[k], 1e-5 * (1 + std::fabs(a.states[k])));
  }
  ASSERT_EQ(a.matches.size(), b.matches.size());
  for (size_t i = 0; i < a.matches.size(); ++i) {
    EXPECT_NEAR(a.energies[i], b.energies[i],
                1e-5 * (1 + std::fabs(a.energies[i])));
    ASSERT_EQ(a.matches[i].size(), b.matches[i].size());
    for (size_t j = 0; j < a.matches[i].size(); ++j) {
      EXPECT_EQ(a.matches[i][j].index, b.matches[i][j].index);
      EXPECT_NEAR(a.matches[i][j].weight, b.matches[i][j].weight, 1e-5);
    }
  }
}

TEST(RetrievalTest, SlicedBatchesEqualOneThread) {
  Fixture memories(24, {300, 77}, 12);
  const size_t n = 50;
  std::vector<float> queries(FloatRow(memories.set, 0),
                             FloatRow(memories.set, 0) + n * 24);
  for (Separation sep : {Separation::kSoftmax, Separation::kSparsemax}) {
    RetrievalParams params;
    params.separation = sep;
    params.steps = 2;
    RetrievalOptions sliced;
    sliced.threads = 3;
    absl::StatusOr<RetrievalOutput> a =
        RetrieveExact(memories.set, queries.data(), n, params);
    absl::StatusOr<RetrievalOutput> b =
        RetrieveExact(memories.set, queries.data(), n, params, sliced);
    ASSERT_TRUE(a.ok() && b.ok());
    ExpectSameOutput(*a, *b);
  }
}

}  // namespace
}  // namespace engram::core

namespace engram::core {
namespace {

TEST(RetrievalTest, OneQuerySplitOverThreadsEqualsOneThread) {
  // Enough work to split (> 4 MFLOP) over blocks of uneven sizes.
  Fixture memories(64, {5000, 3000, 17, 9000}, 21, 0.3f);
  std::vector<float> query(FloatRow(memories.set, 4321),
                           FloatRow(memories.set, 4321) + 64);
  for (Similarity sim : {Similarity::kDot, Similarity::kL2}) {
    RetrievalParams params;
    params.similarity = sim;
    params.beta = sim == Similarity::kDot ? 0.5f : 3.0f;
    params.steps = 3;
    params.top_k = 6;
    RetrievalOptions split;
    split.threads = 3;
    absl::StatusOr<RetrievalOutput> a =
        RetrieveExact(memories.set, query.data(), 1, params);
    absl::StatusOr<RetrievalOutput> b =
        RetrieveExact(memories.set, query.data(), 1, params, split);
    ASSERT_TRUE(a.ok() && b.ok());
    ExpectSameOutput(*a, *b);
  }
}

}  // namespace
}  // namespace engram::core

namespace engram::core {
namespace {

// top_k = 0 asks for no matches (it used to read the top of an empty heap).
TEST(RetrieveExactTest, TopKZeroReturnsNoMatches) {
  std::vector<float> rows(64 * 3);
  std::vector<float> sq_norms(64);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = std::sin(i * 0.7f);
  for (size_t r = 0; r < 64; ++r) {
    sq_norms[r] = rows[r * 3] * rows[r * 3] +
                  rows[r * 3 + 1] * rows[r * 3 + 1] +
                  rows[r * 3 + 2] * rows[r * 3 + 2];
  }
  MemorySet memories;
  memories.dim = 3;
  memories.blocks.push_back({rows.data(), sq_norms.data(), 64});
  for (size_t queries : {1, 5}) {
    RetrievalParams params;
    params.top_k = 0;
    absl::StatusOr<RetrievalOutput> out =
        RetrieveExact(memories, rows.data(), queries, params);
    ASSERT_TRUE(out.ok()) << out.status();
    for (const std::vector<Match>& m : out->matches) EXPECT_TRUE(m.empty());
  }
}

}  // namespace
}  // namespace engram::core

namespace engram::core {
namespace {

// A listed block (a pointer per row into other blocks) answers exactly as a
// block that holds the same rows one after another: every similarity kind,
// softmax and sparsemax, float32 and bfloat16,
// one thread and two, the low-rank path's top-by-keys, and CopyRow/CopyKey.
// Softmax over one query and over three takes the two fused passes.
TEST(ListedBlockTest, AnswersAsTheSameRowsHeldInPlace) {
  constexpr size_t kDim = 37, kKeyDim = 12;
  Fixture source(kDim, {3000, 2500}, 31, 0.4f);
  source.UseMap(kKeyDim, 32);
  // Every row but each third one, from both blocks.
  std::vector<std::pair<size_t, size_t>> picked;  // (block, row)
  for (size_t b = 0; b < 2; ++b) {
    for (size_t r = 0; r < source.set.blocks[b].count; ++r) {
      if (r % 3 != 1) picked.emplace_back(b, r);
    }
  }
  const size_t n = picked.size();
  for (Precision precision : {Precision::kFloat32, Precision::kBFloat16}) {
    const size_t eb = ElementBytes(precision);
    // The source blocks and the reference block in `precision`.
    std::vector<std::vector<unsigned char>> rows(2), keys(2);
    for (size_t b = 0; b < 2; ++b) {
      rows[b].resize(source.rows[b].size() * eb);
      keys[b].resize(source.keys[b].size() * eb);
      Narrow(precision, source.rows[b].data(), source.rows[b].size(),
             rows[b].data());
      Narrow(precision, source.keys[b].data(), source.keys[b].size(),
             keys[b].data());
    }
    std::vector<unsigned char> held(n * kDim * eb), held_keys(n * kKeyDim * eb);
    std::vector<float> norms(n), key_norms(n);
    std::vector<const void*> row_list(n), key_list(n);
    for (size_t i = 0; i < n; ++i) {
      const auto [b, r] = picked[i];
      row_list[i] = rows[b].data() + r * kDim * eb;
      key_list[i] = keys[b].data() + r * kKeyDim * eb;
      std::memcpy(held.data() + i * kDim * eb, row_list[i], kDim * eb);
      std::memcpy(held_keys.data() + i * kKeyDim * eb, key_list[i],
                  kKeyDim * eb);
      norms[i] = source.norms[b][r];
      key_norms[i] = source.key_norms[b][r];
    }
    MemorySet in_place, listed;
    in_place.dim = listed.dim = kDim;
    in_place.map = listed.map = source.map.get();
    in_place.blocks.push_back({held.data(), norms.data(), n, held_keys.data(),
                               key_norms.data(), precision});
    MemoryBlock block;
    block.count = n;
    block.precision = precision;
    block.sq_norms = norms.data();
    block.key_sq_norms = key_norms.data();
    block.row_list = row_list.data();
    block.key_list = key_list.data();
    listed.blocks.push_back(block);

    std::vector<float> a(kDim), b(kDim);
    for (size_t i : {size_t{0}, n / 2, n - 1}) {
      in_place.CopyRow(i, a.data());
      listed.CopyRow(i, b.data());
      EXPECT_EQ(a, b);
      in_place.blocks[0].CopyKey(i, kKeyDim, a.data());
      listed.blocks[0].CopyKey(i, kKeyDim, b.data());
      EXPECT_EQ(std::vector<float>(a.begin(), a.begin() + kKeyDim),
                std::vector<float>(b.begin(), b.begin() + kKeyDim));
    }
    std::vector<float> queries(3 * kDim);
    for (size_t q = 0; q < 3; ++q) {
      in_place.CopyRow(q * 1000 + 7, queries.data() + q * kDim);
      for (size_t k = 0; k < kDim; ++k) queries[q * kDim + k] *= 0.9f;
    }
    for (Similarity sim :
         {Similarity::kDot, Similarity::kL2, Similarity::kKernelDot}) {
      for (Separation sep : {Separation::kSoftmax, Separation::kSparsemax}) {
        for (size_t count : {size_t{1}, size_t{3}}) {
          for (const auto& [threads, budget] :
               {std::pair<int, size_t>{1, 1000},
                {2, 1000},
                {1, RetrievalOptions{}.max_score_floats},
                {2, RetrievalOptions{}.max_score_floats}}) {
            RetrievalParams params;
            params.similarity = sim;
            params.separation = sep;
            params.beta = 2.0f;
            params.steps = 2;
            params.top_k = 5;
            RetrievalOptions options;
            options.threads = threads;
            options.max_score_floats = budget;  // 1000: many tiles.
            absl::StatusOr<RetrievalOutput> want =
                RetrieveExact(in_place, queries.data(), count, params, options);
            absl::StatusOr<RetrievalOutput> got =
                RetrieveExact(listed, queries.data(), count, params, options);
            ASSERT_TRUE(want.ok() && got.ok());
            EXPECT_EQ(want->states, got->states);
            EXPECT_EQ(want->energies, got->energies);
            ASSERT_EQ(want->matches.size(), got->matches.size());
            for (size_t q = 0; q < count; ++q) {
              ASSERT_EQ(want->matches[q].size(), got->matches[q].size());
              for (size_t j = 0; j < want->matches[q].size(); ++j) {
                EXPECT_EQ(want->matches[q][j].index, got->matches[q][j].index);
                EXPECT_EQ(want->matches[q][j].weight,
                          got->matches[q][j].weight);
              }
            }
          }
        }
      }
    }
    for (bool kernel : {false, true}) {
      std::vector<float> features(3 * kKeyDim);
      source.map->Apply(queries.data(), 3, features.data());
      const float* q = kernel ? features.data() : queries.data();
      absl::StatusOr<std::vector<std::vector<Match>>> want =
          TopByKeys(in_place, q, 3, 1.5f, 4, kernel);
      absl::StatusOr<std::vector<std::vector<Match>>> got =
          TopByKeys(listed, q, 3, 1.5f, 4, kernel);
      ASSERT_TRUE(want.ok() && got.ok());
      for (size_t i = 0; i < 3; ++i) {
        ASSERT_EQ((*want)[i].size(), (*got)[i].size());
        for (size_t j = 0; j < (*want)[i].size(); ++j) {
          EXPECT_EQ((*want)[i][j].index, (*got)[i][j].index);
          EXPECT_EQ((*want)[i][j].score, (*got)[i][j].score);
        }
      }
    }
  }
}

}  // namespace
}  // namespace engram::core

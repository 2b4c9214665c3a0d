#include "server/core/low_rank.h"

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace engram::core {
namespace {

std::vector<float> RandomVectors(size_t n, size_t dim, double norm,
                                 std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> v(n * dim);
  for (size_t i = 0; i < n; ++i) {
    double sq = 0;
    for (size_t j = 0; j < dim; ++j) {
      v[i * dim + j] = normal(rng);
      sq += double{v[i * dim + j]} * v[i * dim + j];
    }
    // Norms spread over [norm / 2, norm].
    const double target =
        norm * (0.5 + 0.5 * std::uniform_real_distribution<double>()(rng));
    for (size_t j = 0; j < dim; ++j) {
      v[i * dim + j] =
          static_cast<float>(v[i * dim + j] * target / std::sqrt(sq));
    }
  }
  return v;
}

// Exact softmax retrieval in double: `steps` updates of x with keys W x.
std::vector<double> ExactReference(const std::vector<float>& rows,
                                   const std::vector<float>& keys,
                                   const FeatureMap& map, size_t d,
                                   const float* query, double beta,
                                   uint32_t steps) {
  const size_t m = rows.size() / d;
  const size_t n = map.out_dim();
  std::vector<double> x(query, query + d);
  for (uint32_t t = 0; t < steps; ++t) {
    std::vector<double> q(n, 0.0);
    for (size_t i = 0; i < n; ++i) {
      if (map.identity()) {
        q[i] = x[i];
      } else {
        for (size_t j = 0; j < d; ++j) q[i] += map.weights()[i * d + j] * x[j];
      }
    }
    std::vector<double> s(m);
    double top = -1e300;
    for (size_t mu = 0; mu < m; ++mu) {
      double dot = 0;
      for (size_t i = 0; i < n; ++i) dot += double{keys[mu * n + i]} * q[i];
      s[mu] = beta * dot;
      top = std::max(top, s[mu]);
    }
    double total = 0;
    for (double& v : s) total += (v = std::exp(v - top));
    std::vector<double> y(d, 0.0);
    for (size_t mu = 0; mu < m; ++mu) {
      for (size_t j = 0; j < d; ++j) y[j] += s[mu] / total * rows[mu * d + j];
    }
    x = y;
  }
  return x;
}

MemorySet OneBlock(const std::vector<float>& rows,
                   const std::vector<float>& keys, size_t d,
                   const FeatureMap* map) {
  MemorySet set;
  set.dim = d;
  set.blocks.push_back({rows.data(), nullptr, rows.size() / d,
                        map ? keys.data() : nullptr, nullptr});
  set.map = map;
  return set;
}

TEST(TaylorBasisTest, RankCountsSymmetricMonomials) {
  EXPECT_EQ(TaylorRank(16, 0), 1u);
  EXPECT_EQ(TaylorRank(16, 2), 153u);   // 1 + 16 + 136
  EXPECT_EQ(TaylorRank(16, 4), 4845u);  // C(20, 4)
  EXPECT_EQ(TaylorRank(3, 3), 20u);     // C(6, 3)
  EXPECT_EQ(TaylorRank(100000, 40), UINT64_MAX);
  for (size_t n : {1, 3, 8}) {
    for (uint32_t g : {0, 1, 2, 4, 6}) {
      TaylorBasis basis(n, g);
      EXPECT_EQ(basis.rank(g), TaylorRank(n, g)) << n << " " << g;
    }
  }
}

TEST(TaylorBasisTest, FeaturesReproduceTheTaylorPolynomialOfExp) {
  std::mt19937_64 rng(7);
  for (size_t n : {1, 2, 5, 9}) {
    TaylorBasis basis(n, 6);
    const std::vector<float> a = RandomVectors(1, n, 1.3, rng);
    const std::vector<float> b = RandomVectors(1, n, 0.9, rng);
    std::vector<double> da(a.begin(), a.end()), db(b.begin(), b.end());
    double dot = 0;
    for (size_t i = 0; i < n; ++i) dot += da[i] * db[i];
    for (uint32_t g : {0, 2, 4, 6}) {
      for (double beta : {0.3, 1.0, 2.5}) {
        std::vector<double> pa(basis.rank(g)), pb(basis.rank(g));
        basis.Features(da.data(), 1.0, g, pa.data());
        basis.Features(db.data(), beta, g, pb.data());
        double inner = 0;
        for (size_t m = 0; m < pa.size(); ++m) inner += pa[m] * pb[m];
        EXPECT_NEAR(inner, TaylorExp(beta * dot, g), 1e-12)
            << "n=" << n << " g=" << g << " beta=" << beta;
      }
    }
  }
}

TEST(TaylorBasisTest, SumsDegreeIsTheLargestEvenDegreeThatFits) {
  // d_phi = d = 16: g = 4 needs 4845 * 17 = 82,365 values.
  EXPECT_EQ(SumsDegree(16, 16, 4, 100000), 4u);
  EXPECT_EQ(SumsDegree(16, 16, 4, 82364), 2u);
  EXPECT_EQ(SumsDegree(16, 16, 5, 1 << 20), 4u);
  EXPECT_EQ(SumsDegree(16, 16, 4, 100), 0u);
  EXPECT_EQ(SumsDegree(16, 16, 1, 1 << 20), 0u);
}

TEST(MaxEigenvalueBoundTest, IsAnUpperBoundAndTight) {
  std::mt19937_64 rng(3);
  for (size_t n : {1, 4, 16, 40}) {
    const std::vector<float> v = RandomVectors(3 * n, n, 1.0, rng);
    std::vector<double> s(n * n, 0.0);
    for (size_t r = 0; r < 3 * n; ++r) {
      for (size_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < n; ++j) {
          s[i * n + j] += double{v[r * n + i]} * v[r * n + j];
        }
      }
    }
    const double bound = MaxEigenvalueBound(s.data(), n);
    // Every Rayleigh quotient is a lower bound on lambda_max.
    std::vector<double> x(n, 1.0);
    for (int it = 0; it < 2000; ++it) {
      std::vector<double> y(n, 0.0);
      double norm = 0;
      for (size_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < n; ++j) y[i] += s[i * n + j] * x[j];
        norm += y[i] * y[i];
      }
      for (size_t i = 0; i < n; ++i) x[i] = y[i] / std::sqrt(norm);
    }
    double rayleigh = 0;
    for (size_t i = 0; i < n; ++i) {
      double row = 0;
      for (size_t j = 0; j < n; ++j) row += s[i * n + j] * x[j];
      rayleigh += x[i] * row;
    }
    EXPECT_GE(bound, rayleigh) << n;
    EXPECT_LE(bound, rayleigh * 1.01) << n;
  }
  const std::vector<double> zero(9, 0.0);
  EXPECT_EQ(MaxEigenvalueBound(zero.data(), 3), 0.0);
}

TEST(MaxEigenvalueBoundTest, HoldsWhenTheTopTwoAlmostTie) {
  // Where a power iteration converges slowly: the bound holds, and is
  // within the factorisation's smallest margin (1e-6) of lambda_max.
  for (double gap : {0.0, 1e-9, 1e-4, 1e-2}) {
    const size_t n = 8;
    std::vector<double> s(n * n, 0.0);
    for (size_t i = 0; i < n; ++i) s[i * n + i] = 0.1 * (i + 1);
    s[(n - 1) * n + (n - 1)] = 2.0;
    s[0] = 2.0 * (1 - gap);
    const double bound = MaxEigenvalueBound(s.data(), n);
    EXPECT_GE(bound, 2.0) << gap;
    EXPECT_LE(bound, 2.0 * (1 + 2e-6)) << gap;
  }
}

TEST(MaxEigenvalueBoundTest, IsTightOnAMatrixOfKnownSpectrum) {
  // Q diag(lambda) Q^T for an orthogonal Q (a product of reflections),
  // eigenvalues spread from 1e-3 to 5 with the top two a part in 1e6 apart.
  const size_t n = 64;
  std::vector<double> lambda(n);
  for (size_t i = 0; i < n; ++i) lambda[i] = 1e-3 + 4.0 * i / n;
  lambda[n - 2] = 5.0 * (1 - 1e-6);
  lambda[n - 1] = 5.0;
  std::vector<double> q(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) q[i * n + i] = 1.0;
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  for (int reflection = 0; reflection < 3; ++reflection) {
    std::vector<double> u(n);
    double norm = 0;
    for (double& x : u) {
      x = normal(rng);
      norm += x * x;
    }
    for (double& x : u) x /= std::sqrt(norm);
    // q <- q (I - 2 u u^T)
    for (size_t i = 0; i < n; ++i) {
      double dot = 0;
      for (size_t k = 0; k < n; ++k) dot += q[i * n + k] * u[k];
      for (size_t k = 0; k < n; ++k) q[i * n + k] -= 2 * dot * u[k];
    }
  }
  std::vector<double> s(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      for (size_t k = 0; k < n; ++k) {
        s[i * n + j] += q[i * n + k] * lambda[k] * q[j * n + k];
      }
    }
  }
  const double bound = MaxEigenvalueBound(s.data(), n);
  EXPECT_GE(bound, 5.0 * (1 - 1e-12));
  EXPECT_LE(bound, 5.0 * (1 + 2e-6));
}

TEST(SpectralNormBoundTest, BoundsTheLargestSingularValue) {
  EXPECT_EQ(SpectralNormBound(FeatureMap::Identity(5)), 1.0);
  // diag(3, 1) padded: ||W||_2 = 3.
  FeatureMap map(3, 2, {3, 0, 0, 0, 1, 0});
  EXPECT_GE(SpectralNormBound(map), 3.0);
  EXPECT_LE(SpectralNormBound(map), 3.03);
  FeatureMap tall(2, 3, {3, 0, 0, 1, 0, 0});
  EXPECT_GE(SpectralNormBound(tall), 3.0);
  EXPECT_LE(SpectralNormBound(tall), 3.03);
}

LowRankSums Build(const std::vector<float>& keys,
                  const std::vector<float>& rows, size_t n, size_t d,
                  uint32_t degree, bool keys_are_rows) {
  LowRankSums sums(std::make_shared<const TaylorBasis>(n, degree), d,
                   keys_are_rows);
  sums.Add(keys.data(), rows.data(), rows.size() / d, 1.0);
  sums.Finish();
  return sums;
}

TEST(LowRankSumsTest, IncrementalAddsAndRemovalsEqualARebuild) {
  std::mt19937_64 rng(11);
  const size_t n = 5, d = 7;
  const std::vector<float> keys = RandomVectors(600, n, 1.0, rng);
  const std::vector<float> rows = RandomVectors(600, d, 2.0, rng);
  LowRankSums sums(std::make_shared<const TaylorBasis>(n, 4), d, false);
  // Add in uneven batches, then take out rows 100..399.
  sums.Add(keys.data(), rows.data(), 1, 1.0);
  sums.Add(keys.data() + n, rows.data() + d, 299, 1.0);
  sums.Add(keys.data() + 300 * n, rows.data() + 300 * d, 300, 1.0);
  sums.Add(keys.data() + 100 * n, rows.data() + 100 * d, 300, -1.0);
  sums.Finish();
  std::vector<float> kept_keys(keys.begin(), keys.begin() + 100 * n);
  kept_keys.insert(kept_keys.end(), keys.begin() + 400 * n, keys.end());
  std::vector<float> kept_rows(rows.begin(), rows.begin() + 100 * d);
  kept_rows.insert(kept_rows.end(), rows.begin() + 400 * d, rows.end());
  const LowRankSums rebuilt = Build(kept_keys, kept_rows, n, d, 4, false);
  ASSERT_EQ(sums.a().size(), rebuilt.a().size());
  EXPECT_NEAR(sums.count(), 300.0, 1e-9);
  for (size_t i = 0; i < sums.a().size(); ++i) {
    EXPECT_NEAR(sums.a()[i], rebuilt.a()[i],
                1e-9 * (1 + std::abs(rebuilt.a()[i])))
        << i;
  }
  for (size_t i = 0; i < sums.z().size(); ++i) {
    EXPECT_NEAR(sums.z()[i], rebuilt.z()[i],
                1e-9 * (1 + std::abs(rebuilt.z()[i])))
        << i;
  }
  EXPECT_NEAR(sums.feature_moment_max_eig(), rebuilt.feature_moment_max_eig(),
              1e-9);
}

TEST(LowRankSumsTest, DriftsOnceRemovalsOutweighWhatTheSumsHold) {
  std::mt19937_64 rng(13);
  const size_t n = 4, d = 6;
  const std::vector<float> keys = RandomVectors(400, n, 1.0, rng);
  const std::vector<float> rows = RandomVectors(400, d, 1.0, rng);
  // Ordinary churn: half the rows out and back in, many times over, is far
  // from kDriftRatio times what the sums hold.
  LowRankSums sums(std::make_shared<const TaylorBasis>(n, 4), d, false);
  sums.Add(keys.data(), rows.data(), 400, 1.0);
  EXPECT_FALSE(sums.Drifted());
  for (int round = 0; round < 50; ++round) {
    sums.Add(keys.data(), rows.data(), 200, -1.0);
    sums.Add(keys.data(), rows.data(), 200, 1.0);
  }
  EXPECT_FALSE(sums.Drifted());
  // One outsized row added and removed: its terms (~1e6^6 here) dwarf the
  // rows the sums hold, and so does the rounding its removal leaves.
  const std::vector<float> big_key(n, 1e6f), big_row(d, 1e6f);
  sums.Add(big_key.data(), big_row.data(), 1, 1.0);
  EXPECT_FALSE(sums.Drifted());  // Held: the sums are as if built afresh.
  sums.Add(big_key.data(), big_row.data(), 1, -1.0);
  EXPECT_TRUE(sums.Drifted());
  // Sums built afresh over the same rows have not drifted; nor have a
  // router's merged parts, which are not weighed.
  EXPECT_FALSE(Build(keys, rows, n, d, 4, false).Drifted());
}

// A router's merge: the parts' sums (kept at different degrees) added at
// the smaller degree equal the sums of the whole at that degree, moments
// and eigenvalue bounds included.
TEST(LowRankSumsTest, PartsAddUpToTheWholeAtTheSmallerDegree) {
  std::mt19937_64 rng(12);
  const size_t n = 4, d = 6;
  const std::vector<float> keys = RandomVectors(500, n, 1.0, rng);
  const std::vector<float> rows = RandomVectors(500, d, 1.5, rng);
  const LowRankSums first =
      Build({keys.begin(), keys.begin() + 200 * n},
            {rows.begin(), rows.begin() + 200 * d}, n, d, 4, false);
  const LowRankSums second =
      Build({keys.begin() + 200 * n, keys.end()},
            {rows.begin() + 200 * d, rows.end()}, n, d, 2, false);
  LowRankSums merged(std::make_shared<const TaylorBasis>(n, 2), d, false);
  for (const LowRankSums* part : {&first, &second}) {
    ASSERT_TRUE(merged.AddPart(part->a(), part->z(), part->sq_norm_sum()).ok());
  }
  merged.Finish();
  const LowRankSums whole = Build(keys, rows, n, d, 2, false);
  ASSERT_EQ(merged.a().size(), whole.a().size());
  for (size_t i = 0; i < whole.a().size(); ++i) {
    EXPECT_NEAR(merged.a()[i], whole.a()[i],
                1e-9 * (1 + std::abs(whole.a()[i])));
  }
  for (size_t i = 0; i < whole.z().size(); ++i) {
    EXPECT_NEAR(merged.z()[i], whole.z()[i],
                1e-9 * (1 + std::abs(whole.z()[i])));
  }
  EXPECT_NEAR(merged.sq_norm_sum(), whole.sq_norm_sum(),
              1e-9 * whole.sq_norm_sum());
  EXPECT_NEAR(merged.feature_moment_max_eig(), whole.feature_moment_max_eig(),
              1e-9);
  EXPECT_NEAR(merged.value_moment_max_eig(), whole.value_moment_max_eig(),
              1e-9);
  // A part of the wrong shape is refused, and changes nothing.
  LowRankSums four(std::make_shared<const TaylorBasis>(n, 4), d, false);
  const std::vector<double> before = four.z();
  EXPECT_FALSE(four.AddPart(second.a(), second.z(), 1.0).ok());
  EXPECT_EQ(four.z(), before);
}

TEST(LowRankSumsTest, MomentsAreTheMeanAndSecondMomentOfTheFeatures) {
  std::mt19937_64 rng(5);
  const size_t n = 4;
  const std::vector<float> keys = RandomVectors(50, n, 1.5, rng);
  const LowRankSums sums = Build(keys, keys, n, n, 2, true);
  for (size_t i = 0; i < n; ++i) {
    double mean = 0;
    for (size_t mu = 0; mu < 50; ++mu) mean += keys[mu * n + i];
    EXPECT_NEAR(sums.feature_mean()[i], mean / 50, 1e-12);
    for (size_t j = 0; j < n; ++j) {
      double moment = 0;
      for (size_t mu = 0; mu < 50; ++mu) {
        moment += double{keys[mu * n + i]} * keys[mu * n + j];
      }
      EXPECT_NEAR(sums.feature_moment()[i * n + j], moment / 50, 1e-12);
    }
  }
  EXPECT_EQ(sums.value_moment_max_eig(), sums.feature_moment_max_eig());
}

struct GridCase {
  bool kernel;
  bool clustered;  // Patterns around one direction (large mean feature).
};

// Over a grid of norms, beta, degree and steps, on dot and kernel_dot, the
// measured error never exceeds the bound.
TEST(LowRankRetrievalTest, MeasuredErrorNeverExceedsTheBound) {
  std::mt19937_64 rng(2024);
  int finite = 0;
  int checked = 0;
  double largest_ratio = 0;
  for (GridCase c : {GridCase{false, false}, GridCase{false, true},
                     GridCase{true, false}, GridCase{true, true}}) {
    const size_t d = c.kernel ? 9 : 6;
    const size_t n = c.kernel ? 4 : 6;
    const FeatureMap map = c.kernel
                               ? FeatureMap(d, n,
                                            [&] {
                                              std::vector<float> w =
                                                  RandomVectors(n, d, 1, rng);
                                              return w;
                                            }())
                               : FeatureMap::Identity(d);
    for (double norm : {0.2, 0.5, 1.0, 1.6}) {
      std::vector<float> rows = RandomVectors(400, d, norm, rng);
      if (c.clustered) {
        for (size_t mu = 0; mu < 400; ++mu) {
          for (size_t j = 0; j < d; ++j) {
            rows[mu * d + j] = 0.3f * rows[mu * d + j] +
                               static_cast<float>(0.7 * norm / std::sqrt(d));
          }
        }
      }
      std::vector<float> keys(400 * n);
      map.Apply(rows.data(), 400, keys.data());
      const LowRankSums sums = Build(keys, rows, n, d, 6, !c.kernel);
      LowRankBoundInputs in{&sums, 0, 0, SpectralNormBound(map)};
      for (size_t mu = 0; mu < 400; ++mu) {
        double sq = 0, ksq = 0;
        for (size_t j = 0; j < d; ++j)
          sq += double{rows[mu * d + j]} * rows[mu * d + j];
        for (size_t j = 0; j < n; ++j)
          ksq += double{keys[mu * n + j]} * keys[mu * n + j];
        in.max_norm = std::max(in.max_norm, std::sqrt(sq));
        in.max_feature_norm = std::max(in.max_feature_norm, std::sqrt(ksq));
      }
      const MemorySet memories =
          OneBlock(rows, keys, d, c.kernel ? &map : nullptr);
      const std::vector<float> queries = RandomVectors(4, d, norm, rng);
      for (double beta : {0.25, 1.0, 3.0}) {
        for (uint32_t degree : {2u, 4u, 6u}) {
          for (uint32_t steps : {1u, 3u}) {
            RetrievalParams params;
            params.similarity =
                c.kernel ? Similarity::kKernelDot : Similarity::kDot;
            params.beta = static_cast<float>(beta);
            params.steps = steps;
            params.top_k = 0;
            absl::StatusOr<RetrievalOutput> out = RetrieveLowRank(
                sums, memories, queries.data(), 4, params, degree);
            ASSERT_TRUE(out.ok()) << out.status();
            for (size_t i = 0; i < 4; ++i) {
              std::vector<float> qf(n);
              map.Apply(queries.data() + i * d, 1, qf.data());
              std::vector<double> q(qf.begin(), qf.end());
              const double bound =
                  LowRankErrorBound(in, q.data(), beta, degree, steps);
              const std::vector<double> exact = ExactReference(
                  rows, keys, map, d, queries.data() + i * d, beta, steps);
              double sq = 0;
              for (size_t j = 0; j < d; ++j) {
                const double e = out->states[i * d + j] - exact[j];
                sq += e * e;
              }
              const double error = std::sqrt(sq);
              ++checked;
              if (!std::isfinite(bound)) continue;
              ++finite;
              EXPECT_LE(error, bound)
                  << "kernel=" << c.kernel << " clustered=" << c.clustered
                  << " norm=" << norm << " beta=" << beta << " g=" << degree
                  << " steps=" << steps;
              if (error > 1e-6)
                largest_ratio = std::max(largest_ratio, error / bound);
            }
          }
        }
      }
    }
  }
  // The grid must exercise the bound, not only infinite ones.
  EXPECT_GT(finite, checked / 3);
  EXPECT_GT(largest_ratio, 0.0);
  std::printf("%d of %d bounds finite; largest error/bound %.3g\n", finite,
              checked, largest_ratio);
}

TEST(LowRankRetrievalTest, MatchesAreTheBestScoresWithTaylorWeights) {
  std::mt19937_64 rng(9);
  const size_t d = 5;
  const std::vector<float> rows = RandomVectors(300, d, 0.6, rng);
  const LowRankSums sums = Build(rows, rows, d, d, 4, true);
  // Two blocks, to cover the index offset.
  MemorySet memories;
  memories.dim = d;
  memories.blocks.push_back({rows.data(), nullptr, 120, nullptr, nullptr});
  memories.blocks.push_back(
      {rows.data() + 120 * d, nullptr, 180, nullptr, nullptr});
  const std::vector<float> query = RandomVectors(1, d, 0.6, rng);
  RetrievalParams params;
  params.beta = 2.0f;
  params.top_k = 7;
  absl::StatusOr<RetrievalOutput> out =
      RetrieveLowRank(sums, memories, query.data(), 1, params, 4);
  ASSERT_TRUE(out.ok()) << out.status();
  std::vector<std::pair<double, size_t>> scores;
  for (size_t mu = 0; mu < 300; ++mu) {
    double dot = 0;
    for (size_t j = 0; j < d; ++j) dot += double{rows[mu * d + j]} * query[j];
    scores.push_back({2.0 * dot, mu});
  }
  std::sort(scores.rbegin(), scores.rend());
  ASSERT_EQ(out->matches[0].size(), 7u);
  double total = 0;
  for (const auto& s : scores) total += TaylorExp(s.first, 4);
  for (size_t k = 0; k < 7; ++k) {
    EXPECT_EQ(out->matches[0][k].index, scores[k].second) << k;
    EXPECT_NEAR(out->matches[0][k].score, scores[k].first, 1e-5);
    EXPECT_NEAR(out->matches[0][k].weight,
                TaylorExp(scores[k].first, 4) / total, 1e-6);
  }
  // log sum exp is replaced by log sum T_4: the energy matches it.
  double sq = 0;
  for (size_t j = 0; j < d; ++j) sq += double{query[j]} * query[j];
  EXPECT_NEAR(out->energies[0], -std::log(total) / 2.0 + 0.5 * sq, 1e-9);
}

TEST(LowRankRetrievalTest, RefusesWhatItCannotCompute) {
  std::mt19937_64 rng(1);
  const std::vector<float> rows = RandomVectors(10, 3, 0.5, rng);
  const LowRankSums sums = Build(rows, rows, 3, 3, 4, true);
  const MemorySet memories = OneBlock(rows, rows, 3, nullptr);
  RetrievalParams params;
  params.similarity = Similarity::kL2;
  EXPECT_FALSE(RetrieveLowRank(sums, memories, rows.data(), 1, params, 2).ok());
  params.similarity = Similarity::kDot;
  params.separation = Separation::kSparsemax;
  EXPECT_FALSE(RetrieveLowRank(sums, memories, rows.data(), 1, params, 2).ok());
  params.separation = Separation::kSoftmax;
  EXPECT_FALSE(RetrieveLowRank(sums, memories, rows.data(), 1, params, 3).ok());
  EXPECT_FALSE(RetrieveLowRank(sums, memories, rows.data(), 1, params, 6).ok());
  EXPECT_TRUE(RetrieveLowRank(sums, memories, rows.data(), 1, params, 2).ok());
}

}  // namespace
}  // namespace engram::core

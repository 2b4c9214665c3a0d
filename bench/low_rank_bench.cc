// The low-rank path against exact retrieval, in process, through the same
// Store and planner engramd uses (softmax, dot, d = d_Phi, top_k = 0, one
// step; patterns and queries in random directions with norms in [a/2, a]):
//  1. time per query of each path for M in {1e4, 1e5, 1e6} and d_Phi in
//     {8, 16, 32}, one query and 256 per call, with the degree the planner
//     picks at tolerance 1e-3, its bound and the measured error;
//  2. the crossover in M (d_Phi = 16);
//  3. a sweep of beta * norms at d_Phi = 16: bound and measured error at
//     g = 2 and g = 4 (CSV for the plot);
//  4. the phase diagram: the path AUTO takes over (M, beta) at d_Phi = 8,
//     degrees up to 8 (CSV for the plot);
//  5. a worked example (200,000 patterns, d = 16, norm 0.55).
//
//   low_rank_bench [--quick] [--csv=docs/low-rank]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/bench_main.h"
#include "server/core/blas.h"
#include "server/core/low_rank.h"
#include "server/store/retrieve.h"
#include "server/store/storage.h"
#include "server/store/store.h"

ABSL_FLAG(bool, quick, false, "Smaller M (1e3..1e5) for a fast look.");
ABSL_FLAG(std::string, csv, "",
          "Prefix for the sweep and phase CSV files (e.g. docs/low-rank).");
ABSL_FLAG(double, norm, 0.35, "Largest pattern and query norm a in table 1.");

namespace engram::store {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<Pattern> RandomPatterns(size_t n, uint32_t dim, double norm,
                                    std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<double> spread(0.5, 1.0);
  std::vector<Pattern> out(n);
  for (Pattern& p : out) {
    p.values.resize(dim);
    double sq = 0;
    for (float& v : p.values) {
      v = normal(rng);
      sq += double{v} * v;
    }
    const double scale = norm * spread(rng) / std::sqrt(sq);
    for (float& v : p.values) v = static_cast<float>(v * scale);
  }
  return out;
}

std::vector<float> Flatten(const std::vector<Pattern>& patterns) {
  std::vector<float> out;
  for (const Pattern& p : patterns) {
    out.insert(out.end(), p.values.begin(), p.values.end());
  }
  return out;
}

struct Bench {
  EphemeralStorage storage;
  std::unique_ptr<Store> store;
  std::vector<float> queries;  // 256 x dim.
  uint32_t dim = 0;
};

std::unique_ptr<Bench> MakeBench(size_t m, uint32_t dim, double norm,
                                 uint32_t max_degree) {
  auto bench = std::make_unique<Bench>();
  bench->dim = dim;
  StoreSettings settings;
  settings.name = "bench";
  settings.dimension = dim;
  settings.retrieval.top_k = 0;
  settings.low_rank.max_degree = max_degree;
  Limits limits;
  limits.max_batch = 100000;
  bench->store = std::make_unique<Store>(settings, limits, &bench->storage);
  std::mt19937_64 rng(42 + m + dim);
  for (size_t added = 0; added < m; added += limits.max_batch) {
    const size_t n = std::min(limits.max_batch, m - added);
    if (!bench->store->Add(RandomPatterns(n, dim, norm, rng)).ok()) {
      std::abort();
    }
  }
  bench->queries = Flatten(RandomPatterns(256, dim, norm, rng));
  return bench;
}

struct Timed {
  double seconds_per_call = 0;
  RetrieveResult result;
};

// Runs `num_queries` queries per call until 0.3 s have passed (at least 3
// calls) and returns the mean time of one call and the last result.
Timed Time(const Bench& bench, PathChoice path, size_t num_queries,
           std::optional<float> beta = {}) {
  core::RetrievalOptions options;
  options.threads = 2;
  RetrieveRequest request;
  request.num_queries = num_queries;
  request.path = path;
  request.beta = beta;
  std::shared_ptr<const StoreView> view = bench.store->view();
  Timed timed;
  size_t calls = 0;
  const Clock::time_point start = Clock::now();
  double elapsed = 0;
  do {
    // Cycle through the queries so single-query calls see different ones.
    const size_t first = (calls * num_queries) % (256 - num_queries + 1);
    request.queries = absl::MakeConstSpan(
        bench.queries.data() + first * bench.dim, num_queries * bench.dim);
    absl::StatusOr<RetrieveResult> result =
        Retrieve(*view, request, Limits{}, options);
    if (!result.ok()) {
      std::fprintf(stderr, "%s\n",
                   std::string(result.status().message()).c_str());
      std::abort();
    }
    timed.result = *std::move(result);
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < 0.3 || calls < 3);
  timed.seconds_per_call = elapsed / calls;
  return timed;
}

double MaxError(const std::vector<float>& a, const std::vector<float>& b,
                size_t dim) {
  double worst = 0;
  for (size_t i = 0; i < a.size() / dim; ++i) {
    double sq = 0;
    for (size_t j = 0; j < dim; ++j) {
      const double e = double{a[i * dim + j]} - b[i * dim + j];
      sq += e * e;
    }
    worst = std::max(worst, std::sqrt(sq));
  }
  return worst;
}

std::string Us(double seconds) {
  char buffer[32];
  if (seconds >= 1e-2) {
    std::snprintf(buffer, sizeof buffer, "%.1f ms", seconds * 1e3);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.1f µs", seconds * 1e6);
  }
  return buffer;
}

void PathsTable(bool quick, double norm) {
  std::printf(
      "\n### 1. Both paths by M and d_Phi (a = %.2f, beta = 1, tolerance "
      "1e-3)\n\n",
      norm);
  std::printf(
      "| d_Phi | M | g | r | bound | measured error | exact, 1 query | "
      "low-rank, 1 query | speed-up | exact, 256 | low-rank, 256 | speed-up "
      "|\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const std::vector<size_t> sizes =
      quick ? std::vector<size_t>{1000, 10000, 100000}
            : std::vector<size_t>{10000, 100000, 1000000};
  for (uint32_t dim : {8u, 16u, 32u}) {
    // d_Phi = 32 at g = 4 would be r = 58,905: its sums are kept to g = 2.
    const uint32_t max_degree = dim == 32 ? 2 : 4;
    for (size_t m : sizes) {
      std::unique_ptr<Bench> bench = MakeBench(m, dim, norm, max_degree);
      const Timed exact1 = Time(*bench, PathChoice::kExact, 1);
      const Timed low1 = Time(*bench, PathChoice::kAuto, 1);
      const Timed exact256 = Time(*bench, PathChoice::kExact, 256);
      const Timed low256 = Time(*bench, PathChoice::kAuto, 256);
      const PathReport& path = low256.result.path;
      if (path.path != PathChoice::kLowRank) {
        std::printf("| %u | %zu | exact: %s |\n", dim, m, path.reason.c_str());
        continue;
      }
      std::printf(
          "| %u | %zu | %u | %lu | %.2e | %.2e | %s | %s | %.0fx | %s | %s | "
          "%.0fx |\n",
          dim, m, path.degree, static_cast<unsigned long>(path.rank),
          path.error_bound,
          MaxError(low256.result.states, exact256.result.states, dim),
          Us(exact1.seconds_per_call).c_str(),
          Us(low1.seconds_per_call).c_str(),
          exact1.seconds_per_call / low1.seconds_per_call,
          Us(exact256.seconds_per_call).c_str(),
          Us(low256.seconds_per_call).c_str(),
          exact256.seconds_per_call / low256.seconds_per_call);
      std::fflush(stdout);
    }
  }
}

void CrossoverTable(double norm) {
  std::printf(
      "\n### 2. Crossover in M (d_Phi = 16, one query per call; AUTO's pick "
      "by the cost model)\n\n| M | exact | low-rank (g, r) | AUTO takes "
      "|\n|---|---|---|---|\n");
  for (size_t m : {64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}) {
    std::unique_ptr<Bench> bench = MakeBench(m, 16, norm, 4);
    const Timed exact = Time(*bench, PathChoice::kExact, 1);
    const Timed low = Time(*bench, PathChoice::kLowRank, 1);
    const Timed autopick = Time(*bench, PathChoice::kAuto, 1);
    std::printf("| %zu | %s | %s (%u, %lu) | %s |\n", m,
                Us(exact.seconds_per_call).c_str(),
                Us(low.seconds_per_call).c_str(), low.result.path.degree,
                static_cast<unsigned long>(low.result.path.rank),
                autopick.result.path.path == PathChoice::kLowRank ? "low-rank"
                                                                  : "exact");
    std::fflush(stdout);
  }
}

// Bound and measured error of one degree for the queries of `bench`.
std::pair<double, double> BoundAndError(const Bench& bench, double beta,
                                        uint32_t degree,
                                        const std::vector<float>& exact) {
  std::shared_ptr<const StoreView> view = bench.store->view();
  const core::LowRankSums& sums = *view->low_rank();
  core::RetrievalParams params = view->settings().retrieval;
  params.beta = static_cast<float>(beta);
  absl::StatusOr<core::RetrievalOutput> out = core::RetrieveLowRank(
      sums, view->memories(), bench.queries.data(), 256, params, degree);
  if (!out.ok()) std::abort();
  const core::LowRankBoundInputs inputs{&sums, view->norms().max_norm,
                                        view->norms().max_feature_norm, 1.0};
  double bound = 0;
  for (size_t i = 0; i < 256; ++i) {
    std::vector<double> q(bench.queries.begin() + i * bench.dim,
                          bench.queries.begin() + (i + 1) * bench.dim);
    bound = std::max(
        bound, core::LowRankErrorBound(inputs, q.data(), beta, degree, 1));
  }
  return {bound, MaxError(out->states, exact, bench.dim)};
}

void Sweep(const std::string& csv, bool quick) {
  const size_t m = quick ? 20000 : 100000;
  std::printf(
      "\n### 3. Bound and measured error against beta * norms (d_Phi = 16, "
      "M = %zu, a = 1, max over 256 queries)\n\n| beta | R = beta max||xi|| "
      "max||x|| | bound g=2 | error g=2 | bound g=4 | error g=4 | AUTO at "
      "1e-3 |\n|---|---|---|---|---|---|---|\n",
      m);
  std::unique_ptr<Bench> bench = MakeBench(m, 16, 1.0, 4);
  FILE* out =
      csv.empty() ? nullptr : std::fopen((csv + "-sweep.csv").c_str(), "w");
  if (out) std::fprintf(out, "beta,R,bound2,error2,bound4,error4\n");
  double max_query = 0;
  for (size_t i = 0; i < 256; ++i) {
    double sq = 0;
    for (size_t j = 0; j < 16; ++j) {
      sq += double{bench->queries[i * 16 + j]} * bench->queries[i * 16 + j];
    }
    max_query = std::max(max_query, std::sqrt(sq));
  }
  const double max_norm = bench->store->view()->norms().max_norm;
  for (double beta = 0.01; beta < 4.01; beta *= std::pow(10.0, 0.125)) {
    const Timed exact = Time(*bench, PathChoice::kExact, 256, beta);
    const Timed pick = Time(*bench, PathChoice::kAuto, 256, beta);
    const auto [bound2, error2] =
        BoundAndError(*bench, beta, 2, exact.result.states);
    const auto [bound4, error4] =
        BoundAndError(*bench, beta, 4, exact.result.states);
    const double r = beta * max_norm * max_query;
    std::printf("| %.3g | %.3g | %.2e | %.2e | %.2e | %.2e | %s |\n", beta, r,
                bound2, error2, bound4, error4,
                pick.result.path.path == PathChoice::kLowRank
                    ? ("g = " + std::to_string(pick.result.path.degree)).c_str()
                    : "exact");
    if (out) {
      std::fprintf(out, "%g,%g,%g,%g,%g,%g\n", beta, r, bound2, error2, bound4,
                   error4);
    }
    std::fflush(stdout);
  }
  if (out) std::fclose(out);
}

// The planner's rule over (M, beta): the smallest even g <= 8 whose bound
// meets 1e-3 and whose rank is below M (the cost model with top_k = 0).
void Phase(const std::string& csv) {
  std::unique_ptr<Bench> bench = MakeBench(100000, 8, 1.0, 8);
  std::shared_ptr<const StoreView> view = bench->store->view();
  const core::LowRankSums& sums = *view->low_rank();
  const core::LowRankBoundInputs inputs{&sums, view->norms().max_norm,
                                        view->norms().max_feature_norm, 1.0};
  FILE* out =
      csv.empty() ? nullptr : std::fopen((csv + "-phase.csv").c_str(), "w");
  if (out) std::fprintf(out, "M,beta,R,degree\n");
  std::printf(
      "\n### 4. Where AUTO takes the low-rank path (d_Phi = 8, degrees up to "
      "8, tolerance 1e-3): largest beta per M\n\n| M | largest beta | R | g "
      "there |\n|---|---|---|---|\n");
  const double max_norm = view->norms().max_norm;
  for (double m = 10; m <= 1e9; m *= std::sqrt(10.0)) {
    double largest = 0;
    uint32_t degree_there = 0;
    for (double beta = 0.01; beta < 20; beta *= std::pow(10.0, 0.05)) {
      uint32_t chosen = 0;
      for (uint32_t g = 2; g <= 8 && chosen == 0; g += 2) {
        if (static_cast<double>(core::TaylorRank(8, g)) >= m) break;
        double bound = 0;
        for (size_t i = 0; i < 256; ++i) {
          std::vector<double> q(bench->queries.begin() + i * 8,
                                bench->queries.begin() + (i + 1) * 8);
          bound = std::max(
              bound, core::LowRankErrorBound(inputs, q.data(), beta, g, 1));
        }
        if (bound <= 1e-3) chosen = g;
      }
      if (chosen) {
        largest = beta;
        degree_there = chosen;
      }
      if (out) {
        std::fprintf(out, "%g,%g,%g,%u\n", m, beta, beta * max_norm * max_norm,
                     chosen);
      }
    }
    std::printf("| %.3g | %.3g | %.3g | %u |\n", m, largest,
                largest * max_norm * max_norm, degree_there);
  }
  if (out) std::fclose(out);
}

void SpecExample() {
  // 200,000 random 16-d patterns and queries of norm 0.55, beta 1.
  auto bench = std::make_unique<Bench>();
  bench->dim = 16;
  StoreSettings settings;
  settings.name = "spec";
  settings.dimension = 16;
  settings.retrieval.top_k = 0;
  Limits limits;
  limits.max_batch = 200000;
  bench->store = std::make_unique<Store>(settings, limits, &bench->storage);
  std::mt19937_64 rng(55);
  std::normal_distribution<float> normal;
  auto fixed_norm = [&](size_t n) {
    std::vector<Pattern> out(n);
    for (Pattern& p : out) {
      p.values.resize(16);
      double sq = 0;
      for (float& v : p.values) {
        v = normal(rng);
        sq += double{v} * v;
      }
      for (float& v : p.values)
        v = static_cast<float>(v * 0.55 / std::sqrt(sq));
    }
    return out;
  };
  if (!bench->store->Add(fixed_norm(200000)).ok()) std::abort();
  bench->queries = Flatten(fixed_norm(256));
  const Timed exact = Time(*bench, PathChoice::kExact, 256);
  const auto [bound2, error2] =
      BoundAndError(*bench, 1.0, 2, exact.result.states);
  const auto [bound4, error4] =
      BoundAndError(*bench, 1.0, 4, exact.result.states);
  const Timed pick = Time(*bench, PathChoice::kAuto, 256);
  const double r = 0.55 * 0.55;
  double factorial = 6;
  const double delta = std::exp(2 * r) * r * r * r / factorial;
  std::printf(
      "\n### 5. A worked example (M = 200,000, d = 16, norms 0.55, beta = 1)"
      "\n\nThe paper's form of the bound at g = 2: %.2e; engram's bound: g = 2 "
      "%.2e (measured "
      "%.2e), g = 4 %.2e (measured %.2e); AUTO at 1e-3 takes g = %u (r = "
      "%lu).\n",
      2 * delta / (1 - delta) * 0.55, bound2, error2, bound4, error4,
      pick.result.path.degree,
      static_cast<unsigned long>(pick.result.path.rank));
}

}  // namespace
}  // namespace engram::store

int main(int argc, char** argv) {
  engram::bench::Start(argc, argv);
  engram::core::blas::SetThreads(1);  // As engramd runs retrieval.
  const bool quick = absl::GetFlag(FLAGS_quick);
  std::printf("# exact runs on 2 retrieval threads, low-rank on one.\n");
  engram::store::SpecExample();
  engram::store::PathsTable(quick, absl::GetFlag(FLAGS_norm));
  engram::store::CrossoverTable(absl::GetFlag(FLAGS_norm));
  engram::store::Sweep(absl::GetFlag(FLAGS_csv), quick);
  engram::store::Phase(absl::GetFlag(FLAGS_csv));
  return 0;
}

// Google Benchmark microbenchmarks of the retrieval kernels, d = 784, random
// data, one thread: every similarity x separation at L = 1 and 256 over
// M = 10,000, plus the fused single-query path over 60,000 and the vector
// loops; and a store's one-pattern write to its low-rank sums. Counters:
// GFLOP/s of the two products (4 L M d), GB/s of reading the memories once
// (4 M d bytes).
//
//   build/bin/core_benchmark [--benchmark_filter=...]
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "server/base/mutex.h"
#include "server/core/blas.h"
#include "server/core/cpu.h"
#include "server/core/low_rank.h"
#include "server/core/retrieval.h"

namespace engram::core {
namespace {

constexpr size_t kDim = 784;

struct Memories {
  std::vector<float> rows, norms;
  MemorySet set;
  explicit Memories(size_t m) : rows(m * kDim), norms(m) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (float& v : rows) v = uniform(rng);
    for (size_t i = 0; i < m; ++i) {
      double s = 0;
      for (size_t k = 0; k < kDim; ++k)
        s += double{rows[i * kDim + k]} * rows[i * kDim + k];
      norms[i] = static_cast<float>(s);
    }
    set.dim = kDim;
    // Blocks of 1024 rows, as a store's chunks for d = 784.
    for (size_t r = 0; r < m; r += 1024) {
      set.blocks.push_back({rows.data() + r * kDim, norms.data() + r,
                            std::min<size_t>(1024, m - r)});
    }
  }
};

const Memories& Data(size_t m) {
  static const Memories* small = new Memories(10000);
  static const Memories* large = new Memories(60000);
  return m == 10000 ? *small : *large;
}

void BM_Retrieve(benchmark::State& state) {
  blas::SetThreads(1);
  const auto similarity = static_cast<Similarity>(state.range(0));
  const auto separation = static_cast<Separation>(state.range(1));
  const size_t l = state.range(2), m = state.range(3);
  const Memories& memories = Data(m);
  std::vector<float> queries(memories.rows.end() - l * kDim,
                             memories.rows.end());
  RetrievalParams params;
  params.similarity = similarity;
  params.separation = separation;
  params.beta = similarity == Similarity::kDot ? 0.05f : 1.0f;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        RetrieveExact(memories.set, queries.data(), l, params));
  }
  state.SetLabel(std::string(SimilarityName(similarity)) + "/" +
                 std::string(SeparationName(separation)));
  state.counters["GFLOP/s"] = benchmark::Counter(
      4.0 * l * m * kDim / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(
      4.0 * m * kDim / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void AllKernels(benchmark::internal::Benchmark* b) {
  for (int sim : {0, 1, 2, 3}) {
    for (int sep : {0, 1, 2}) {
      for (int l : {1, 256}) b->Args({sim, sep, l, 10000});
    }
  }
  b->Args({0, 0, 1, 60000});
}

BENCHMARK(BM_Retrieve)->Apply(AllKernels)->Unit(benchmark::kMillisecond);

void BM_GemmPair(benchmark::State& state) {
  blas::SetThreads(1);
  const size_t l = state.range(0), m = 10000;
  const Memories& memories = Data(m);
  std::vector<float> queries(l * kDim, 0.5f), scores(l * m), out(l * kDim);
  for (auto _ : state) {
    blas::GemmNT(l, m, kDim, 1.0f, queries.data(), kDim, memories.rows.data(),
                 kDim, 0.0f, scores.data(), m);
    blas::GemmNN(l, kDim, m, 1.0f, scores.data(), m, memories.rows.data(), kDim,
                 0.0f, out.data(), kDim);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      4.0 * l * m * kDim / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_GemmPair)->Arg(1)->Arg(256)->Unit(benchmark::kMillisecond);

// A dot store's low-rank sums over 2,000 random rows of dimension d, at the
// degree a store keeps within its default limit of values.
LowRankSums SumsOf(size_t d) {
  const uint32_t degree = SumsDegree(d, d, 4, size_t{1} << 18);
  LowRankSums sums(std::make_shared<const TaylorBasis>(d, degree), d,
                   /*keys_are_rows=*/true);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  std::vector<float> rows(2000 * d);
  for (float& v : rows) v = normal(rng);
  sums.Add(rows.data(), rows.data(), 2000, 1.0);
  sums.Finish();
  return sums;
}

// What a store's write of one pattern does to its sums: a copy (readers
// keep the one before), the row added, the moments recomputed.
void BM_SumsWriteOne(benchmark::State& state) {
  blas::SetThreads(1);
  const size_t d = state.range(0);
  const LowRankSums sums = SumsOf(d);
  std::vector<float> row(d, 0.05f);
  for (auto _ : state) {
    LowRankSums next(sums);
    next.Add(row.data(), row.data(), 1, 1.0);
    next.Finish();
    benchmark::DoNotOptimize(next.a().data());
  }
  state.counters["rank"] = static_cast<double>(sums.z().size());
}
BENCHMARK(BM_SumsWriteOne)->Arg(16)->Arg(64)->Unit(benchmark::kMicrosecond);

// Of which the moments and their eigenvalue bounds.
void BM_SumsFinish(benchmark::State& state) {
  blas::SetThreads(1);
  LowRankSums sums = SumsOf(state.range(0));
  for (auto _ : state) {
    sums.Finish();
    benchmark::DoNotOptimize(sums.feature_moment_max_eig());
  }
}
BENCHMARK(BM_SumsFinish)->Arg(16)->Arg(64)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace engram::core

// As engramd runs: the BLAS kernel family chosen for this CPU, denormals
// flushed; the machine in the output's context.
int main(int argc, char** argv) {
  engram::SkipLockOrderChecks();
  engram::core::UseBlasFamily("auto", argv);
  engram::core::FlushDenormals();
  benchmark::AddCustomContext("machine", engram::core::DescribeMachine());
  benchmark::AddCustomContext("blas_family", engram::core::blas::CoreName());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

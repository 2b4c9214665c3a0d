// In-process exact retrieval on Fashion-MNIST through a real store, the way
// engramd runs it: L queries (the last L training images, scaled by 0.5, as
// ../shared/anchors/peer_speed.py does) over the first M images.
//
//   retrieve_fashion [--m=10000] [--l=256] [--reps=20] [--separation=softmax]
//                    [--similarity=dot] [--beta=1] [--threads=2]
//                    [--blas_coretype=auto] [--flush_denormals]
//
// Prints a line "# machine: CPU, cores, SIMD; BLAS kernels", then one CSV
// row: mode,m,l,separation,similarity,best_ms,median_ms, us_per_query,
// GFLOP/s of the two matrix products, GB/s of reading Xi once.
// It chooses its BLAS kernels and floating-point mode as engramd does.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/bench_main.h"
#include "client/matrix_io.h"
#include "server/base/mutex.h"
#include "server/core/blas.h"
#include "server/core/cpu.h"
#include "server/core/retrieval.h"
#include "server/store/retrieve.h"
#include "server/store/store.h"

ABSL_FLAG(size_t, m, 10000, "Stored patterns.");
ABSL_FLAG(size_t, l, 256, "Queries per batch.");
ABSL_FLAG(int, reps, 20, "Timed repetitions (after one warm-up).");
ABSL_FLAG(std::string, separation, "softmax", "softmax, sparsemax, entmax15.");
ABSL_FLAG(std::string, similarity, "dot", "dot, l2, manhattan, cosine.");
ABSL_FLAG(float, beta, 1.0f, "Inverse temperature.");
ABSL_FLAG(int, threads, 2, "OpenBLAS threads.");
ABSL_FLAG(int, slices, 1, "Retrieval threads (queries split over them).");
ABSL_FLAG(size_t, fused_queries, 0,
          "Softmax batches up to this many queries take the fused pass "
          "(1: only single queries; larger batches go through sgemm; 0: as "
          "engramd, by the instruction set).");
ABSL_FLAG(std::string, kernel_isa, "",
          "Run engram's own kernels with this instruction set (avx512, avx2, "
          "portable) instead of the best the CPU has.");
ABSL_FLAG(int, gap_us, 0,
          "Idle time between timed calls (a server idles between requests "
          "while the client sends and reads them).");
ABSL_FLAG(size_t, flush_mb, 0,
          "Before each timed call, write this many MiB of other memory, as a "
          "server's caches hold other work between requests (0: none).");
ABSL_FLAG(bool, header, false, "Print the CSV header first.");
ABSL_FLAG(std::string, mode, "retrieve",
          "retrieve: engram's exact retrieval; gemm: the bare pair of sgemm "
          "calls of the same shapes (Q Xi^T, then times Xi); stream: read Xi "
          "once (the memory-bandwidth floor); describe: print the machine and "
          "the BLAS kernel family engram chooses, then exit.");
ABSL_FLAG(size_t, synthetic, 0,
          "Use this many random rows instead of Fashion-MNIST (d = 784).");
ABSL_FLAG(std::string, blas_coretype, "auto",
          "OpenBLAS kernel family, as engramd's flag.");
ABSL_FLAG(bool, flush_denormals, true,
          "Flush denormal floats to zero, as engramd does.");
ABSL_FLAG(std::string, images,
          "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
          "idx-ubyte images.");

namespace {

using engram::core::Separation;
using engram::core::Similarity;

absl::StatusOr<engram::client::Matrix> Load(size_t rows) {
  if (const size_t n = absl::GetFlag(FLAGS_synthetic); n > 0) {
    engram::client::Matrix m{n, 784, std::vector<float>(n * 784)};
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (float& v : m.data) v = uniform(rng);
    return m;
  }
  absl::StatusOr<engram::client::Matrix> images =
      engram::client::ReadMatrix(absl::GetFlag(FLAGS_images));
  if (images.ok() && images->rows < rows) {  // Queries may overlap memories.
    return absl::OutOfRangeError("not enough images");
  }
  return images;
}

template <typename F>
std::vector<double> Time(int reps, F&& f) {
  std::vector<double> ms;
  const int gap_us = absl::GetFlag(FLAGS_gap_us);
  std::vector<char> other(absl::GetFlag(FLAGS_flush_mb) << 20);
  for (int rep = -1; rep < reps; ++rep) {
    if (gap_us > 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(gap_us));
    }
    for (size_t i = 0; i < other.size(); i += 64) ++other[i];
    const auto start = std::chrono::steady_clock::now();
    if (!f()) return {};
    const auto end = std::chrono::steady_clock::now();
    if (rep >= 0) {
      ms.push_back(
          std::chrono::duration<double, std::milli>(end - start).count());
    }
  }
  std::sort(ms.begin(), ms.end());
  return ms;
}

int Run() {
  const size_t m = absl::GetFlag(FLAGS_m), l = absl::GetFlag(FLAGS_l);
  absl::StatusOr<engram::client::Matrix> images = Load(std::max(m, l));
  if (!images.ok()) {
    std::fprintf(stderr, "cannot load %zu + %zu rows: %s\n", m, l,
                 images.status().ToString().c_str());
    return 1;
  }
  const size_t d = images->cols;
  engram::core::blas::SetThreads(absl::GetFlag(FLAGS_threads));

  engram::store::StoreSettings settings;
  settings.name = "bench";
  settings.dimension = d;
  const std::string sep = absl::GetFlag(FLAGS_separation);
  settings.retrieval.separation = sep == "sparsemax"  ? Separation::kSparsemax
                                  : sep == "entmax15" ? Separation::kEntmax15
                                                      : Separation::kSoftmax;
  const std::string sim = absl::GetFlag(FLAGS_similarity);
  settings.retrieval.similarity = sim == "l2"          ? Similarity::kL2
                                  : sim == "manhattan" ? Similarity::kManhattan
                                  : sim == "cosine"    ? Similarity::kCosine
                                                       : Similarity::kDot;
  settings.retrieval.beta = absl::GetFlag(FLAGS_beta);
  engram::store::EphemeralStorage storage;
  engram::store::Limits limits;
  limits.max_queries = l;
  limits.max_batch = m;
  engram::store::Store store(settings, limits, &storage);
  std::vector<engram::store::Pattern> patterns(m);
  for (size_t i = 0; i < m; ++i) {
    patterns[i].values.assign(images->data.begin() + i * d,
                              images->data.begin() + (i + 1) * d);
  }
  if (!store.Add(patterns).ok()) return 1;

  std::vector<float> queries(images->data.end() - l * d, images->data.end());
  for (float& v : queries) v *= 0.5f;
  engram::store::RetrieveRequest request;
  request.queries = queries;
  request.num_queries = l;

  std::shared_ptr<const engram::store::StoreView> view = store.view();
  engram::core::RetrievalOptions options;
  options.threads = absl::GetFlag(FLAGS_slices);
  options.fused_queries = absl::GetFlag(FLAGS_fused_queries);
  if (!engram::bench::UseKernelIsaFlag(absl::GetFlag(FLAGS_kernel_isa))) {
    return 1;
  }
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const int reps = absl::GetFlag(FLAGS_reps);
  std::vector<double> ms;
  if (mode == "gemm") {
    std::vector<float> scores(l * m), out(l * d);
    const float* xi = images->data.data();
    ms = Time(reps, [&] {
      engram::core::blas::GemmNT(l, m, d, 1.0f, queries.data(), d, xi, d, 0.0f,
                                 scores.data(), m);
      engram::core::blas::GemmNN(l, d, m, 1.0f, scores.data(), m, xi, d, 0.0f,
                                 out.data(), d);
      return true;
    });
  } else if (mode == "stream") {
    // Read every stored row once, as retrieval must, through the chunks.
    const engram::core::MemorySet set = view->memories();
    volatile float sink = 0;
    ms = Time(reps, [&] {
      // 64 independent sums, so the loop is limited by memory, not by the
      // latency of one chain of additions.
      float sums[64] = {};
      for (const engram::core::MemoryBlock& b : set.blocks) {
        const size_t n = b.count * d;
        const auto* rows = static_cast<const float*>(b.rows);
        size_t i = 0;
        for (; i + 64 <= n; i += 64) {
          for (size_t k = 0; k < 64; ++k) sums[k] += rows[i + k];
        }
        for (; i < n; ++i) sums[0] += rows[i];
      }
      float total = 0;
      for (float v : sums) total += v;
      sink = total;
      return true;
    });
  } else {
    ms = Time(reps, [&] {
      absl::StatusOr<engram::store::RetrieveResult> r =
          engram::store::Retrieve(*view, request, limits, options);
      if (!r.ok()) std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return r.ok();
    });
  }
  if (ms.empty()) return 1;
  const double best = ms.front(), median = ms[ms.size() / 2];
  const double gflop = 2.0 * 2.0 * l * m * d / 1e9;
  const double gbytes = double(m) * d * 4 / 1e9;
  if (absl::GetFlag(FLAGS_header)) {
    std::printf(
        "mode,m,l,separation,similarity,best_ms,median_ms,us_per_query,gflops,"
        "gbps\n");
  }
  std::printf("%s,%zu,%zu,%s,%s,%.3f,%.3f,%.2f,%.1f,%.1f\n", mode.c_str(), m, l,
              sep.c_str(), sim.c_str(), best, median, best * 1e3 / l,
              gflop / (best / 1e3), gbytes / (best / 1e3));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  engram::SkipLockOrderChecks();
  absl::ParseCommandLine(argc, argv);
  engram::core::UseBlasFamily(absl::GetFlag(FLAGS_blas_coretype), argv);
  if (absl::GetFlag(FLAGS_flush_denormals)) engram::core::FlushDenormals();
  std::printf("# machine: %s\n", engram::core::DescribeMachine().c_str());
  if (absl::GetFlag(FLAGS_mode) == "describe") {
    std::printf("# blas_family: %s\n", engram::core::blas::CoreName().c_str());
    std::printf("# kernels: %s, fused softmax batches <= %zu queries\n",
                std::string(engram::core::KernelIsa()).c_str(),
                engram::core::DefaultFusedQueries());
    return 0;
  }
  return Run();
}

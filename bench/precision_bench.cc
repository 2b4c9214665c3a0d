// What a bfloat16 or float16 store costs and saves next to float32, in one
// run (docs/precision.md):
//
//   precision_bench [--sizes=60000,1000000] [--batched_max=60000]
//                   [--fashion_sizes=10000,60000] [--threads=2] [--reps=15]
//
// Speed and memory: M random patterns (d = 784, uniform in [0, 1)) in one
// store per precision; RSS added by each store (after malloc_trim) and the
// store's own memory_bytes; the median time of one query (L = 1: the fused
// single-query pass), of 16 (the fused small-batch pass) and of 256 (sgemm;
// L > 1 for M <= batched_max),
// exact softmax-dot retrieval, beta 1, and each time's ratio to float32.
//
// Error: the Fashion-MNIST protocol (the first M training images; each
// queried with a dropout-corrupted copy, p = 0.5: half the pixels zeroed,
// the rest doubled; one softmax step, beta 1, dot and l2): recall@1 (the stored
// image is the best match), the protocol error (mean over queries of
// sum((clamp(x, 0, 1) - clamp(x_hat, 0, 1))^2)), and the largest deviation
// of a retrieved vector's entry from float32's. Every memory is queried for
// M <= 10,000; a seeded sample of 2,000 above.
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_main.h"
#include "client/matrix_io.h"
#include "server/core/calibration.h"
#include "server/core/cpu.h"
#include "server/core/precision.h"
#include "server/store/retrieve.h"
#include "server/store/store.h"

ABSL_FLAG(std::vector<std::string>, sizes, std::vector<std::string>({"60000"}),
          "Random stores to time (M).");
ABSL_FLAG(size_t, batched_max, 60000, "Largest M timed with L = 16 and 256.");
ABSL_FLAG(std::vector<std::string>, fashion_sizes,
          std::vector<std::string>({"10000", "60000"}),
          "Fashion-MNIST stores to measure the error on (M).");
ABSL_FLAG(int, threads, 2, "Retrieval threads.");
ABSL_FLAG(std::string, kernel_isa, "",
          "Run engram's own kernels (half conversions and kernels, the loops "
          "around the products) with this instruction set (avx512, avx2, "
          "portable) instead of the best the CPU has.");
ABSL_FLAG(int, reps, 15, "Timed repetitions of L = 1 (L = 256: a fifth).");
ABSL_FLAG(std::string, images,
          "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
          "idx-ubyte images.");

namespace engram::store {
namespace {

using core::Precision;

constexpr Precision kPrecisions[] = {Precision::kFloat32, Precision::kBFloat16,
                                     Precision::kFloat16};

size_t RssBytes() {
  malloc_trim(0);
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  long pages = 0, resident = 0;
  if (f != nullptr) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<size_t>(resident) * 4096;
}

Limits BenchLimits(size_t m) {
  Limits limits;
  limits.max_queries = 65536;
  limits.max_batch = 100000;
  limits.max_patterns_per_store = std::max<size_t>(m, 1);
  return limits;
}

// A store of `m` rows of `d` values from `row(i, out)`, in batches.
template <typename RowFn>
std::unique_ptr<Store> Build(
    Precision precision, size_t m, size_t d, const Limits& limits,
    StorageBackend* storage, const RowFn& row,
    core::Similarity similarity = core::Similarity::kDot) {
  StoreSettings settings;
  settings.name = absl::StrCat("bench_", core::PrecisionName(precision));
  settings.dimension = static_cast<uint32_t>(d);
  settings.precision = precision;
  settings.retrieval.similarity = similarity;
  settings.retrieval.top_k = 1;
  auto store = std::make_unique<Store>(settings, limits, storage);
  for (size_t first = 0; first < m; first += limits.max_batch) {
    std::vector<Pattern> batch(std::min(limits.max_batch, m - first));
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i].values.resize(d);
      row(first + i, batch[i].values.data());
    }
    if (absl::Status s = store->Add(batch).status(); !s.ok()) {
      std::fprintf(stderr, "add: %s\n", s.ToString().c_str());
      std::abort();
    }
  }
  return store;
}

RetrieveResult Run(const Store& store, const std::vector<float>& queries,
                   size_t l, const Limits& limits,
                   const core::RetrievalOptions& options) {
  RetrieveRequest request;
  request.queries = queries;
  request.num_queries = l;
  request.path = PathChoice::kExact;
  absl::StatusOr<RetrieveResult> out =
      Retrieve(*store.view(), request, limits, options);
  if (!out.ok()) {
    std::fprintf(stderr, "retrieve: %s\n", out.status().ToString().c_str());
    std::abort();
  }
  return *std::move(out);
}

void Speed(size_t m, const core::RetrievalOptions& options, int reps) {
  constexpr size_t d = 784;
  const Limits limits = BenchLimits(m);
  EphemeralStorage storage;
  auto row = [](size_t i, float* out) {
    std::mt19937 rng(static_cast<uint32_t>(i));
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (size_t k = 0; k < d; ++k) out[k] = uniform(rng);
  };
  std::vector<std::unique_ptr<Store>> stores;
  std::vector<double> rss, bytes;
  for (Precision p : kPrecisions) {
    const size_t before = RssBytes();
    stores.push_back(Build(p, m, d, limits, &storage, row));
    rss.push_back(static_cast<double>(RssBytes() - before) / m);
    bytes.push_back(static_cast<double>(stores.back()->view()->memory_bytes()) /
                    m);
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(0.0f, 0.5f);
  for (size_t l : {size_t{1}, size_t{16}, size_t{256}}) {
    if (l > 1 && m > absl::GetFlag(FLAGS_batched_max)) continue;
    std::vector<float> queries(l * d);
    for (float& v : queries) v = uniform(rng);
    // Interleaved: one run of each store per round, so drift in the
    // machine's speed falls on every precision alike; medians per store.
    const int rounds = l == 1 ? reps : std::max(5, reps / 3);
    std::vector<std::vector<double>> ms(stores.size());
    for (int round = -1; round < rounds; ++round) {
      for (size_t i = 0; i < stores.size(); ++i) {
        const auto start = std::chrono::steady_clock::now();
        Run(*stores[i], queries, l, limits, options);
        const double t = std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - start)
                             .count();
        if (round >= 0) ms[i].push_back(t);
      }
    }
    double base = 0;
    for (size_t i = 0; i < stores.size(); ++i) {
      std::sort(ms[i].begin(), ms[i].end());
      const double median = ms[i][ms[i].size() / 2];
      if (i == 0) base = median;
      std::printf(
          "M=%-8zu L=%-4zu %-9s %9.2f ms  %5.2fx faster  RSS %6.0f B/pattern "
          "(%4.2fx)  memory_bytes %6.0f B/pattern (%4.2fx)\n",
          m, l, std::string(core::PrecisionName(kPrecisions[i])).c_str(),
          median, base / median, rss[i], rss[i] / rss[0], bytes[i],
          bytes[i] / bytes[0]);
    }
  }
}

void Error(const client::Matrix& images, size_t m,
           const core::RetrievalOptions& options, core::Similarity similarity) {
  const size_t d = images.cols;
  const Limits limits = BenchLimits(m);
  EphemeralStorage storage;
  // Which memories are queried: all, or a seeded sample of 2,000.
  std::vector<size_t> asked(m);
  for (size_t i = 0; i < m; ++i) asked[i] = i;
  if (m > 10000) {
    std::mt19937_64 rng(42);
    std::shuffle(asked.begin(), asked.end(), rng);
    asked.resize(2000);
  }
  const size_t l = asked.size();
  std::vector<float> targets(l * d), queries;
  for (size_t q = 0; q < l; ++q) {
    std::copy_n(images.data.begin() + asked[q] * d, d, targets.begin() + q * d);
  }
  queries = targets;
  core::Corrupt(core::Corruption::kDropout, 0.5f, 42, queries.data(), l, d);
  std::vector<float> f32_states;
  for (Precision p : kPrecisions) {
    std::unique_ptr<Store> store = Build(
        p, m, d, limits, &storage,
        [&](size_t i, float* out) {
          std::copy_n(images.data.begin() + i * d, d, out);
        },
        similarity);
    RetrieveResult out;
    std::vector<float> states;
    size_t hits = 0;
    for (size_t first = 0; first < l; first += 1024) {
      const size_t n = std::min<size_t>(1024, l - first);
      std::vector<float> part(queries.begin() + first * d,
                              queries.begin() + (first + n) * d);
      out = Run(*store, part, n, limits, options);
      states.insert(states.end(), out.states.begin(), out.states.end());
      for (size_t q = 0; q < n; ++q) {
        const std::vector<MatchedPattern>& best = out.matches[q];
        hits += !best.empty() && best[0].id == asked[first + q] + 1;
      }
    }
    double error = 0, deviation = 0;
    for (size_t q = 0; q < l; ++q) {
      for (size_t k = 0; k < d; ++k) {
        const double x = std::clamp(targets[q * d + k], 0.0f, 1.0f);
        const double y = std::clamp(states[q * d + k], 0.0f, 1.0f);
        error += (x - y) * (x - y);
      }
    }
    if (p == Precision::kFloat32) {
      f32_states = states;
    } else {
      for (size_t i = 0; i < states.size(); ++i) {
        deviation =
            std::max(deviation, double{std::fabs(states[i] - f32_states[i])});
      }
    }
    std::printf(
        "fashion M=%-6zu queries=%-5zu %-3s %-9s recall@1 %.4f  protocol "
        "error %.4f  max |x_hat - x_hat_float32| %.2e\n",
        m, l, std::string(core::SimilarityName(similarity)).c_str(),
        std::string(core::PrecisionName(p)).c_str(),
        static_cast<double>(hits) / l, error / l, deviation);
  }
}

// Fashion-MNIST's pixels as the protocol uses them: in [0, 1].
void ScaleToUnit(client::Matrix& images) {
  float max = 0;
  for (float v : images.data) max = std::max(max, v);
  if (max > 1.0f) {
    for (float& v : images.data) v /= 255.0f;
  }
}

int Main() {
  core::RetrievalOptions options;
  options.threads = absl::GetFlag(FLAGS_threads);
  if (!bench::UseKernelIsaFlag(absl::GetFlag(FLAGS_kernel_isa))) return 1;
  std::printf("# half kernels: %s\n",
              std::string(core::HalfKernelIsa()).c_str());
  for (const std::string& m : absl::GetFlag(FLAGS_sizes)) {
    Speed(std::stoul(m), options, absl::GetFlag(FLAGS_reps));
  }
  const std::vector<std::string> fashion = absl::GetFlag(FLAGS_fashion_sizes);
  if (fashion.empty()) return 0;
  absl::StatusOr<client::Matrix> images =
      client::ReadMatrix(absl::GetFlag(FLAGS_images));
  if (!images.ok()) {
    std::fprintf(stderr, "%s\n", images.status().ToString().c_str());
    return 1;
  }
  ScaleToUnit(*images);
  for (const std::string& m : fashion) {
    for (core::Similarity similarity :
         {core::Similarity::kDot, core::Similarity::kL2}) {
      Error(*images, std::min<size_t>(std::stoul(m), images->rows), options,
            similarity);
    }
  }
  return 0;
}

}  // namespace
}  // namespace engram::store

int main(int argc, char** argv) {
  engram::bench::Start(argc, argv);
  return engram::store::Main();
}

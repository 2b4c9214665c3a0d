// In-process exact retrieval on Fashion-MNIST through a real store, the way
// engramd runs it: L queries (the last L training images, scaled by 0.5, as
// ../shared/anchors/peer_speed.py does) over the first M images.
//
//   retrieve_fashion [--m=10000] [--l=256] [--reps=20] [--separation=softmax]
//                    [--similarity=dot] [--beta=1] [--threads=2]
//
// Prints one CSV row: m,l,separation,similarity,best_ms,median_ms,us_per_query
// and GFLOP/s of the two matrix products.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "client/matrix_io.h"
#include "server/core/blas.h"
#include "server/store/retrieve.h"
#include "server/store/store.h"

ABSL_FLAG(size_t, m, 10000, "Stored patterns.");
ABSL_FLAG(size_t, l, 256, "Queries per batch.");
ABSL_FLAG(int, reps, 20, "Timed repetitions (after one warm-up).");
ABSL_FLAG(std::string, separation, "softmax", "softmax, sparsemax, entmax15.");
ABSL_FLAG(std::string, similarity, "dot", "dot, l2, manhattan, cosine.");
ABSL_FLAG(float, beta, 1.0f, "Inverse temperature.");
ABSL_FLAG(int, threads, 2, "OpenBLAS threads.");
ABSL_FLAG(bool, header, false, "Print the CSV header first.");
ABSL_FLAG(std::string, images,
          "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
          "idx-ubyte images.");

namespace {

using engram::core::Separation;
using engram::core::Similarity;

int Run() {
  const size_t m = absl::GetFlag(FLAGS_m), l = absl::GetFlag(FLAGS_l);
  absl::StatusOr<engram::client::Matrix> images =
      engram::client::ReadMatrix(absl::GetFlag(FLAGS_images));
  if (!images.ok() || images->rows < m + l) {
    std::fprintf(stderr, "cannot load %zu + %zu images: %s\n", m, l,
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

  std::vector<double> ms;
  std::shared_ptr<const engram::store::StoreView> view = store.view();
  for (int rep = -1; rep < absl::GetFlag(FLAGS_reps); ++rep) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<engram::store::RetrieveResult> r =
        engram::store::Retrieve(*view, request, limits, {});
    const auto end = std::chrono::steady_clock::now();
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return 1;
    }
    if (rep >= 0) {
      ms.push_back(
          std::chrono::duration<double, std::milli>(end - start).count());
    }
  }
  std::sort(ms.begin(), ms.end());
  const double best = ms.front(), median = ms[ms.size() / 2];
  const double gflop = 2.0 * 2.0 * l * m * d / 1e9;
  if (absl::GetFlag(FLAGS_header)) {
    std::printf(
        "m,l,separation,similarity,best_ms,median_ms,us_per_query,gflops\n");
  }
  std::printf("%zu,%zu,%s,%s,%.3f,%.3f,%.2f,%.1f\n", m, l, sep.c_str(),
              sim.c_str(), best, median, best * 1e3 / l, gflop / (best / 1e3));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return Run();
}

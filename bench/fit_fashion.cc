// Stage I fit time on Fashion-MNIST, in process: M random training images
// (seeded), d = 784, the reference optimiser.
//
//   fit_fashion [--m=1000] [--epochs=100] [--loss=max|mean] [--batch=1024]
//
// Prints: m,loss,epochs,seconds,loss_before,loss_after
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "client/matrix_io.h"
#include "server/base/mutex.h"
#include "server/core/blas.h"
#include "server/core/cpu.h"
#include "server/core/uhop_fit.h"

ABSL_FLAG(size_t, m, 1000, "Patterns.");
ABSL_FLAG(uint32_t, epochs, 100, "Epochs.");
ABSL_FLAG(std::string, loss, "max", "max or mean.");
ABSL_FLAG(size_t, batch, 1024, "Minibatch size.");
ABSL_FLAG(int, threads, 2, "OpenBLAS threads.");
ABSL_FLAG(std::string, blas_coretype, "auto",
          "OpenBLAS kernel family, as engramd's flag.");
ABSL_FLAG(bool, describe, false, "Print the machine line first.");

int main(int argc, char** argv) {
  engram::SkipLockOrderChecks();
  absl::ParseCommandLine(argc, argv);
  using namespace engram;
  // The kernels and floating-point mode engramd's fit workers run with.
  core::UseBlasFamily(absl::GetFlag(FLAGS_blas_coretype), argv);
  core::FlushDenormals();
  if (absl::GetFlag(FLAGS_describe)) {
    std::printf("# machine: %s\n", core::DescribeMachine().c_str());
  }
  absl::StatusOr<client::Matrix> images = client::ReadMatrix(
      "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
  if (!images.ok()) return 1;
  core::blas::SetThreads(absl::GetFlag(FLAGS_threads));
  const size_t m = absl::GetFlag(FLAGS_m), d = images->cols;
  std::vector<size_t> order(images->rows);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(42));
  std::vector<float> x(m * d), norms(m, 0.0f);
  for (size_t i = 0; i < m; ++i) {
    std::copy_n(images->data.data() + order[i] * d, d, x.data() + i * d);
  }
  core::MemorySet set;
  set.dim = d;
  set.blocks.push_back({x.data(), norms.data(), m});
  core::FitOptions options;
  options.loss = absl::GetFlag(FLAGS_loss) == "mean"
                     ? core::SeparationLoss::kMean
                     : core::SeparationLoss::kMax;
  options.epochs = absl::GetFlag(FLAGS_epochs);
  options.batch_size = absl::GetFlag(FLAGS_batch);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<core::FitResult> fit = core::FitFeatureMap(
      set, core::FeatureMap::RandomNormal(d, d, 42), options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  if (!fit.ok()) {
    std::fprintf(stderr, "%s\n", fit.status().ToString().c_str());
    return 1;
  }
  std::printf("%zu,%s,%u,%.3f,%.4f,%.4f\n", m,
              absl::GetFlag(FLAGS_loss).c_str(), fit->epochs, seconds,
              fit->loss_before, fit->loss_after);
  return 0;
}

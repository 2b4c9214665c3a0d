// What the in-process store benchmarks share: the machine line every
// benchmark prints first (after choosing the BLAS kernels as engramd does),
// and the median of repeated runs.
#ifndef ENGRAM_BENCH_BENCH_MAIN_H_
#define ENGRAM_BENCH_BENCH_MAIN_H_

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "absl/flags/parse.h"
#include "server/core/blas.h"
#include "server/core/cpu.h"

namespace engram::bench {

// Parses the flags, picks the BLAS kernels and flushes denormals as engramd
// does, and prints the machine.
inline void Start(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  core::UseBlasFamily("auto", argv);
  core::FlushDenormals();
  std::printf("# machine: %s\n# blas_family: %s\n",
              core::DescribeMachine().c_str(), core::blas::CoreName().c_str());
}

// The median wall time of `reps` runs, in ms, after one warm-up run.
inline double MedianMs(int reps, const std::function<void()>& run) {
  using Clock = std::chrono::steady_clock;
  std::vector<double> ms;
  run();
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    run();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace engram::bench

#endif  // ENGRAM_BENCH_BENCH_MAIN_H_

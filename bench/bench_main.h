// What the in-process store benchmarks share: the machine line every
// benchmark prints first (after choosing the BLAS kernels as engramd does),
// the --kernel_isa switch, and the median of repeated runs.
#ifndef ENGRAM_BENCH_BENCH_MAIN_H_
#define ENGRAM_BENCH_BENCH_MAIN_H_

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "server/base/mutex.h"
#include "server/core/blas.h"
#include "server/core/cpu.h"

namespace engram::bench {

// Parses the flags, picks the BLAS kernels, flushes denormals and skips
// Abseil's lock-order checks as engramd does, and prints the machine.
inline void Start(int argc, char** argv) {
  SkipLockOrderChecks();
  absl::ParseCommandLine(argc, argv);
  core::UseBlasFamily("auto", argv);
  core::FlushDenormals();
  std::printf("# machine: %s\n# blas_family: %s\n",
              core::DescribeMachine().c_str(), core::blas::CoreName().c_str());
}

// Runs engram's own kernels with the instruction set a --kernel_isa flag
// names (empty: the best the CPU has); false, said on stderr, if this CPU
// cannot.
inline bool UseKernelIsaFlag(const std::string& isa) {
  if (isa.empty() || core::UseKernelIsa(isa)) return true;
  std::fprintf(stderr, "--kernel_isa=%s: not available here\n", isa.c_str());
  return false;
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

// Runs part of a test with engram's own kernels of one instruction set
// (UseKernelIsa), and the set they ran with before again afterwards.
#ifndef ENGRAM_TESTS_CORE_KERNEL_ISA_H_
#define ENGRAM_TESTS_CORE_KERNEL_ISA_H_

#include "server/core/cpu.h"

namespace engram::core {

// The instruction sets tests run the kernels with, where the CPU has them.
inline constexpr const char* kKernelIsas[] = {"portable", "avx2", "avx512"};

class ScopedKernelIsa {
 public:
  // ok() is false (and nothing changed) where the CPU lacks `isa`.
  explicit ScopedKernelIsa(const char* isa)
      : before_(KernelIsa()), ok_(UseKernelIsa(isa)) {}
  ~ScopedKernelIsa() { UseKernelIsa(before_); }
  ScopedKernelIsa(const ScopedKernelIsa&) = delete;
  ScopedKernelIsa& operator=(const ScopedKernelIsa&) = delete;

  bool ok() const { return ok_; }

 private:
  const absl::string_view before_;  // Names are static strings.
  const bool ok_;
};

}  // namespace engram::core

#endif  // ENGRAM_TESTS_CORE_KERNEL_ISA_H_

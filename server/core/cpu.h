// What the CPU can do, and the OpenBLAS kernel family that uses it best.
//
//   const CpuFeatures cpu = DetectCpu();
//   const BlasFamily family = ChooseBlasFamily(cpu);
//   // family.name == "Cooperlake", family.reason == "AVX-512 with BF16"
//
// OpenBLAS (0.3.21 in Debian 12) picks its kernels from the CPU model, and a
// model it does not know (a newer one, or a virtual machine that hides it)
// gets its oldest kernels: Sapphire Rapids runs Prescott (SSE3) kernels, 10x
// slower. engram chooses from the instruction sets the CPU and the operating
// system actually offer, whatever the model, and OpenBLAS's guess and an
// inherited OPENBLAS_CORETYPE do not matter.
//
// Thread-safe: pure functions, and DetectCpu reads CPUID only.
#ifndef ENGRAM_SERVER_CORE_CPU_H_
#define ENGRAM_SERVER_CORE_CPU_H_

#include <string>

#include "absl/strings/string_view.h"

namespace engram::core {

struct CpuFeatures {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD", ...
  std::string model;   // The brand string, e.g. "Intel(R) Xeon(R) ..."
  int cores = 1;       // Online logical CPUs.
  bool sse3 = false, ssse3 = false, sse4_2 = false;
  bool avx = false, fma = false, avx2 = false, f16c = false;
  bool avx512f = false, avx512dq = false, avx512cd = false, avx512bw = false,
       avx512vl = false;
  bool avx512_vnni = false, avx512_bf16 = false, avx512_fp16 = false;
  bool amx_bf16 = false;
  // The operating system saves the YMM (AVX) and ZMM/opmask (AVX-512)
  // registers across context switches; without it the instructions fault.
  bool os_avx = false, os_avx512 = false;
};

// Reads CPUID and XGETBV on x86-64; elsewhere, all false.
CpuFeatures DetectCpu();

struct BlasFamily {
  std::string name;    // An OPENBLAS_CORETYPE value, e.g. "SkylakeX".
  std::string reason;  // Why, in a few words, for the log.
};

// The best kernel family OpenBLAS 0.3.21 has for these instruction sets:
// AVX-512 (F, DQ, CD, BW, VL) with BF16 -> Cooperlake, without -> SkylakeX;
// AVX2 and FMA -> Zen on AMD, Haswell otherwise; AVX -> Sandybridge;
// SSE4.2 -> Nehalem; SSSE3 -> Core2; else Prescott.
BlasFamily ChooseBlasFamily(const CpuFeatures& cpu);

// Makes the process run with the `requested` kernel family: "auto"
// (ChooseBlasFamily), "default" (OpenBLAS's own choice) or a family name.
// OpenBLAS reads OPENBLAS_CORETYPE once, when it loads, so this sets it and
// executes the program again with the same arguments; it returns when no
// (further) execution is needed. Call it first in main, before any thread
// or file exists.
void UseBlasFamily(const std::string& requested, char** argv);

// The family the loaded OpenBLAS runs and why, for logs and benchmark
// output: "SkylakeX (auto: AVX-512; OpenBLAS alone picks Prescott)".
std::string BlasFamilyReport();

// One line for benchmark output: CPU model, cores, SIMD, BLAS family.
std::string DescribeMachine();

// The instruction sets as a short list ("AVX-512 (BF16, FP16, VNNI)").
std::string DescribeSimd(const CpuFeatures& cpu);

// Makes engram's own vector kernels (the loops around the products, the
// bfloat16 / float16 conversions and kernels) use `isa` ("avx512", "avx2"
// or "portable") instead of the best the CPU has; false (nothing changed) if
// the CPU lacks it. For tests and benchmarks, before any retrieval runs.
bool UseKernelIsa(absl::string_view isa);

// The instruction set those kernels run with: "avx512", "avx2" or
// "portable".
absl::string_view KernelIsa();

// Sets flush-to-zero and denormals-are-zero for the calling thread (threads
// inherit it from the thread that creates them). Softmax weights underflow
// into denormal floats, and every product with one takes the CPU's slow
// path (measured: 30% of batched retrieval time); flushed to 0 they change
// no result beyond float rounding, as they are below 1.2e-38.
void FlushDenormals();

}  // namespace engram::core

#endif  // ENGRAM_SERVER_CORE_CPU_H_

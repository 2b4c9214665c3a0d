// The instruction sets engram's own vector kernels are written for (the
// loops around the products in vector_loops, the bfloat16 / float16
// conversions and kernels in precision), and the one they all run with: the
// best this CPU and its operating system offer, unless a test or a
// benchmark chose another (UseKernelIsa in cpu.h). Internal to server/core.
//
// Thread-safe.
#ifndef ENGRAM_SERVER_CORE_INTERNAL_ISA_H_
#define ENGRAM_SERVER_CORE_INTERNAL_ISA_H_

#include "absl/strings/string_view.h"

namespace engram::core::internal {

// kAvx2 means AVX2 with FMA and F16C; kAvx512 AVX-512F (with AVX2 too).
enum class Isa { kPortable, kAvx2, kAvx512 };

// Whether this CPU and its operating system run `isa`'s instructions.
bool Supported(Isa isa);

// The instruction set the kernels run with.
Isa CurrentIsa();

// "portable", "avx2", "avx512".
absl::string_view IsaName(Isa isa);

}  // namespace engram::core::internal

#endif  // ENGRAM_SERVER_CORE_INTERNAL_ISA_H_

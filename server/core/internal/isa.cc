#include "server/core/internal/isa.h"

#include <atomic>

#include "server/core/cpu.h"

namespace engram::core {
namespace internal {
namespace {

constexpr int kUnset = -1;
std::atomic<int> chosen{kUnset};

Isa Best() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (Supported(isa)) return isa;
  }
  return Isa::kPortable;
}

}  // namespace

bool Supported(Isa isa) {
#if defined(__x86_64__)
  static const CpuFeatures cpu = DetectCpu();
  switch (isa) {
    case Isa::kAvx512:
      return cpu.avx512f && cpu.os_avx512 && Supported(Isa::kAvx2);
    case Isa::kAvx2:
      return cpu.avx2 && cpu.fma && cpu.f16c && cpu.os_avx;
    case Isa::kPortable:
      return true;
  }
#endif
  return isa == Isa::kPortable;
}

Isa CurrentIsa() {
  int isa = chosen.load(std::memory_order_relaxed);
  if (isa == kUnset) {
    isa = static_cast<int>(Best());
    chosen.store(isa, std::memory_order_relaxed);
  }
  return static_cast<Isa>(isa);
}

absl::string_view IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kPortable:
      break;
  }
  return "portable";
}

}  // namespace internal

absl::string_view KernelIsa() {
  return internal::IsaName(internal::CurrentIsa());
}

bool UseKernelIsa(absl::string_view name) {
  for (internal::Isa isa : {internal::Isa::kPortable, internal::Isa::kAvx2,
                            internal::Isa::kAvx512}) {
    if (internal::IsaName(isa) == name) {
      if (!internal::Supported(isa)) return false;
      internal::chosen.store(static_cast<int>(isa), std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

}  // namespace engram::core

#include "server/core/cpu.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/core/blas.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace engram::core {

CpuFeatures DetectCpu() {
  CpuFeatures cpu;
  cpu.cores = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
#if defined(__x86_64__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return cpu;
  const unsigned max_leaf = a;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  cpu.vendor = vendor;
  __get_cpuid(1, &a, &b, &c, &d);
  cpu.sse3 = c & bit_SSE3;
  cpu.ssse3 = c & bit_SSSE3;
  cpu.sse4_2 = c & bit_SSE4_2;
  cpu.fma = c & bit_FMA;
  cpu.avx = c & bit_AVX;
  cpu.f16c = c & bit_F16C;
  const bool osxsave = c & bit_OSXSAVE;
  if (osxsave) {
    unsigned lo = 0, hi = 0;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    cpu.os_avx = (lo & 0x6) == 0x6;       // XMM and YMM state.
    cpu.os_avx512 = (lo & 0xE6) == 0xE6;  // ...and opmask, ZMM.
  }
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    cpu.avx2 = b & bit_AVX2;
    cpu.avx512f = b & bit_AVX512F;
    cpu.avx512dq = b & bit_AVX512DQ;
    cpu.avx512cd = b & bit_AVX512CD;
    cpu.avx512bw = b & bit_AVX512BW;
    cpu.avx512vl = b & bit_AVX512VL;
    cpu.avx512_vnni = c & (1u << 11);
    cpu.avx512_fp16 = d & (1u << 23);
    cpu.amx_bf16 = d & (1u << 22);
    __cpuid_count(7, 1, a, b, c, d);
    cpu.avx512_bf16 = a & (1u << 5);
  }
  unsigned ext = 0;
  __get_cpuid(0x80000000, &ext, &b, &c, &d);
  if (ext >= 0x80000004) {
    unsigned brand[12];
    for (unsigned leaf = 0; leaf < 3; ++leaf) {
      __get_cpuid(0x80000002 + leaf, &brand[4 * leaf], &brand[4 * leaf + 1],
                  &brand[4 * leaf + 2], &brand[4 * leaf + 3]);
    }
    char text[49] = {};
    std::memcpy(text, brand, 48);
    cpu.model = std::string(absl::StripAsciiWhitespace(text));
  }
#endif
  return cpu;
}

BlasFamily ChooseBlasFamily(const CpuFeatures& cpu) {
  const bool avx = cpu.avx && cpu.os_avx;
  const bool avx512 = avx && cpu.os_avx512 && cpu.avx512f && cpu.avx512dq &&
                      cpu.avx512cd && cpu.avx512bw && cpu.avx512vl;
  if (avx512 && cpu.avx512_bf16) return {"Cooperlake", "AVX-512 with BF16"};
  if (avx512) return {"SkylakeX", "AVX-512"};
  if (avx && cpu.avx2 && cpu.fma) {
    if (cpu.vendor == "AuthenticAMD" || cpu.vendor == "HygonGenuine") {
      return {"Zen", "AVX2 and FMA, AMD"};
    }
    return {"Haswell", "AVX2 and FMA"};
  }
  if (avx) return {"Sandybridge", "AVX"};
  if (cpu.sse4_2) return {"Nehalem", "SSE4.2"};
  if (cpu.ssse3) return {"Core2", "SSSE3"};
  return {"Prescott", "SSE3 at most"};
}

std::string DescribeSimd(const CpuFeatures& cpu) {
  const BlasFamily family = ChooseBlasFamily(cpu);
  std::vector<std::string> extras;
  if (cpu.avx512_bf16) extras.push_back("BF16");
  if (cpu.avx512_fp16) extras.push_back("FP16");
  if (cpu.avx512_vnni) extras.push_back("VNNI");
  if (cpu.amx_bf16) extras.push_back("AMX");
  if (family.name == "Cooperlake" || family.name == "SkylakeX") {
    return extras.empty() ? "AVX-512"
                          : "AVX-512 (" + absl::StrJoin(extras, ", ") + ")";
  }
  if (family.name == "Haswell" || family.name == "Zen") return "AVX2, FMA";
  if (family.name == "Sandybridge") return "AVX";
  return cpu.sse4_2 ? "SSE4.2" : cpu.ssse3 ? "SSSE3" : "SSE3";
}

namespace {

// Carries the choice across the re-execution, for BlasFamilyReport.
constexpr char kChoiceVariable[] = "ENGRAM_BLAS_CHOICE";

}  // namespace

void UseBlasFamily(const std::string& requested, char** argv) {
  if (std::getenv(kChoiceVariable) != nullptr) return;  // Already chosen.
  const char* inherited = std::getenv("OPENBLAS_CORETYPE");
  std::string wanted, why;
  if (requested == "default") {
    why = "default: OpenBLAS's own choice";
  } else if (requested == "auto") {
    const BlasFamily family = ChooseBlasFamily(DetectCpu());
    wanted = family.name;
    why = absl::StrCat("auto: ", family.reason);
  } else {
    wanted = requested;
    why = "as requested";
  }
  // The library is loaded already: with no variable inherited, it shows
  // what OpenBLAS picks alone.
  if (inherited == nullptr) {
    absl::StrAppend(&why, "; OpenBLAS alone picks ", blas::CoreName());
  } else if (wanted != inherited) {
    absl::StrAppend(&why,
                    "; replaces the inherited OPENBLAS_CORETYPE=", inherited);
  }
  setenv(kChoiceVariable, why.c_str(), 1);
  if (wanted == (inherited ? inherited : "")) return;
  if (wanted.empty()) {
    unsetenv("OPENBLAS_CORETYPE");
  } else {
    setenv("OPENBLAS_CORETYPE", wanted.c_str(), 1);
  }
  // Through the program's own path, not /proc/self/exe, so the process keeps
  // its name (ps, pkill, top show "engramd", not "exe").
  char path[4096];
  const ssize_t length = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (length > 0) {
    path[length] = '\0';
    execv(path, argv);
  }
  // If that fails, run on with the library as loaded; the report says so.
  setenv(kChoiceVariable,
         absl::StrCat(why, "; re-execution failed, kept ", blas::CoreName())
             .c_str(),
         1);
}

std::string BlasFamilyReport() {
  const char* why = std::getenv(kChoiceVariable);
  return absl::StrCat(blas::CoreName(), " (",
                      why ? why : "OpenBLAS's own choice", ")");
}

std::string DescribeMachine() {
  const CpuFeatures cpu = DetectCpu();
  return absl::StrCat(cpu.model.empty() ? cpu.vendor : cpu.model, ", ",
                      cpu.cores, " cores, ", DescribeSimd(cpu),
                      "; BLAS kernels ", BlasFamilyReport());
}

void FlushDenormals() {
#if defined(__x86_64__)
  _mm_setcsr(_mm_getcsr() | 0x8040);  // FTZ (bit 15) and DAZ (bit 6).
#endif
}

}  // namespace engram::core

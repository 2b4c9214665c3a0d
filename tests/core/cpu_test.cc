#include "server/core/cpu.h"

#include <string>

#include "gtest/gtest.h"

namespace engram::core {
namespace {

// A CPU with the given features, its operating system saving every register
// file it has.
CpuFeatures Cpu(const std::string& vendor,
                std::initializer_list<bool CpuFeatures::*> features) {
  CpuFeatures cpu;
  cpu.vendor = vendor;
  for (bool CpuFeatures::*f : features) cpu.*f = true;
  cpu.os_avx = cpu.avx;
  cpu.os_avx512 = cpu.avx512f;
  return cpu;
}

using F = CpuFeatures;

TEST(BlasFamilyTest, FollowsTheInstructionSetsNotTheModel) {
  const auto avx512 = {&F::sse3,     &F::ssse3,    &F::sse4_2,  &F::avx,
                       &F::fma,      &F::avx2,     &F::avx512f, &F::avx512dq,
                       &F::avx512cd, &F::avx512bw, &F::avx512vl};
  struct Case {
    const char* what;
    CpuFeatures cpu;
    const char* family;
  } cases[] = {
      {"Sapphire Rapids (OpenBLAS 0.3.21 guesses Prescott)",
       Cpu("GenuineIntel",
           {&F::sse3, &F::ssse3, &F::sse4_2, &F::avx, &F::fma, &F::avx2,
            &F::avx512f, &F::avx512dq, &F::avx512cd, &F::avx512bw, &F::avx512vl,
            &F::avx512_vnni, &F::avx512_bf16, &F::avx512_fp16, &F::amx_bf16}),
       "Cooperlake"},
      {"Zen 4/5 (AVX-512 with BF16)",
       Cpu("AuthenticAMD", {&F::sse3, &F::ssse3, &F::sse4_2, &F::avx, &F::fma,
                            &F::avx2, &F::avx512f, &F::avx512dq, &F::avx512cd,
                            &F::avx512bw, &F::avx512vl, &F::avx512_bf16}),
       "Cooperlake"},
      {"Skylake-SP / Ice Lake (AVX-512, no BF16)", Cpu("GenuineIntel", avx512),
       "SkylakeX"},
      {"Haswell .. Alder Lake (AVX2)",
       Cpu("GenuineIntel",
           {&F::sse3, &F::ssse3, &F::sse4_2, &F::avx, &F::fma, &F::avx2}),
       "Haswell"},
      {"Zen 1-3 (AVX2)",
       Cpu("AuthenticAMD",
           {&F::sse3, &F::ssse3, &F::sse4_2, &F::avx, &F::fma, &F::avx2}),
       "Zen"},
      {"Sandy Bridge (AVX)",
       Cpu("GenuineIntel", {&F::sse3, &F::ssse3, &F::sse4_2, &F::avx}),
       "Sandybridge"},
      {"Nehalem (SSE4.2)",
       Cpu("GenuineIntel", {&F::sse3, &F::ssse3, &F::sse4_2}), "Nehalem"},
      {"Core 2 (SSSE3)", Cpu("GenuineIntel", {&F::sse3, &F::ssse3}), "Core2"},
      {"nothing known", Cpu("", {}), "Prescott"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ChooseBlasFamily(c.cpu).name, c.family) << c.what;
    EXPECT_FALSE(ChooseBlasFamily(c.cpu).reason.empty()) << c.what;
  }
}

TEST(BlasFamilyTest, NeedsTheOperatingSystemToSaveTheRegisters) {
  CpuFeatures cpu =
      Cpu("GenuineIntel", {&F::sse3, &F::ssse3, &F::sse4_2, &F::avx, &F::fma,
                           &F::avx2, &F::avx512f, &F::avx512dq, &F::avx512cd,
                           &F::avx512bw, &F::avx512vl});
  cpu.os_avx512 = false;  // A kernel or hypervisor without ZMM state.
  EXPECT_EQ(ChooseBlasFamily(cpu).name, "Haswell");
  cpu.os_avx = false;
  EXPECT_EQ(ChooseBlasFamily(cpu).name, "Nehalem");
}

TEST(BlasFamilyTest, AvxFiveTwelveNeedsEveryPartSkylakeXUses) {
  CpuFeatures cpu =
      Cpu("GenuineIntel", {&F::sse3, &F::ssse3, &F::sse4_2, &F::avx, &F::fma,
                           &F::avx2, &F::avx512f});  // Knights Landing-like.
  EXPECT_EQ(ChooseBlasFamily(cpu).name, "Haswell");
}

TEST(BlasFamilyTest, ThisMachineGetsAFamilyAndADescription) {
  const CpuFeatures cpu = DetectCpu();
  EXPECT_GE(cpu.cores, 1);
  EXPECT_FALSE(ChooseBlasFamily(cpu).name.empty());
  EXPECT_NE(DescribeMachine().find("BLAS kernels"), std::string::npos);
}

// The kernels run the best set the CPU has unless told otherwise; an
// unknown name or a set the CPU lacks changes nothing.
TEST(KernelIsaTest, ChoosesOnlyWhatTheCpuRuns) {
  const CpuFeatures cpu = DetectCpu();
  const std::string best = std::string(KernelIsa());
  const bool avx2 = cpu.avx2 && cpu.fma && cpu.f16c && cpu.os_avx;
  const bool avx512 = avx2 && cpu.avx512f && cpu.os_avx512;
  EXPECT_EQ(best, avx512 ? "avx512" : avx2 ? "avx2" : "portable");
  EXPECT_FALSE(UseKernelIsa("sse9"));
  EXPECT_EQ(KernelIsa(), best);
  EXPECT_TRUE(UseKernelIsa("portable"));
  EXPECT_EQ(KernelIsa(), "portable");
  EXPECT_EQ(UseKernelIsa("avx2"), avx2);
  EXPECT_EQ(KernelIsa(), avx2 ? "avx2" : "portable");
  EXPECT_EQ(UseKernelIsa("avx512"), avx512);
  EXPECT_TRUE(UseKernelIsa(best));
  EXPECT_EQ(KernelIsa(), best);
}

}  // namespace
}  // namespace engram::core

// Which instruction sets this CPU (and OS) support, read once with cpuid. The environment
// variable LLMCORE_CPU_ISA=scalar|avx2|avx512|amx caps the choice (tests use it to run every path).
#pragma once
#include <string>

#include "backends/cpu/gemm.h"

namespace llmcore::cpu {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512bf16 = false;
  // AMX-TILE + AMX-BF16 reported, the OS enables the tile state in XCR0, and the kernel granted
  // this process its use (arch_prctl ARCH_REQ_XCOMP_PERM; Linux >= 5.16).
  bool amx_bf16 = false;
  // Vendor and cpuid family (base + extended) pick between kernel variants measured per CPU.
  bool intel = false;  // GenuineIntel
  bool amd = false;    // AuthenticAMD: family 0x17 Zen 1-2, 0x19 Zen 3-4, 0x1A Zen 5
  int family = 0;
};

const CpuFeatures& cpu_features();
Isa best_isa();                      // highest Isa the CPU supports, capped by LLMCORE_CPU_ISA
bool isa_supported(Isa isa);
std::string cpu_features_string();   // "avx2 fma f16c" etc.

}  // namespace llmcore::cpu

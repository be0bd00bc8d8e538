// CPU feature detection with cpuid + xgetbv. A feature counts only if the CPU reports it AND the
// OS saves the register state it needs (XCR0): YMM state for AVX/AVX2/FMA/F16C, opmask + ZMM
// state for AVX-512.
#include "backends/cpu/cpu_features.h"

#include <cctype>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define LLMCORE_X86 1
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace llmcore::cpu {

namespace {

#ifdef LLMCORE_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  // xgetbv with ecx = 0; encoded by hand so this file needs no -mxsave.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

// Linux keeps the AMX tile data state off until a process asks for it; without the grant the
// first tile instruction faults (SIGILL).
bool request_amx_permission() {
#if defined(__linux__) && defined(__x86_64__) && defined(SYS_arch_prctl)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

CpuFeatures detect() {
  CpuFeatures f;
#ifdef LLMCORE_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  f.intel = b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;  // "Genu" "ineI" "ntel"
  f.amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;    // "Auth" "enti" "cAMD"
  if (max_leaf < 1) return f;
  __cpuid(1, a, b, c, d);
  const int base_family = int((a >> 8) & 0xf);
  f.family = base_family == 0xf ? base_family + int((a >> 20) & 0xff) : base_family;
  const bool osxsave = (c >> 27) & 1;
  const bool avx = (c >> 28) & 1;
  const bool fma = (c >> 12) & 1;
  const bool f16c = (c >> 29) & 1;
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
  const bool os_zmm = os_ymm && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  if (!os_ymm) return f;
  f.fma = fma;
  f.f16c = f16c;
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned max_sub7 = a;
    f.avx2 = (b >> 5) & 1;
    if (os_zmm) {
      f.avx512f = (b >> 16) & 1;
      f.avx512dq = (b >> 17) & 1;
      f.avx512bw = (b >> 30) & 1;
      f.avx512vl = (b >> 31) & 1;
      const bool amx_tile = (d >> 24) & 1, amx_bf16 = (d >> 22) & 1;
      const bool os_tiles = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA
      if (max_sub7 >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        f.avx512bf16 = f.avx512f && ((a >> 5) & 1);
      }
      f.amx_bf16 = f.avx512bf16 && amx_tile && amx_bf16 && os_tiles && request_amx_permission();
    }
  }
#endif
  return f;
}

bool hw_supports(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return f.avx2 && f.fma && f.f16c;
    case Isa::Avx512:
      // The AVX-512 kernels are also built with -mfma -mf16c.
      return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c && f.avx2;
    case Isa::Amx: return hw_supports(Isa::Avx512) && f.amx_bf16;
  }
  return false;
}

// LLMCORE_CPU_ISA caps the choice; unset or unknown values mean no cap. Read on every call so a
// test can change it in-process.
Isa env_cap() {
  const char* v = std::getenv("LLMCORE_CPU_ISA");
  if (!v || !*v) return Isa::Amx;
  char buf[16] = {0};
  size_t i = 0;
  for (; v[i] && i + 1 < sizeof buf; ++i) buf[i] = char(std::tolower(static_cast<unsigned char>(v[i])));
  if (v[i]) return Isa::Amx;  // too long: not one of ours
  if (!std::strcmp(buf, "scalar")) return Isa::Scalar;
  if (!std::strcmp(buf, "avx2")) return Isa::Avx2;
  if (!std::strcmp(buf, "avx512")) return Isa::Avx512;
  return Isa::Amx;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Amx: return "amx";
  }
  return "?";
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool isa_supported(Isa isa) { return hw_supports(isa); }

Isa best_isa() {
  const Isa cap = env_cap();
  if (cap >= Isa::Amx && hw_supports(Isa::Amx)) return Isa::Amx;
  if (cap >= Isa::Avx512 && hw_supports(Isa::Avx512)) return Isa::Avx512;
  if (cap >= Isa::Avx2 && hw_supports(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

std::string cpu_features_string() {
  const CpuFeatures& f = cpu_features();
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ' ';
    s += name;
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.f16c, "f16c");
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512vl, "avx512vl");
  add(f.avx512dq, "avx512dq");
  add(f.avx512bf16, "avx512bf16");
  add(f.amx_bf16, "amx-bf16");
  if (s.empty()) s = "baseline";
  return s;
}

}  // namespace llmcore::cpu

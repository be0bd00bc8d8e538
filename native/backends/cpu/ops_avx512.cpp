// AVX-512 build of the attention kernel (attention_avx.inc; its FMA loops on 16-lane registers,
// same bits as the AVX2 build). Built with the AVX-512 flags (native/sources/avx512.txt); called
// only when cpu_features() reports AVX-512.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "backends/cpu/ops_kernels.h"
#include "backends/cpu/simd_math_avx2.h"

namespace llmcore::cpu::avx512 {

#include "backends/cpu/attention_avx.inc"

}  // namespace llmcore::cpu::avx512

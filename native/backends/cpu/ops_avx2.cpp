// AVX2+FMA kernels for the non-GEMM ops: layernorm and attention. Built with -mavx2 -mfma
// (native/sources/avx2.txt); see ops_ref.cpp for the plain versions they must match.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "backends/cpu/ops_kernels.h"
#include "backends/cpu/simd_math_avx2.h"

namespace llmcore::cpu::avx2 {

// Sum of a[0..n) in a fixed order: 8 lanes in 2 accumulators, then the tail.
static inline float sum_f32(const float* a, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a + i + 8));
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
  float s = hsum256_ps(_mm256_add_ps(s0, s1));
  for (; i < n; i++) s += a[i];
  return s;
}

void layernorm_rows(const float* x, int M, int64_t C, const float* gamma, const float* beta,
                    float eps, float* out) {
  for (int m = 0; m < M; m++) {
    const float* row = x + m * C;
    float* dst = out + m * C;
    const float mean = sum_f32(row, C) / float(C);
    const __m256 vmean = _mm256_set1_ps(mean);
    __m256 acc = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(row + c), vmean);
      acc = _mm256_fmadd_ps(d, d, acc);
    }
    float var = hsum256_ps(acc);
    for (; c < C; c++) var += (row[c] - mean) * (row[c] - mean);
    const float rstd = 1.0f / std::sqrt(var / float(C) + eps);
    const __m256 vrstd = _mm256_set1_ps(rstd);
    c = 0;
    for (; c + 8 <= C; c += 8) {
      const __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(row + c), vmean), vrstd);
      _mm256_storeu_ps(dst + c, _mm256_fmadd_ps(n, _mm256_loadu_ps(gamma + c), _mm256_loadu_ps(beta + c)));
    }
    for (; c < C; c++) dst[c] = (row[c] - mean) * rstd * gamma[c] + beta[c];
  }
}

#include "backends/cpu/attention_avx.inc"  // attention_head_rows (shared with ops_avx512.cpp)

// f16 as the reference stores it (ops_ref.h kv_put): clamped to +-65504 with NaN kept (minps and
// maxps return their second operand when either is NaN), then rounded to nearest even.
static inline __m128i to_f16x8(__m256 v) {
  v = _mm256_max_ps(_mm256_set1_ps(-65504.0f), _mm256_min_ps(_mm256_set1_ps(65504.0f), v));
  return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
}
static inline uint16_t to_f16(float x) {
  __m128 v = _mm_set_ss(x);
  v = _mm_max_ss(_mm_set_ss(-65504.0f), _mm_min_ss(_mm_set_ss(65504.0f), v));
  return uint16_t(_mm_extract_epi16(_mm_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT), 0));
}

// K into its transposed slots: 8 positions x 8 dims at a time through an 8 x 8 transpose (a
// prefill writes whole blocks: 16 slots of a dim are one cache line, in two stores instead of
// 16 scalar ones), the positions left over one by one. The values are copied (fp32) or
// rounded (f16) exactly as the scalar loop would.
static void store_k_transposed(const float* k_src, int64_t src_stride, int64_t n, int64_t HS,
                               void* k_head, int64_t slot0, bool f16) {
  int64_t i0 = 0;
  if (HS % 8 == 0)
    for (; i0 + 8 <= n; i0 += 8)
      for (int64_t d0 = 0; d0 < HS; d0 += 8) {
        __m256 v[8];
        for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(k_src + (i0 + i) * src_stride + d0);
        transpose8(v);  // v[j]: dim d0 + j of positions i0..i0 + 7
        for (int j = 0; j < 8; j++) {
          const int64_t at = (d0 + j) * 16 + slot0 + i0;
          if (f16)
            _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(k_head) + at), to_f16x8(v[j]));
          else
            _mm256_storeu_ps(static_cast<float*>(k_head) + at, v[j]);
        }
      }
  for (int64_t d = 0; d < HS; d++)
    for (int64_t i = i0; i < n; i++) {
      const float x = k_src[i * src_stride + d];
      if (f16) static_cast<uint16_t*>(k_head)[d * 16 + slot0 + i] = to_f16(x);
      else static_cast<float*>(k_head)[d * 16 + slot0 + i] = x;
    }
}

void kv_store_head(const float* k_src, const float* v_src, int64_t src_stride, int64_t n,
                   int64_t HS, void* k_head, void* v_head, int64_t slot0, bool f16) {
  store_k_transposed(k_src, src_stride, n, HS, k_head, slot0, f16);
  if (!f16) {
    float* v = static_cast<float*>(v_head);
    for (int64_t i = 0; i < n; i++)
      std::memcpy(v + (slot0 + i) * HS, v_src + i * src_stride, size_t(HS) * sizeof(float));
    return;
  }
  uint16_t* v = static_cast<uint16_t*>(v_head);
  for (int64_t i = 0; i < n; i++) {
    const float* src = v_src + i * src_stride;
    uint16_t* dst = v + (slot0 + i) * HS;
    int64_t d = 0;
    for (; d + 8 <= HS; d += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + d), to_f16x8(_mm256_loadu_ps(src + d)));
    for (; d < HS; d++) dst[d] = to_f16(src[d]);
  }
}

void logsumexp_rows(const float* x, int rows, int64_t n, double* out) {
  for (int r = 0; r < rows; r++) {
    const float* row = x + int64_t(r) * n;
    // max (_mm256_max_ps(v, m) returns m where v is NaN: NaNs are skipped, and flagged apart)
    __m256 vmax = _mm256_set1_ps(-INFINITY), vnan = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 v = _mm256_loadu_ps(row + j);
      vmax = _mm256_max_ps(v, vmax);
      vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
    float max = -INFINITY;
    for (float v : lanes) max = v > max ? v : max;
    bool nan = _mm256_movemask_ps(vnan) != 0;
    for (int64_t t = j; t < n; t++) {
      if (row[t] != row[t]) nan = true;
      else if (row[t] > max) max = row[t];
    }
    if (nan || std::isinf(max)) {
      out[r] = nan ? double(NAN) : double(max);
      continue;
    }
    // sum of exp(x - max) <= n, each term in (0, 1]: fp32 exps, summed in double
    const __m256 vm = _mm256_set1_ps(max);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (j = 0; j + 8 <= n; j += 8) {
      const __m256 e = exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
      s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
      s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    alignas(32) double d[4];
    _mm256_store_pd(d, _mm256_add_pd(s0, s1));
    double sum = (d[0] + d[1]) + (d[2] + d[3]);
    for (; j < n; j++) sum += std::exp(double(row[j]) - double(max));
    out[r] = double(max) + std::log(sum);
  }
}

}  // namespace llmcore::cpu::avx2

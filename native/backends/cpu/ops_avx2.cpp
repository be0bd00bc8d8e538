// AVX2+FMA kernels for the non-GEMM ops: layernorm and attention. Built with -mavx2 -mfma
// (native/sources/avx2.txt); see ops_ref.cpp for the plain versions they must match.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

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

static inline float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum256_ps(_mm256_add_ps(s0, s1));
  for (; i < n; i++) s += a[i] * b[i];
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

// dot_f32 for four keys at once: per key the very same operations in the same order (so each
// score is bitwise what dot_f32 gives), interleaved so the four FMA chains hide each other's
// latency.
static inline void dot4_f32(const float* q, const float* k0, const float* k1, const float* k2,
                            const float* k3, int64_t n, float* out) {
  const float* k[4] = {k0, k1, k2, k3};
  __m256 s0[4], s1[4];
  for (int j = 0; j < 4; j++) s0[j] = s1[j] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 qa = _mm256_loadu_ps(q + i), qb = _mm256_loadu_ps(q + i + 8);
    for (int j = 0; j < 4; j++) {
      s0[j] = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k[j] + i), s0[j]);
      s1[j] = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k[j] + i + 8), s1[j]);
    }
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 qa = _mm256_loadu_ps(q + i);
    for (int j = 0; j < 4; j++) s0[j] = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k[j] + i), s0[j]);
  }
  for (int j = 0; j < 4; j++) {
    float s = hsum256_ps(_mm256_add_ps(s0[j], s1[j]));
    for (int64_t t = i; t < n; t++) s += q[t] * k[j][t];
    out[j] = s;
  }
}

void attention_head_rows(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                         int64_t pos0, int n_rows, float* const* block_ptr, const int32_t* blocks,
                         int64_t k_off, int64_t v_off, float* scratch, float* out) {
  const float scale = 1.0f / std::sqrt(float(HS));
  constexpr int kMaxHS = 256;  // the backend checks HS <= 256 before calling
  float acc[kMaxHS];
  auto key = [&](int64_t t) { return block_ptr[blocks[t >> 4]] + k_off + (t & 15) * C + h * HS; };
  auto value = [&](int64_t t) { return block_ptr[blocks[t >> 4]] + v_off + (t & 15) * C + h * HS; };
  for (int r = 0; r < n_rows; r++) {
    const float* q = qkv + (row0 + r) * 3 * C + h * HS;
    const int64_t n_keys = pos0 + r + 1;
    // 1) scores and their max
    int64_t t = 0;
    for (; t + 4 <= n_keys; t += 4) dot4_f32(q, key(t), key(t + 1), key(t + 2), key(t + 3), HS, scratch + t);
    for (; t < n_keys; t++) scratch[t] = dot_f32(q, key(t), HS);
    float max_score = -INFINITY;
    for (t = 0; t < n_keys; t++) {
      scratch[t] *= scale;
      max_score = scratch[t] > max_score ? scratch[t] : max_score;
    }
    // 2) softmax numerators, in place
    const __m256 vmax = _mm256_set1_ps(max_score);
    t = 0;
    for (; t + 8 <= n_keys; t += 8)
      _mm256_storeu_ps(scratch + t, exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(scratch + t), vmax)));
    for (; t < n_keys; t++) scratch[t] = std::exp(scratch[t] - max_score);
    const float inv_sum = 1.0f / sum_f32(scratch, n_keys);
    // 3) weighted sum of values, in key order. GPT-2's head size 64 keeps the sums in registers;
    // both branches do the same FMAs in the same order.
    float* dst = out + (row0 + r) * C + h * HS;
    if (HS == 64) {
      __m256 a[8];
      for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
      for (t = 0; t < n_keys; t++) {
        const float* v = value(t);
        const __m256 p = _mm256_set1_ps(scratch[t]);
        for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * j), a[j]);
      }
      const __m256 inv = _mm256_set1_ps(inv_sum);
      for (int j = 0; j < 8; j++) _mm256_storeu_ps(dst + 8 * j, _mm256_mul_ps(a[j], inv));
      continue;
    }
    for (int64_t d = 0; d < HS; d++) acc[d] = 0.f;
    for (t = 0; t < n_keys; t++) {
      const float* v = value(t);
      const __m256 p = _mm256_set1_ps(scratch[t]);
      int64_t d = 0;
      for (; d + 8 <= HS; d += 8)
        _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(p, _mm256_loadu_ps(v + d), _mm256_loadu_ps(acc + d)));
      for (; d < HS; d++) acc[d] += scratch[t] * v[d];
    }
    for (int64_t d = 0; d < HS; d++) dst[d] = acc[d] * inv_sum;
  }
}

}  // namespace llmcore::cpu::avx2

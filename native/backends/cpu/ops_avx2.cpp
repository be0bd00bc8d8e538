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

// Where one head's K or V lives in the paged cache (layout in backend.h): block(b) is the head's
// 16 x HS elements in the sequence's block b; for V, position t's HS elements are at row(t).
// E is the cache's element type: float, or uint16_t for f16 (widened by load8).
namespace {
template <class E>
struct HeadRows {
  void* const* block_ptr;
  const int32_t* blocks;
  int64_t off;  // layer's K or V section + the head's part of it, in elements
  int64_t stride;
  const E* block(int64_t b) const { return static_cast<const E*>(block_ptr[blocks[b]]) + off; }
  const E* row(int64_t t) const { return block(t >> 4) + (t & 15) * stride; }
};
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
}  // namespace

// Attention scores, in register tiles, from K stored transposed in each block (kt[16 d + j] is
// dim d of the block's slot j). The score of query row q and key k is, whatever tile computes it:
// one FMA chain over d in increasing order from +0, then times 1/sqrt(HS). Whole blocks are
// scored; slots past the sequence's end (zeroed or stale) get scores that nobody reads.

// R rows x NB consecutive blocks (kt[i]: block i), 2 NB R <= 12 accumulators: each K load feeds
// R FMAs, each q broadcast 2 NB.
template <int R, int NB, class E>
static inline void scores_blocks(const float* const* q, const E* const* kt, int64_t HS,
                                 __m256 scale, __m256 (&s)[R][NB][2]) {
#pragma GCC unroll 6
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int i = 0; i < NB; i++) s[r][i][0] = s[r][i][1] = _mm256_setzero_ps();
  for (int64_t d = 0; d < HS; d++) {
    __m256 k[NB][2];
#pragma GCC unroll 4
    for (int i = 0; i < NB; i++) {
      k[i][0] = load8(kt[i] + 16 * d);
      k[i][1] = load8(kt[i] + 16 * d + 8);
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
      const __m256 qd = _mm256_broadcast_ss(q[r] + d);
#pragma GCC unroll 4
      for (int i = 0; i < NB; i++) {
        s[r][i][0] = _mm256_fmadd_ps(qd, k[i][0], s[r][i][0]);
        s[r][i][1] = _mm256_fmadd_ps(qd, k[i][1], s[r][i][1]);
      }
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int i = 0; i < NB; i++) {
      s[r][i][0] = _mm256_mul_ps(s[r][i][0], scale);
      s[r][i][1] = _mm256_mul_ps(s[r][i][1], scale);
    }
}

// 8 x 8 transpose: v[i] lane j -> v[j] lane i.
static inline void transpose8(__m256 (&v)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
  const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
  const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
  const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  v[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  v[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  v[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  v[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  v[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  v[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  v[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  v[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Scores of R rows for blocks [b, b + NB), written to the interleaved P (key t, row r at
// P[8 t + r]; lanes R..7 get zeros).
template <int R, int NB, class E>
static inline void scores_to_lanes(const float* const* q, const HeadRows<E>& keys, int64_t b,
                                   int64_t HS, __m256 scale, float* P) {
  const E* kt[NB];
  for (int i = 0; i < NB; i++) kt[i] = keys.block(b + i);
  __m256 s[R][NB][2];
  scores_blocks<R, NB, E>(q, kt, HS, scale, s);
#pragma GCC unroll 4
  for (int i = 0; i < NB; i++)
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256 v[8];
#pragma GCC unroll 8
      // (the clamped index keeps s[] in bounds in the branch not taken)
      for (int r = 0; r < 8; r++) v[r] = r < R ? s[r < R ? r : 0][i][h] : _mm256_setzero_ps();
      transpose8(v);
      float* dst = P + 8 * (16 * (b + i) + 8 * h);
#pragma GCC unroll 8
      for (int j = 0; j < 8; j++) _mm256_storeu_ps(dst + 8 * j, v[j]);
    }
}

// Scores of a lone row for blocks [b, b + NB), contiguous in p (key t at p[t]).
template <int NB, class E>
static inline void scores_to_row(const float* q, const HeadRows<E>& keys, int64_t b, int64_t HS,
                                 __m256 scale, float* p) {
  const E* kt[NB];
  for (int i = 0; i < NB; i++) kt[i] = keys.block(b + i);
  const float* const qs[1] = {q};
  __m256 s[1][NB][2];
  scores_blocks<1, NB, E>(qs, kt, HS, scale, s);
#pragma GCC unroll 4
  for (int i = 0; i < NB; i++) {
    _mm256_storeu_ps(p + 16 * (b + i), s[0][i][0]);
    _mm256_storeu_ps(p + 16 * (b + i) + 8, s[0][i][1]);
  }
}

// Calls f(t, row pointer) for t in [t0, t1), walking block by block.
template <class E, class F>
static inline void for_rows(const HeadRows<E>& rows, int64_t t0, int64_t t1, F&& f) {
  while (t0 < t1) {
    const int64_t end = t1 < ((t0 | 15) + 1) ? t1 : ((t0 | 15) + 1);
    const E* v = rows.row(t0);
    for (; t0 < end; t0++, v += rows.stride) f(t0, v);
  }
}

// Lane r on when r >= s (s = 0..8): the rows that still attend to a key in the causal triangle.
alignas(64) const int32_t kRowsFrom[16] = {0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1};
static inline __m256 rows_from(int64_t s) {
  return _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kRowsFrom + 8 - s)));
}

// Softmax convention, shared by attend_one_row (p contiguous) and attend_rows (lanes of the
// interleaved P) so that a row gives the same bits alone or in a tile: s -> exp256(s - max) for
// every key it attends to, their sum in key order from +0 (the +0 a tile adds past a row's last
// key changes nothing), then 1 / sum.

// dst_r[d, d + 8 NV) = inv_r * sum over t < n[r] of p_r[t] * v_t[d, d + 8 NV), for R rows
// sharing the V loads (n[r] = n[0] + r); p_r[t] at P[8 t + r] (R > 1) or P[t] (R = 1). Per
// output element: one FMA chain over t in increasing order from 0, then one multiply, the same
// for any R, NV or d split.
template <int NV, int R, class E>
static inline void weighted_values(const HeadRows<E>& values, int64_t d, const float* P, int64_t n0,
                                   float* const* dst, const float* inv) {
  constexpr int64_t kStep = R == 1 ? 1 : 8;
  // Fully unrolled (the pragmas) so acc[][] is indexed by constants and lives in registers.
  __m256 acc[R][NV];
#pragma GCC unroll 6
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) acc[r][j] = _mm256_setzero_ps();
  for_rows(values, 0, n0, [&](int64_t t, const E* v) {
    __m256 vv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) vv[j] = load8(v + d + 8 * j);
    const float* pt = P + t * kStep;
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
      const __m256 pr = _mm256_broadcast_ss(pt + r);
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) acc[r][j] = _mm256_fmadd_ps(pr, vv[j], acc[r][j]);
    }
  });
  // The causal triangle: row r's keys [n0, n0 + r).
#pragma GCC unroll 6
  for (int r = 1; r < R; r++)
    for (int64_t u = n0; u < n0 + r; u++) {
      const E* v = values.row(u) + d;
      const __m256 pr = _mm256_broadcast_ss(P + u * kStep + r);
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) acc[r][j] = _mm256_fmadd_ps(pr, load8(v + 8 * j), acc[r][j]);
    }
#pragma GCC unroll 6
  for (int r = 0; r < R; r++) {
    const __m256 s = _mm256_set1_ps(inv[r]);
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) _mm256_storeu_ps(dst[r] + d + 8 * j, _mm256_mul_ps(acc[r][j], s));
  }
}

// One query row (decode, or a tile's last row): p contiguous.
template <class E>
static inline void attend_one_row(const float* q, const HeadRows<E>& keys, const HeadRows<E>& values,
                                  int64_t n, int64_t HS, float* p, float* dst) {
  const __m256 scale = _mm256_set1_ps(1.0f / std::sqrt(float(HS)));
  const int64_t n_blocks = (n + 15) / 16;
  // The value pass below walks each block's 16 V rows (one 4 KB run per block for f32, HS 64),
  // a fresh stream for the hardware prefetcher every block. Touching each block's first row
  // now, before the scores, hides those restarts: batch-32 decode attention (bf16 124M, Zen 4,
  // 8 alternating process pairs) median 5.38 -> 4.96 ms per step; the first 8 lines: no better;
  // the next head's K blocks likewise: no gain.
  const int64_t first_row_lines = std::min<int64_t>(4, (HS * int64_t(sizeof(E)) + 63) / 64);
  for (int64_t vb = 0; vb < n_blocks; vb++) {
    const char* v0 = reinterpret_cast<const char*>(values.block(vb));
    for (int64_t l = 0; l < first_row_lines; l++) _mm_prefetch(v0 + 64 * l, _MM_HINT_T0);
  }
  int64_t b = 0;
  for (; b + 4 <= n_blocks; b += 4) scores_to_row<4, E>(q, keys, b, HS, scale, p);  // 8 FMA chains
  for (; b + 2 <= n_blocks; b += 2) scores_to_row<2, E>(q, keys, b, HS, scale, p);
  for (; b < n_blocks; b++) scores_to_row<1, E>(q, keys, b, HS, scale, p);
  float max_score = -INFINITY;
  for (int64_t t = 0; t < n; t++) max_score = p[t] > max_score ? p[t] : max_score;
  const __m256 vm = _mm256_set1_ps(max_score);
  for (int64_t t = 0; t < n; t += 8) _mm256_storeu_ps(p + t, exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(p + t), vm)));
  float sum = 0.f;
  for (int64_t t = 0; t < n; t++) sum += p[t];
  const float inv = 1.0f / sum;
  float* dsts[1] = {dst};
  int64_t d = 0;
  for (; d + 64 <= HS; d += 64) weighted_values<8, 1, E>(values, d, p, n, dsts, &inv);
  for (; d + 16 <= HS; d += 16) weighted_values<2, 1, E>(values, d, p, n, dsts, &inv);
  for (; d + 8 <= HS; d += 8) weighted_values<1, 1, E>(values, d, p, n, dsts, &inv);
}

// R = 2..6 consecutive query rows of one sequence (row r attends to n0 + r keys): scores of all
// R rows together, the softmax of all rows at once in the lanes of P, then the value sums
// of all R rows together (16 dims per pass: <= 12 accumulators, each V load feeds R FMAs).
template <int R, class E>
static inline void attend_rows(const float* const* q, const HeadRows<E>& keys, const HeadRows<E>& values,
                               int64_t n0, int64_t HS, float* P, float* const* dst) {
  const __m256 scale = _mm256_set1_ps(1.0f / std::sqrt(float(HS)));
  const int64_t n_last = n0 + R - 1;
  const int64_t n_blocks = (n_last + 15) / 16;
  constexpr int kNB = R <= 3 ? 2 : 1;  // 2 * kNB * R <= 12 accumulators
  int64_t b = 0;
  for (; b + kNB <= n_blocks; b += kNB) scores_to_lanes<R, kNB, E>(q, keys, b, HS, scale, P);
  for (; b < n_blocks; b++) scores_to_lanes<R, 1, E>(q, keys, b, HS, scale, P);
  // Separate short loops: fused, the exp's constants, max and sum did not fit in 16 registers
  // and the spilled sum put a store-to-load round trip on every key.
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (int64_t t = 0; t < n0; t++) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(P + 8 * t));
  for (int64_t t = n0; t < n_last; t++)
    vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_loadu_ps(P + 8 * t),
                                                 rows_from(t - n0 + 1)));
  for (int64_t t = 0; t < n_last; t++)
    _mm256_storeu_ps(P + 8 * t, exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(P + 8 * t), vmax)));
  for (int64_t t = n0; t < n_last; t++)  // rows that do not attend to key t: +0
    _mm256_storeu_ps(P + 8 * t, _mm256_and_ps(_mm256_loadu_ps(P + 8 * t), rows_from(t - n0 + 1)));
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t t = 0; t < n_last; t++) vsum = _mm256_add_ps(vsum, _mm256_loadu_ps(P + 8 * t));
  alignas(32) float inv[8];
  _mm256_store_ps(inv, _mm256_div_ps(_mm256_set1_ps(1.0f), vsum));
  int64_t d = 0;
  for (; d + 16 <= HS; d += 16) weighted_values<2, R, E>(values, d, P, n0, dst, inv);
  for (; d + 8 <= HS; d += 8) weighted_values<1, R, E>(values, d, P, n0, dst, inv);
}

template <class E>
static void attention_head_rows_of(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                                   int64_t pos0, int n_rows, void* const* block_ptr,
                                   const int32_t* blocks, int64_t k_off, int64_t v_off,
                                   float* scratch, float* out) {
  const HeadRows<E> keys{block_ptr, blocks, k_off + h * 16 * HS, HS};
  const HeadRows<E> values{block_ptr, blocks, v_off + h * 16 * HS, HS};
  // Tiles of up to kTile rows share each K and V load; a row's numbers do not depend on the
  // tile it is in (see the kernels above), so any split of the rows gives the same bits.
  constexpr int kTile = 6;
  for (int r = 0; r < n_rows; r += kTile) {
    const int R = n_rows - r < kTile ? n_rows - r : kTile;
    const float* q[kTile];
    float* dst[kTile];
    for (int i = 0; i < R; i++) {
      q[i] = qkv + (row0 + r + i) * 3 * C + h * HS;
      dst[i] = out + (row0 + r + i) * C + h * HS;
    }
    const int64_t n0 = pos0 + r + 1;
    switch (R) {
      case 1: attend_one_row(q[0], keys, values, n0, HS, scratch, dst[0]); break;
      case 2: attend_rows<2, E>(q, keys, values, n0, HS, scratch, dst); break;
      case 3: attend_rows<3, E>(q, keys, values, n0, HS, scratch, dst); break;
      case 4: attend_rows<4, E>(q, keys, values, n0, HS, scratch, dst); break;
      case 5: attend_rows<5, E>(q, keys, values, n0, HS, scratch, dst); break;
      default: attend_rows<6, E>(q, keys, values, n0, HS, scratch, dst); break;
    }
  }
}

void attention_head_rows(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                         int64_t pos0, int n_rows, void* const* block_ptr, bool f16,
                         const int32_t* blocks, int64_t k_off, int64_t v_off, float* scratch,
                         float* out) {
  if (HS % 8 != 0)  // no GPT-2 has these head sizes: the plain kernel is enough
    return scalar::attention_head_rows(qkv, C, HS, h, row0, pos0, n_rows, block_ptr, f16, blocks,
                                       k_off, v_off, scratch, out);
  if (f16)
    attention_head_rows_of<uint16_t>(qkv, C, HS, h, row0, pos0, n_rows, block_ptr, blocks, k_off,
                                     v_off, scratch, out);
  else
    attention_head_rows_of<float>(qkv, C, HS, h, row0, pos0, n_rows, block_ptr, blocks, k_off,
                                  v_off, scratch, out);
}

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

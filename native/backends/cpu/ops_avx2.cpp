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

// Where one head's K (or V) rows live in the paged cache: position t is at row(t), HS floats,
// the 16 positions of a block `stride` (= HS) floats apart.
namespace {
struct HeadRows {
  float* const* block_ptr;
  const int32_t* blocks;
  int64_t off;  // layer's K or V section + the head's part of it
  int64_t stride;
  const float* row(int64_t t) const { return block_ptr[blocks[t >> 4]] + off + (t & 15) * stride; }
};
}  // namespace

// Attention scores, in register tiles. The score of query row q and key k is, whatever tile
// computes it: 8-lane partial sums l0..l7 over HS in steps of 8 (one FMA chain per lane, d in
// increasing order), then ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)), then times 1/sqrt(HS). Groups of
// keys start at a multiple of their size (4 or 8), so they never straddle a 16-slot block; slots
// past the sequence's end are read (blocks are allocated whole) and their scores ignored.

// One row, 8 keys t..t+7 (k = key t's row; the others follow `stride` floats apart): 8 FMA chains.
static inline void scores_1x8(const float* q, const float* k, int64_t stride, int64_t HS, __m256 scale,
                              float* p) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int64_t d = 0; d < HS; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + d), a0);
    a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + stride + d), a1);
    a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 2 * stride + d), a2);
    a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 3 * stride + d), a3);
    a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 4 * stride + d), a4);
    a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 5 * stride + d), a5);
    a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 6 * stride + d), a6);
    a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 7 * stride + d), a7);
  }
  // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7], so lane j < 4 of
  // h0123 is key j's (l0+l1)+(l2+l3) and lane 4 + j its (l4+l5)+(l6+l7); keys 4-7 in h4567.
  const __m256 h0123 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 h4567 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                                   _mm256_permute2f128_ps(h0123, h4567, 0x31));
  _mm256_storeu_ps(p, _mm256_mul_ps(sum, scale));
}

// Calls f(t, row pointer) for t in [t0, t1), walking block by block.
template <class F>
static inline void for_rows(const HeadRows& rows, int64_t t0, int64_t t1, F&& f) {
  while (t0 < t1) {
    const int64_t end = t1 < ((t0 | 15) + 1) ? t1 : ((t0 | 15) + 1);
    const float* v = rows.row(t0);
    for (; t0 < end; t0++, v += rows.stride) f(t0, v);
  }
}

// R rows (2 or 3) x 4 keys t..t+3: each K load feeds R FMAs, 4R chains. The scores go to the
// interleaved buffer: key u's scores of rows r0.. at P + 8 u + r0 (lanes r0 + R .. r0 + 3 are
// written with junk, overwritten by the next sub-tile where it has rows there).
template <int R>
static inline void scores_rx4(const float* const* q, const float* k, int64_t stride, int64_t HS,
                              __m256 scale, float* P, int64_t t) {
  __m256 a[R][4];
#pragma GCC unroll 3
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) a[r][j] = _mm256_setzero_ps();
  for (int64_t d = 0; d < HS; d += 8) {
    __m256 kv[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) kv[j] = _mm256_loadu_ps(k + j * stride + d);
#pragma GCC unroll 3
    for (int r = 0; r < R; r++) {
      const __m256 qv = _mm256_loadu_ps(q[r] + d);
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) a[r][j] = _mm256_fmadd_ps(qv, kv[j], a[r][j]);
    }
  }
  __m128 v[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
#pragma GCC unroll 3
  for (int r = 0; r < R; r++) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a[r][0], a[r][1]), _mm256_hadd_ps(a[r][2], a[r][3]));
    const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    v[r] = _mm_mul_ps(sum, _mm256_castps256_ps128(scale));
  }
  _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);  // v[j] = key t + j's scores, row by row
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) _mm_storeu_ps(P + (t + j) * 8, v[j]);
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
template <int NV, int R>
static inline void weighted_values(const HeadRows& values, int64_t d, const float* P, int64_t n0,
                                   float* const* dst, const float* inv) {
  constexpr int64_t kStep = R == 1 ? 1 : 8;
  // Fully unrolled (the pragmas) so acc[][] is indexed by constants and lives in registers.
  __m256 acc[R][NV];
#pragma GCC unroll 6
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) acc[r][j] = _mm256_setzero_ps();
  for_rows(values, 0, n0, [&](int64_t t, const float* v) {
    __m256 vv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) vv[j] = _mm256_loadu_ps(v + d + 8 * j);
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
      const float* v = values.row(u) + d;
      const __m256 pr = _mm256_broadcast_ss(P + u * kStep + r);
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) acc[r][j] = _mm256_fmadd_ps(pr, _mm256_loadu_ps(v + 8 * j), acc[r][j]);
    }
#pragma GCC unroll 6
  for (int r = 0; r < R; r++) {
    const __m256 s = _mm256_set1_ps(inv[r]);
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) _mm256_storeu_ps(dst[r] + d + 8 * j, _mm256_mul_ps(acc[r][j], s));
  }
}

// One query row (decode, or a tile's last row): p contiguous.
static inline void attend_one_row(const float* q, const HeadRows& keys, const HeadRows& values,
                                  int64_t n, int64_t HS, float* p, float* dst) {
  const __m256 scale = _mm256_set1_ps(1.0f / std::sqrt(float(HS)));
  for (int64_t t = 0; t < n; t += 8) scores_1x8(q, keys.row(t), keys.stride, HS, scale, p + t);
  float max_score = -INFINITY;
  for (int64_t t = 0; t < n; t++) max_score = p[t] > max_score ? p[t] : max_score;
  const __m256 vm = _mm256_set1_ps(max_score);
  for (int64_t t = 0; t < n; t += 8) _mm256_storeu_ps(p + t, exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(p + t), vm)));
  float sum = 0.f;
  for (int64_t t = 0; t < n; t++) sum += p[t];
  const float inv = 1.0f / sum;
  float* dsts[1] = {dst};
  int64_t d = 0;
  for (; d + 64 <= HS; d += 64) weighted_values<8, 1>(values, d, p, n, dsts, &inv);
  for (; d + 16 <= HS; d += 16) weighted_values<2, 1>(values, d, p, n, dsts, &inv);
  for (; d + 8 <= HS; d += 8) weighted_values<1, 1>(values, d, p, n, dsts, &inv);
}

// R = 2..6 consecutive query rows of one sequence (row r attends to n0 + r keys): scores in
// sub-tiles of 2-3 rows, the softmax of all rows at once in the lanes of P, then the value sums
// of all R rows together (16 dims per pass: <= 12 accumulators, each V load feeds R FMAs).
template <int R>
static inline void attend_rows(const float* const* q, const HeadRows& keys, const HeadRows& values,
                               int64_t n0, int64_t HS, float* P, float* const* dst) {
  const __m256 scale = _mm256_set1_ps(1.0f / std::sqrt(float(HS)));
  const int64_t n_last = n0 + R - 1;
  // Sub-tiles in row order (each may write junk into the lanes the next one then fills).
  constexpr int kSub0 = R == 4 ? 2 : R < 4 ? R : 3;
  for (int64_t t = 0; t < n_last; t += 4) scores_rx4<kSub0>(q, keys.row(t), keys.stride, HS, scale, P, t);
  if constexpr (R > kSub0)
    for (int64_t t = 0; t < n_last; t += 4)
      scores_rx4<R - kSub0>(q + kSub0, keys.row(t), keys.stride, HS, scale, P + kSub0, t);
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
  for (; d + 16 <= HS; d += 16) weighted_values<2, R>(values, d, P, n0, dst, inv);
  for (; d + 8 <= HS; d += 8) weighted_values<1, R>(values, d, P, n0, dst, inv);
}

void attention_head_rows(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                         int64_t pos0, int n_rows, float* const* block_ptr, const int32_t* blocks,
                         int64_t k_off, int64_t v_off, float* scratch, float* out) {
  const HeadRows keys{block_ptr, blocks, k_off + h * 16 * HS, HS};
  const HeadRows values{block_ptr, blocks, v_off + h * 16 * HS, HS};
  if (HS % 8 != 0)  // no GPT-2 has these head sizes: the plain kernel is enough
    return scalar::attention_head_rows(qkv, C, HS, h, row0, pos0, n_rows, block_ptr, blocks, k_off,
                                       v_off, scratch, out);
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
      case 2: attend_rows<2>(q, keys, values, n0, HS, scratch, dst); break;
      case 3: attend_rows<3>(q, keys, values, n0, HS, scratch, dst); break;
      case 4: attend_rows<4>(q, keys, values, n0, HS, scratch, dst); break;
      case 5: attend_rows<5>(q, keys, values, n0, HS, scratch, dst); break;
      default: attend_rows<6>(q, keys, values, n0, HS, scratch, dst); break;
    }
  }
}

}  // namespace llmcore::cpu::avx2

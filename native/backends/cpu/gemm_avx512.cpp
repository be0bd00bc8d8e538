// AVX-512 GEMM kernels, roofline microkernels and vector gelu_new. Built with -mavx512f/bw/vl/dq
// /bf16 -mfma -mf16c; called only when cpu_features() reports avx512f+bw+vl+dq (and the
// kBF16Pairs format, which uses vdpbf16ps, is only ever packed when it also reports avx512bf16).
// Self-contained like gemm_avx2.cpp, and built the same way so the two can be read side by side:
// panels of 32 columns (two zmm per k-row), register tiles of R rows x G panels. Unlike AVX2
// (where 1-3 rows take 2-4 panels side by side), a tile here is one panel wide (R <= 8 rows, or
// 14 on Intel, x 32 columns, 2R accumulators), except that 1-3 rows on Intel take two panels
// side by side (GemmCall::skinny_panels, see avx512_gemm_block). Further down, the column-tile
// fp32 kernel for 24-64 rows (Intel). gemm_tuning() (gemm.cpp) picks the variants per CPU.
//
// First compiled blind on Zen 3 (no AVX-512); since the seventh session it runs and passes
// test-backend-ops and gemm_test on AVX-512 machines (AMD Zen 4 and Zen 5; Intel with AMX),
// gemm_test checking every variant on every machine (flipped_tuning).
//
// Formats:
//   kF32 / kF16: every output is one fp32 FMA chain over k in increasing order (bitwise equal
//     to the scalar and AVX2 kernels).
//   kBF16 (no AVX512_BF16): bf16 weights widened by shift/mask, same fp32 FMA chain.
//   kBF16Pairs (AVX512_BF16): vdpbf16ps on k-pairs. The activations are rounded to bf16 (by
//     gemm.cpp, round-to-nearest-even) so each product x*w is exact in fp32 but x carries bf16
//     precision (~3 significant digits): this path trades accuracy (relative error of a dot
//     product ~ 2^-9 / sqrt(K)-ish instead of ~2^-24) for twice the multiplies per instruction.
//     Per Intel's definition each vdpbf16ps lane adds the odd product, then the even one, with
//     round-to-nearest-even and denormals flushed, so an output is still one fixed sequence
//     of fp32 additions over k (1, 0, 3, 2, ...) that does not depend on M or the tile:
//     batch invariance holds, but results differ from the fp32-chain kernels.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "backends/cpu/gemm_kernels.h"

namespace llmcore::cpu::kern {
namespace {

constexpr int NR = kNrAvx512;

inline __m512 exp_ps(__m512 x) {  // x in [-88, 88]; Cephes expf
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
  const __m512 c1 = _mm512_set1_ps(0.693359375f);
  const __m512 c2 = _mm512_set1_ps(-2.12194440e-4f);
  __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, log2e, _mm512_set1_ps(0.5f)),
                                   _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, c1, x);
  x = _mm512_fnmadd_ps(fx, c2, x);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 y = _mm512_set1_ps(1.9875691500E-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
  y = _mm512_fmadd_ps(y, z, x);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  __m512i n = _mm512_cvttps_epi32(fx);
  n = _mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(n));
}

inline __m512 tanh_ps(__m512 u) {
  const __m512i sign = _mm512_set1_epi32(int32_t(0x80000000u));
  const __m512i ui = _mm512_castps_si512(u);
  const __m512 z = _mm512_castsi512_ps(_mm512_andnot_si512(sign, ui));
  const __m512 zc = _mm512_min_ps(z, _mm512_set1_ps(44.0f));
  const __m512 s = exp_ps(_mm512_add_ps(zc, zc));
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 rl = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(s, one)));
  rl = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(rl), _mm512_and_si512(sign, ui)));
  const __m512 z2 = _mm512_mul_ps(u, u);
  __m512 p = _mm512_set1_ps(-5.70498872745E-3f);
  p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(2.06390887954E-2f));
  p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(-5.37397155531E-2f));
  p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(1.33314422036E-1f));
  p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(-3.33332819422E-1f));
  const __m512 rs = _mm512_fmadd_ps(_mm512_mul_ps(p, z2), u, u);
  const __mmask16 small = _mm512_cmp_ps_mask(z, _mm512_set1_ps(0.625f), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(small, rl, rs);  // rs where small
}

__attribute__((noinline)) __m512 gelu_ps(__m512 x) {
  __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), x), x), x);
  __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f), _mm512_add_ps(x, x3));
  __m512 t = tanh_ps(u);
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.0f), t));
}

inline __mmask16 tail_mask(int nv) {  // first nv lanes, 0 <= nv <= 16
  return nv >= 16 ? __mmask16(0xffff) : __mmask16((1u << nv) - 1u);
}

inline void store_out(__m512 v, float* yp, const float* bp, int ep, int nv) {
  const __mmask16 m = tail_mask(nv);
  if (bp) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bp));
  if (ep == kEpGelu) v = gelu_ps(v);
  else if (ep == kEpAddTo) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, yp), v);
  _mm512_mask_storeu_ps(yp, m, v);
}

// Bytes per packed k-row (per pair-row for kBF16Pairs) and k per row.
template <int FMT>
constexpr int row_bytes() { return FMT == kF32 ? NR * 4 : FMT == kBF16Pairs ? NR * 4 : NR * 2; }
template <int FMT>
constexpr int k_per_row() { return FMT == kBF16Pairs ? 2 : 1; }

template <int FMT>
inline void load_w(const uint8_t* p, __m512& b0, __m512& b1) {
  if constexpr (FMT == kF32 || FMT == kBF16Pairs) {  // pairs: raw bits, reinterpreted below
    b0 = _mm512_load_ps(reinterpret_cast<const float*>(p));
    b1 = _mm512_load_ps(reinterpret_cast<const float*>(p) + 16);
  } else if constexpr (FMT == kF16) {
    b0 = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
    b1 = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32)));
  } else {  // kBF16: lane i = col i (low half) | col 16 + i (high half)
    const __m512i raw = _mm512_load_si512(reinterpret_cast<const void*>(p));
    b0 = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
    b1 = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(int32_t(0xffff0000u))));
  }
}

constexpr int kModeFirst = 1;
constexpr int kModeLast = 2;

// pf: the W rows that follow this tile's panel, as in gemm_avx2.cpp (nullptr: none).
template <int R, int G, int FMT>
void tile(const GemmCall& c, const float* xp, int64_t ldx, int64_t m, int64_t p, int64_t k0,
          int64_t kl, int mode, float* sc, int64_t sc_pstride, const uint8_t* pf, int pf_every) {
  constexpr int RB = row_bytes<FMT>();
  // The loops over r and j below must unroll completely (see the pragmas) for acc[][] to live
  // in registers.
  static_assert(R <= 16 && 2 * G <= 8, "tile larger than the unroll pragmas");
  constexpr int KPR = k_per_row<FMT>();
  // As in gemm_avx2.cpp: skinny tiles leave W streaming to the hardware prefetcher, taller ones
  // prefetch the next panel into L2 while this one is in use.
  constexpr bool kPrefetchNext = R >= 4;
  const bool prefetch_next = kPrefetchNext && pf != nullptr;
  __m512 acc[R][2 * G];
  if (mode & kModeFirst) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < 2 * G; ++j) acc[r][j] = _mm512_setzero_ps();
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < 2 * G; ++j)
        acc[r][j] = _mm512_load_ps(sc + (j / 2) * sc_pstride + r * NR + (j % 2) * 16);
  }
  // k0 is even for kBF16Pairs (gemm.cpp keeps kc a multiple of 8); an odd K has a zero pad row.
  const int64_t nrows = (kl + KPR - 1) / KPR;
  const uint8_t* wp = c.w + p * c.panel_bytes + (k0 / KPR) * RB;
  const int64_t pb = c.panel_bytes;
  const uint32_t* xq = FMT == kBF16Pairs ? c.xpairs + m * c.ldxp + k0 / 2 : nullptr;
  const int64_t ldxp = c.ldxp;
  // pf_every 1: this tile prefetches the whole next panel, row k with its own row k. pf_every
  // n > 1: only its slice of it (pf points at the slice), one row every n of its own rows.
  int pf_count = pf_every;
#pragma GCC unroll 2
  for (int64_t k = 0; k < nrows; ++k) {
    __m512 b[2 * G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      load_w<FMT>(wp + g * pb + k * RB, b[2 * g], b[2 * g + 1]);
    }
    if (prefetch_next && --pf_count == 0) {
      pf_count = pf_every;
      _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T1);
      if (RB == 128) _mm_prefetch(reinterpret_cast<const char*>(pf + 64), _MM_HINT_T1);
      pf += RB;
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      if constexpr (FMT == kBF16Pairs) {
        const __m512i a = _mm512_set1_epi32(int32_t(xq[r * ldxp + k]));
#pragma GCC unroll 8
        for (int j = 0; j < 2 * G; ++j)
          acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)a,
                                       (__m512bh)_mm512_castps_si512(b[j]));
      } else {
        const __m512 a = _mm512_set1_ps(xp[r * ldx + k]);
#pragma GCC unroll 8
        for (int j = 0; j < 2 * G; ++j) acc[r][j] = _mm512_fmadd_ps(a, b[j], acc[r][j]);
      }
    }
  }
  if (!(mode & kModeLast)) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < 2 * G; ++j)
        _mm512_store_ps(sc + (j / 2) * sc_pstride + r * NR + (j % 2) * 16, acc[r][j]);
    return;
  }
  // Fully unrolled so acc[][] is indexed by constants only and stays in registers.
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const int64_t col = (p + g) * NR + h * 16;
      const int64_t nv = c.N - col;
      if (nv <= 0) continue;
      const float* bp = c.bias ? c.bias + col : nullptr;
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
        store_out(acc[r][2 * g + h], c.y + (m + r) * c.ldy + col, bp, c.ep, nv >= 16 ? 16 : int(nv));
    }
  }
}

using TileFn = void (*)(const GemmCall&, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int, float*, int64_t, const uint8_t*, int);

constexpr int kMaxR = 14;
constexpr int kMaxG = 2;
template <int FMT>
struct Table {
  TileFn fn[kMaxR + 1][kMaxG + 1] = {};
  constexpr Table() {
    fn[1][1] = tile<1, 1, FMT>;
    fn[1][2] = tile<1, 2, FMT>; fn[2][2] = tile<2, 2, FMT>; fn[3][2] = tile<3, 2, FMT>;
    fn[2][1] = tile<2, 1, FMT>;
    fn[3][1] = tile<3, 1, FMT>;
    fn[4][1] = tile<4, 1, FMT>; fn[5][1] = tile<5, 1, FMT>; fn[6][1] = tile<6, 1, FMT>;
    fn[7][1] = tile<7, 1, FMT>; fn[8][1] = tile<8, 1, FMT>;
    fn[9][1] = tile<9, 1, FMT>; fn[10][1] = tile<10, 1, FMT>; fn[11][1] = tile<11, 1, FMT>;
    fn[12][1] = tile<12, 1, FMT>; fn[13][1] = tile<13, 1, FMT>; fn[14][1] = tile<14, 1, FMT>;
  }
};
const Table<kF32> kTabF32;
const Table<kF16> kTabF16;
const Table<kBF16> kTabBF16;
const Table<kBF16Pairs> kTabBF16Pairs;

}  // namespace

void avx512_gemm_block(const GemmCall& c, int64_t m0, int64_t m1, int64_t p0, int64_t p1,
                       float* scratch, const uint8_t* next_w) {
  const int64_t rows = m1 - m0, np = p1 - p0;
  if (rows <= 0 || np <= 0) return;
  const TileFn(*fn)[kMaxG + 1] = c.fmt == kF32    ? kTabF32.fn
                                 : c.fmt == kF16  ? kTabF16.fn
                                 : c.fmt == kBF16 ? kTabBF16.fn
                                                  : kTabBF16Pairs.fn;
  const int64_t K = c.K;
  const int64_t kc = (c.kc <= 0 || c.kc >= K) ? K : c.kc;
  const int64_t nkb = K == 0 ? 1 : (K + kc - 1) / kc;
  // 1-3 rows are bound by the DRAM stream. On Zen 4 one panel at a time (one sequential
  // stream per thread) beat 4 / 3 / 2 panels side by side (M = 1 / 2 / 3), `gemm_test
  // --gemv-vs-read` with the variants interleaved round by round in one process: M = 1
  // +4-10%, M = 2 +1-10%, M = 3 +2% (f32 and bf16). On Intel (Sapphire Rapids class) a lone
  // panel's 2-6 accumulator chains are too few to keep the stream going: two panels side by
  // side, alternating runs of `engine_bench`: bf16 (vdpbf16ps) batch 1 8.7 -> 7.7 ms per step,
  // batch 2 13.0 -> 11.6, batch 3 14.9 -> 11.6; f32 batch 1 17.6 -> 16.0, batch 3 22.8 -> 18.8.
  // gemm_tuning() chooses per CPU (skinny_panels).
  const int G = rows <= 3 && c.skinny_panels == 2 ? 2 : 1;
  const int64_t max_r = c.max_tile_rows >= 1 && c.max_tile_rows <= kMaxR ? c.max_tile_rows : 8;
  const int64_t ntiles = rows <= 3 ? 1 : (rows + max_r - 1) / max_r;
  const int64_t base = rows / ntiles, extra = rows % ntiles;
  const int64_t sc_pstride = rows * NR;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = kb * kc;
    const int64_t kl = K - k0 < kc ? K - k0 : kc;
    const int mode = (kb == 0 ? kModeFirst : 0) | (kb == nkb - 1 ? kModeLast : 0);
    const float* xa = c.x + m0 * c.ldx + k0;
    const int64_t lda = c.ldx;
    // Byte offset of k0 in a panel (k0 is even for kBF16Pairs, see tile).
    auto k_bytes = [&](int64_t k) { return c.fmt == kBF16Pairs ? (k / 2) * NR * 4 : k * NR * (c.fmt == kF32 ? 4 : 2); };
    const int64_t koff = k_bytes(k0), knext = k_bytes(k0 + kc);
    for (int64_t q = 0; q < np; q += G) {
      const int g = int(np - q < G ? np - q : G);
      const uint8_t* pf = q + G < np ? c.w + (p0 + q + G) * c.panel_bytes + koff
                          : kb + 1 < nkb ? c.w + p0 * c.panel_bytes + knext
                                         : next_w;
      // Spread: the panel's tiles share the prefetch of the next one, each its slice, at an
      // even pace, instead of each tile pulling all of it (the first one from DRAM as fast as
      // it computes).
      const int64_t kpr = c.fmt == kBF16Pairs ? 2 : 1;  // k per packed row
      const int64_t krows = (kl + kpr - 1) / kpr;
      const bool spread = c.spread_prefetch && ntiles > 1 && krows > 1;
      const int64_t slice = spread ? (krows + ntiles - 1) / ntiles : krows;
      const int every = spread ? int((krows + slice - 1) / slice) : 1;  // stays inside its slice
      int64_t r = 0;
      for (int64_t t = 0; t < ntiles; ++t) {
        const int R = int(base + (t < extra ? 1 : 0));
        const uint8_t* tpf = !spread || !pf ? pf : t * slice < krows ? pf + k_bytes(t * slice * kpr) : nullptr;
        fn[R][g](c, xa + r * lda, lda, m0 + r, p0 + q, k0, kl, mode,
                 scratch + q * sc_pstride + r * NR, sc_pstride, tpf, every);
        r += R;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The column-tile f32 kernel (batches of 24-64 rows). The tiles above hold 8-14 rows x 32 columns
// and broadcast x: a 32-row batch reads each panel 3-4 times (once from DRAM, then from
// L2), in bursts the prefetcher cannot smooth. Here the roles swap: x is packed k-major, 32
// rows per k (two zmm), and a tile holds 32 rows x C columns (2C accumulators) and broadcasts
// W, so each panel is read once, front to back, at the rate the FMAs consume it, with a
// software prefetch a fixed distance ahead in that one stream. A panel's 32 columns are three
// tiles (11 + 11 + 10 columns) over K blocks of kColsKc rows (4 KB of W, L1-resident for the
// second and third tile), the accumulators parked in scratch between blocks. Every output is
// still one fp32 FMA chain over k in increasing order from +0, then + bias, then the epilogue:
// the same bits as the row tiles.
// Measured on Intel (2 vCPUs, AVX-512, the weights from DRAM): a 124M batch-32 decode step's
// matmuls 43.7 -> 34 ms (`engine_bench`); standalone loops of both, 32 x 768 x 2304: 45% ->
// 66% of the FMA peak. Used on Intel only (gemm_tuning()): on Zen 5 it is slower than the row
// tiles (`gemm_test --ab=f32_cols`: 0.74-0.89x), on Zen 4 too (0.83-0.89x at 32 rows).

namespace {
constexpr int kColsRows = kColsGroupRows;  // rows of one packed x group (two zmm)
constexpr int64_t kColsKc = 32;  // k rows per block: 32 x 128 B = 4 KB of W
constexpr int64_t kColsPrefetch = 4096;  // bytes ahead in the panel stream

// In-register 16 x 16 transpose: v[i] lane j -> v[j] lane i.
inline void transpose16(__m512 v[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    v[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    v[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    v[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    v[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(v[i], v[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(v[i], v[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(v[i + 8], v[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(v[i + 8], v[i + 12], 0xdd);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    v[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

template <int C>
void col_tile(const float* xt, const uint8_t* wpanel, int c0, int64_t k0, int64_t kl, bool first,
              float* sc, int pf_phase, bool prefetch) {
  __m512 acc[C][2];
  if (first) {
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
  } else {
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) {
      acc[j][0] = _mm512_load_ps(sc + (c0 + j) * kColsRows);
      acc[j][1] = _mm512_load_ps(sc + (c0 + j) * kColsRows + 16);
    }
  }
  const float* w = reinterpret_cast<const float*>(wpanel) + c0;
#pragma GCC unroll 2
  for (int64_t k = k0; k < k0 + kl; ++k) {
    const __m512 x0 = _mm512_load_ps(xt + k * kColsRows), x1 = _mm512_load_ps(xt + k * kColsRows + 16);
    // The three tiles take turns (k mod 3) to prefetch the k-row kColsPrefetch bytes ahead.
    if (prefetch && k % 3 == pf_phase) {
      const char* a = reinterpret_cast<const char*>(wpanel + k * NR * 4) + kColsPrefetch;
      _mm_prefetch(a, _MM_HINT_T0);
      _mm_prefetch(a + 64, _MM_HINT_T0);
    }
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) {
      const __m512 b = _mm512_set1_ps(w[k * NR + j]);
      acc[j][0] = _mm512_fmadd_ps(x0, b, acc[j][0]);
      acc[j][1] = _mm512_fmadd_ps(x1, b, acc[j][1]);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < C; ++j) {
    _mm512_store_ps(sc + (c0 + j) * kColsRows, acc[j][0]);
    _mm512_store_ps(sc + (c0 + j) * kColsRows + 16, acc[j][1]);
  }
}
}  // namespace

void avx512_pack_x_cols(const float* x, int64_t ldx, int rows, int64_t K, float* xt) {
  // 16 k x 16 rows at a time: load 16 row pieces, transpose, store 16 k-rows' halves.
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    const int kn = int(K - k0 < 16 ? K - k0 : 16);
    for (int rh = 0; rh < kColsRows / 16; ++rh) {
      __m512 v[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        const int r = rh * 16 + i;
        v[i] = r < rows ? _mm512_maskz_loadu_ps(tail_mask(kn), x + r * ldx + k0) : _mm512_setzero_ps();
      }
      transpose16(v);
      for (int kk = 0; kk < kn; ++kk) _mm512_store_ps(xt + (k0 + kk) * kColsRows + rh * 16, v[kk]);
    }
  }
}

void avx512_gemm_f32_cols(const GemmCall& c, const float* xt, int64_t m0, int rows, int64_t p,
                          float* scratch, bool prefetch) {
  const uint8_t* wpanel = c.w + p * c.panel_bytes;
  const int64_t K = c.K;
  for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kColsKc) {  // once for K = 0: zero sums
    const int64_t kl = K - k0 < kColsKc ? K - k0 : kColsKc;
    const bool first = k0 == 0;
    col_tile<11>(xt, wpanel, 0, k0, kl, first, scratch, 0, prefetch);
    col_tile<11>(xt, wpanel, 11, k0, kl, first, scratch, 1, prefetch);
    col_tile<10>(xt, wpanel, 22, k0, kl, first, scratch, 2, prefetch);
  }
  // scratch holds the sums column by column (32 rows each): transpose 16 x 16 blocks into rows.
  for (int h = 0; h < 2; ++h) {
    const int64_t col = p * NR + h * 16;
    const int64_t nv = c.N - col;
    if (nv <= 0) break;
    const float* bp = c.bias ? c.bias + col : nullptr;
    for (int rh = 0; rh * 16 < rows; ++rh) {
      __m512 v[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) v[j] = _mm512_load_ps(scratch + (h * 16 + j) * kColsRows + rh * 16);
      transpose16(v);
      const int nr = rows - rh * 16 < 16 ? rows - rh * 16 : 16;
      for (int r = 0; r < nr; ++r)
        store_out(v[r], c.y + (m0 + rh * 16 + r) * c.ldy + col, bp, c.ep, nv >= 16 ? 16 : int(nv));
    }
  }
}

void avx512_store_rows(const float* acc, int64_t lda, int rows, int ncols, const float* bias,
                       int ep, float* y, int64_t ldy) {
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < ncols; j += 16)
      store_out(_mm512_load_ps(acc + r * lda + j), y + r * ldy + j, bias ? bias + j : nullptr, ep,
                ncols - j >= 16 ? 16 : ncols - j);
}

void avx512_round_rows_bf16(const float* x, int64_t ldx, int64_t rows, int64_t K, uint16_t* out,
                            int64_t ld_out) {
  for (int64_t m = 0; m < rows; ++m) {
    const float* xr = x + m * ldx;
    uint16_t* o = out + m * ld_out;
    for (int64_t k = 0; k < ld_out; k += 32) {
      const int64_t n = K - k;  // values of x left (may be <= 0: zero padding)
      const __m512 lo = _mm512_maskz_loadu_ps(tail_mask(n <= 0 ? 0 : n >= 16 ? 16 : int(n)), xr + k);
      const __m512 hi = _mm512_maskz_loadu_ps(tail_mask(n <= 16 ? 0 : n >= 32 ? 16 : int(n - 16)), xr + k + 16);
      const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
      const int64_t w = ld_out - k;  // values of out left
      const __mmask32 m32 = w >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << w) - 1u);
      _mm512_mask_storeu_epi16(o + k, m32, v);
    }
  }
}

void avx512_gelu(const float* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i >= 16 ? 16 : int(n - i));
    _mm512_mask_storeu_ps(out + i, m, gelu_ps(_mm512_maskz_loadu_ps(m, in + i)));
  }
}

namespace {
// 16 independent zmm accumulator chains, each advanced by step(acc) per iteration (latency 4-6
// x 2 pipes needs >= 8-12 in flight); their sum goes to *sink so nothing is optimized away.
template <class Step>
inline void run_chains(int64_t iters, float* sink, Step step) {
  __m512 a[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) a[j] = _mm512_set1_ps(1.0f + 0.1f * float(j));
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) a[j] = step(a[j]);
  }
  __m512 s = a[0];
#pragma GCC unroll 16
  for (int j = 1; j < 16; ++j) s = _mm512_add_ps(s, a[j]);
  *sink = _mm512_reduce_add_ps(s);
}
}  // namespace

double avx512_fma_loop(int64_t iters, float* sink) {
  const __m512 b = _mm512_set1_ps(0.999999f), d = _mm512_set1_ps(1e-6f);
  run_chains(iters, sink, [&](__m512 acc) { return _mm512_fmadd_ps(acc, b, d); });
  return double(iters) * 16 * 16 * 2;
}

double avx512_bf16_dot_loop(int64_t iters, float* sink) {
  // bf16 1.0 pairs times values near 0: the accumulators stay finite for any iteration count.
  const __m512bh b = (__m512bh)_mm512_set1_epi32(0x3f803f80);
  const __m512bh d = (__m512bh)_mm512_set1_epi32(0x33d633d6);  // ~1e-7 per half
  run_chains(iters, sink, [&](__m512 acc) { return _mm512_dpbf16_ps(acc, b, d); });
  return double(iters) * 16 * 32 * 2;
}

namespace {
template <int S>
double read_streams(const float* f, size_t bytes) {
  const size_t part = bytes / S / 4;  // floats per stream
  __m512 s0[S];
#pragma GCC unroll 8
  for (int j = 0; j < S; ++j) s0[j] = _mm512_setzero_ps();
  __m512 s1[S];
#pragma GCC unroll 8
  for (int j = 0; j < S; ++j) s1[j] = _mm512_setzero_ps();
  for (size_t i = 0; i + 32 <= part; i += 32) {
#pragma GCC unroll 8
    for (int j = 0; j < S; ++j) {
      s0[j] = _mm512_add_ps(s0[j], _mm512_load_ps(f + j * part + i));
      s1[j] = _mm512_add_ps(s1[j], _mm512_load_ps(f + j * part + i + 16));
    }
  }
  __m512 s = _mm512_setzero_ps();
  for (int j = 0; j < S; ++j) s = _mm512_add_ps(s, _mm512_add_ps(s0[j], s1[j]));
  return double(_mm512_reduce_add_ps(s));
}
}  // namespace

double avx512_read_sum(const void* p, size_t bytes, int streams, size_t chunk) {
  auto run = [](const float* f, size_t b, int s) {
    switch (s) {
      case 1: return read_streams<1>(f, b);
      case 2: return read_streams<2>(f, b);
      case 4: return read_streams<4>(f, b);
      default: return read_streams<8>(f, b);
    }
  };
  const float* f = static_cast<const float*>(p);
  if (chunk == 0) return run(f, bytes, streams);
  // Blocks of `streams` neighbouring chunks read side by side, then the rest as one stream.
  const size_t block = size_t(streams) * chunk;
  double sum = 0;
  size_t off = 0;
  for (; off + block <= bytes; off += block) sum += run(f + off / 4, block, streams);
  if (off < bytes) sum += run(f + off / 4, bytes - off, 1);
  return sum;
}

}  // namespace llmcore::cpu::kern

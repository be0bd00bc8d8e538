// AVX2 + FMA (+ F16C) GEMM kernels, roofline microkernels and the vector gelu_new.
// Built with -mavx2 -mfma -mf16c; called only after cpu_features() reports avx2+fma+f16c.
// Self-contained on purpose (see native/sources/README.md): every helper is in an anonymous
// namespace, and the only header included besides the intrinsics is the plain-C gemm_kernels.h.
//
// Register tile: R rows x G panels of 16 columns, R * 2G <= 12 ymm accumulators
// (6x16 for M >= 4, 1x64 / 2x48 / 3x32 for the skinny M = 1..3 cases), x broadcast from the
// row-major activations, W read from the packed k-major panels (64 B per k-row in fp32, 32 B in
// f16/bf16). Every output element is one fp32 FMA chain acc = fma(x[k], w[k], acc) over k in
// increasing order starting from +0, then + bias, then the epilogue; between K blocks the
// accumulator is stored to scratch as fp32 and reloaded, which changes nothing. The tile shape
// therefore never changes a result: a row gives the same bits in any tile, for any M.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "backends/cpu/gemm_kernels.h"

namespace llmcore::cpu::kern {
namespace {

constexpr int NR = kNrAvx2;

// ---------------------------------------------------------------------------------------------
// gelu_new, vectorized. tanh as in Cephes tanhf: odd polynomial for |u| < 0.625, otherwise
// 1 - 2 / (exp(2|u|) + 1) with the sign of u; exp as in Cephes expf (Cody-Waite reduction by
// ln 2, degree-5 polynomial). Both are within a few ulp of the true value; gelu is then formed
// exactly like the scalar gelu_new: 0.5 x (1 + tanh(u)), so in the far negative tail, where
// 1 + tanh(u) cancels, vector and scalar round the same way.

inline __m256 exp_ps(__m256 x) {  // x in [-88, 88]
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 c1 = _mm256_set1_ps(0.693359375f);
  const __m256 c2 = _mm256_set1_ps(-2.12194440e-4f);
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, log2e, _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, c1, x);  // exact: c1 has 9 significant bits, |fx| <= 128
  x = _mm256_fnmadd_ps(fx, c2, x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, z, x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  __m256i n = _mm256_cvttps_epi32(fx);
  n = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

inline __m256 tanh_ps(__m256 u) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 z = _mm256_andnot_ps(sign, u);
  // |u| >= 0.625 (clamped at 44, where tanh is 1 in fp32 and exp(88) is still finite)
  const __m256 zc = _mm256_min_ps(z, _mm256_set1_ps(44.0f));
  const __m256 s = exp_ps(_mm256_add_ps(zc, zc));
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 rl = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(s, one)));
  rl = _mm256_or_ps(rl, _mm256_and_ps(sign, u));
  // |u| < 0.625
  const __m256 z2 = _mm256_mul_ps(u, u);
  __m256 p = _mm256_set1_ps(-5.70498872745E-3f);
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(2.06390887954E-2f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(-5.37397155531E-2f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.33314422036E-1f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(-3.33332819422E-1f));
  const __m256 rs = _mm256_fmadd_ps(_mm256_mul_ps(p, z2), u, u);
  const __m256 small = _mm256_cmp_ps(z, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
  return _mm256_blendv_ps(rl, rs, small);
}

// noinline: every tile shape calls the very same code, so the epilogue cannot differ by M.
__attribute__((noinline)) __m256 gelu_ps(__m256 x) {
  __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x), x), x);
  __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f), _mm256_add_ps(x, x3));
  __m256 t = tanh_ps(u);
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), t));
}

alignas(64) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
inline __m256i tail_mask(int nv) {  // first nv lanes on, 0 <= nv <= 8
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - nv));
}

// Applies bias + epilogue to one vector of 8 consecutive outputs and stores the nv <= 8 valid
// ones to yp.
inline void store_out(__m256 v, float* yp, const float* bp, int ep, int nv) {
  if (nv >= 8) {
    if (bp) v = _mm256_add_ps(v, _mm256_loadu_ps(bp));
    if (ep == kEpGelu) v = gelu_ps(v);
    else if (ep == kEpAddTo) v = _mm256_add_ps(_mm256_loadu_ps(yp), v);
    _mm256_storeu_ps(yp, v);
  } else {
    const __m256i m = tail_mask(nv);
    if (bp) v = _mm256_add_ps(v, _mm256_maskload_ps(bp, m));
    if (ep == kEpGelu) v = gelu_ps(v);
    else if (ep == kEpAddTo) v = _mm256_add_ps(_mm256_maskload_ps(yp, m), v);
    _mm256_maskstore_ps(yp, m, v);
  }
}

// ---------------------------------------------------------------------------------------------
// The register tile.

template <int FMT>
constexpr int row_bytes() { return FMT == kF32 ? NR * 4 : NR * 2; }
inline int64_t row_bytes_of(int fmt) { return fmt == kF32 ? NR * 4 : NR * 2; }

template <int FMT>
inline void load_w(const uint8_t* p, __m256& b0, __m256& b1) {
  if constexpr (FMT == kF32) {
    b0 = _mm256_load_ps(reinterpret_cast<const float*>(p));
    b1 = _mm256_load_ps(reinterpret_cast<const float*>(p) + 8);
  } else if constexpr (FMT == kF16) {
    b0 = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
    b1 = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p + 16)));
  } else {  // kBF16, columns interleaved: lane i = col i (low half) | col 8 + i (high half)
    const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
    b0 = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
    b1 = _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(int32_t(0xffff0000u))));
  }
}

constexpr int kModeFirst = 1;  // start from zero (else reload the parked accumulators)
constexpr int kModeLast = 2;   // bias + epilogue into y (else park the accumulators)

// R rows starting at m, G panels starting at p, k in [k0, k0 + kl).
// sc: this tile's parked accumulators, row r of panel g at sc + g * sc_pstride + r * NR.
// pf: the W rows this tile's panel is followed by (the next panel, or the next block's first),
// pulled into L2 while this one is in use (R >= 4 only); nullptr: none.
template <int R, int G, int FMT>
void tile(const GemmCall& c, const float* xp, int64_t ldx, int64_t m, int64_t p, int64_t k0,
          int64_t kl, int mode, float* sc, int64_t sc_pstride, const uint8_t* pf) {
  constexpr int RB = row_bytes<FMT>();
  // The loops over r and j below must unroll completely (see the pragmas) for acc[][] to live
  // in registers.
  static_assert(R <= 8 && 2 * G <= 8, "tile larger than the unroll pragmas");
  // Skinny tiles (R <= 3) stream W from memory once: G concurrent panel streams, left to the
  // hardware prefetcher (software prefetch 256 B - 1 KiB ahead measured no better on Zen 3).
  // Taller tiles reuse each panel over several tiles and prefetch the next panel into L2.
  constexpr bool kPrefetchNext = R >= 4;
  const bool prefetch_next = kPrefetchNext && pf != nullptr;
  __m256 acc[R][2 * G];
  if (mode & kModeFirst) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < 2 * G; ++j) acc[r][j] = _mm256_setzero_ps();
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < 2 * G; ++j)
        acc[r][j] = _mm256_load_ps(sc + (j / 2) * sc_pstride + r * NR + (j % 2) * 8);
  }
  const uint8_t* wp = c.w + p * c.panel_bytes + k0 * RB;
  const int64_t pb = c.panel_bytes;
#pragma GCC unroll 4
  for (int64_t k = 0; k < kl; ++k) {
    __m256 b[2 * G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      load_w<FMT>(wp + g * pb + k * RB, b[2 * g], b[2 * g + 1]);
    }
    if (prefetch_next) {
      // Pull the next panel's rows into L2 while this one is in use: the next panel's first
      // tile then does not wait on L3 (one stream is too little for the hardware prefetcher).
      if (RB == 64 || (k & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(pf + k * RB), _MM_HINT_T1);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(xp + r * ldx + k);
#pragma GCC unroll 8
      for (int j = 0; j < 2 * G; ++j) acc[r][j] = _mm256_fmadd_ps(a, b[j], acc[r][j]);
    }
  }
  if (!(mode & kModeLast)) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < 2 * G; ++j)
        _mm256_store_ps(sc + (j / 2) * sc_pstride + r * NR + (j % 2) * 8, acc[r][j]);
    return;
  }
  // Fully unrolled so acc[][] is indexed by constants only and stays in registers.
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const int64_t col = (p + g) * NR + h * 8;
      const int64_t nv = c.N - col;
      if (nv <= 0) continue;
      const float* bp = c.bias ? c.bias + col : nullptr;
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
        store_out(acc[r][2 * g + h], c.y + (m + r) * c.ldy + col, bp, c.ep, nv >= 8 ? 8 : int(nv));
    }
  }
}

using TileFn = void (*)(const GemmCall&, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int, float*, int64_t, const uint8_t*);

// Which (R, G) pairs exist: R = 1..6 with G = 1; R = 1 up to G = 4, R = 2 up to 3, R = 3 up to 2.
constexpr int kMaxG = 4;
template <int FMT>
struct Table {
  TileFn fn[7][kMaxG + 1] = {};
  constexpr Table() {
    fn[1][1] = tile<1, 1, FMT>; fn[1][2] = tile<1, 2, FMT>; fn[1][3] = tile<1, 3, FMT>;
    fn[1][4] = tile<1, 4, FMT>;
    fn[2][1] = tile<2, 1, FMT>; fn[2][2] = tile<2, 2, FMT>; fn[2][3] = tile<2, 3, FMT>;
    fn[3][1] = tile<3, 1, FMT>; fn[3][2] = tile<3, 2, FMT>;
    fn[4][1] = tile<4, 1, FMT>; fn[5][1] = tile<5, 1, FMT>; fn[6][1] = tile<6, 1, FMT>;
  }
};
const Table<kF32> kTabF32;
const Table<kF16> kTabF16;
const Table<kBF16> kTabBF16;

}  // namespace

void avx2_gemm_block(const GemmCall& c, int64_t m0, int64_t m1, int64_t p0, int64_t p1,
                     float* scratch, const uint8_t* next_w) {
  const int64_t rows = m1 - m0, np = p1 - p0;
  if (rows <= 0 || np <= 0) return;
  const TileFn(*fn)[kMaxG + 1] =
      c.fmt == kF32 ? kTabF32.fn : c.fmt == kF16 ? kTabF16.fn : kTabBF16.fn;
  const int64_t K = c.K;
  const int64_t kc = (c.kc <= 0 || c.kc >= K) ? K : c.kc;
  const int64_t nkb = K == 0 ? 1 : (K + kc - 1) / kc;
  // Row tiles: skinny blocks (1..3 rows) are one tile across G panels; otherwise
  // ceil(rows / 6) tiles of balanced heights (all >= 4 rows, so the FMA latency is covered).
  const int G = rows == 1 ? 4 : rows == 2 ? 3 : rows == 3 ? 2 : 1;
  const int64_t ntiles = rows <= 3 ? 1 : (rows + 5) / 6;
  const int64_t base = rows / ntiles, extra = rows % ntiles;
  const int64_t sc_pstride = rows * NR;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = kb * kc;
    const int64_t kl = K - k0 < kc ? K - k0 : kc;
    const int mode = (kb == 0 ? kModeFirst : 0) | (kb == nkb - 1 ? kModeLast : 0);
    const float* xa = c.x + m0 * c.ldx + k0;
    const int64_t lda = c.ldx;
    for (int64_t q = 0; q < np; q += G) {
      const int g = int(np - q < G ? np - q : G);
      // What follows this panel: the next one, else the first one's next K block, else the
      // caller's next_w (the next block this thread will run).
      const uint8_t* pf = q + G < np ? c.w + (p0 + q + G) * c.panel_bytes + k0 * row_bytes_of(c.fmt)
                          : kb + 1 < nkb ? c.w + p0 * c.panel_bytes + (k0 + kc) * row_bytes_of(c.fmt)
                                         : next_w;
      int64_t r = 0;
      for (int64_t t = 0; t < ntiles; ++t) {
        const int R = int(base + (t < extra ? 1 : 0));
        fn[R][g](c, xa + r * lda, lda, m0 + r, p0 + q, k0, kl, mode,
                 scratch + q * sc_pstride + r * NR, sc_pstride, pf);
        r += R;
      }
    }
  }
}

void avx2_gelu(const float* in, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, gelu_ps(_mm256_loadu_ps(in + i)));
  if (i < n) {
    const __m256i m = tail_mask(int(n - i));
    _mm256_maskstore_ps(out + i, m, gelu_ps(_mm256_maskload_ps(in + i, m)));
  }
}

// ---------------------------------------------------------------------------------------------
// Roofline microkernels.

double avx2_fma_loop(int64_t iters, float* sink) {
  // 12 independent chains: Zen 3 / Haswell+ need latency (4-5) x 2 pipes = 8-10 in flight.
  const __m256 b = _mm256_set1_ps(0.999999f), d = _mm256_set1_ps(1e-6f);
  __m256 a0 = _mm256_set1_ps(1.0f), a1 = _mm256_set1_ps(1.1f), a2 = _mm256_set1_ps(1.2f);
  __m256 a3 = _mm256_set1_ps(1.3f), a4 = _mm256_set1_ps(1.4f), a5 = _mm256_set1_ps(1.5f);
  __m256 a6 = _mm256_set1_ps(1.6f), a7 = _mm256_set1_ps(1.7f), a8 = _mm256_set1_ps(1.8f);
  __m256 a9 = _mm256_set1_ps(1.9f), a10 = _mm256_set1_ps(2.0f), a11 = _mm256_set1_ps(2.1f);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = _mm256_fmadd_ps(a0, b, d); a1 = _mm256_fmadd_ps(a1, b, d);
    a2 = _mm256_fmadd_ps(a2, b, d); a3 = _mm256_fmadd_ps(a3, b, d);
    a4 = _mm256_fmadd_ps(a4, b, d); a5 = _mm256_fmadd_ps(a5, b, d);
    a6 = _mm256_fmadd_ps(a6, b, d); a7 = _mm256_fmadd_ps(a7, b, d);
    a8 = _mm256_fmadd_ps(a8, b, d); a9 = _mm256_fmadd_ps(a9, b, d);
    a10 = _mm256_fmadd_ps(a10, b, d); a11 = _mm256_fmadd_ps(a11, b, d);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  alignas(32) float t[8];
  _mm256_store_ps(t, s);
  *sink = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
  return double(iters) * 12 * 8 * 2;
}

namespace {
// S sequential streams, one per equal contiguous part of the buffer, 64 B from each per step.
template <int S>
double read_streams(const float* f, size_t bytes) {
  const size_t part = bytes / S / 4;  // floats per stream
  __m256 s0[S], s1[S];
#pragma GCC unroll 8
  for (int j = 0; j < S; ++j) s0[j] = s1[j] = _mm256_setzero_ps();
  for (size_t i = 0; i + 16 <= part; i += 16) {
#pragma GCC unroll 8
    for (int j = 0; j < S; ++j) {
      s0[j] = _mm256_add_ps(s0[j], _mm256_load_ps(f + j * part + i));
      s1[j] = _mm256_add_ps(s1[j], _mm256_load_ps(f + j * part + i + 8));
    }
  }
  __m256 s = _mm256_setzero_ps();
  for (int j = 0; j < S; ++j) s = _mm256_add_ps(s, _mm256_add_ps(s0[j], s1[j]));
  alignas(32) float t[8];
  _mm256_store_ps(t, s);
  double r = 0;
  for (int i = 0; i < 8; ++i) r += t[i];
  return r;
}
}  // namespace

double avx2_read_sum(const void* p, size_t bytes, int streams, size_t chunk) {
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

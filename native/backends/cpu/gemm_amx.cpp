// AMX-BF16 GEMM (Intel Xeon from Sapphire Rapids on): bf16 weights times bf16-rounded
// activations on the tile unit, fp32 accumulation in tile registers. Built with -mamx-tile
// -mamx-bf16 (plus the AVX-512 flags); called only when cpu_features() reports AMX-BF16 and the
// kernel granted this process the tile state (arch_prctl, see cpu_features.cpp).
//
// Layout (kBF16Tiles, gemm_kernels.h): the kBF16Pairs panels of 32 columns, pair-rows of 128
// bytes, with the pair-rows padded with zeros to a multiple of 16. A B tile is 16 pair-rows x 16
// columns: the left or right 64 bytes of 16 consecutive pair-rows, loaded with a 128-byte stride.
// The activations come as bf16 pairs too (gemm.cpp rounds them once per call), rows padded with
// zero pairs to the same multiple of 16, so every tile instruction is a whole one.
//
// Numerics: one tdpbf16ps adds 32 products (16 pairs) into each fp32 output; the tile unit's
// internal order and precision are its own (measured: closer to the exact sum than either
// sequential fp32 chain), so results differ from the vdpbf16ps and FMA kernels. Each output is
// still the same fixed sequence of tile instructions over k (32 at a time, in order, from zero)
// on its own row of A, whatever M, the row's place in a tile, the tile mode or the thread count:
// batch-invariant among the calls that run here. gemm.cpp sends calls with fewer than
// amx_min_rows() rows to the vdpbf16ps kernel instead (see gemm.h for why and the switch).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "backends/cpu/gemm_kernels.h"

namespace llmcore::cpu::kern {
namespace {

constexpr int NR = kNrAvx512;  // columns per panel: two 16-column B tiles
constexpr int KT = 16;         // pair-rows per tile instruction (32 values of k)
constexpr int RB = NR * 4;     // bytes per pair-row of a panel
// Software prefetch distance in pair-rows (8 KB of a panel): tile loads that miss the caches
// do not overlap (tile registers are not renamed), so the panel is pulled into L1 ahead of
// them. Batch-32 GEMMs from DRAM (gemm_test --bench): qkv 317 -> 567 GFLOP/s, mlp.proj 286 ->
// 429, lm_head 384 -> 525.
constexpr int64_t kPrefetchRows = 64;


struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Mode 1: one row tile of ra rows, two k-steps in flight: A in tiles 0/1, B in 2,3 / 4,5,
//         C in 6,7 (left / right 16 columns).
// Mode 2: two row tiles (16 and rb rows): A in 0 / 1, B in 2,3, C in 4,5 (first) and 6,7.
// The configuration this thread loaded last, so a run of same-shaped tiles loads it once.
thread_local int t_config = -1;

void configure(int mode, int ra, int rb) {
  const int key = (mode << 16) | (ra << 8) | rb;
  if (key == t_config) return;
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  if (mode == 1) {
    cfg.rows[0] = cfg.rows[1] = cfg.rows[6] = cfg.rows[7] = uint8_t(ra);
  } else {
    cfg.rows[0] = cfg.rows[4] = cfg.rows[5] = uint8_t(ra);
    cfg.rows[1] = cfg.rows[6] = cfg.rows[7] = uint8_t(rb);
  }
  _tile_loadconfig(&cfg);
  t_config = key;
}

// The C tiles of one panel land here (32 rows x 32 columns, 128-byte rows) before the epilogue.
alignas(64) thread_local float t_acc[32 * NR];

inline void prefetch_chunk(const uint8_t* p) {  // KT pair-rows = 32 cache lines
  if (!p) return;
#pragma GCC unroll 32
  for (int l = 0; l < KT * RB / 64; ++l) _mm_prefetch(reinterpret_cast<const char*>(p) + l * 64, _MM_HINT_T0);
}

}  // namespace

void amx_gemm_block(const GemmCall& c, int64_t m0, int64_t m1, int64_t p0, int64_t p1,
                    const uint8_t* next_w) {
  const int64_t rows = m1 - m0;
  if (rows <= 0 || p1 <= p0) return;
  const int64_t krows = c.panel_bytes / RB;  // padded pair-rows, a multiple of KT
  const int64_t lda = c.ldxp * 4;            // bytes per row of bf16 pairs
  const uint8_t* xbase = reinterpret_cast<const uint8_t*>(c.xpairs + m0 * c.ldxp);
  for (int64_t p = p0; p < p1; ++p) {
    const uint8_t* wp = c.w + p * c.panel_bytes;
    // The stream ahead: this panel's later pair-rows, then the next panel of the block (the
    // panels are contiguous), then the block this thread takes next.
    auto ahead = [&](int64_t t) -> const uint8_t* {
      const int64_t a = t + kPrefetchRows;
      if (a < krows || p + 1 < p1) return wp + a * RB;
      return next_w ? next_w + (a - krows) * RB : nullptr;
    };
    const int64_t col = p * NR;
    const int ncols = int(c.N - col < NR ? c.N - col : NR);
    for (int64_t r = 0; r < rows;) {
      const int64_t left = rows - r;
      const uint8_t* xa = xbase + r * lda;
      const bool first = r == 0;  // later row groups find the panel in cache
      int nr_done;
      if (left <= 16) {
        const int ra = int(left);
        configure(1, ra, 0);
        _tile_zero(6);
        _tile_zero(7);
        for (int64_t t = 0; t < krows; t += 2 * KT) {
          if (first) {
            prefetch_chunk(ahead(t));
            prefetch_chunk(ahead(t + KT));
          }
          _tile_loadd(0, xa + t * 4, lda);
          _tile_loadd(2, wp + t * RB, RB);
          _tile_loadd(3, wp + t * RB + 64, RB);
          const bool two = t + KT < krows;
          if (two) {
            _tile_loadd(1, xa + (t + KT) * 4, lda);
            _tile_loadd(4, wp + (t + KT) * RB, RB);
            _tile_loadd(5, wp + (t + KT) * RB + 64, RB);
          }
          _tile_dpbf16ps(6, 0, 2);
          _tile_dpbf16ps(7, 0, 3);
          if (two) {
            _tile_dpbf16ps(6, 1, 4);
            _tile_dpbf16ps(7, 1, 5);
          }
        }
        _tile_stored(6, t_acc, RB);
        _tile_stored(7, t_acc + 16, RB);
        nr_done = ra;
      } else {
        const int rb = int(left < 32 ? left - 16 : 16);
        configure(2, 16, rb);
        _tile_zero(4);
        _tile_zero(5);
        _tile_zero(6);
        _tile_zero(7);
        for (int64_t t = 0; t < krows; t += KT) {
          if (first) prefetch_chunk(ahead(t));
          _tile_loadd(0, xa + t * 4, lda);
          _tile_loadd(1, xa + 16 * lda + t * 4, lda);
          _tile_loadd(2, wp + t * RB, RB);
          _tile_loadd(3, wp + t * RB + 64, RB);
          _tile_dpbf16ps(4, 0, 2);
          _tile_dpbf16ps(5, 0, 3);
          _tile_dpbf16ps(6, 1, 2);
          _tile_dpbf16ps(7, 1, 3);
        }
        _tile_stored(4, t_acc, RB);
        _tile_stored(5, t_acc + 16, RB);
        _tile_stored(6, t_acc + 16 * NR, RB);
        _tile_stored(7, t_acc + 16 * NR + 16, RB);
        nr_done = 16 + rb;
      }
      avx512_store_rows(t_acc, NR, nr_done, ncols, c.bias ? c.bias + col : nullptr, c.ep,
                        c.y + (m0 + r) * c.ldy + col, c.ldy);
      r += nr_done;
    }
  }
}

double amx_bf16_tile_loop(int64_t iters, float* sink) {
  // Four independent accumulator tiles fed from registers only: A 0/1, B 2/3, C 4-7.
  alignas(64) static const uint16_t zeros[16 * 32] = {};  // the accumulators stay 0
  configure(2, 16, 16);
  _tile_loadd(0, zeros, 64);
  _tile_loadd(1, zeros, 64);
  _tile_loadd(2, zeros, 64);
  _tile_loadd(3, zeros, 64);
  _tile_zero(4);
  _tile_zero(5);
  _tile_zero(6);
  _tile_zero(7);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(4, 0, 2);
    _tile_dpbf16ps(5, 0, 3);
    _tile_dpbf16ps(6, 1, 2);
    _tile_dpbf16ps(7, 1, 3);
  }
  _tile_stored(4, t_acc, RB);
  *sink = t_acc[0];
  return double(iters) * 4 * 16 * 16 * 32 * 2;
}

}  // namespace llmcore::cpu::kern

// Plain-C interface between the baseline code (gemm.cpp, roofline.cpp) and the ISA-specific
// kernel files (gemm_avx2.cpp, gemm_avx512.cpp, gemm_amx.cpp). Nothing here uses wide vector
// types or inline functions, so including it from a file built with -mavx2 or -mavx512f cannot
// leak wide code into baseline objects. Only call the avx2_* / avx512_* / amx_* functions after
// cpu_features says so.
#pragma once
#include <cstddef>
#include <cstdint>

namespace llmcore::cpu::kern {

// Packed layout. W is cut into panels of NR consecutive output columns (n); a panel is K rows
// (k-major) of NR elements, rows back to back, panels `panel_bytes` apart (a multiple of 64),
// columns past N padded with zeros. Inside a k-row the element order depends on the format:
//   kF32, kF16     : column j at position j.
//   kBF16          : columns interleaved for the shift/mask widen: position 2j holds column j,
//                    position 2j+1 holds column NR/2 + j (j < NR/2). A 32-bit lane i then holds
//                    column i in its low half and column NR/2 + i in its high half.
//   kBF16Pairs     : (AVX-512 with AVX512_BF16 only) k-pairs interleaved: pair-row t (k = 2t,
//                    2t+1) holds, for column j, W[2t][j] then W[2t+1][j] (a 32-bit unit per
//                    column); K is padded to even with a zero row.
//   kBF16Tiles     : (AMX-BF16 only) the kBF16Pairs layout with the pair-rows padded with zero
//                    rows to a multiple of 16, so a panel is whole 16 x 16-column tiles.
constexpr int kNrAvx2 = 16;    // also the scalar kernel's panel width
constexpr int kNrAvx512 = 32;

enum : int { kF32 = 0, kF16 = 1, kBF16 = 2, kBF16Pairs = 3, kBF16Tiles = 4 };
enum : int { kEpStore = 0, kEpGelu = 1, kEpAddTo = 2 };

// (No inline functions in this header on purpose: each file keeps its own static helpers.)


struct GemmCall {
  const float* x;     // (M, K) activations, row stride ldx
  int64_t ldx;
  const uint8_t* w;   // packed panels (64-byte aligned)
  int64_t panel_bytes;
  int64_t K, N;
  int fmt;            // kF32 / kF16 / kBF16 / kBF16Pairs
  int ep;             // kEpStore / kEpGelu / kEpAddTo
  const float* bias;  // (N) or null
  float* y;           // (M, N), row stride ldy
  int64_t ldy;
  int64_t kc;         // K block: the fp32 accumulators are parked in scratch between blocks,
                      // which keeps every output one sequential FMA chain over k
  const uint32_t* xpairs;  // kBF16Pairs / kBF16Tiles: x rounded to bf16, (M, ceil(K/2)) pairs
  int64_t ldxp;            // (low half = even k; zero pairs up to ldxp); row stride in pairs
  int skinny_panels;       // AVX-512, 1-3 rows: panels side by side per tile (1 or 2)
  int max_tile_rows;       // AVX-512 row tiles: at most this many rows (8 or 14)
  bool spread_prefetch = false;  // AVX-512 row tiles: a panel's tiles share the next one's prefetch
};

// Computes rows [m0, m1) x panels [p0, p1) of y, all of K. scratch (64-byte aligned) holds
// (m1 - m0) * (p1 - p0) * NR floats for the parked accumulators when kc < K (unused otherwise).
// next_w: the first panel of the block this thread computes next (or nullptr), which the last
// panel's tiles pull into L2 as every other panel's tiles pull in the panel after them.
void avx2_gemm_block(const GemmCall& c, int64_t m0, int64_t m1, int64_t p0, int64_t p1,
                     float* scratch, const uint8_t* next_w);
void avx512_gemm_block(const GemmCall& c, int64_t m0, int64_t m1, int64_t p0, int64_t p1,
                       float* scratch, const uint8_t* next_w);

// kBF16Tiles (AMX): rows [m0, m1) x panels [p0, p1), all of K, accumulators in tile registers
// (no K blocks, no scratch); next_w as above. Requires the AMX tile state (cpu_features.cpp).
void amx_gemm_block(const GemmCall& c, int64_t m0, int64_t m1, int64_t p0, int64_t p1,
                    const uint8_t* next_w);

// The column-tile f32 kernel for batches of >= 24 rows (AVX-512, kF32 panels). x is packed
// first, 32 rows at a time, k-major: xt[k * 32 + r] = x[r][k] (rows >= `rows` zero), K * 32
// floats. avx512_gemm_f32_cols then computes rows [m0, m0 + rows) (rows <= 32) of panel p from
// that group; scratch (64-byte aligned) holds 32 x 32 floats; prefetch: pull the panel stream
// ahead (off when the panel is already in cache, e.g. for a second group of rows).
void avx512_pack_x_cols(const float* x, int64_t ldx, int rows, int64_t K, float* xt);
void avx512_gemm_f32_cols(const GemmCall& c, const float* xt, int64_t m0, int rows, int64_t p,
                          float* scratch, bool prefetch);
constexpr int kColsGroupRows = 32;

// The AVX-512 epilogue on a block of finished fp32 sums: y[r][j] = ep(acc[r][j] + bias[j]) for
// r < rows, j < ncols (acc row stride lda floats, y row stride ldy); used by the AMX kernel.
void avx512_store_rows(const float* acc, int64_t lda, int rows, int ncols, const float* bias,
                       int ep, float* y, int64_t ldy);

// Rounds rows of fp32 to bf16 (round to nearest even, as vcvtne2ps2bf16: denormals to zero) in
// k order, which is the k-pair layout: out row m holds K values then zeros up to ld_out values
// (ld_out >= K, even). Requires AVX512_BF16.
void avx512_round_rows_bf16(const float* x, int64_t ldx, int64_t rows, int64_t K, uint16_t* out,
                            int64_t ld_out);

// The vectorized gelu_new used by the Gelu epilogues, exposed for tests: out[i] = gelu(in[i]).
void avx2_gelu(const float* in, float* out, int64_t n);
void avx512_gelu(const float* in, float* out, int64_t n);

// Roofline microkernels. *_fma_loop runs `iters` iterations of independent register FMA chains
// and returns the number of floating-point operations done (2 per lane per FMA); the result
// value is stored to *sink so nothing is optimized away. *_read_sum reads `bytes` bytes (64-byte
// aligned, a multiple of 4096) as `streams` (1, 2, 4 or 8) concurrent sequential streams and
// returns their float sum: with chunk == 0 the streams run over equal contiguous parts of the
// buffer; otherwise over `chunk` bytes each (a multiple of 4096) of consecutive blocks of
// streams * chunk bytes (the GEMV's pattern: a few neighbouring panels at a time).
double avx2_fma_loop(int64_t iters, float* sink);
double avx512_fma_loop(int64_t iters, float* sink);
// The same with vdpbf16ps (AVX512_BF16): each instruction does 32 bf16 products and adds them
// pairwise into 16 fp32 lanes, counted as 64 flops, as the kBF16Pairs GEMM's flops are counted.
double avx512_bf16_dot_loop(int64_t iters, float* sink);
// The same with tdpbf16ps on four accumulator tiles (AMX-BF16; 16 x 16 x 32 products each).
double amx_bf16_tile_loop(int64_t iters, float* sink);
double avx2_read_sum(const void* p, size_t bytes, int streams, size_t chunk);
double avx512_read_sum(const void* p, size_t bytes, int streams, size_t chunk);

}  // namespace llmcore::cpu::kern

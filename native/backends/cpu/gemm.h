// CPU matmul of fp32 activations with packed weights: y (M, N) = x (M, K) . W (N, K)^T + b,
// with a fused epilogue. Weights are packed once at load into the layout the detected ISA
// wants; the hot loops are in gemm_avx2.cpp / gemm_avx512.cpp, the scalar fallback in gemm.cpp.
//
// Batch invariance: each output element is one fp32 FMA chain over k in increasing order, then
// + bias, then the epilogue, whatever M, the row's place in a tile, or the thread count. So a
// sequence's logits are bitwise the same alone or in a batch, and KV-cache decode equals full
// recompute. The work is split over rows and column panels, never over K.
// The one exception: bf16 weights on a CPU with AMX-BF16 run on the tile unit when a call has
// >= amx_min_rows() rows and on vdpbf16ps below that (the tile unit streams a lone row at
// 0.42-0.72 of a plain read where vdpbf16ps reaches 0.91-1.0, measured on Emerald Rapids; its
// internal summation matches neither fp32 chain). Each side is batch-invariant on its own; a
// row's bits differ (by bf16-level rounding) between the two. LLMCORE_AMX_MIN_ROWS=1 puts every
// call on the tile unit: fully batch-invariant, slower at batch 1.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/backend.h"
#include "core/thread_pool.h"

namespace llmcore::cpu {

// Kernel families, each a superset of the one before. Amx = the AVX-512 kernels, with bf16
// weights on the AMX tile unit (kBF16Tiles) instead of vdpbf16ps.
enum class Isa : uint8_t { Scalar = 0, Avx2 = 1, Avx512 = 2, Amx = 3 };
const char* isa_name(Isa isa);

class WeightArena;

class PackedWeight : public Weight {
 public:
  Isa isa = Isa::Scalar;   // the kernel family the layout was packed for
  int64_t n_panels = 0;    // ceil(n / panel width)
  void* data = nullptr;    // 64-byte aligned, inside `storage`
  std::shared_ptr<void> storage;
  // Layout details (see gemm_kernels.h): panel width, element format (kern::kF32 ...), and the
  // byte distance between panels.
  int nr = 16;
  int fmt = 0;
  int64_t panel_bytes = 0;
};

// Packs a stored weight (any dtype, either layout) into `compute` dtype for `isa`, in memory
// taken from `arena` (huge pages, see big_memory.h).
std::unique_ptr<PackedWeight> pack_weight(const WeightView& w, DType compute, Isa isa,
                                          ThreadPool& pool, WeightArena& arena);

void gemm(const float* x, int64_t ldx, int M, const PackedWeight& W, const float* bias, float* y,
          Epilogue ep, ThreadPool& pool);

// Kernel choices that only change speed (the bits are the same either way), picked per CPU
// model where each was measured (the numbers are in gemm.cpp). gemm() uses gemm_tuning();
// gemm_test --ab flips one to compare the two sample by sample.
struct GemmTuning {
  int skinny_panels = 1;         // AVX-512, 1-3 rows: panels side by side per tile (1 or 2)
  int max_tile_rows = 8;         // AVX-512 row tiles: at most this many rows (8 or 14)
  bool spread_prefetch = false;  // AVX-512 row tiles share the next panel's prefetch
  bool wide_row_blocks = false;  // vector kernels: row blocks of up to 176 rows, not 48
  bool f32_cols = false;         // fp32 on AVX-512, f32_cols_min_rows()-64 rows: column tiles
};
GemmTuning gemm_tuning();  // this CPU's
void gemm(const float* x, int64_t ldx, int M, const PackedWeight& W, const float* bias, float* y,
          Epilogue ep, ThreadPool& pool, const GemmTuning& tuning);

// Row n of W (its K values for output feature n), widened to fp32: the embedding lookup of a
// (V, C) weight packed for the LM head.
void packed_row(const PackedWeight& W, int64_t n, float* out);

// True when bf16 weights packed for `isa` use the CPU's bf16 dot product (AVX512_BF16
// vdpbf16ps, or AMX-BF16 tiles): the activations are then rounded to bf16 too (fp32
// accumulation), so results differ from the fp32 FMA chain by about bf16's rounding (2^-9
// relative per product).
bool bf16_dot_product(Isa isa);
// Rows from which a kBF16Tiles call runs on AMX (LLMCORE_AMX_MIN_ROWS, read once; default 8:
// at batch 8 vdpbf16ps is already compute-bound, 105 of its 167 GFLOP/s peak on 2 cores).
constexpr int kAmxMinRowsDefault = 8;
int amx_min_rows();
// Rows from which fp32 weights on AVX-512 (with GemmTuning::f32_cols) run on the column-tile kernel
// (gemm_kernels.h), up to kColsMaxRows: below this the row tiles stream W fine; from here on a
// panel read once beats a panel read once per row tile (measured at 24-32 rows, see gemm.cpp).
// LLMCORE_F32_COLS_MIN_ROWS overrides it (read once; a huge value turns the kernel off).
constexpr int kColsMinRowsDefault = 24;
constexpr int kColsMaxRows = 64;
int f32_cols_min_rows();
// The instruction bf16 weights packed for `isa` run on: "amx", "vdpbf16ps" or "fma" (widened).
const char* bf16_kernel(Isa isa);

// gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the fp32 version every
// epilogue must match to ~1e-6 relative.
float gelu_new(float x);

}  // namespace llmcore::cpu

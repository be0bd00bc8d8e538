// Weight packing, the GEMM driver (blocking + threading + ISA dispatch), the scalar fallback
// kernel and the scalar gelu_new. Built with the baseline x86-64 flags.
//
// Threading: the output is cut into tasks of (row block x panel block); tasks go to the threads
// through a dynamic counter (for tall tiles each thread claims its next task one panel early, to
// prefetch it). K is never split across tasks. Inside a task the ISA kernel may walk K in
// blocks, parking the fp32 accumulators in per-thread scratch between blocks, which keeps each
// output element one sequential FMA chain (bitwise batch invariance, see gemm.h). Streaming
// shapes (up to 16 rows, and the column-tile kernel's 24-64) instead give each thread one
// contiguous share of the panels (ThreadPool::parallel_shares).
#include "backends/cpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backends/cpu/big_memory.h"
#include "backends/cpu/cpu_features.h"
#include "backends/cpu/gemm_kernels.h"
#include "core/errors.h"

namespace llmcore::cpu {

namespace {

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

void* aligned_alloc64(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, round_up(bytes ? bytes : 64, 64)) != 0) p = nullptr;
  return p;
}

// A grow-only 64-byte-aligned buffer, one per thread (scratch, converted activations).
struct ThreadBuf {
  void* p = nullptr;
  size_t cap = 0;
  ~ThreadBuf() { std::free(p); }
  void* get(size_t bytes) {  // never null on success, even for 0 bytes (K = 0)
    if (bytes == 0) bytes = 64;
    if (bytes > cap) {
      std::free(p);
      cap = round_up(bytes, 4096);
      p = aligned_alloc64(cap);
      if (!p) {
        cap = 0;
        return nullptr;
      }
    }
    return p;
  }
};
thread_local ThreadBuf t_scratch;
thread_local ThreadBuf t_xpairs;
thread_local ThreadBuf t_xcols;

int panel_width(Isa isa) { return isa >= Isa::Avx512 ? kern::kNrAvx512 : kern::kNrAvx2; }

int packed_fmt(DType compute, Isa isa) {
  switch (compute) {
    case DType::F32: return kern::kF32;
    case DType::F16: return kern::kF16;
    case DType::BF16:
      if (isa == Isa::Amx) return kern::kBF16Tiles;
      return (isa == Isa::Avx512 && cpu_features().avx512bf16) ? kern::kBF16Pairs : kern::kBF16;
  }
  return kern::kF32;
}

bool k_pairs(int fmt) { return fmt == kern::kBF16Pairs || fmt == kern::kBF16Tiles; }

// Pair-rows of a k-pair panel: ceil(K / 2), padded to whole tiles for AMX.
int64_t pair_rows(int fmt, int64_t K) {
  const int64_t kp = (K + 1) / 2;
  return fmt == kern::kBF16Tiles ? (kp + 15) / 16 * 16 : kp;
}

int packed_pos(int fmt, int nr, int j) {
  if (fmt != kern::kBF16) return j;
  const int h = nr / 2;
  return j < h ? 2 * j : 2 * (j - h) + 1;
}

// Stored element -> compute dtype bits. Same dtype: the bits are copied as they are.
inline uint16_t to_half_bits(const void* src, DType sd, size_t i, DType cd) {
  if (sd == cd) return static_cast<const uint16_t*>(src)[i];
  const float f = load_as_f32(src, sd, i);
  return cd == DType::BF16 ? f32_to_bf16(f) : f32_to_f16(f);
}

// ---------------------------------------------------------------------------------------------
// Scalar fallback kernel: same layout as AVX2 (16-column panels), same arithmetic: one
// std::fma chain per output over k in increasing order from +0, then + bias, then the epilogue.
// std::fma is exact fused multiply-add (a libm call on baseline x86-64, hardware FMA via glibc's
// ifunc where the CPU has it), so the linear part matches the AVX2 kernels bit for bit.

inline float packed_w(const kern::GemmCall& c, int64_t p, int64_t k, int j) {
  const uint8_t* row = c.w + p * c.panel_bytes;
  switch (c.fmt) {
    case kern::kF32: return reinterpret_cast<const float*>(row)[k * kern::kNrAvx2 + j];
    case kern::kF16: return f16_to_f32(reinterpret_cast<const uint16_t*>(row)[k * kern::kNrAvx2 + j]);
    default:
      return bf16_to_f32(reinterpret_cast<const uint16_t*>(
          row)[k * kern::kNrAvx2 + packed_pos(kern::kBF16, kern::kNrAvx2, j)]);
  }
}

void scalar_gemm_block(const kern::GemmCall& c, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  constexpr int NR = kern::kNrAvx2;
  float wk[NR];
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t col0 = p * NR;
    const int nv = int(c.N - col0 < NR ? c.N - col0 : NR);
    for (int64_t m = m0; m < m1; ++m) {
      float acc[NR] = {};
      const float* xr = c.x + m * c.ldx;
      for (int64_t k = 0; k < c.K; ++k) {
        for (int j = 0; j < NR; ++j) wk[j] = packed_w(c, p, k, j);
        const float xv = xr[k];
        for (int j = 0; j < NR; ++j) acc[j] = std::fma(xv, wk[j], acc[j]);
      }
      float* yr = c.y + m * c.ldy + col0;
      for (int j = 0; j < nv; ++j) {
        float v = acc[j];
        if (c.bias) v = v + c.bias[col0 + j];
        if (c.ep == kern::kEpGelu) v = gelu_new(v);
        else if (c.ep == kern::kEpAddTo) v = yr[j] + v;
        yr[j] = v;
      }
    }
  }
}

}  // namespace

void packed_row(const PackedWeight& W, int64_t n, float* out) {
  const int nr = W.nr;
  const uint8_t* panel = static_cast<const uint8_t*>(W.data) + (n / nr) * W.panel_bytes;
  const int j = int(n % nr);
  const int64_t K = W.k;
  switch (W.fmt) {
    case kern::kF32: {
      const float* p = reinterpret_cast<const float*>(panel) + j;
      for (int64_t k = 0; k < K; k++) out[k] = p[k * nr];
      break;
    }
    case kern::kF16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(panel) + j;
      for (int64_t k = 0; k < K; k++) out[k] = f16_to_f32(p[k * nr]);
      break;
    }
    case kern::kBF16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(panel) + packed_pos(kern::kBF16, nr, j);
      for (int64_t k = 0; k < K; k++) out[k] = bf16_to_f32(p[k * nr]);
      break;
    }
    default: {  // kBF16Pairs / kBF16Tiles: pair-row k / 2 holds (W[k][j], W[k + 1][j]) as one 32-bit unit
      const uint16_t* p = reinterpret_cast<const uint16_t*>(panel) + 2 * j;
      for (int64_t k = 0; k < K; k++) out[k] = bf16_to_f32(p[(k / 2) * (2 * nr) + (k & 1)]);
      break;
    }
  }
}

int amx_min_rows() {
  static const int v = [] {
    const char* e = std::getenv("LLMCORE_AMX_MIN_ROWS");
    const long n = e && *e ? std::strtol(e, nullptr, 10) : 0;
    return n >= 1 && n <= 1 << 20 ? int(n) : kAmxMinRowsDefault;
  }();
  return v;
}

int f32_cols_min_rows() {
  static const int v = [] {
    const char* e = std::getenv("LLMCORE_F32_COLS_MIN_ROWS");
    const long n = e && *e ? std::strtol(e, nullptr, 10) : 0;
    return n >= kColsMinRowsDefault && n <= 1 << 20 ? int(n) : kColsMinRowsDefault;
  }();
  return v;
}

bool bf16_dot_product(Isa isa) { return k_pairs(packed_fmt(DType::BF16, isa)); }

const char* bf16_kernel(Isa isa) {
  const int fmt = packed_fmt(DType::BF16, isa);
  return fmt == kern::kBF16Tiles ? "amx" : fmt == kern::kBF16Pairs ? "vdpbf16ps" : "fma";
}

float gelu_new(float x) {
  return 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

std::unique_ptr<PackedWeight> pack_weight(const WeightView& w, DType compute, Isa isa,
                                          ThreadPool& pool, WeightArena& arena) {
  if (!isa_supported(isa))
    throw Error(E_BACKEND, std::string("[cpu] cannot pack ") + w.name + " for " + isa_name(isa) +
                               ": this CPU does not support it (" + cpu_features_string() + ")");
  if (w.n < 0 || w.k < 0 || (w.n * w.k > 0 && !w.data))
    throw Error(E_INTERNAL, "[cpu] pack_weight: bad weight view " + w.name);
  auto pw = std::make_unique<PackedWeight>();
  const int nr = panel_width(isa);
  const int fmt = packed_fmt(compute, isa);
  const int64_t N = w.n, K = w.k;
  const size_t es = dtype_size(compute);
  const int64_t krows = k_pairs(fmt) ? pair_rows(fmt, K) : K;
  const size_t row_bytes = size_t(nr) * (k_pairs(fmt) ? 4 : es);
  pw->n = N;
  pw->k = K;
  pw->dtype = compute;
  pw->isa = isa;
  pw->nr = nr;
  pw->fmt = fmt;
  pw->n_panels = (N + nr - 1) / nr;
  pw->panel_bytes = int64_t(round_up(size_t(krows) * row_bytes, 64));
  pw->bytes = size_t(pw->n_panels) * size_t(pw->panel_bytes);
  pw->data = arena.take(pw->bytes, pw->storage);
  if (!pw->data)
    throw Error(E_OOM, "[cpu] cannot allocate " + std::to_string(pw->bytes) + " bytes for " + w.name);
  if (pw->bytes == 0) return pw;
  std::memset(pw->data, 0, pw->bytes);  // zero padding (N tail, odd K of pairs, panel rounding)

  uint8_t* base = static_cast<uint8_t*>(pw->data);
  const void* src = w.data;
  const DType sd = w.dtype;
  const bool kn = w.kn;
  const int64_t pbytes = pw->panel_bytes;
  auto put = [&](uint8_t* panel, int j, int64_t k, size_t si) {
    if (fmt == kern::kF32) {
      reinterpret_cast<float*>(panel)[k * nr + j] = load_as_f32(src, sd, si);
    } else if (k_pairs(fmt)) {  // pair-row k/2, column j, half k%2
      reinterpret_cast<uint16_t*>(panel)[(k / 2) * (2 * nr) + 2 * j + (k & 1)] =
          to_half_bits(src, sd, si, compute);
    } else {
      reinterpret_cast<uint16_t*>(panel)[k * nr + packed_pos(fmt, nr, j)] =
          to_half_bits(src, sd, si, compute);
    }
  };
  pool.parallel_for(pw->n_panels, [&](int64_t p, int) {
    uint8_t* panel = base + p * pbytes;
    const int64_t n0 = p * nr;
    const int nv = int(N - n0 < nr ? N - n0 : nr);
    if (kn) {  // (K, N): a panel's k-row is contiguous in the source
      for (int64_t k = 0; k < K; ++k)
        for (int j = 0; j < nv; ++j) put(panel, j, k, size_t(k) * size_t(N) + size_t(n0 + j));
    } else {   // (N, K): a column is contiguous in the source
      for (int j = 0; j < nv; ++j)
        for (int64_t k = 0; k < K; ++k) put(panel, j, k, size_t(n0 + j) * size_t(K) + size_t(k));
    }
  });
  return pw;
}

GemmTuning gemm_tuning() {
  static const GemmTuning t = [] {
    // Each choice measured on its own machines (2 vCPUs, 124M shapes); what was not measured on
    // a CPU keeps the choice of the CPUs it was first tuned on (AMD Zen 3/4).
    const CpuFeatures& cpu = cpu_features();
    const bool zen5 = cpu.amd && cpu.family >= 0x1a;
    GemmTuning g;
    // Intel: skinny GEMVs read two panels side by side (avx512_gemm_block); the fp32 row tiles
    // go up to 14 rows x 32 columns (28 accumulators): prefill 512 on the row tiles,
    // alternating runs, qkv 78-81 -> 70-72 ms, fc 105-109 -> 99-101, mlp.proj 100-104 -> 96-99
    // (12 layers). On Zen 5 both measured equal or slower (gemm_test --ab).
    g.skinny_panels = cpu.intel ? 2 : 1;
    g.max_tile_rows = cpu.intel ? 14 : 8;
    // Intel and Zen 5: a panel's row tiles share the prefetch of the next panel
    // (gemm_avx512.cpp). Intel, prefill f32, engine_bench best of rounds, 3 alternating pairs:
    // 512 tokens 314-322 -> 304-308 ms, 128 tokens 86-88 -> 75-77 ms; GEMMs with weights from
    // DRAM (gemm_test --bench, 512 rows) 299-322 -> 326-348 GFLOP/s. Zen 5 (EPYC family 0x1A),
    // weights from DRAM, the two alternating sample by sample in one process (median of 11-15,
    // GFLOP/s): 32 x 768 x 3072 f32 374 -> 413, bf16 732 -> 808; 32 x 3072 x 768 f32 381 ->
    // 427; lm_head at 32 rows f32 345 -> 385; 512 rows +1..4%, 16-128 rows +5..8%. Zen 4 (family
    // 0x19, gemm_test --ab=spread_prefetch, spread / whole, medians of 15): 0.98-1.02x at 1, 8
    // and 512 rows and at 32 rows f32, 0.95-1.00x at 32 rows bf16; so every tile there
    // prefetches the whole next panel, as on Zen 3 (not measured).
    g.spread_prefetch = cpu.intel || zen5;
    // Intel: row blocks up to 176 rows instead of the 48 measured best on Zen 3. On 2 threads,
    // alternating runs, prefill 512 of the 124M model: 273.3 -> 270.8 ms (best of 3 rounds,
    // three times each); the GEMMs alone, 48 -> 171 rows: qkv +2%, fc +4%, mlp.proj +3..6%,
    // attn.proj -0.5..+1% (256 rows: similar, mlp.proj -1..-2%). Zen 5, 512 rows: f32 0.95-0.98x,
    // bf16 1.00-1.04x (gemm_test --ab).
    g.wide_row_blocks = cpu.intel;
    // Intel: fp32 batches of 24-64 rows on the column-tile kernel: a 32-row 124M decode step
    // 49.9 -> 39.4 ms; past 64 rows the 14-row tiles do better (prefill 512 on the row tiles,
    // alternating runs: qkv 70-72 vs 78-82 ms, fc 99-101 vs 105-111, mlp.proj 96-99 vs
    // 100-107). Zen 5: slower (32 x 768 x 3072 f32: 396 against 437 GFLOP/s); Zen 4 too
    // (gemm_test --ab=f32_cols, 32 rows f32: 0.83-0.89x).
    g.f32_cols = cpu.intel;
    return g;
  }();
  return t;
}

void gemm(const float* x, int64_t ldx, int M, const PackedWeight& W, const float* bias, float* y,
          Epilogue ep, ThreadPool& pool) {
  gemm(x, ldx, M, W, bias, y, ep, pool, gemm_tuning());
}

void gemm(const float* x, int64_t ldx, int M, const PackedWeight& W, const float* bias, float* y,
          Epilogue ep, ThreadPool& pool, const GemmTuning& tuning) {
  const int64_t N = W.n, K = W.k;
  if (M <= 0 || N <= 0) return;
  if (!isa_supported(W.isa))
    throw Error(E_INTERNAL, std::string("[cpu] gemm: weight packed for ") + isa_name(W.isa) +
                                " on a CPU without it");
  kern::GemmCall c;
  c.x = x;
  c.ldx = ldx;
  c.w = static_cast<const uint8_t*>(W.data);
  c.panel_bytes = W.panel_bytes;
  c.K = K;
  c.N = N;
  c.fmt = W.fmt;
  c.ep = ep == Epilogue::Gelu ? kern::kEpGelu : ep == Epilogue::AddTo ? kern::kEpAddTo : kern::kEpStore;
  c.bias = bias;
  c.y = y;
  c.ldy = N;
  c.kc = K;
  c.xpairs = nullptr;
  c.ldxp = 0;
  c.skinny_panels = tuning.skinny_panels;
  c.max_tile_rows = tuning.max_tile_rows;
  c.spread_prefetch = tuning.spread_prefetch;

  // kBF16Tiles weights run on the tile unit from amx_min_rows() rows on; fewer rows take the
  // vdpbf16ps kernel over the same panels (the padded pair-rows are never read), see gemm.h.
  const bool amx = W.fmt == kern::kBF16Tiles && M >= amx_min_rows();
  if (W.fmt == kern::kBF16Tiles && !amx) c.fmt = kern::kBF16Pairs;
  if (k_pairs(W.fmt)) {
    // vdpbf16ps and the tile unit multiply bf16 by bf16: round the activations to bf16 pairs
    // once per call (rows padded with zero pairs to the weight's pair-rows).
    const int64_t kp = pair_rows(W.fmt, K);
    uint32_t* xp = static_cast<uint32_t*>(t_xpairs.get(size_t(M) * size_t(kp) * 4));
    if (!xp) throw Error(E_OOM, "[cpu] gemm: cannot allocate the bf16 activation buffer");
    pool.parallel_for((M + 7) / 8, [&](int64_t i, int) {
      const int64_t m0 = i * 8, m1 = std::min<int64_t>(M, m0 + 8);
      kern::avx512_round_rows_bf16(x + m0 * ldx, ldx, m1 - m0, K,
                                   reinterpret_cast<uint16_t*>(xp + m0 * kp), 2 * kp);
    });
    c.xpairs = xp;
    c.ldxp = kp;
  }

  const int nr = W.nr;
  const int64_t np = W.n_panels;
  const int threads = pool.size();
  // Row blocks: skinny batches (M <= 3) are one block; otherwise balanced blocks of <= mc_max
  // rows (>= mc_max / 2 rows each when M > mc_max, so every block tiles into register tiles of
  // >= 4 rows) of 48 rows, or with wide_row_blocks up to 176 rows (prefill 512 in three blocks),
  // fewer while that leaves under 8 two-panel tasks per thread.
  // AMX: row tiles are 16 rows; up to 16 rows are one skinny block, more go in blocks of 64
  // (two passes of 32 rows).
  const bool skinny = amx ? M <= 16 : M <= 3;
  int64_t mc_max = amx ? 64 : 48;
  if (tuning.wide_row_blocks && !amx) {
    const int64_t two_panel_tasks = (np + 1) / 2;
    mc_max = 176;
    while (mc_max > 48 && (M + mc_max - 1) / mc_max * two_panel_tasks < 8 * threads)
      mc_max = std::max<int64_t>(48, mc_max / 2);
  }
  const int64_t nrb = skinny ? 1 : (M + mc_max - 1) / mc_max;
  const int64_t rb_base = amx ? std::min<int64_t>(M, mc_max) : M / nrb;
  const int64_t rb_extra = amx ? 0 : M % nrb;
  // Panel blocks. Skinny batches (M <= 3) stream W once: one G-panel group per task (on
  // AVX-512 the kernel reads those G panels one after another), many small tasks so the
  // dynamic schedule ends evenly. Otherwise up to 8 panels (128 fp32 columns for AVX2) per
  // task, fewer until there are >= 8 tasks per thread (>= 2 panels). Up to 16 rows on the
  // vector kernels, those tasks are the pieces of contiguous per-thread shares (at the call).
  // The last 2 G x threads panels of a skinny batch go in tasks of tail_ppt panels (2 for one
  // row, 1 otherwise; in shares, the least a thread steals), so the threads end within a task
  // of each other (a short GEMV is only ~100 us). On AVX2 a lone row keeps two panel streams
  // in its tail tasks: with one (a 1 x 16 tile) those panels took ~1.5x longer per byte on
  // Zen 3, a sixth of a batch-1 step's GEMV time (AVX-512's 1 x 32 tile is two zmm per k-row
  // and streams fine alone).
  // (Where the AVX-512 kernel reads panels in pairs, skinny_panels, two rows take 4 not 3.)
  const int64_t g = amx ? 4 : M == 1 ? 4 : M == 2 ? (c.skinny_panels == 2 ? 4 : 3) : M == 3 ? 2 : 1;
  // Panel blocks [0, head_tasks) are ppt panels wide (the last one possibly narrower) and cover
  // panels [0, head_panels); the remaining panels go tail_ppt per task.
  int64_t ppt, head_panels, head_tasks, tail_ppt = 1;
  if (skinny) {
    ppt = g;
    tail_ppt = M == 1 || amx ? 2 : 1;
    const int64_t tail = std::min<int64_t>(np, 2 * g * threads);
    head_panels = (np - tail) / ppt * ppt;
    head_tasks = head_panels / ppt;
  } else {
    ppt = nr == kern::kNrAvx512 ? 4 : 8;
    while (ppt > 2 && nrb * ((np + ppt - 1) / ppt) < 8 * threads) ppt /= 2;
    head_panels = np;
    head_tasks = (np + ppt - 1) / ppt;
  }
  const int64_t npb = head_tasks + (np - head_panels + tail_ppt - 1) / tail_ppt;
  // K blocks: only for long K (the 3072-wide MLP projection), where a whole panel (K x 64 B)
  // and the tile's rows of x stop fitting in L2 next to each other; measured on Zen 3, blocks
  // of ~768 beat both no blocking and shorter blocks.
  if (M >= 4 && K > 1024 && W.isa != Isa::Scalar && !amx) {
    const int64_t nkb = (K + 767) / 768;
    int64_t kc = (K + nkb - 1) / nkb;
    kc = (kc + 7) / 8 * 8;  // a multiple of 8 keeps k-pairs and cache lines whole
    c.kc = kc;
  }
  std::atomic<bool> oom{false};
  const size_t rows_max = size_t(rb_base + (rb_extra ? 1 : 0));
  const size_t scratch_bytes = c.kc < K ? rows_max * size_t(ppt) * size_t(nr) * 4 : 0;

  if (W.fmt == kern::kF32 && (W.isa == Isa::Avx512 || W.isa == Isa::Amx) && tuning.f32_cols &&
      M >= f32_cols_min_rows() && M <= kColsMaxRows) {
    // The column-tile kernel (gemm_kernels.h), for decode-sized batches whose weights come
    // from DRAM: each panel is read once for all the rows; past 64 rows the row tiles below do
    // better (see gemm_tuning()).
    // Groups of 32 rows, the last one padded with zero rows when it has >= kColsMinRowsDefault
    // rows; fewer rows left over take the row tiles.
    constexpr int64_t GR = kern::kColsGroupRows;
    const int64_t rem = M % GR;
    const int64_t ngroups = M / GR + (rem >= kColsMinRowsDefault ? 1 : 0);
    const int64_t m_rest = std::min<int64_t>(M, ngroups * GR);
    const size_t group_floats = size_t(std::max<int64_t>(K, 1)) * GR;
    float* xt = static_cast<float*>(t_xcols.get(size_t(ngroups) * group_floats * 4));
    if (!xt) throw Error(E_OOM, "[cpu] gemm: cannot allocate the packed activations");
    pool.parallel_for(ngroups, [&](int64_t g, int) {
      kern::avx512_pack_x_cols(x + g * GR * ldx, ldx, int(std::min<int64_t>(GR, M - g * GR)), K,
                               xt + g * group_floats);
    });
    const size_t col_scratch = size_t(GR) * size_t(nr) * 4;
    const size_t rest_scratch = c.kc < K ? size_t(M - m_rest) * size_t(nr) * 4 : 0;
    // One contiguous share of panels per thread, walked front to back: the tiles' prefetch
    // runs ahead in that stream (into the next panel of the share).
    pool.parallel_shares(np, 1, 1, [&](int64_t p0, int64_t p1, int) {
      float* scratch = static_cast<float*>(t_scratch.get(col_scratch + rest_scratch));
      if (!scratch) {
        oom.store(true, std::memory_order_relaxed);
        return;
      }
      for (int64_t p = p0; p < p1; ++p) {
        for (int64_t g = 0; g < ngroups; ++g)
          kern::avx512_gemm_f32_cols(c, xt + g * group_floats, g * GR,
                                     int(std::min<int64_t>(GR, M - g * GR)), p, scratch, g == 0);
        if (m_rest < M) kern::avx512_gemm_block(c, m_rest, M, p, p + 1, scratch + col_scratch / 4, nullptr);
      }
    });
    if (oom.load(std::memory_order_relaxed)) throw Error(E_OOM, "[cpu] gemm: cannot allocate scratch");
    return;
  }

  struct Ctx {
    const kern::GemmCall* c;
    Isa isa;
    int64_t M, nrb, rb_base, rb_extra, ppt, head_tasks, head_panels, tail_ppt, np;
    size_t scratch_bytes;
  } ctx{&c, W.isa, M, nrb, rb_base, rb_extra, ppt, head_tasks, head_panels, tail_ppt, np, scratch_bytes};

  auto block_of = [](const Ctx& t, int64_t i, int64_t& m0, int64_t& m1, int64_t& p0, int64_t& p1) {
    const int64_t rb = i % t.nrb, pb = i / t.nrb;
    m0 = rb * t.rb_base + (rb < t.rb_extra ? rb : t.rb_extra);
    m1 = std::min<int64_t>(t.M, m0 + t.rb_base + (rb < t.rb_extra ? 1 : 0));
    p0 = pb < t.head_tasks ? pb * t.ppt : t.head_panels + (pb - t.head_tasks) * t.tail_ppt;
    p1 = pb < t.head_tasks ? std::min(p0 + t.ppt, t.head_panels) : std::min(p0 + t.tail_ppt, t.np);
  };
  auto run_block = [](const Ctx& t, int64_t m0, int64_t m1, int64_t p0, int64_t p1, const uint8_t* next_w) {
    float* scratch = nullptr;
    if (t.scratch_bytes) {
      scratch = static_cast<float*>(t_scratch.get(t.scratch_bytes));
      if (!scratch) return false;
    }
    switch (t.isa) {
      case Isa::Amx:
        if (t.c->fmt == kern::kBF16Tiles) kern::amx_gemm_block(*t.c, m0, m1, p0, p1, next_w);
        else kern::avx512_gemm_block(*t.c, m0, m1, p0, p1, scratch, next_w);
        break;
      case Isa::Avx512: kern::avx512_gemm_block(*t.c, m0, m1, p0, p1, scratch, next_w); break;
      case Isa::Avx2: kern::avx2_gemm_block(*t.c, m0, m1, p0, p1, scratch, next_w); break;
      default: scalar_gemm_block(*t.c, m0, m1, p0, p1); break;
    }
    return true;
  };
  const int64_t ntasks = nrb * npb;
  // On the tile unit, decode batches up to 64 rows (one row block, nrb is 1) take shares too:
  // batch 32, 124M shapes from DRAM (gemm_test --bench, alternating): qkv 584 -> 657-663
  // GFLOP/s, b8 shapes 195-206 -> 202-236.
  const bool shares = amx ? nrb == 1 : skinny || M <= 16;
  if (shares) {
    // Up to 16 rows the GEMM is bound by streaming W (nrb is 1): each thread gets one
    // contiguous share of the panels and walks it front to back, ppt panels at a time, instead
    // of ppt-panel tasks interleaved with the other threads'; the tail balances by stealing (at
    // least tail_ppt panels at a time), as the small tail tasks did. Tall tiles prefetch the
    // panel after their block, which is where the thread goes next unless its share ends.
    // Interleaved A/B on Zen 4 (engine_bench, rounds alternating in one process, vs the
    // interleaved tasks): M = 1 bf16 +2-11%, f32 +2-7%; M = 2 +5-10%; M = 3 +10-20%; M = 4-16
    // +1-3%; 32 rows no difference (so they keep the tasks below). AVX2 kernels on the same
    // CPU: within +-3%. `gemm_test --gemv-vs-read` M = 1 bf16 when the host reads ~45 GB/s:
    // 0.88-0.91 -> 0.96 of a plain read.
    const int64_t pbytes = W.panel_bytes;
    pool.parallel_shares(np, ppt, tail_ppt, [&](int64_t p0, int64_t p1, int) {
      const uint8_t* next_w = p1 < np ? c.w + p1 * pbytes : nullptr;
      if (!run_block(ctx, 0, M, p0, p1, next_w)) oom.store(true, std::memory_order_relaxed);
    });
  } else if (skinny || W.isa == Isa::Scalar || threads == 1) {
    pool.parallel_for(ntasks, [&](int64_t i, int) {
      int64_t m0, m1, p0, p1;
      block_of(ctx, i, m0, m1, p0, p1);
      if (!run_block(ctx, m0, m1, p0, p1, nullptr)) oom.store(true, std::memory_order_relaxed);
    });
  } else {
    // Tall tiles prefetch the panel after theirs into L2 (gemm_avx2.cpp); the one after a
    // block's last panel is the first of the next block this thread takes. So each thread
    // claims its next block when its current one is down to its last panel (not earlier, which
    // would hold back work from a thread that runs out), and that panel's tiles prefetch the
    // claimed block's first panel. Otherwise every block would begin on a panel from DRAM.
    std::atomic<int64_t> next{0};
    const int64_t pbytes = W.panel_bytes;
    pool.parallel_for(threads, [&](int64_t, int) {
      const uint8_t* w = c.w;
      int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      while (i < ntasks) {
        int64_t m0, m1, p0, p1;
        block_of(ctx, i, m0, m1, p0, p1);
        bool ok = p1 - p0 <= 1 || run_block(ctx, m0, m1, p0, p1 - 1, w + (p1 - 1) * pbytes);
        const int64_t j = next.fetch_add(1, std::memory_order_relaxed);
        const uint8_t* next_w = nullptr;
        if (j < ntasks) {
          int64_t n0, n1, q0, q1;
          block_of(ctx, j, n0, n1, q0, q1);
          next_w = w + q0 * pbytes;
        }
        ok = ok && run_block(ctx, m0, m1, p1 - 1, p1, next_w);
        if (!ok) oom.store(true, std::memory_order_relaxed);
        i = j;
      }
    });
  }
  if (oom.load(std::memory_order_relaxed)) throw Error(E_OOM, "[cpu] gemm: cannot allocate scratch");
}

}  // namespace llmcore::cpu

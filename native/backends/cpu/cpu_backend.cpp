#include "backends/cpu/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "backends/cpu/cpu_features.h"
#include "backends/cpu/ops_kernels.h"
#include "core/errors.h"

namespace llmcore::cpu {

static int default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

AttentionTuning attention_tuning() {
  const CpuFeatures& cpu = cpu_features();
  AttentionTuning t;
  // Zen 5 (2 vCPUs, 124M shapes): batch-32 decode attention reads the whole cache from DRAM
  // each step and stalls on it: 12 layers at context 96, f16, took 4.1-5.2 ms against 1.2-1.9
  // ms for the same work on cached KV. The block walk reads it in sections of 24 KB (f16) or 48
  // KB (f32) instead of one head's 2-4 KB piece of each block at a time. Measured with the walks
  // alternating (head -> block):
  // - backend_ops_test --perf DRAM: f16 context 96: 5.19-5.32 -> 3.27-3.36 ms; f32 context 48:
  //   3.28-3.78 -> 2.36-3.42 ms.
  // - engine_bench --batch=32 --ab-walk, attention per step (3 rounds each): f32 context 17-80
  //   4.04-4.45 -> 3.72-3.91 ms, steps 0.4-0.6 ms faster; bf16 with f16 KV 2.35-2.63 ->
  //   2.15-2.52 ms, steps 0.3-0.7 faster; at context 81-112 f16 4.21-5.00 -> 3.92-4.29, f32
  //   6.9-7.5 -> 6.4-7.4.
  // - Prefetching one section ahead on the f32 cache (sections as big as the 48 KB L1): 1.03-1.12x
  //   slower, and T1 (L2) no better, so f16 only.
  // Zen 4 (twenty-first session), the same two measurements: on the f32 cache the block walk
  // wins in the engine, attention 0.79-0.90x (5.6 against 6.4 ms at context 17-80, 9.8 against
  // 11.1 at 81-112; steps 0.4-1.3 ms faster), and ties standalone (0.86-1.04x). On the f16
  // cache it loses: 1.3-1.5x standalone and in the engine, with or without the prefetch (there
  // the head walk's one-row kernel is compute-bound on vcvtph2ps, eighteenth session).
  // Intel: not measured, off.
  // (Family 0x19 is Zen 3 too, which has no AVX-512 and so never takes the block walk.)
  const bool zen4 = cpu.amd && cpu.family == 0x19, zen5 = cpu.amd && cpu.family >= 0x1a;
  t.block_walk_f32 = zen4 || zen5;
  t.block_walk_f16 = t.prefetch_f16 = zen5;
  return t;
}

CpuBackend::CpuBackend(int threads, Isa isa)
    : isa_(isa_supported(isa) ? isa : best_isa()),
      attn_tuning_(attention_tuning()),
      pool_(threads > 0 ? threads : default_threads()) {}

std::string CpuBackend::describe() const {
  return std::string("cpu: ") + isa_name(isa_) + " kernels, " + std::to_string(pool_.size()) +
         " threads (cpu has " + cpu_features_string() + ")";
}

float* CpuBackend::alloc(size_t n_floats) {
  const size_t bytes = std::max<size_t>(64, (n_floats * sizeof(float) + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw Error(E_OOM, "[cpu] cannot allocate " + std::to_string(bytes) + " bytes");
  return static_cast<float*>(p);
}
void CpuBackend::release(float* p) { std::free(p); }
void CpuBackend::upload(float* dst, const float* src, size_t n) { std::memcpy(dst, src, n * 4); }
void CpuBackend::download(float* dst, const float* src, size_t n) { std::memcpy(dst, src, n * 4); }
void CpuBackend::copy(float* dst, const float* src, size_t n) { std::memcpy(dst, src, n * 4); }
void CpuBackend::zero(float* dst, size_t n) {
  // A new KV chunk (~38 MB for the 124M model) is fresh memory: its page faults and clearing
  // are what this costs, so spread them over the threads.
  constexpr size_t kPiece = size_t(1) << 18;  // floats (1 MiB)
  if (n < 2 * kPiece) return (void)std::memset(dst, 0, n * 4);
  pool_.parallel_for(int64_t((n + kPiece - 1) / kPiece), [&](int64_t i, int) {
    const size_t from = size_t(i) * kPiece;
    std::memset(dst + from, 0, std::min(kPiece, n - from) * 4);
  });
}

float* CpuBackend::alloc_cache(size_t n_floats) {
  void* p = map_zeroed_huge(n_floats * sizeof(float));
  if (!p) throw Error(E_OOM, "[cpu] cannot allocate " + std::to_string(n_floats * sizeof(float)) +
                                 " bytes for the KV cache");
  return static_cast<float*>(p);
}
void CpuBackend::release_cache(float* p, size_t n_floats) { unmap_zeroed_huge(p, n_floats * sizeof(float)); }

std::unique_ptr<Weight> CpuBackend::prepare_weight(const WeightView& w, DType compute) {
  return pack_weight(w, compute, isa_, pool_, weights_);
}

void CpuBackend::embed(const int32_t* tokens, const int32_t* positions, int M, int64_t C,
                       const Weight& wte, const float* wpe, float* out) {
  const auto& W = static_cast<const PackedWeight&>(wte);
  for (int m = 0; m < M; m++) {
    float* row = out + m * C;
    packed_row(W, tokens[m], row);
    const float* b = wpe + int64_t(positions[m]) * C;
    for (int64_t c = 0; c < C; c++) row[c] += b[c];
  }
}

void CpuBackend::layernorm(const float* x, int M, int64_t C, const float* gamma,
                           const float* beta, float eps, float* out) {
  constexpr int kRows = 8;
  const int64_t n_chunks = (M + kRows - 1) / kRows;
  pool_.parallel_for(n_chunks, [&](int64_t i, int) {
    const int m0 = int(i) * kRows, rows = std::min(kRows, M - m0);
    if (isa_ >= Isa::Avx2)
      avx2::layernorm_rows(x + m0 * C, rows, C, gamma, beta, eps, out + m0 * C);
    else
      scalar::layernorm_rows(x + m0 * C, rows, C, gamma, beta, eps, out + m0 * C);
  });
}

void CpuBackend::matmul(const float* x, int64_t ldx, int M, const Weight& W, const float* bias,
                        float* y, Epilogue ep) {
  gemm(x, ldx, M, static_cast<const PackedWeight&>(W), bias, y, ep, pool_);
}

void CpuBackend::store_head(const float* qkv, const AttnSeq& s, int h, const KvView& kv, int layer) {
  // K is stored transposed (backend.h): a block's slots for one dim are 16 consecutive
  // elements, so the new positions are written dim by dim, a block at a time, and a prefill
  // fills whole cache lines instead of touching a line per element.
  const int64_t C = kv.C, HS = C / kv.NH;
  const bool f16 = kv.dtype == DType::F16;
  const size_t es = dtype_size(kv.dtype);
  auto kernel = isa_ >= Isa::Avx2 ? avx2::kv_store_head : scalar::kv_store_head;
  const int64_t end = int64_t(s.past) + s.n_new;
  for (int64_t t0 = s.past; t0 < end;) {
    const int64_t t1 = std::min<int64_t>(end, (t0 / kBlockTokens + 1) * kBlockTokens);
    char* layer_kv = static_cast<char*>(kv.block_ptr[s.blocks[t0 / kBlockTokens]]) +
                     (int64_t(layer) * 2 * kBlockTokens * C) * es;
    char* k = layer_kv + (h * kBlockTokens * HS) * es;
    char* v = layer_kv + (kBlockTokens * C + h * kBlockTokens * HS) * es;
    const float* rows = qkv + (int64_t(s.row) + (t0 - s.past)) * 3 * C + h * HS;
    kernel(rows + C, rows + 2 * C, 3 * C, t1 - t0, HS, k, v, t0 % kBlockTokens, f16);
    t0 = t1;
  }
}

void CpuBackend::kv_store(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv,
                          int layer) {
  pool_.parallel_for(int64_t(n_seqs) * kv.NH, [&](int64_t task, int) {
    store_head(qkv, seqs[task / kv.NH], int(task % kv.NH), kv, layer);
  });
}

void CpuBackend::store_and_attend(const float* qkv, const AttnSeq* seqs, int n_seqs,
                                  const KvView& kv, int layer, float* out) {
  // A sequence whose new tokens are one attention task per head group (decode) gets them
  // stored by that task, just before it reads them: the K lines a store dirties (one slot of
  // each dim's 16) come from DRAM once and are then read from L1, instead of once for the store
  // and again for attention. Batch-32 decode, f32 124M, context 16..80 (engine_bench, 3
  // alternating runs): kv_store 2.10 + attention 4.69 -> 5.79 ms per step, step median
  // 42.4 -> 40.7 ms. Longer prompts are split into chunks that read each other's keys, so
  // theirs are all stored first.
  chunked_.clear();
  for (int s = 0; s < n_seqs; s++)
    if (seqs[s].n_new > kAttnRows) chunked_.push_back(seqs[s]);
  if (!chunked_.empty()) kv_store(qkv, chunked_.data(), int(chunked_.size()), kv, layer);
  attend(qkv, seqs, n_seqs, kv, layer, out, /*store_single_chunk=*/true);
}

void CpuBackend::attention(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv,
                           int layer, float* out) {
  attend(qkv, seqs, n_seqs, kv, layer, out, /*store_single_chunk=*/false);
}

void CpuBackend::attend(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv,
                        int layer, float* out, bool store_single_chunk) {
  const int64_t C = kv.C, HS = C / kv.NH;
  if (HS > 256) throw Error(E_OPTION, "[attention] head size " + std::to_string(HS) + " > 256");
  // Tasks: (sequence, heads, chunk of up to kRows new tokens).
  // Prefill chunks: one head per task, head by head, and in each head the costlier (later)
  // chunks first. Consecutive tasks then share a head, whose K and V (256 KB at 512 tokens)
  // can stay in the L2 of the threads working on it.
  // A sequence with one chunk (decode): several heads per task, as many as still leaves >= 4
  // tasks per thread. A block's heads are neighbours in memory (backend.h), so a task then
  // reads 48 KB runs instead of 4 KB pieces of pages far apart: batch-32 decode attention, which
  // reads the whole cache from DRAM every step, took 15% less time (steps alternating in one
  // process, 3 runs).
  constexpr int kRows = kAttnRows;
  tasks_.clear();
  int64_t max_keys = 0, single_chunk = 0;
  for (int s = 0; s < n_seqs; s++) single_chunk += seqs[s].n_new <= kRows;
  const int decode_heads = int(std::clamp<int64_t>(single_chunk * kv.NH / (4 * pool_.size()), 1, kv.NH));
  for (int s = 0; s < n_seqs; s++) {
    max_keys = std::max<int64_t>(max_keys, seqs[s].past + seqs[s].n_new);
    if (seqs[s].n_new <= kRows) {
      for (int h = 0; h < kv.NH; h += decode_heads)
        tasks_.push_back({s, h, std::min(decode_heads, kv.NH - h), 0, seqs[s].n_new});
      continue;
    }
    for (int h = 0; h < kv.NH; h++)
      for (int r0 = (seqs[s].n_new - 1) / kRows * kRows; r0 >= 0; r0 -= kRows)
        tasks_.push_back({s, h, 1, r0, std::min(kRows, seqs[s].n_new - r0)});
  }
  // Decode tasks on the block walk (ops_kernels.h): after the others are listed.
  const bool block_walk = attn_tuning_.block_walk(kv.dtype) && isa_ >= Isa::Avx512 && HS % 16 == 0;
  const bool shares = block_walk && single_chunk == n_seqs;
  const size_t scratch_per_thread =  // see ops_kernels.h
      std::max(8 * size_t(max_keys + 16), block_walk ? size_t(kv.NH) * size_t(max_keys + 17 + HS + 1) : 0);
  if (attn_scratch_.size() < scratch_per_thread * pool_.size())
    attn_scratch_.resize(scratch_per_thread * pool_.size());
  const int64_t k_off = int64_t(layer) * 2 * kBlockTokens * C, v_off = k_off + kBlockTokens * C;
  const bool f16 = kv.dtype == DType::F16;
  const int64_t es = int64_t(dtype_size(kv.dtype));
  auto task = [&](int64_t i, int tid) {
    const AttnTask& t = tasks_[size_t(i)];
    const AttnSeq& s = seqs[t.seq];
    float* scratch = attn_scratch_.data() + size_t(tid) * scratch_per_thread;
    auto kernel = isa_ >= Isa::Avx512 ? avx512::attention_head_rows
                  : isa_ >= Isa::Avx2 ? avx2::attention_head_rows
                                      : scalar::attention_head_rows;
    if (store_single_chunk && s.n_new <= kRows)
      for (int h = t.head; h < t.head + t.heads; h++) store_head(qkv, s, h, kv, layer);
    if (block_walk && t.rows == 1 && t.heads > 1) {
      const bool prefetch = f16 && attn_tuning_.prefetch_f16;
      // With shares, task i + 1 is most likely this thread's next one.
      const void* next_k = nullptr;
      if (prefetch && shares && i + 1 < int64_t(tasks_.size())) {
        const AttnTask& n = tasks_[size_t(i + 1)];
        next_k = static_cast<const char*>(kv.block_ptr[seqs[n.seq].blocks[0]]) +
                 (k_off + int64_t(n.head) * kBlockTokens * HS) * es;
      }
      avx512::attention_decode_heads(qkv, C, HS, t.head, t.heads, s.row, s.past, kv.block_ptr, f16,
                                     s.blocks, k_off, v_off, prefetch, next_k, scratch, out);
      return;
    }
    for (int h = t.head; h < t.head + t.heads; h++)
      kernel(qkv, C, HS, h, s.row + t.r0, s.past + t.r0, t.rows, kv.block_ptr, f16, s.blocks,
             k_off, v_off, scratch, out);
  };
  // A batch of decode rows only, on the block walk: each thread walks its own contiguous run of
  // tasks (sequences), so the next task is known and can be prefetched.
  if (shares)
    pool_.parallel_shares(int64_t(tasks_.size()), 1, 1, [&](int64_t b, int64_t e, int tid) {
      for (int64_t i = b; i < e; i++) task(i, tid);
    });
  else
    pool_.parallel_for(int64_t(tasks_.size()), task);
}

void CpuBackend::gather_rows(const float* x, const int32_t* rows, int n, int64_t C, float* out) {
  for (int i = 0; i < n; i++) std::memcpy(out + i * C, x + int64_t(rows[i]) * C, C * sizeof(float));
}

void CpuBackend::logsumexp_rows(const float* x, int rows, int64_t n, double* out_host) {
  pool_.parallel_for(rows, [&](int64_t r, int) {
    if (isa_ >= Isa::Avx2) avx2::logsumexp_rows(x + r * n, 1, n, out_host + r);
    else scalar::logsumexp_rows(x + r * n, 1, n, out_host + r);
  });
}

}  // namespace llmcore::cpu

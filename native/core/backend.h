// The backend interface: the ops GPT-2's forward pass needs, on memory the backend owns.
// The CPU backend (native/backends/cpu) is always built; the CUDA backend (cuda/) is a separate
// module loaded at run time behind this same interface. Every op has a plain reference in
// native/backends/cpu/ops_ref.cpp, and test-backend-ops holds each backend to it.
//
// Dimension names used throughout: M rows (tokens in a batch), C = n_embd, NH = n_head,
// HS = C / NH, V = vocab size, L = n_layer, T = positions of one sequence.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/thread_pool.h"

namespace llmcore {

// The N-API surface's version; lib/native.ts refuses a binary with another one. Bump it with
// any change to what the addon exports or returns.
inline constexpr int kInterfaceVersion = 5;

// A matmul weight as stored in the checkpoint (host memory, usually the safetensors mapping).
struct WeightView {
  const void* data;
  DType dtype;
  int64_t n;      // output features
  int64_t k;      // input features
  bool kn;        // true: stored (K, N) row-major, HF Conv1D; false: (N, K), nn.Linear / wte
  std::string name;
};

// A matmul weight converted to the backend's own layout and compute dtype (packed panels on the
// CPU, device memory on CUDA).
class Weight {
 public:
  virtual ~Weight() = default;
  int64_t n = 0, k = 0;
  DType dtype = DType::F32;
  size_t bytes = 0;
};

enum class Epilogue : uint8_t {
  Store = 0,  // y = x W^T + b
  Gelu = 1,   // y = gelu_new(x W^T + b)
  AddTo = 2,  // y += x W^T + b (residual)
};

// Paged KV cache storage, in elements of kv.dtype: F32, or F16 (half the memory and traffic;
// values are rounded to f16 when stored, clamped to +-65504, and attention reads them back
// widened to fp32). Block b holds, for every layer l, K then V for kBlockTokens positions,
// head by head (a head's part is 16 x HS elements, contiguous: attention reads 4 KB runs):
//   K of position t, head h, dim d: element l * 2 * kBlockTokens * C
//                                   + h * kBlockTokens * HS + d * kBlockTokens + t
//   V of position t, head h, dim d: element l * 2 * kBlockTokens * C + kBlockTokens * C
//                                   + h * kBlockTokens * HS + t * HS + d
// of block_ptr[b] (t = position % kBlockTokens). K is stored transposed, dims by positions, so a
// query's scores for a block's 16 positions are one vector FMA chain over d, with no
// horizontal sums.
inline constexpr int kBlockTokens = 16;
struct KvView {
  void* const* block_ptr;  // backend memory; indexed by block id
  int64_t C;
  int NH;
  DType dtype;             // F32 or F16
};

// One sequence's slice of a batch. Its n_new tokens are rows [row, row + n_new) of the batch and
// sit at positions [past, past + n_new); blocks[i] holds positions [16 i, 16 i + 16).
struct AttnSeq {
  int32_t row;
  int32_t n_new;
  int32_t past;
  const int32_t* blocks;  // host memory
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;      // "cpu", "cuda"
  virtual std::string describe() const = 0;  // e.g. "cpu: avx2+fma+f16c kernels, 2 threads"

  // Activation / cache memory (host memory on the CPU backend). alloc throws Error(E_OOM).
  virtual float* alloc(size_t n_floats) = 0;
  virtual void release(float* p) = 0;
  virtual void upload(float* dst, const float* src_host, size_t n_floats) = 0;
  virtual void download(float* dst_host, const float* src, size_t n_floats) = 0;
  virtual void copy(float* dst, const float* src, size_t n_floats) = 0;
  virtual void zero(float* dst, size_t n_floats) = 0;
  // KV cache chunks: large, long-lived, zero-filled (attention reads a block's unwritten slots)
  // and read in full every decode step. release_cache takes the same n_floats.
  virtual float* alloc_cache(size_t n_floats) {
    float* p = alloc(n_floats);
    zero(p, n_floats);
    return p;
  }
  virtual void release_cache(float* p, size_t /*n_floats*/) { release(p); }
  // True when alloc() returns memory the host reads directly (the CPU backend): the engine then
  // samples from the logits where they were computed instead of downloading a copy.
  virtual bool host_addressable() const { return false; }

  // Converts a stored weight once, at load. compute is the dtype the weight is kept in.
  virtual std::unique_ptr<Weight> prepare_weight(const WeightView& w, DType compute) = 0;

  // out[m] = wte[tokens[m]] + wpe[positions[m]]     tokens/positions: host, (M); out (M, C)
  // wte is a prepared (V, C) weight (the tied LM head itself where that is exact): row v is
  // its values for output feature v, widened to fp32.
  virtual void embed(const int32_t* tokens, const int32_t* positions, int M, int64_t C,
                     const Weight& wte, const float* wpe, float* out) = 0;
  // out[m] = (x[m] - mean) / sqrt(var + eps) * gamma + beta        x, out (M, C)
  virtual void layernorm(const float* x, int M, int64_t C, const float* gamma, const float* beta,
                         float eps, float* out) = 0;
  // y (M, N) per Epilogue from x (M, K) with row stride ldx, W (N, K), bias (N) or null.
  virtual void matmul(const float* x, int64_t ldx, int M, const Weight& W, const float* bias,
                      float* y, Epilogue ep) = 0;
  // Writes K and V of the batch's new tokens (columns C..3C of qkv (M, 3C)) into the cache.
  virtual void kv_store(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv,
                        int layer) = 0;
  // Causal attention of each new token over its sequence's cached positions [0, pos]:
  // out (M, C) from the queries in columns 0..C of qkv (M, 3C).
  virtual void attention(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv,
                         int layer, float* out) = 0;
  // kv_store then attention, as one op: what the forward pass calls. A backend may fuse them
  // (the CPU backend does, for decode), so the outputs and cache must equal the two ops'.
  virtual void store_and_attend(const float* qkv, const AttnSeq* seqs, int n_seqs,
                                const KvView& kv, int layer, float* out) {
    kv_store(qkv, seqs, n_seqs, kv, layer);
    attention(qkv, seqs, n_seqs, kv, layer, out);
  }
  // out_host[r] = log(sum_j exp(x[r][j])), each row's log-softmax normaliser; x (rows, n).
  // NaN when the row holds a NaN; +-inf when its largest value is +-inf (and no NaN).
  virtual void logsumexp_rows(const float* x, int rows, int64_t n, double* out_host) = 0;
  // out[i] = x[rows[i]]         rows: host, (n); x (*, C); out (n, C)
  virtual void gather_rows(const float* x, const int32_t* rows, int n, int64_t C, float* out) = 0;

  // Optional: a host thread pool the engine may borrow between ops (e.g. to sample many
  // sequences at once). nullptr when the backend has none.
  virtual ThreadPool* host_pool() { return nullptr; }
};

// "cpu" is always available; "cuda" loads the CUDA module (throws Error(E_BACKEND) saying why
// when it cannot start). threads <= 0 means one per core.
std::unique_ptr<Backend> create_backend(const std::string& name, int threads);

}  // namespace llmcore

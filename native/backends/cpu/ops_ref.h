// Plain, obviously-correct reference ops: straight loops, double accumulation. They define what
// every backend op must compute (see core/backend.h) and are the oracle of test-backend-ops.
// Slow on purpose; nothing on a hot path calls them.
#pragma once
#include <cstdint>

#include "core/backend.h"

namespace llmcore::ref {

double gelu_new(double x);

void embed(const int32_t* tokens, const int32_t* positions, int M, int64_t C, const float* wte,
           const float* wpe, float* out);
void layernorm(const float* x, int M, int64_t C, const float* gamma, const float* beta, float eps,
               float* out);
// W is fp32 (N, K) row-major.
void matmul(const float* x, int64_t ldx, int M, const float* W, int64_t N, int64_t K,
            const float* bias, float* y, Epilogue ep);
void kv_store(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv, int layer);
void attention(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv, int layer,
               float* out);
void gather_rows(const float* x, const int32_t* rows, int n, int64_t C, float* out);
void logsumexp_rows(const float* x, int rows, int64_t n, double* out);

// Dim d of head h's K (which = 0) or V (which = 1) of position t of a sequence in the paged
// cache (layout in backend.h: K transposed within a block, V not), in the cache's dtype.
inline int64_t kv_element(const KvView& kv, int layer, int which, int64_t t, int h, int64_t d) {
  const int64_t HS = kv.C / kv.NH;
  const int64_t head = (int64_t(layer) * 2 + which) * kBlockTokens * kv.C + h * kBlockTokens * HS;
  return which == 0 ? head + d * kBlockTokens + t % kBlockTokens : head + (t % kBlockTokens) * HS + d;
}
inline double kv_get(const KvView& kv, const int32_t* blocks, int layer, int which, int64_t t,
                     int h, int64_t d) {
  const void* block = kv.block_ptr[blocks[t / kBlockTokens]];
  const int64_t i = kv_element(kv, layer, which, t, h, d);
  if (kv.dtype == DType::F16) return f16_to_f32(static_cast<const uint16_t*>(block)[i]);
  return static_cast<const float*>(block)[i];
}
// f16: clamped to the largest finite f16 (NaN stays NaN), then rounded to nearest even.
inline void kv_put(const KvView& kv, const int32_t* blocks, int layer, int which, int64_t t, int h,
                   int64_t d, float v) {
  void* block = kv.block_ptr[blocks[t / kBlockTokens]];
  const int64_t i = kv_element(kv, layer, which, t, h, d);
  if (kv.dtype == DType::F16) {
    const float c = v > 65504.0f ? 65504.0f : v < -65504.0f ? -65504.0f : v;
    static_cast<uint16_t*>(block)[i] = f32_to_f16(c);
  } else {
    static_cast<float*>(block)[i] = v;
  }
}

}  // namespace llmcore::ref

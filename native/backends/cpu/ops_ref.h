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

// Address of dim d of head h's K (which = 0) or V (which = 1) of position t of a sequence in the
// paged cache (layout in backend.h: K transposed within a block, V not).
inline float* kv_at(const KvView& kv, const int32_t* blocks, int layer, int which, int64_t t, int h,
                    int64_t d) {
  const int64_t HS = kv.C / kv.NH;
  float* head = kv.block_ptr[blocks[t / kBlockTokens]] +
                (int64_t(layer) * 2 + which) * kBlockTokens * kv.C + h * kBlockTokens * HS;
  return which == 0 ? head + d * kBlockTokens + t % kBlockTokens : head + (t % kBlockTokens) * HS + d;
}

}  // namespace llmcore::ref

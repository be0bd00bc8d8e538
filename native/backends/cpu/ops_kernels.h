// Plain-pointer entry points of the ISA-specific non-GEMM kernels (ops_avx2.cpp, ops_avx512.cpp), called by
// cpu_backend.cpp after a runtime CPU check. Only plain types cross this boundary.
#pragma once
#include <cstdint>

namespace llmcore::cpu::avx2 {

// Rows [0, M) of x (M, C) -> out, as ref::layernorm but in fp32.
void layernorm_rows(const float* x, int M, int64_t C, const float* gamma, const float* beta,
                    float eps, float* out);

// Causal attention of one head h for n_rows consecutive new tokens of one sequence: query r is
// row (row0 + r) of qkv (*, 3C) at position pos0 + r. Its keys/values for position t are in block
// block_ptr[blocks[t / 16]], at elements k_off / v_off + h * 16 * HS, laid out as in backend.h
// (K transposed); elements are fp32, or f16 when f16 is set. scratch holds
// >= 8 * (pos0 + n_rows + 16) floats. Every row is computed the same way whatever n_rows and
// row0 (batch invariance). The AVX2 kernel scores whole blocks, reading the last block's slots
// past the sequence's end.
void attention_head_rows(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                         int64_t pos0, int n_rows, void* const* block_ptr, bool f16,
                         const int32_t* blocks, int64_t k_off, int64_t v_off, float* scratch,
                         float* out);

// Writes n consecutive positions of one head into one block: K of position i from
// k_src + i * src_stride (HS floats) to k_head[d * 16 + slot0 + i] (transposed), V from v_src to
// v_head[(slot0 + i) * HS + d]; fp32, or f16 rounded as ref::kv_put does.
void kv_store_head(const float* k_src, const float* v_src, int64_t src_stride, int64_t n,
                   int64_t HS, void* k_head, void* v_head, int64_t slot0, bool f16);

// out[r] = log(sum_j exp(x[r * n + j])) for rows [0, rows), as ref::logsumexp_rows: the row's max
// (NaN skipped), then the exps of the differences summed in double.
void logsumexp_rows(const float* x, int rows, int64_t n, double* out);

}  // namespace llmcore::cpu::avx2

// attention_head_rows built with AVX-512 (ops_avx512.cpp): the same contract and the same bits
// as the AVX2 one, its FMA loops on 16-lane registers.
namespace llmcore::cpu::avx512 {
void attention_head_rows(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                         int64_t pos0, int n_rows, void* const* block_ptr, bool f16,
                         const int32_t* blocks, int64_t k_off, int64_t v_off, float* scratch,
                         float* out);
// One decode row (row of qkv, at position pos) over heads [h0, h0 + nh), walked block by block
// (attention_avx.inc); the same bits as attention_head_rows of each head. HS % 16 == 0;
// scratch holds >= nh * (pos + 17 + HS + 1) floats. prefetch: each block's K or V section is
// prefetched while the one before it is in use, and next_task_k (may be nullptr) while the
// last V section is.
void attention_decode_heads(const float* qkv, int64_t C, int64_t HS, int h0, int nh, int64_t row,
                            int64_t pos, void* const* block_ptr, bool f16, const int32_t* blocks,
                            int64_t k_off, int64_t v_off, bool prefetch, const void* next_task_k,
                            float* scratch, float* out);
}  // namespace llmcore::cpu::avx512

// The same kernels in plain C++ for CPUs without AVX2 (ops_scalar.cpp).
namespace llmcore::cpu::scalar {
void layernorm_rows(const float* x, int M, int64_t C, const float* gamma, const float* beta,
                    float eps, float* out);
void attention_head_rows(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                         int64_t pos0, int n_rows, void* const* block_ptr, bool f16,
                         const int32_t* blocks, int64_t k_off, int64_t v_off, float* scratch,
                         float* out);
void kv_store_head(const float* k_src, const float* v_src, int64_t src_stride, int64_t n,
                   int64_t HS, void* k_head, void* v_head, int64_t slot0, bool f16);
void logsumexp_rows(const float* x, int rows, int64_t n, double* out);
}  // namespace llmcore::cpu::scalar

// Plain-C++ fp32 layernorm and attention for CPUs without AVX2; same contract as ops_avx2.cpp.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"

#include "backends/cpu/ops_kernels.h"

namespace llmcore::cpu::scalar {

void layernorm_rows(const float* x, int M, int64_t C, const float* gamma, const float* beta,
                    float eps, float* out) {
  for (int m = 0; m < M; m++) {
    const float* row = x + m * C;
    float mean = 0;
    for (int64_t c = 0; c < C; c++) mean += row[c];
    mean /= float(C);
    float var = 0;
    for (int64_t c = 0; c < C; c++) var += (row[c] - mean) * (row[c] - mean);
    const float rstd = 1.0f / std::sqrt(var / float(C) + eps);
    for (int64_t c = 0; c < C; c++) out[m * C + c] = (row[c] - mean) * rstd * gamma[c] + beta[c];
  }
}

namespace {
template <class E>
float load(const E* p, int64_t i) {
  if constexpr (sizeof(E) == 2) return f16_to_f32(p[i]);
  else return p[i];
}

template <class E>
void attention_head_rows_of(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                            int64_t pos0, int n_rows, void* const* block_ptr,
                            const int32_t* blocks, int64_t k_off, int64_t v_off, float* scratch,
                            float* out) {
  const float scale = 1.0f / std::sqrt(float(HS));
  auto block = [&](int64_t t) { return static_cast<const E*>(block_ptr[blocks[t >> 4]]); };
  for (int r = 0; r < n_rows; r++) {
    const float* q = qkv + (row0 + r) * 3 * C + h * HS;
    const int64_t n_keys = pos0 + r + 1;
    float max_score = -INFINITY;
    for (int64_t t = 0; t < n_keys; t++) {
      const E* k = block(t) + k_off + h * 16 * HS + (t & 15);  // transposed
      float dot = 0;
      for (int64_t d = 0; d < HS; d++) dot += q[d] * load(k, d * 16);
      scratch[t] = dot * scale;
      if (scratch[t] > max_score) max_score = scratch[t];
    }
    float sum = 0;
    for (int64_t t = 0; t < n_keys; t++) sum += (scratch[t] = std::exp(scratch[t] - max_score));
    float* dst = out + (row0 + r) * C + h * HS;
    for (int64_t d = 0; d < HS; d++) dst[d] = 0.f;
    for (int64_t t = 0; t < n_keys; t++) {
      const E* v = block(t) + v_off + h * 16 * HS + (t & 15) * HS;
      for (int64_t d = 0; d < HS; d++) dst[d] += scratch[t] * load(v, d);
    }
    for (int64_t d = 0; d < HS; d++) dst[d] /= sum;
  }
}

uint16_t to_f16(float v) {  // as ref::kv_put
  return f32_to_f16(v > 65504.0f ? 65504.0f : v < -65504.0f ? -65504.0f : v);
}
}  // namespace

void attention_head_rows(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                         int64_t pos0, int n_rows, void* const* block_ptr, bool f16,
                         const int32_t* blocks, int64_t k_off, int64_t v_off, float* scratch,
                         float* out) {
  if (f16)
    attention_head_rows_of<uint16_t>(qkv, C, HS, h, row0, pos0, n_rows, block_ptr, blocks, k_off,
                                     v_off, scratch, out);
  else
    attention_head_rows_of<float>(qkv, C, HS, h, row0, pos0, n_rows, block_ptr, blocks, k_off,
                                  v_off, scratch, out);
}

void kv_store_head(const float* k_src, const float* v_src, int64_t src_stride, int64_t n,
                   int64_t HS, void* k_head, void* v_head, int64_t slot0, bool f16) {
  if (f16) {
    uint16_t* k = static_cast<uint16_t*>(k_head);
    uint16_t* v = static_cast<uint16_t*>(v_head);
    for (int64_t d = 0; d < HS; d++)
      for (int64_t i = 0; i < n; i++) k[d * 16 + slot0 + i] = to_f16(k_src[i * src_stride + d]);
    for (int64_t i = 0; i < n; i++)
      for (int64_t d = 0; d < HS; d++) v[(slot0 + i) * HS + d] = to_f16(v_src[i * src_stride + d]);
    return;
  }
  float* k = static_cast<float*>(k_head);
  float* v = static_cast<float*>(v_head);
  for (int64_t d = 0; d < HS; d++)
    for (int64_t i = 0; i < n; i++) k[d * 16 + slot0 + i] = k_src[i * src_stride + d];
  for (int64_t i = 0; i < n; i++)
    std::memcpy(v + (slot0 + i) * HS, v_src + i * src_stride, size_t(HS) * sizeof(float));
}

void logsumexp_rows(const float* x, int rows, int64_t n, double* out) {
  for (int r = 0; r < rows; r++) {
    const float* row = x + int64_t(r) * n;
    float max = -INFINITY;
    bool nan = false;
    for (int64_t j = 0; j < n; j++) {
      if (row[j] != row[j]) nan = true;
      else if (row[j] > max) max = row[j];
    }
    if (nan || std::isinf(max)) {
      out[r] = nan ? double(NAN) : double(max);
      continue;
    }
    double sum = 0;
    for (int64_t j = 0; j < n; j++) sum += std::exp(double(row[j]) - double(max));
    out[r] = double(max) + std::log(sum);
  }
}

}  // namespace llmcore::cpu::scalar

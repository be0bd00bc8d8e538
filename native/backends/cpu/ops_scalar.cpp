// Plain-C++ fp32 layernorm and attention for CPUs without AVX2; same contract as ops_avx2.cpp.
#include <cmath>
#include <cstdint>

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

void attention_head_rows(const float* qkv, int64_t C, int64_t HS, int h, int64_t row0,
                         int64_t pos0, int n_rows, float* const* block_ptr, const int32_t* blocks,
                         int64_t k_off, int64_t v_off, float* scratch, float* out) {
  const float scale = 1.0f / std::sqrt(float(HS));
  for (int r = 0; r < n_rows; r++) {
    const float* q = qkv + (row0 + r) * 3 * C + h * HS;
    const int64_t n_keys = pos0 + r + 1;
    float max_score = -INFINITY;
    for (int64_t t = 0; t < n_keys; t++) {
      const float* k = block_ptr[blocks[t >> 4]] + k_off + h * 16 * HS + (t & 15);  // transposed
      float dot = 0;
      for (int64_t d = 0; d < HS; d++) dot += q[d] * k[d * 16];
      scratch[t] = dot * scale;
      if (scratch[t] > max_score) max_score = scratch[t];
    }
    float sum = 0;
    for (int64_t t = 0; t < n_keys; t++) sum += (scratch[t] = std::exp(scratch[t] - max_score));
    float* dst = out + (row0 + r) * C + h * HS;
    for (int64_t d = 0; d < HS; d++) dst[d] = 0.f;
    for (int64_t t = 0; t < n_keys; t++) {
      const float* v = block_ptr[blocks[t >> 4]] + v_off + h * 16 * HS + (t & 15) * HS;
      for (int64_t d = 0; d < HS; d++) dst[d] += scratch[t] * v[d];
    }
    for (int64_t d = 0; d < HS; d++) dst[d] /= sum;
  }
}

}  // namespace llmcore::cpu::scalar

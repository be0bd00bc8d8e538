#include "backends/cpu/ops_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace llmcore::ref {

double gelu_new(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

void embed(const int32_t* tokens, const int32_t* positions, int M, int64_t C, const float* wte,
           const float* wpe, float* out) {
  for (int m = 0; m < M; m++)
    for (int64_t c = 0; c < C; c++)
      out[m * C + c] = float(double(wte[tokens[m] * C + c]) + double(wpe[positions[m] * C + c]));
}

void layernorm(const float* x, int M, int64_t C, const float* gamma, const float* beta, float eps,
               float* out) {
  for (int m = 0; m < M; m++) {
    const float* row = x + m * C;
    double mean = 0;
    for (int64_t c = 0; c < C; c++) mean += row[c];
    mean /= double(C);
    double var = 0;
    for (int64_t c = 0; c < C; c++) var += (row[c] - mean) * (row[c] - mean);
    var /= double(C);
    const double rstd = 1.0 / std::sqrt(var + double(eps));
    for (int64_t c = 0; c < C; c++)
      out[m * C + c] = float((row[c] - mean) * rstd * gamma[c] + beta[c]);
  }
}

void matmul(const float* x, int64_t ldx, int M, const float* W, int64_t N, int64_t K,
            const float* bias, float* y, Epilogue ep) {
  for (int m = 0; m < M; m++) {
    for (int64_t n = 0; n < N; n++) {
      double acc = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < K; k++) acc += double(x[m * ldx + k]) * double(W[n * K + k]);
      float& dst = y[m * N + n];
      switch (ep) {
        case Epilogue::Store: dst = float(acc); break;
        case Epilogue::Gelu: dst = float(gelu_new(acc)); break;
        case Epilogue::AddTo: dst = float(double(dst) + acc); break;
      }
    }
  }
}

void kv_store(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv, int layer) {
  const int64_t C = kv.C;
  for (int s = 0; s < n_seqs; s++) {
    for (int i = 0; i < seqs[s].n_new; i++) {
      const float* row = qkv + int64_t(seqs[s].row + i) * 3 * C;
      const int64_t t = seqs[s].past + i;
      const int64_t HS = C / kv.NH;
      for (int h = 0; h < kv.NH; h++) {
        for (int64_t d = 0; d < HS; d++) {
          kv_put(kv, seqs[s].blocks, layer, 0, t, h, d, row[C + h * HS + d]);
          kv_put(kv, seqs[s].blocks, layer, 1, t, h, d, row[2 * C + h * HS + d]);
        }
      }
    }
  }
}

void attention(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv, int layer,
               float* out) {
  const int64_t C = kv.C;
  const int64_t HS = C / kv.NH;
  const double scale = 1.0 / std::sqrt(double(HS));
  std::vector<double> score;
  for (int s = 0; s < n_seqs; s++) {
    for (int i = 0; i < seqs[s].n_new; i++) {
      const int64_t row = seqs[s].row + i;
      const int64_t pos = seqs[s].past + i;  // attends to positions 0..pos
      score.assign(size_t(pos + 1), 0.0);
      for (int h = 0; h < kv.NH; h++) {
        const float* q = qkv + row * 3 * C + h * HS;
        double max_score = -INFINITY;
        for (int64_t t = 0; t <= pos; t++) {
          double dot = 0;
          for (int64_t d = 0; d < HS; d++)
            dot += double(q[d]) * kv_get(kv, seqs[s].blocks, layer, 0, t, h, d);
          score[t] = dot * scale;
          max_score = std::max(max_score, score[t]);
        }
        double sum = 0;
        for (int64_t t = 0; t <= pos; t++) sum += (score[t] = std::exp(score[t] - max_score));
        for (int64_t d = 0; d < HS; d++) {
          double acc = 0;
          for (int64_t t = 0; t <= pos; t++)
            acc += score[t] * kv_get(kv, seqs[s].blocks, layer, 1, t, h, d);
          out[row * C + h * HS + d] = float(acc / sum);
        }
      }
    }
  }
}

void gather_rows(const float* x, const int32_t* rows, int n, int64_t C, float* out) {
  for (int i = 0; i < n; i++)
    for (int64_t c = 0; c < C; c++) out[i * C + c] = x[int64_t(rows[i]) * C + c];
}

void logsumexp_rows(const float* x, int rows, int64_t n, double* out) {
  for (int r = 0; r < rows; r++) {
    const float* row = x + int64_t(r) * n;
    double max = -INFINITY;
    bool nan = false;
    for (int64_t j = 0; j < n; j++) {
      if (std::isnan(row[j])) nan = true;
      else max = std::max(max, double(row[j]));
    }
    if (nan || std::isinf(max)) {
      out[r] = nan ? NAN : max;
      continue;
    }
    double sum = 0;
    for (int64_t j = 0; j < n; j++) sum += std::exp(double(row[j]) - max);
    out[r] = max + std::log(sum);
  }
}

}  // namespace llmcore::ref

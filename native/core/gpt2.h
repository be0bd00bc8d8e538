// GPT-2 (GPT2LMHeadModel): weights loaded from Hugging Face safetensors and a flat forward pass
// over a batch of sequences that reads and extends the paged KV cache.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"

namespace llmcore {

struct Gpt2Config {
  int64_t vocab_size = 0;   // V
  int64_t n_positions = 0;  // maximum sequence length
  int64_t n_embd = 0;       // C
  int64_t n_layer = 0;      // L
  int64_t n_head = 0;       // NH
  float layer_norm_epsilon = 1e-5f;
  bool tie_word_embeddings = true;
};

// Called after each op of the forward with its output (e.g. "attn_norm", layer 3) when set: to
// find the first place two backends differ, or, timed, where a step's time goes
// (native/tests/engine_bench.cpp). data is backend memory of rows x cols floats.
using DebugHook = std::function<void(const char* name, int layer, const float* data, int rows, int64_t cols)>;

class Gpt2Model {
 public:
  // Reads the tensors from the safetensors files (either key layout, with or without the
  // attn.bias buffers, lm_head present or tied) and prepares them on `backend`.
  // weight_dtype: "auto" (as stored), "f32", "f16" or "bf16". Throws Error(E_MODEL_FORMAT)
  // naming the file and tensor when anything is missing, extra or of the wrong shape.
  static std::unique_ptr<Gpt2Model> load(Backend& backend, const std::vector<std::string>& files,
                                         const Gpt2Config& config, const std::string& weight_dtype);
  ~Gpt2Model();

  const Gpt2Config& config() const { return cfg_; }
  DType weight_dtype() const { return dtype_; }
  size_t weight_bytes() const { return weight_bytes_; }  // bytes of matmul weights, as kept
  void set_debug_hook(DebugHook hook) { hook_ = std::move(hook); }

  // Runs M tokens of n_seqs sequences (each sequence's tokens are consecutive rows; see
  // AttnSeq), writing their K/V into the cache, and returns the logits of rows out_rows:
  // (n_out, V) in host memory, valid (and writable, as scratch) until the next forward.
  float* forward(const int32_t* tokens, const int32_t* positions, int M, const AttnSeq* seqs,
                 int n_seqs, const KvView& kv, const int32_t* out_rows, int n_out);

 private:
  struct Layer {
    float *ln_1_w, *ln_1_b;                  // (C)
    std::unique_ptr<Weight> c_attn_w;        // (3C, C)
    float* c_attn_b;                         // (3C)
    std::unique_ptr<Weight> attn_c_proj_w;   // (C, C)
    float* attn_c_proj_b;                    // (C)
    float *ln_2_w, *ln_2_b;                  // (C)
    std::unique_ptr<Weight> c_fc_w;          // (4C, C)
    float* c_fc_b;                           // (4C)
    std::unique_ptr<Weight> mlp_c_proj_w;    // (C, 4C)
    float* mlp_c_proj_b;                     // (C)
  };
  // Grow-only activation buffers (backend memory), sized for the largest batch seen.
  struct Activations {
    int rows = 0, out_rows = 0;
    float *x = nullptr, *xn = nullptr, *qkv = nullptr, *att = nullptr, *fc = nullptr;  // (M, *)
    float *last = nullptr, *last_n = nullptr, *logits = nullptr;                       // (n_out, *)
  };

  explicit Gpt2Model(Backend& backend) : backend_(backend) {}
  float* owned(size_t n_floats);
  void ensure_activations(int M, int n_out);

  Backend& backend_;
  Gpt2Config cfg_;
  DType dtype_ = DType::F32;
  size_t weight_bytes_ = 0;
  std::vector<float*> owned_;
  const Weight* wte_ = nullptr;     // (V, C) for the embedding: lm_head_ itself, or wte_own_
  std::unique_ptr<Weight> wte_own_;
  float* wpe_ = nullptr;  // (n_positions, C)
  std::vector<Layer> layers_;
  float *ln_f_w_ = nullptr, *ln_f_b_ = nullptr;
  std::unique_ptr<Weight> lm_head_;  // (V, C)
  Activations act_;
  std::vector<float> logits_host_;  // backends the host cannot read: the downloaded logits
  DebugHook hook_;
};

}  // namespace llmcore

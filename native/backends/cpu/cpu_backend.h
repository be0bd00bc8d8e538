// The CPU backend: packed-weight SIMD GEMM, AVX2 layernorm/attention, all on a thread pool.
// The kernel family is chosen at run time (cpu_features.h); every family is held to ops_ref.
#pragma once
#include <memory>
#include <vector>

#include "backends/cpu/big_memory.h"
#include "backends/cpu/gemm.h"
#include "core/backend.h"
#include "core/thread_pool.h"

namespace llmcore::cpu {

// How decode attention walks the KV cache, chosen per CPU (attention_tuning()); every choice
// gives the same bits. Measured in cpu_backend.cpp.
struct AttentionTuning {
  // AVX-512: a decode task of several heads reads the cache block by block, per cache dtype.
  bool block_walk_f32 = false;
  bool block_walk_f16 = false;
  bool prefetch_f16 = false;  // with the f16 block walk: prefetch one section ahead
  bool block_walk(DType kv) const { return kv == DType::F16 ? block_walk_f16 : block_walk_f32; }
  void set_walks(bool block) { block_walk_f32 = block_walk_f16 = prefetch_f16 = block; }
};
AttentionTuning attention_tuning();  // this CPU's

class CpuBackend final : public Backend {
 public:
  // isa: the kernel family to use (capped at what the CPU supports); threads <= 0: all cores.
  CpuBackend(int threads, Isa isa);
  std::string name() const override { return "cpu"; }
  std::string describe() const override;
  Isa isa() const { return isa_; }
  ThreadPool& pool() { return pool_; }

  float* alloc(size_t n_floats) override;
  void release(float* p) override;
  void upload(float* dst, const float* src_host, size_t n_floats) override;
  void download(float* dst_host, const float* src, size_t n_floats) override;
  void copy(float* dst, const float* src, size_t n_floats) override;
  void zero(float* dst, size_t n_floats) override;
  float* alloc_cache(size_t n_floats) override;
  void release_cache(float* p, size_t n_floats) override;
  bool host_addressable() const override { return true; }

  std::unique_ptr<Weight> prepare_weight(const WeightView& w, DType compute) override;

  void embed(const int32_t* tokens, const int32_t* positions, int M, int64_t C, const Weight& wte,
             const float* wpe, float* out) override;
  void layernorm(const float* x, int M, int64_t C, const float* gamma, const float* beta,
                 float eps, float* out) override;
  void matmul(const float* x, int64_t ldx, int M, const Weight& W, const float* bias, float* y,
              Epilogue ep) override;
  void kv_store(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv,
                int layer) override;
  void attention(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv, int layer,
                 float* out) override;
  void store_and_attend(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv,
                        int layer, float* out) override;
  void gather_rows(const float* x, const int32_t* rows, int n, int64_t C, float* out) override;
  void logsumexp_rows(const float* x, int rows, int64_t n, double* out_host) override;
  ThreadPool* host_pool() override { return &pool_; }
  // Tests and benches run the other walks on any CPU (the default is attention_tuning()).
  void set_attention_tuning(const AttentionTuning& t) { attn_tuning_ = t; }
  const AttentionTuning& attn_tuning() const { return attn_tuning_; }

 private:
  Isa isa_;
  AttentionTuning attn_tuning_;
  ThreadPool pool_;
  WeightArena weights_;
  std::vector<float> attn_scratch_;  // (threads, 8 x max keys): see ops_kernels.h
  static constexpr int kAttnRows = 16;  // new tokens per attention task (one chunk)
  struct AttnTask { int32_t seq, head, heads, r0, rows; };  // heads [head, head + heads)
  std::vector<AttnTask> tasks_;      // attention's work list, kept to reuse its memory
  std::vector<AttnSeq> chunked_;     // store_and_attend's sequences of several chunks
  void store_head(const float* qkv, const AttnSeq& s, int h, const KvView& kv, int layer);
  void attend(const float* qkv, const AttnSeq* seqs, int n_seqs, const KvView& kv, int layer,
              float* out, bool store_single_chunk);
};

}  // namespace llmcore::cpu

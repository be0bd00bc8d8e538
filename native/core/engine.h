// The engine: one model on one backend, its paged KV cache, and the sequences living in it.
// A step runs one batched forward pass over any mix of sequences (prompt chunks of some, one
// decode token of others) and samples their next tokens. The N-API glue calls it from worker
// threads; the TypeScript scheduler decides what goes into each step.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/backend.h"
#include "core/gpt2.h"
#include "core/kv_cache.h"
#include "core/sampler.h"

namespace llmcore {

struct EngineOptions {
  std::vector<std::string> files;  // safetensors
  Gpt2Config config;
  std::string device = "cpu";
  int threads = 0;                 // <= 0: one per core
  std::string dtype = "auto";      // matmul weight dtype: auto | f32 | f16 | bf16
  std::string kv_dtype = "auto";   // KV-cache element dtype: auto (f16 if the weights are kept in 16 bits) | f32 | f16
};

enum class LogitsMode : uint8_t { None = 0, Last = 1, All = 2 };

// As the only token of an item: the token this sequence sampled in its last step (which must
// have sampled it). Lets a caller queue a decode step before the previous one's result is back.
constexpr int32_t kLastSampled = -1;

struct StepItem {
  int32_t seq = 0;
  std::vector<int32_t> tokens;     // >= 1 new tokens to append (or {kLastSampled})
  LogitsMode logits = LogitsMode::None;
  bool sample = false;             // pick the next token from the last position's logits
  SamplingParams params;
  // With sample: after this item's tokens are in, fork one sequence per seed (as fork_sequence
  // would, sharing the KV cache) and pick each fork's first token from the same last-position
  // logits with its own generator and these params: n continuations of a prompt from one pass.
  std::vector<uint64_t> fork_seeds;
};

// A failure of one item of a step (its sampling: logits not finite, every token banned): the
// item's sequence fails, the step's others go on.
struct ItemError {
  size_t item;
  const char* code;
  std::string message;
};

struct StepResult {
  std::vector<int32_t> sampled;    // per item; -1 where not sampled (or failed: errors)
  std::vector<float> logits;       // the requested rows, item by item, (rows, V)
  std::vector<double> logsumexp;   // per row of logits: log(sum(exp(row))), the log-softmax normaliser
  std::vector<int32_t> fork_ids;      // the forks of fork_seeds, item by item, in seed order
  std::vector<int32_t> fork_sampled;  // their first tokens (-1 with fork_ids -1: its item failed)
  std::vector<ItemError> errors;      // items that failed, in item order
};

class Engine {
 public:
  static std::unique_ptr<Engine> create(const EngineOptions& options);

  const Gpt2Config& config() const { return model_->config(); }
  std::string describe() const { return backend_->describe(); }
  DType weight_dtype() const { return model_->weight_dtype(); }
  size_t weight_bytes() const { return model_->weight_bytes(); }
  Gpt2Model& model() { return *model_; }
  Backend& backend() { return *backend_; }  // for benches that switch a backend's variants

  // Sequence bookkeeping. These never wait for a running step: if one runs they throw
  // Error(E_INTERNAL, busy); the scheduler calls them only between steps.
  int32_t new_sequence(uint64_t seed);
  // A copy of parent (tokens and KV, sharing full blocks) with its own random generator.
  int32_t fork_sequence(int32_t parent, uint64_t seed);
  void release_sequence(int32_t id);
  int64_t sequence_length(int32_t id);
  size_t kv_blocks_in_use();
  // Bytes of one KV block (kBlockTokens positions of every layer's K and V).
  size_t kv_block_bytes() const { return kv_->block_bytes(); }
  DType kv_dtype() const { return kv_->dtype(); }

  // Validates every item first (E_OPTION: unknown sequence, token out of range, length over
  // n_positions, kLastSampled without a sampled token), then runs the batch. A sampling failure
  // is the item's alone (StepResult::errors); so is kLastSampled fed to a sequence whose last
  // sampling failed (a step queued behind that one), which then takes no part in the step.
  StepResult step(std::vector<StepItem> items);

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    std::vector<int32_t> tokens;
    Rng rng;
    int32_t last_sampled = -1;  // by its last step, if that step sampled (kLastSampled)
    bool sample_failed = false;  // its last step's sampling failed (an ItemError)
  };
  Engine() = default;
  Sequence& get(int32_t id, const char* what);
  int32_t fork_locked(int32_t parent, uint64_t seed);  // fork_sequence with mu_ held
  void release_locked(int32_t id);                     // release_sequence with mu_ held
  StepResult step_locked(std::vector<StepItem> items);  // step with mu_ held
  StepResult run_items(std::vector<StepItem> items);    // step_locked's items that take part
  std::unique_lock<std::mutex> lock_or_throw(const char* what);

  // Declaration order is destruction order in reverse: the backend outlives what it allocated.
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Gpt2Model> model_;
  std::unique_ptr<KvCache> kv_;
  std::unordered_map<int32_t, Sequence> seqs_;
  int32_t next_id_ = 1;
  std::vector<Sampler> samplers_;  // one per host thread
  std::mutex mu_;
};

}  // namespace llmcore

// Next-token choice with Hugging Face semantics: repetition penalty (also when greedy), then
// for sampling temperature -> top-k -> top-p -> min-p -> typical, softmax, one multinomial draw. The generator is
// per sequence and seeded, so the same seed gives the same tokens.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace llmcore {

struct SamplingParams {
  bool do_sample = false;
  float temperature = 1.0f;   // > 0
  int32_t top_k = 0;          // 0: off
  float top_p = 1.0f;         // in (0, 1]; 1: off
  float repetition_penalty = 1.0f;  // > 0; 1: off
  float min_p = 0.0f;         // in [0, 1]; 0: off
  float typical_p = 1.0f;     // in (0, 1]; 1: off
  // Tokens that may not be picked this step (eos before minNewTokens, noRepeatNgramSize and
  // badWordsIds bans); ids outside the vocabulary are ignored.
  std::vector<int32_t> banned;
};

// xoshiro256**, seeded through splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed);
  uint64_t next();
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  // Picks a token from logits (V), which it modifies. history: the tokens the sequence holds
  // (prompt + generated), for the repetition penalty. Throws Error(E_INTERNAL) on NaN logits.
  int32_t pick(float* logits, int64_t V, const SamplingParams& p, const std::vector<int32_t>& history,
               Rng& rng);

 private:
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<std::pair<double, double>> typical_;  // per candidate: log p, |-log p - entropy|
  std::vector<size_t> order_;
  std::vector<uint8_t> seen_;
};

}  // namespace llmcore

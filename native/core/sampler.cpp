#include "core/sampler.h"

#include <algorithm>
#include <cmath>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/errors.h"

namespace llmcore {

static uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void Rng::reseed(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  const auto rotl = [](uint64_t v, int k) { return (v << k) | (v >> (64 - k)); };
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

// Descending by logit; ties by lower token id, so the order never depends on the sort.
static bool higher(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// The first index of the largest logit. Two passes, because one with a running index is a
// dependent compare chain (~3 cycles a logit, 0.8 ms of a batch-32 greedy step): the max in 8
// independent lanes (vectorized), then the first position holding it. A NaN anywhere, or a
// largest value of +inf, is an error: the model output is broken. All -inf: -1 (the caller
// tells bans that leave nothing from a broken output).
static int32_t argmax(const float* x, int64_t n) {
  int64_t i = 0;
  float m = -INFINITY;
  bool nan = false;
#if defined(__SSE2__)
  // maxps(v, m) is v > m ? v : m, lane by lane (m where v is NaN: NaNs are flagged apart).
  __m128 m0 = _mm_set1_ps(-INFINITY), m1 = m0, unordered = _mm_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
    unordered = _mm_or_ps(unordered, _mm_cmpunord_ps(a, b));
    m0 = _mm_max_ps(a, m0);
    m1 = _mm_max_ps(b, m1);
  }
  nan = _mm_movemask_ps(unordered) != 0;
  alignas(16) float lanes[8];
  _mm_store_ps(lanes, m0);
  _mm_store_ps(lanes + 4, m1);
  for (float v : lanes) m = v > m ? v : m;
#endif
  for (; i < n; i++) {
    nan |= x[i] != x[i];
    m = x[i] > m ? x[i] : m;
  }
  if (!nan && m == -INFINITY) return -1;
  if (nan || !std::isfinite(m))
    throw Error(E_INTERNAL, "[sampler] logits are not finite (NaN or inf in the model output)");
  i = 0;
  while (x[i] != m) i++;
  return int32_t(i);
}

int32_t Sampler::pick(float* logits, int64_t V, const SamplingParams& p,
                      const std::vector<int32_t>& history, Rng& rng) {
  if (p.repetition_penalty != 1.0f) {  // HF RepetitionPenaltyLogitsProcessor, once per token id
    seen_.assign(size_t(V), 0);
    for (int32_t t : history) {
      if (t < 0 || t >= V || seen_[size_t(t)]) continue;
      seen_[size_t(t)] = 1;
      float& l = logits[t];
      l = l < 0 ? l * p.repetition_penalty : l / p.repetition_penalty;
    }
  }
  // HF MinNewTokens / NoRepeatNGram / NoBadWords logits processors: banned tokens get -inf.
  for (int32_t t : p.banned)
    if (t >= 0 && t < V) logits[t] = -INFINITY;
  const int32_t best = argmax(logits, V);
  if (best < 0) {
    if (!p.banned.empty())
      throw Error(E_OPTION, "[sampler] every token is banned (badWordsIds, noRepeatNgramSize or minNewTokens leave none "
                            "to pick)");
    throw Error(E_INTERNAL, "[sampler] logits are not finite (NaN or inf in the model output)");
  }
  if (!p.do_sample) return best;

  const float inv_t = 1.0f / p.temperature;
  cand_.clear();
  for (int64_t i = 0; i < V; i++) cand_.push_back({logits[i] * inv_t, int32_t(i)});

  if (p.top_k > 0 && p.top_k < V) {  // keep every token >= the k-th largest (HF keeps ties)
    std::nth_element(cand_.begin(), cand_.begin() + (p.top_k - 1), cand_.end(), higher);
    const float kth = cand_[size_t(p.top_k - 1)].first;
    cand_.erase(std::remove_if(cand_.begin(), cand_.end(),
                               [kth](const std::pair<float, int32_t>& c) { return c.first < kth; }),
                cand_.end());
  }

  const float max_logit = logits[best] * inv_t;
  double total = 0;
  for (const auto& c : cand_) total += std::exp(double(c.first) - max_logit);

  size_t n_keep = cand_.size();
  if (p.top_p < 1.0f) {
    // HF TopPLogitsWarper drops the ascending-sorted prefix with cumulative prob <= 1 - top_p,
    // i.e. keeps, in descending order, each token whose predecessors sum to < top_p. Sort only
    // as much of the list as that needs.
    size_t sorted = std::min<size_t>(cand_.size(), 256);
    for (;;) {
      std::partial_sort(cand_.begin(), cand_.begin() + sorted, cand_.end(), higher);
      double cum = 0;
      size_t r = 0;
      for (; r < sorted && cum < p.top_p * total; r++) cum += std::exp(double(cand_[r].first) - max_logit);
      if (cum >= p.top_p * total || sorted == cand_.size()) {
        n_keep = std::max<size_t>(r, 1);
        break;
      }
      sorted = std::min(cand_.size(), sorted * 4);
    }
    cand_.resize(n_keep);
  }

  if (p.min_p > 0.0f) {
    // HF MinPLogitsWarper: keep the tokens whose probability is >= min_p x the largest one's,
    // i.e. whose scaled logit is >= the largest + log(min_p) (the largest always stays)
    const double floor = double(max_logit) + std::log(double(p.min_p));
    cand_.erase(std::remove_if(cand_.begin(), cand_.end(),
                               [floor](const std::pair<float, int32_t>& c) { return double(c.first) < floor; }),
                cand_.end());
  }

  if (p.typical_p < 1.0f && cand_.size() > 1) {
    // HF TypicalLogitsWarper over the tokens still in: rank them by |-log p - H| (H the entropy),
    // and keep every token ranked no worse than the one at which the cumulative probability in
    // that order first reaches typical_p.
    double z = 0;
    for (const auto& c : cand_) z += std::exp(double(c.first) - max_logit);
    const double log_z = std::log(z);
    double entropy = 0;
    typical_.clear();
    for (const auto& c : cand_) {
      const double lp = double(c.first) - max_logit - log_z;
      entropy -= std::exp(lp) * lp;
      typical_.push_back({lp, 0.0});
    }
    for (auto& t : typical_) t.second = std::fabs(-t.first - entropy);
    order_.resize(cand_.size());
    for (size_t i = 0; i < order_.size(); i++) order_[i] = i;
    std::sort(order_.begin(), order_.end(), [&](size_t a, size_t b) {
      return typical_[a].second < typical_[b].second ||
             (typical_[a].second == typical_[b].second && cand_[a].second < cand_[b].second);
    });
    double cum = 0;
    size_t last = 0;  // how many tokens, in that order, sum to < typical_p
    for (size_t i : order_) {
      cum += std::exp(typical_[i].first);
      if (cum < double(p.typical_p)) last++;
      else break;
    }
    last = std::min(last, order_.size() - 1);
    const double keep_to = typical_[order_[last]].second;
    size_t w = 0;
    for (size_t i = 0; i < cand_.size(); i++)
      if (typical_[i].second <= keep_to) cand_[w++] = cand_[i];
    cand_.resize(w);
  }

  double sum = 0;
  for (const auto& c : cand_) sum += std::exp(double(c.first) - max_logit);
  double u = rng.uniform() * sum;
  for (const auto& c : cand_) {
    u -= std::exp(double(c.first) - max_logit);
    if (u < 0) return c.second;
  }
  return cand_.back().second;  // rounding left u >= 0 after the last token
}

}  // namespace llmcore

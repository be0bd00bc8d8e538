#include "core/engine.h"

#include <algorithm>
#include <unordered_set>

#include "core/errors.h"

namespace llmcore {

std::unique_ptr<Engine> Engine::create(const EngineOptions& o) {
  if (o.kv_dtype != "auto" && o.kv_dtype != "f32" && o.kv_dtype != "f16")  // before the (slow) weight load
    throw Error(E_OPTION, "[engine] KV-cache dtype '" + o.kv_dtype + "': expected 'auto', 'f32' or 'f16'");
  std::unique_ptr<Engine> e(new Engine());
  e->backend_ = create_backend(o.device, o.threads);
  e->model_ = Gpt2Model::load(*e->backend_, o.files, o.config, o.dtype);
  const Gpt2Config& c = e->model_->config();
  // auto: the cache in the width the weights are kept in, as HF keeps it in the model's dtype
  // (f16 rather than bf16: the same bytes, 3 more mantissa bits; the values are bounded).
  const bool kv_f16 = o.kv_dtype == "f16" ||
                      (o.kv_dtype == "auto" && e->model_->weight_dtype() != DType::F32);
  e->kv_ = std::make_unique<KvCache>(*e->backend_, int(c.n_layer), c.n_embd, int(c.n_head),
                                     kv_f16 ? DType::F16 : DType::F32);
  ThreadPool* pool = e->backend_->host_pool();
  e->samplers_.resize(pool ? size_t(pool->size()) : 1);
  return e;
}

std::unique_lock<std::mutex> Engine::lock_or_throw(const char* what) {
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  if (!lock.owns_lock())
    throw Error(E_INTERNAL, std::string("[engine] ") + what + ": a step is running");
  return lock;
}

Engine::Sequence& Engine::get(int32_t id, const char* what) {
  auto it = seqs_.find(id);
  if (it == seqs_.end())
    throw Error(E_OPTION, std::string("[engine] ") + what + ": no sequence " + std::to_string(id));
  return it->second;
}

int32_t Engine::new_sequence(uint64_t seed) {
  auto lock = lock_or_throw("new sequence");
  const int32_t id = next_id_++;
  seqs_[id].rng.reseed(seed);
  return id;
}

int32_t Engine::fork_sequence(int32_t parent_id, uint64_t seed) {
  auto lock = lock_or_throw("fork sequence");
  return fork_locked(parent_id, seed);
}

int32_t Engine::fork_locked(int32_t parent_id, uint64_t seed) {
  const Sequence& parent = get(parent_id, "fork sequence");
  Sequence child;
  child.tokens = parent.tokens;
  child.rng.reseed(seed);
  // Full blocks are shared; the partly filled last block is copied, since both will write to it.
  const size_t used = (parent.tokens.size() + kBlockTokens - 1) / kBlockTokens;
  const size_t full = parent.tokens.size() / kBlockTokens;
  for (size_t i = 0; i < used; i++) {
    const int32_t b = parent.blocks[i];
    if (i < full) {
      kv_->retain(b);
      child.blocks.push_back(b);
    } else {
      const int32_t copy = kv_->allocate();
      kv_->copy_block(copy, b);
      child.blocks.push_back(copy);
    }
  }
  const int32_t id = next_id_++;
  seqs_[id] = std::move(child);
  return id;
}

void Engine::release_sequence(int32_t id) {
  auto lock = lock_or_throw("release sequence");
  release_locked(id);
}

void Engine::release_locked(int32_t id) {
  Sequence& s = get(id, "release sequence");
  for (int32_t b : s.blocks) kv_->release(b);
  seqs_.erase(id);
}

int64_t Engine::sequence_length(int32_t id) {
  auto lock = lock_or_throw("sequence length");
  return int64_t(get(id, "sequence length").tokens.size());
}

size_t Engine::kv_blocks_in_use() {
  auto lock = lock_or_throw("kv stats");
  return kv_->blocks_in_use();
}

StepResult Engine::step(std::vector<StepItem> items) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int32_t> ids(items.size());
  for (size_t i = 0; i < items.size(); i++) ids[i] = items[i].seq;
  try {
    return step_locked(std::move(items));
  } catch (...) {
    // A step queued behind this one must not feed these sequences a stale sample.
    for (int32_t id : ids) {
      auto it = seqs_.find(id);
      if (it != seqs_.end()) it->second.last_sampled = -1;
    }
    throw;
  }
}

StepResult Engine::step_locked(std::vector<StepItem> items) {
  // A sequence whose last sampling failed, fed that sample by a step queued behind the failing
  // one: it takes no part (its owner is failing it), and the step's other items go on.
  std::vector<ItemError> dropped;
  std::vector<size_t> live_index;  // run_items' item -> its index in `items`
  std::vector<StepItem> live;
  for (size_t i = 0; i < items.size(); i++) {
    StepItem& it = items[i];
    const auto s = seqs_.find(it.seq);
    if (s != seqs_.end() && s->second.sample_failed && it.tokens.size() == 1 && it.tokens[0] == kLastSampled &&
        it.logits == LogitsMode::None && it.fork_seeds.empty()) {
      dropped.push_back({i, E_INTERNAL, "[engine] step: sequence " + std::to_string(it.seq) +
                                            " is fed its last sample, but that sampling failed"});
      continue;
    }
    live_index.push_back(i);
    live.push_back(std::move(it));
  }
  if (dropped.empty()) return run_items(std::move(live));
  StepResult r = run_items(std::move(live));
  std::vector<int32_t> sampled(items.size(), -1);
  for (size_t j = 0; j < live_index.size(); j++) sampled[live_index[j]] = r.sampled[j];
  r.sampled = std::move(sampled);
  for (ItemError& e : r.errors) e.item = live_index[e.item];
  r.errors.insert(r.errors.end(), dropped.begin(), dropped.end());
  std::sort(r.errors.begin(), r.errors.end(), [](const ItemError& a, const ItemError& b) { return a.item < b.item; });
  return r;
}

StepResult Engine::run_items(std::vector<StepItem> items) {
  const Gpt2Config& cfg = model_->config();
  const int64_t V = cfg.vocab_size;

  // 1) Validate everything before changing anything.
  std::unordered_set<int32_t> in_step;
  int64_t M = 0;
  for (StepItem& it : items) {
    const Sequence& s = get(it.seq, "step");
    if (!in_step.insert(it.seq).second)
      throw Error(E_OPTION, "[engine] step: sequence " + std::to_string(it.seq) + " given twice");
    if (it.tokens.empty())
      throw Error(E_OPTION, "[engine] step: sequence " + std::to_string(it.seq) + " has no new tokens");
    if (it.tokens.size() == 1 && it.tokens[0] == kLastSampled) {
      if (s.last_sampled < 0)
        throw Error(E_OPTION, "[engine] step: sequence " + std::to_string(it.seq) +
                                  " is fed its last sampled token, but its last step sampled none");
      it.tokens[0] = s.last_sampled;
    }
    for (int32_t t : it.tokens)
      if (t < 0 || t >= V)
        throw Error(E_OPTION, "[engine] step: token id " + std::to_string(t) + " outside the vocabulary [0, " +
                                  std::to_string(V) + ")");
    const int64_t len = int64_t(s.tokens.size() + it.tokens.size());
    if (len > cfg.n_positions)
      throw Error(E_OPTION, "[engine] step: sequence of " + std::to_string(len) +
                                " tokens exceeds n_positions=" + std::to_string(cfg.n_positions));
    if (!it.fork_seeds.empty() && !it.sample)
      throw Error(E_OPTION, "[engine] step: sequence " + std::to_string(it.seq) + " forks without sampling");
    M += int64_t(it.tokens.size());
  }
  if (items.empty()) return {};

  // 2) KV blocks for the new positions; a shared block about to be written is copied first.
  for (const StepItem& it : items) {
    Sequence& s = seqs_[it.seq];
    const size_t first = s.tokens.size() / kBlockTokens;
    if (first < s.blocks.size() && kv_->refcount(s.blocks[first]) > 1) {
      const int32_t copy = kv_->allocate();
      kv_->copy_block(copy, s.blocks[first]);
      kv_->release(s.blocks[first]);
      s.blocks[first] = copy;
    }
    const size_t need = (s.tokens.size() + it.tokens.size() + kBlockTokens - 1) / kBlockTokens;
    while (s.blocks.size() < need) s.blocks.push_back(kv_->allocate());
  }

  // 3) The batch: rows of each sequence consecutive; which rows need logits.
  std::vector<int32_t> tokens, positions, out_rows;
  std::vector<AttnSeq> attn;
  std::vector<size_t> first_out(items.size()), n_out(items.size());
  tokens.reserve(size_t(M));
  positions.reserve(size_t(M));
  for (size_t i = 0; i < items.size(); i++) {
    const StepItem& it = items[i];
    const Sequence& s = seqs_[it.seq];
    const int32_t row = int32_t(tokens.size()), past = int32_t(s.tokens.size());
    const int32_t n = int32_t(it.tokens.size());
    attn.push_back(AttnSeq{row, n, past, s.blocks.data()});
    for (int32_t j = 0; j < n; j++) {
      tokens.push_back(it.tokens[size_t(j)]);
      positions.push_back(past + j);
    }
    first_out[i] = out_rows.size();
    if (it.logits == LogitsMode::All)
      for (int32_t j = 0; j < n; j++) out_rows.push_back(row + j);
    else if (it.logits == LogitsMode::Last || it.sample)
      out_rows.push_back(row + n - 1);
    n_out[i] = out_rows.size() - first_out[i];
  }
  // The logits are the model's own buffer (no per-step copy); sampling then edits them in place.
  float* logits = model_->forward(tokens.data(), positions.data(), int(M), attn.data(), int(attn.size()),
                                  kv_->view(), out_rows.data(), int(out_rows.size()));

  // 4) Extend the sequences; return the requested rows (copied before sampling changes them).
  StepResult result;
  result.sampled.assign(items.size(), -1);
  for (size_t i = 0; i < items.size(); i++) {
    const StepItem& it = items[i];
    Sequence& s = seqs_[it.seq];
    s.tokens.insert(s.tokens.end(), it.tokens.begin(), it.tokens.end());
    s.last_sampled = -1;  // set below if this step samples it
    s.sample_failed = false;
    if (it.logits != LogitsMode::None) {
      result.logits.insert(result.logits.end(), logits + int64_t(first_out[i]) * V,
                           logits + int64_t(first_out[i] + n_out[i]) * V);
      // (beam search needs log-probabilities: a vector pass here instead of one in JS)
      result.logsumexp.resize(result.logsumexp.size() + n_out[i]);
      backend_->logsumexp_rows(logits + int64_t(first_out[i]) * V, int(n_out[i]), V,
                               result.logsumexp.data() + result.logsumexp.size() - n_out[i]);
    }
  }
  // 5) The forks, each with its own copy of the parent's row (sampling edits a row in place).
  std::vector<float> fork_rows;
  size_t n_forks = 0;
  for (const StepItem& it : items) n_forks += it.fork_seeds.size();
  fork_rows.resize(n_forks * size_t(V));
  struct Pick {
    float* row;
    const SamplingParams* params;
    int32_t seq;
    int32_t* out;
    size_t item;  // whose pick (a fork's is its parent item's)
  };
  std::vector<Pick> picks;
  result.fork_ids.reserve(n_forks);
  result.fork_sampled.assign(n_forks, -1);
  // A failure from here on (no KV block for a fork, NaN logits) releases the forks made so far:
  // their ids never reach the caller.
  try {
    size_t f = 0;
    for (size_t i = 0; i < items.size(); i++) {
      const StepItem& it = items[i];
      if (!it.sample) continue;
      float* row = logits + int64_t(first_out[i] + n_out[i] - 1) * V;
      for (uint64_t seed : it.fork_seeds) {
        result.fork_ids.push_back(fork_locked(it.seq, seed));
        float* copy = fork_rows.data() + f * size_t(V);
        std::copy(row, row + V, copy);
        picks.push_back(Pick{copy, &it.params, result.fork_ids[f], &result.fork_sampled[f], i});
        f++;
      }
      picks.push_back(Pick{row, &it.params, it.seq, &result.sampled[i], i});
    }
    auto sample_one = [&](int64_t j, int tid) {
      const Pick& pk = picks[size_t(j)];
      Sequence& s = seqs_.find(pk.seq)->second;  // lookup only: safe from pool threads
      *pk.out = samplers_[size_t(tid)].pick(pk.row, V, *pk.params, s.tokens, s.rng);
    };
    // A sampling failure (logits not finite, every token banned) is its item's alone: caught in
    // the task (nothing may escape a pool task), then that item's sequence and forks fail.
    std::vector<ItemError> failed(picks.size(), ItemError{0, nullptr, {}});
    auto guarded = [&](int64_t j, int tid) {
      try {
        sample_one(j, tid);
      } catch (const Error& e) {
        failed[size_t(j)] = {picks[size_t(j)].item, e.code(), e.what()};
      } catch (const std::exception& e) {
        failed[size_t(j)] = {picks[size_t(j)].item, E_INTERNAL, e.what()};
      }
    };
    ThreadPool* pool = backend_->host_pool();
    if (pool && picks.size() > 1)
      pool->parallel_for(int64_t(picks.size()), guarded);
    else
      for (size_t j = 0; j < picks.size(); j++) guarded(int64_t(j), 0);
    std::vector<char> item_failed(items.size(), 0);
    for (const ItemError& e : failed)  // picks go item by item, so the errors do too
      if (e.code && !item_failed[e.item]) {
        item_failed[e.item] = 1;
        result.errors.push_back(e);
      }
    for (const Pick& pk : picks) {
      if (item_failed[pk.item]) {
        *pk.out = -1;
        if (pk.seq != items[pk.item].seq) {  // a fork made for the failed item: gone again
          release_locked(pk.seq);
          for (int32_t& id : result.fork_ids) if (id == pk.seq) id = -1;
        }
      }
    }
    for (size_t i = 0; i < items.size(); i++) {
      if (!items[i].sample) continue;
      Sequence& s = seqs_.find(items[i].seq)->second;
      s.sample_failed = item_failed[i] != 0;
      s.last_sampled = result.sampled[i];
    }
    for (const Pick& pk : picks)
      if (!item_failed[pk.item] && pk.seq != items[pk.item].seq) seqs_.find(pk.seq)->second.last_sampled = *pk.out;
  } catch (...) {
    for (int32_t id : result.fork_ids)
      if (id >= 0) release_locked(id);
    throw;
  }
  return result;
}

}  // namespace llmcore

// Standalone engine benchmark with a per-op profile. Loads a Hugging Face GPT-2 checkpoint
// directory (config.json + model.safetensors) into the same Engine the addon drives, prefills
// B prompts in one step, runs batched greedy decode steps, and prints where a step's time goes,
// op by op of the flat forward (timed between the model's op-hook calls). Needs no Node, so a
// backend can be profiled on a machine without it.
//   engine_bench DIR [--batch=32] [--prompt=16] [--steps=32] [--dtype=auto|f32|f16|bf16]
//                    [--kv-dtype=auto|f32|f16] [--threads=N] [--device=cpu] [--rounds=N] [--ab-walk]
// --ab-walk (CPU backend, AVX-512): decode steps alternate between the two decode attention
// walks (cpu::AttentionTuning), and each walk's median step and attention times are printed.
// --rounds=N runs it all N times, releasing the sequences in between: from the second round on
// the KV cache reuses its blocks, as a server's does, instead of growing; the op table is the
// last round's.
// The op times are wall time on the calling thread: right for backends whose ops return when
// done (the CPU); an asynchronous backend must synchronize in its ops while profiled.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "core/engine.h"
#include "core/errors.h"
#include "core/json.h"

using namespace llmcore;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Gpt2Config read_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(E_IO, "[engine_bench] cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  const JsonValue j = parse_json(text.data(), text.size(), path);
  auto num = [&](const char* key, double def) {
    const JsonValue* v = j.find(key);
    return v && v->is_number() ? v->as_number() : def;
  };
  Gpt2Config c;
  c.vocab_size = int64_t(num("vocab_size", 50257));
  c.n_positions = int64_t(num("n_positions", 1024));
  c.n_embd = int64_t(num("n_embd", 768));
  c.n_layer = int64_t(num("n_layer", 12));
  c.n_head = int64_t(num("n_head", 12));
  c.layer_norm_epsilon = float(num("layer_norm_epsilon", 1e-5));
  const JsonValue* tie = j.find("tie_word_embeddings");
  c.tie_word_embeddings = !tie || !tie->is_bool() || tie->as_bool();
  return c;
}

// Per-op wall time: the time since the previous hook call (or the step's start) goes to the op
// that just finished. Ops of every layer add up under one name.
struct Profile {
  std::vector<std::string> order;
  std::map<std::string, double> secs;
  double last = 0;
  void add(const std::string& op, double t) {
    if (!secs.count(op)) order.push_back(op);
    secs[op] += t;
  }
  void reset() {
    order.clear();
    secs.clear();
  }
};

// Which ops each hook name closes (the forward's dump names, see gpt2.cpp).
const char* op_label(const std::string& name) {
  static const std::map<std::string, const char*> labels = {
      {"embd", "embed (+ step setup)"},        {"attn_norm", "layernorm 1"},
      {"qkv", "matmul qkv"},                   {"attn_out", "kv_store + attention"},
      {"attn_resid", "matmul attn.proj + residual"}, {"ffn_norm", "layernorm 2"},
      {"ffn_gelu", "matmul fc + gelu"},        {"ffn_resid", "matmul mlp.proj + residual"},
      {"out_norm", "gather + final layernorm"}, {"logits", "matmul lm_head"},
  };
  auto it = labels.find(name);
  return it == labels.end() ? "?" : it->second;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: engine_bench DIR [--batch=32] [--prompt=16] [--steps=32] "
                         "[--dtype=auto|f32|f16|bf16] [--kv-dtype=auto|f32|f16] [--threads=N] "
                         "[--device=cpu] [--rounds=N] [--ab-walk]\n");
    return 2;
  }
  const std::string dir = argv[1];
  int batch = 32, prompt = 16, steps = 32, threads = 0, rounds = 1;
  std::string dtype = "auto", device = "cpu", kv_dtype = "auto";
  bool ab_walk = false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&](const char* key) -> const char* {
      const size_t n = std::strlen(key);
      return a.compare(0, n, key) == 0 ? a.c_str() + n : nullptr;
    };
    if (const char* v = val("--batch=")) batch = std::atoi(v);
    else if (const char* v = val("--prompt=")) prompt = std::atoi(v);
    else if (const char* v = val("--steps=")) steps = std::atoi(v);
    else if (const char* v = val("--threads=")) threads = std::atoi(v);
    else if (const char* v = val("--rounds=")) rounds = std::atoi(v);
    else if (const char* v = val("--dtype=")) dtype = v;
    else if (const char* v = val("--kv-dtype=")) kv_dtype = v;
    else if (const char* v = val("--device=")) device = v;
    else if (a == "--ab-walk") ab_walk = true;
    else {
      std::fprintf(stderr, "engine_bench: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  try {
    EngineOptions opt;
    opt.files = {dir + "/model.safetensors"};
    opt.config = read_config(dir);
    opt.device = device;
    opt.threads = threads;
    opt.dtype = dtype;
    opt.kv_dtype = kv_dtype;
    const Gpt2Config& c = opt.config;
    if (batch < 1 || prompt < 1 || steps < 1 || rounds < 1 || prompt + steps + 1 > c.n_positions) {
      std::fprintf(stderr, "engine_bench: need batch, prompt, steps, rounds >= 1 and prompt + steps < n_positions\n");
      return 2;
    }
    const double t_load = now_s();
    auto engine = Engine::create(opt);
    std::printf("model %s: n_layer %lld, n_embd %lld, vocab %lld; %s; weights %s, %.1f MB; KV cache %s; "
                "load %.2f s\n",
                dir.c_str(), (long long)c.n_layer, (long long)c.n_embd, (long long)c.vocab_size,
                engine->describe().c_str(), dtype_name(engine->weight_dtype()),
                engine->weight_bytes() / 1e6, dtype_name(engine->kv_dtype()), now_s() - t_load);

    cpu::CpuBackend* cpu_be = nullptr;
    if (ab_walk) {
      cpu_be = dynamic_cast<cpu::CpuBackend*>(&engine->backend());
      if (!cpu_be || cpu_be->isa() < cpu::Isa::Avx512) {
        std::fprintf(stderr, "engine_bench: --ab-walk needs the CPU backend with AVX-512 kernels\n");
        return 2;
      }
    }
    Profile prof;
    engine->model().set_debug_hook([&](const char* name, int, const float*, int, int64_t) {
      const double t = now_s();
      prof.add(name, t - prof.last);
      prof.last = t;
    });
    auto timed_step = [&](const std::vector<StepItem>& items) {
      prof.last = now_s();
      StepResult r = engine->step(items);
      const double t = now_s();
      prof.add("sample", t - prof.last);
      return r;
    };

    for (int round = 0; round < rounds; ++round) {
      prof.reset();
      std::vector<StepItem> items(static_cast<size_t>(batch));
      for (int b = 0; b < batch; ++b) {
        items[size_t(b)].seq = engine->new_sequence(uint64_t(b));
        for (int t = 0; t < prompt; ++t) items[size_t(b)].tokens.push_back((b * 977 + t * 131) % int(c.vocab_size));
        items[size_t(b)].sample = true;
      }
      double t0 = now_s();
      StepResult r = timed_step(items);
      const double prefill_s = now_s() - t0;
      std::map<std::string, double> prefill_ops = prof.secs;
      std::vector<std::string> prefill_order = prof.order;
      prof.reset();

      std::vector<double> step_s;
      std::vector<double> walk_step[2], walk_attn[2];  // --ab-walk: [head walk, block walk]
      for (int s = 0; s < steps; ++s) {
        for (int b = 0; b < batch; ++b) items[size_t(b)].tokens.assign(1, r.sampled[size_t(b)]);
        const int walk = s % 2;
        if (cpu_be) {
          cpu::AttentionTuning t;
          t.set_walks(walk == 1);
          cpu_be->set_attention_tuning(t);
        }
        const double attn_before = prof.secs.count("attn_out") ? prof.secs["attn_out"] : 0.0;
        t0 = now_s();
        r = timed_step(items);
        step_s.push_back(now_s() - t0);
        if (cpu_be) {
          walk_step[walk].push_back(step_s.back());
          walk_attn[walk].push_back(prof.secs["attn_out"] - attn_before);
        }
      }
      if (cpu_be) {
        auto median = [](std::vector<double> v) {
          std::sort(v.begin(), v.end());
          return v.empty() ? 0.0 : v[v.size() / 2];
        };
        if (rounds > 1) std::printf("round %d: ", round + 1);
        std::printf("walks alternating step by step: head walk step %.2f ms, attention %.3f ms; "
                    "block walk step %.2f ms, attention %.3f ms (medians)\n",
                    median(walk_step[0]) * 1e3, median(walk_attn[0]) * 1e3, median(walk_step[1]) * 1e3,
                    median(walk_attn[1]) * 1e3);
        cpu_be->set_attention_tuning(cpu::attention_tuning());
      }
      std::vector<double> sorted = step_s;
      std::sort(sorted.begin(), sorted.end());
      const double total = [&] {
        double x = 0;
        for (double v : step_s) x += v;
        return x;
      }();
      if (rounds > 1) std::printf("round %d: ", round + 1);
      std::printf("prefill: %d x %d tokens in %.1f ms (%.0f tok/s)\n", batch, prompt, prefill_s * 1e3,
                  batch * prompt / prefill_s);
      // max: a step that grew the KV cache by a chunk (every 16 steps at batch 32) stands out.
      if (rounds > 1) std::printf("round %d: ", round + 1);
      std::printf("decode: batch %d, %d steps: median %.2f ms/step (min %.2f, max %.2f), %.1f tok/s\n\n", batch,
                  steps, sorted[sorted.size() / 2] * 1e3, sorted[0] * 1e3, sorted.back() * 1e3,
                  batch / sorted[sorted.size() / 2]);
      auto table = [](const char* title, const std::vector<std::string>& order,
                      const std::map<std::string, double>& secs, double wall, int divide) {
        std::printf("%-34s %12s %8s\n", title, divide > 1 ? "ms/step" : "ms", "share");
        for (const std::string& op : order) {
          const double t = secs.at(op);
          std::printf("  %-32s %12.3f %7.1f%%\n", op == "sample" ? "sampling + step bookkeeping" : op_label(op),
                      t * 1e3 / divide, 100 * t / wall);
        }
        std::printf("\n");
      };
      if (round == rounds - 1) {
        table("prefill op", prefill_order, prefill_ops, prefill_s, 1);
        table("decode op (all layers)", prof.order, prof.secs, total, steps);
      }
      for (int b = 0; b < batch; ++b) engine->release_sequence(items[size_t(b)].seq);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "engine_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

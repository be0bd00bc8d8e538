#include "core/gpt2.h"

#include <algorithm>
#include <map>
#include <set>

#include "core/errors.h"
#include "core/safetensors.h"

namespace llmcore {

namespace {

// All tensors of a checkpoint (one or more safetensors files) by name, and which were used.
class TensorSet {
 public:
  explicit TensorSet(const std::vector<std::string>& paths) {
    if (paths.empty()) throw Error(E_MODEL_FORMAT, "[model] no safetensors file given");
    for (const auto& path : paths) {
      files_.push_back(SafetensorsFile::open(path));
      for (const auto& t : files_.back()->tensors()) {
        if (!by_name_.emplace(t.name, Entry{&t, path}).second)
          throw Error(E_MODEL_FORMAT, "[model] tensor '" + t.name + "' appears in two files ("
                                          + by_name_[t.name].path + " and " + path + ")");
      }
    }
    if (by_name_.count("wte.weight")) prefix_ = "";
    else if (by_name_.count("transformer.wte.weight")) prefix_ = "transformer.";
    else
      throw Error(E_MODEL_FORMAT, "[model] " + paths[0] +
                                      ": missing tensor 'wte.weight' (also looked for "
                                      "'transformer.wte.weight'); is this a GPT-2 checkpoint?");
  }

  bool has(const std::string& name) const { return by_name_.count(name) != 0; }

  // The tensor `name` (under the detected prefix unless absolute), checked against `shape`.
  const TensorInfo& get(const std::string& name, const std::vector<int64_t>& shape,
                        const std::string& why, bool absolute = false) {
    const std::string full = absolute ? name : prefix_ + name;
    auto it = by_name_.find(full);
    if (it == by_name_.end())
      throw Error(E_MODEL_FORMAT, "[model] " + files_[0]->path() + ": missing tensor '" + full + "'");
    if (it->second.info->shape != shape)
      throw Error(E_MODEL_FORMAT, "[model] " + it->second.path + ": tensor '" + full + "' has shape " +
                                      shape_str(it->second.info->shape) + ", expected " +
                                      shape_str(shape) + " (" + why + ")");
    used_.insert(full);
    return *it->second.info;
  }

  void check_all_used() const {
    for (const auto& [name, entry] : by_name_)
      if (!used_.count(name))
        throw Error(E_MODEL_FORMAT, "[model] " + entry.path + ": unexpected tensor '" + name +
                                        "' " + shape_str(entry.info->shape) +
                                        " for a GPT2LMHeadModel with this config.json");
  }

 private:
  struct Entry {
    const TensorInfo* info;
    std::string path;
  };
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> by_name_;
  std::set<std::string> used_;
  std::string prefix_;
};

DType parse_dtype(const std::string& s) {
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  throw Error(E_OPTION, "[model] dtype '" + s + "': expected 'auto', 'f32', 'f16' or 'bf16'");
}

}  // namespace

float* Gpt2Model::owned(size_t n_floats) {
  float* p = backend_.alloc(n_floats);
  owned_.push_back(p);
  return p;
}

Gpt2Model::~Gpt2Model() {
  for (float* p : owned_) backend_.release(p);
  const Activations& a = act_;
  for (float* p : {a.x, a.xn, a.qkv, a.att, a.fc, a.last, a.last_n, a.logits})
    if (p) backend_.release(p);
}

std::unique_ptr<Gpt2Model> Gpt2Model::load(Backend& backend, const std::vector<std::string>& files,
                                           const Gpt2Config& cfg, const std::string& weight_dtype) {
  const int64_t V = cfg.vocab_size, P = cfg.n_positions, C = cfg.n_embd, L = cfg.n_layer;
  if (V <= 0 || P <= 0 || C <= 0 || L <= 0 || cfg.n_head <= 0 || C % cfg.n_head != 0)
    throw Error(E_MODEL_FORMAT, "[model] bad config: vocab_size, n_positions, n_embd, n_layer, "
                                "n_head must be positive and n_embd divisible by n_head");
  const bool auto_dtype = weight_dtype == "auto";
  const DType forced = auto_dtype ? DType::F32 : parse_dtype(weight_dtype);

  std::unique_ptr<Gpt2Model> m(new Gpt2Model(backend));
  m->cfg_ = cfg;
  TensorSet ts(files);
  const std::string c_why = "n_embd=" + std::to_string(C);

  // Small tensors (embeddings, norms, biases) are kept in fp32.
  auto vec = [&](const TensorInfo& t) {
    std::vector<float> host(size_t(t.numel()));
    for (size_t i = 0; i < host.size(); i++) host[i] = load_as_f32(t.data, t.dtype, i);
    float* dev = m->owned(host.size());
    backend.upload(dev, host.data(), host.size());
    return dev;
  };
  auto matrix = [&](const TensorInfo& t, int64_t n, int64_t k, bool kn) {
    const DType compute = auto_dtype ? t.dtype : forced;
    auto w = backend.prepare_weight(WeightView{t.data, t.dtype, n, k, kn, t.name}, compute);
    m->weight_bytes_ += size_t(n * k) * dtype_size(compute);
    return w;
  };

  const TensorInfo& wte = ts.get("wte.weight", {V, C}, "vocab_size=" + std::to_string(V) + ", " + c_why);
  m->dtype_ = auto_dtype ? wte.dtype : forced;
  m->wpe_ = vec(ts.get("wpe.weight", {P, C}, "n_positions=" + std::to_string(P) + ", " + c_why));
  for (int64_t l = 0; l < L; l++) {
    const std::string h = "h." + std::to_string(l) + ".";
    Layer layer;
    layer.ln_1_w = vec(ts.get(h + "ln_1.weight", {C}, c_why));
    layer.ln_1_b = vec(ts.get(h + "ln_1.bias", {C}, c_why));
    layer.c_attn_w = matrix(ts.get(h + "attn.c_attn.weight", {C, 3 * C}, c_why), 3 * C, C, true);
    layer.c_attn_b = vec(ts.get(h + "attn.c_attn.bias", {3 * C}, c_why));
    layer.attn_c_proj_w = matrix(ts.get(h + "attn.c_proj.weight", {C, C}, c_why), C, C, true);
    layer.attn_c_proj_b = vec(ts.get(h + "attn.c_proj.bias", {C}, c_why));
    layer.ln_2_w = vec(ts.get(h + "ln_2.weight", {C}, c_why));
    layer.ln_2_b = vec(ts.get(h + "ln_2.bias", {C}, c_why));
    layer.c_fc_w = matrix(ts.get(h + "mlp.c_fc.weight", {C, 4 * C}, c_why), 4 * C, C, true);
    layer.c_fc_b = vec(ts.get(h + "mlp.c_fc.bias", {4 * C}, c_why));
    layer.mlp_c_proj_w = matrix(ts.get(h + "mlp.c_proj.weight", {4 * C, C}, c_why), C, 4 * C, true);
    layer.mlp_c_proj_b = vec(ts.get(h + "mlp.c_proj.bias", {C}, c_why));
    m->layers_.push_back(std::move(layer));
  }
  m->ln_f_w_ = vec(ts.get("ln_f.weight", {C}, c_why));
  m->ln_f_b_ = vec(ts.get("ln_f.bias", {C}, c_why));
  // lm_head.weight is never prefixed. HF ties it to wte unless tie_word_embeddings is false.
  const bool has_head = ts.has("lm_head.weight");
  if (has_head) {
    const TensorInfo& head = ts.get("lm_head.weight", {V, C}, "vocab_size x n_embd", true);
    if (!cfg.tie_word_embeddings) m->lm_head_ = matrix(head, V, C, false);
  } else if (!cfg.tie_word_embeddings) {
    throw Error(E_MODEL_FORMAT, "[model] " + files[0] +
                                    ": missing tensor 'lm_head.weight' (config.json sets "
                                    "tie_word_embeddings to false)");
  }
  if (!m->lm_head_) m->lm_head_ = matrix(wte, V, C, false);
  // The embedding reads wte through the tied LM head when that holds the stored values (no
  // dtype conversion): no second copy of the largest tensor. Otherwise (a converted dtype, an
  // untied head) wte gets an exact fp32 copy of its own, so embeddings never change with dtype.
  if (cfg.tie_word_embeddings && m->dtype_ == wte.dtype) {
    m->wte_ = m->lm_head_.get();
  } else {
    m->wte_own_ = backend.prepare_weight(WeightView{wte.data, wte.dtype, V, C, false, wte.name}, DType::F32);
    m->wte_ = m->wte_own_.get();
  }
  ts.check_all_used();
  return m;
}

void Gpt2Model::ensure_activations(int M, int n_out) {
  const int64_t C = cfg_.n_embd;
  Activations& a = act_;
  if (M > a.rows) {
    const int rows = std::max(M, 2 * a.rows);
    for (float** p : {&a.x, &a.xn, &a.qkv, &a.att, &a.fc}) {
      if (*p) backend_.release(*p);
      *p = nullptr;
    }
    a.rows = 0;  // stays 0 if an allocation below throws
    a.x = backend_.alloc(size_t(rows) * C);
    a.xn = backend_.alloc(size_t(rows) * C);
    a.qkv = backend_.alloc(size_t(rows) * 3 * C);
    a.att = backend_.alloc(size_t(rows) * C);
    a.fc = backend_.alloc(size_t(rows) * 4 * C);
    a.rows = rows;
  }
  if (n_out > a.out_rows) {
    const int rows = std::max(n_out, 2 * a.out_rows);
    for (float** p : {&a.last, &a.last_n, &a.logits}) {
      if (*p) backend_.release(*p);
      *p = nullptr;
    }
    a.out_rows = 0;
    a.last = backend_.alloc(size_t(rows) * C);
    a.last_n = backend_.alloc(size_t(rows) * C);
    a.logits = backend_.alloc(size_t(rows) * cfg_.vocab_size);
    a.out_rows = rows;
  }
}

float* Gpt2Model::forward(const int32_t* tokens, const int32_t* positions, int M,
                          const AttnSeq* seqs, int n_seqs, const KvView& kv,
                          const int32_t* out_rows, int n_out) {
  const int64_t C = cfg_.n_embd, V = cfg_.vocab_size;
  const float eps = cfg_.layer_norm_epsilon;
  ensure_activations(M, n_out);
  Backend& be = backend_;
  Activations& a = act_;
  auto dump = [&](const char* name, int layer, const float* data, int rows, int64_t cols) {
    if (hook_) hook_(name, layer, data, rows, cols);
  };

  be.embed(tokens, positions, M, C, *wte_, wpe_, a.x);                     dump("embd", -1, a.x, M, C);
  for (int l = 0; l < int(layers_.size()); l++) {
    const Layer& w = layers_[size_t(l)];
    be.layernorm(a.x, M, C, w.ln_1_w, w.ln_1_b, eps, a.xn);                dump("attn_norm", l, a.xn, M, C);
    be.matmul(a.xn, C, M, *w.c_attn_w, w.c_attn_b, a.qkv, Epilogue::Store); dump("qkv", l, a.qkv, M, 3 * C);
    be.store_and_attend(a.qkv, seqs, n_seqs, kv, l, a.att);                dump("attn_out", l, a.att, M, C);
    be.matmul(a.att, C, M, *w.attn_c_proj_w, w.attn_c_proj_b, a.x, Epilogue::AddTo);  // x += proj
    dump("attn_resid", l, a.x, M, C);
    be.layernorm(a.x, M, C, w.ln_2_w, w.ln_2_b, eps, a.xn);                dump("ffn_norm", l, a.xn, M, C);
    be.matmul(a.xn, C, M, *w.c_fc_w, w.c_fc_b, a.fc, Epilogue::Gelu);     dump("ffn_gelu", l, a.fc, M, 4 * C);
    be.matmul(a.fc, 4 * C, M, *w.mlp_c_proj_w, w.mlp_c_proj_b, a.x, Epilogue::AddTo);  // x += mlp
    dump("ffn_resid", l, a.x, M, C);
  }
  if (n_out == 0) return nullptr;
  be.gather_rows(a.x, out_rows, n_out, C, a.last);
  be.layernorm(a.last, n_out, C, ln_f_w_, ln_f_b_, eps, a.last_n);          dump("out_norm", -1, a.last_n, n_out, C);
  be.matmul(a.last_n, C, n_out, *lm_head_, nullptr, a.logits, Epilogue::Store);
  dump("logits", -1, a.logits, n_out, V);
  if (be.host_addressable()) return a.logits;
  // Kept between steps: 32 rows of GPT-2 logits are 6.4 MB, too much to allocate per step.
  if (logits_host_.size() < size_t(n_out) * size_t(V)) logits_host_.resize(size_t(n_out) * size_t(V));
  be.download(logits_host_.data(), a.logits, size_t(n_out) * V);
  return logits_host_.data();
}

}  // namespace llmcore

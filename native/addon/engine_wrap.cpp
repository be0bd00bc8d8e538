#include "addon/engine_wrap.h"

#include <algorithm>

#include "addon/js_errors.h"
#include "addon/step_queue.h"

namespace llmcore::addon {

namespace {

// step(): doSample, temperature, topK, topP, repetitionPenalty, minP, typicalP (lib/native.ts)
constexpr size_t kParamsPerItem = 7;

int64_t get_int(const Napi::Object& o, const char* key, int64_t fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throw_js(o.Env(), E_OPTION, std::string("[native] option ") + key + " must be a number");
  return v.As<Napi::Number>().Int64Value();
}

uint64_t to_seed(const Napi::Value& v) {
  if (!v.IsNumber()) throw_js(v.Env(), E_OPTION, "[native] seed must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  return d < 0 ? 0 : uint64_t(d);
}

int32_t to_id(const Napi::Value& v) {
  if (!v.IsNumber()) throw_js(v.Env(), E_OPTION, "[native] sequence id must be a number");
  return v.As<Napi::Number>().Int32Value();
}

template <class T> constexpr napi_typedarray_type array_type();
template <> constexpr napi_typedarray_type array_type<int32_t>() { return napi_int32_array; }
template <> constexpr napi_typedarray_type array_type<uint8_t>() { return napi_uint8_array; }
template <> constexpr napi_typedarray_type array_type<float>() { return napi_float32_array; }
template <> constexpr napi_typedarray_type array_type<double>() { return napi_float64_array; }

template <class T>
Napi::TypedArrayOf<T> typed(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != array_type<T>())
    throw_js(o.Env(), E_OPTION, std::string("[native] step: ") + key + " has the wrong typed-array type");
  return v.As<Napi::TypedArrayOf<T>>();
}

class LoadWorker : public PromiseWorker {
 public:
  LoadWorker(Napi::Env env, EngineOptions opts) : PromiseWorker(env), opts_(std::move(opts)) {}
  void compute() override { engine_ = Engine::create(opts_); }
  Napi::Value result(Napi::Env env) override {
    // JS cannot make an External, so only this path can hand an engine to the constructor.
    auto* handoff = new std::shared_ptr<Engine>(std::move(engine_));
    Napi::Value ext = Napi::External<std::shared_ptr<Engine>>::New(
        env, handoff, [](Napi::Env, std::shared_ptr<Engine>* p) { delete p; });
    // The constructor of this environment: each worker thread that loads the addon has its own.
    return env.GetInstanceData<Napi::FunctionReference>()->New({ext});
  }

 private:
  EngineOptions opts_;
  std::shared_ptr<Engine> engine_;
};

}  // namespace

Napi::Function EngineWrap::define(Napi::Env env) {
  Napi::Function ctor = DefineClass(env, "Engine",
                                    {
                                        InstanceMethod("info", &EngineWrap::info),
                                        InstanceMethod("newSequence", &EngineWrap::new_sequence),
                                        InstanceMethod("forkSequence", &EngineWrap::fork_sequence),
                                        InstanceMethod("releaseSequence", &EngineWrap::release_sequence),
                                        InstanceMethod("sequenceLength", &EngineWrap::sequence_length),
                                        InstanceMethod("kvBlocksInUse", &EngineWrap::kv_blocks_in_use),
                                        InstanceMethod("step", &EngineWrap::step),
                                        InstanceMethod("dispose", &EngineWrap::dispose),
                                    });
  env.SetInstanceData<Napi::FunctionReference>(new Napi::FunctionReference(Napi::Persistent(ctor)));
  return ctor;
}

EngineWrap::EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
  // Moved out, not copied: the External lives until the garbage collector takes it, and a copy
  // left in it would keep the engine (all its weights) alive after dispose().
  if (info.Length() == 1 && info[0].IsExternal())
    engine_ = std::move(*info[0].As<Napi::External<std::shared_ptr<Engine>>>().Data());
  else
    throw_js(info.Env(), E_OPTION, "[native] Engine objects come from loadEngine()");
  steps_ = StepQueue::create(info.Env(), engine_);
}

EngineWrap::~EngineWrap() {
  if (steps_) steps_->close();
}

std::shared_ptr<Engine> EngineWrap::engine(Napi::Env env) {
  if (!engine_) throw_js(env, E_DISPOSED, "[model] this model was disposed");
  return engine_;
}

Napi::Value EngineWrap::load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw_js(env, E_OPTION, "[native] loadEngine(options) needs an object");
  Napi::Object o = info[0].As<Napi::Object>();
  EngineOptions opts;
  Napi::Value files = o.Get("files");
  if (!files.IsArray()) throw_js(env, E_OPTION, "[native] loadEngine: files must be an array of paths");
  Napi::Array arr = files.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value f = arr.Get(i);
    if (!f.IsString()) throw_js(env, E_OPTION, "[native] loadEngine: files must be strings");
    opts.files.push_back(f.As<Napi::String>().Utf8Value());
  }
  Napi::Value cfg_v = o.Get("config");
  if (!cfg_v.IsObject()) throw_js(env, E_OPTION, "[native] loadEngine: config must be an object");
  Napi::Object cfg = cfg_v.As<Napi::Object>();
  opts.config.vocab_size = get_int(cfg, "vocabSize", 0);
  opts.config.n_positions = get_int(cfg, "nPositions", 0);
  opts.config.n_embd = get_int(cfg, "nEmbd", 0);
  opts.config.n_layer = get_int(cfg, "nLayer", 0);
  opts.config.n_head = get_int(cfg, "nHead", 0);
  Napi::Value eps = cfg.Get("layerNormEpsilon");
  if (eps.IsNumber()) opts.config.layer_norm_epsilon = eps.As<Napi::Number>().FloatValue();
  Napi::Value tie = cfg.Get("tieWordEmbeddings");
  if (tie.IsBoolean()) opts.config.tie_word_embeddings = tie.As<Napi::Boolean>().Value();
  if (o.Get("device").IsString()) opts.device = o.Get("device").As<Napi::String>().Utf8Value();
  if (o.Get("dtype").IsString()) opts.dtype = o.Get("dtype").As<Napi::String>().Utf8Value();
  if (o.Get("kvDtype").IsString()) opts.kv_dtype = o.Get("kvDtype").As<Napi::String>().Utf8Value();
  opts.threads = int(get_int(o, "threads", 0));
  auto* worker = new LoadWorker(env, std::move(opts));
  Napi::Promise p = worker->promise();
  worker->Queue();
  return p;
}

Napi::Value EngineWrap::info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto e = engine(env);
  const Gpt2Config& c = e->config();
  Napi::Object o = Napi::Object::New(env);
  o.Set("vocabSize", double(c.vocab_size));
  o.Set("nPositions", double(c.n_positions));
  o.Set("nEmbd", double(c.n_embd));
  o.Set("nLayer", double(c.n_layer));
  o.Set("nHead", double(c.n_head));
  o.Set("backend", e->describe());
  o.Set("weightDtype", std::string(dtype_name(e->weight_dtype())));
  o.Set("weightBytes", double(e->weight_bytes()));
  o.Set("kvBlockTokens", double(kBlockTokens));
  o.Set("kvBlockBytes", double(e->kv_block_bytes()));
  o.Set("kvDtype", std::string(e->kv_dtype() == DType::F16 ? "f16" : "f32"));
  return o;
}

Napi::Value EngineWrap::new_sequence(const Napi::CallbackInfo& info) {
  auto e = engine(info.Env());
  const uint64_t seed = to_seed(info[0]);
  return Napi::Number::New(info.Env(), guard(info.Env(), [&] { return e->new_sequence(seed); }));
}

Napi::Value EngineWrap::fork_sequence(const Napi::CallbackInfo& info) {
  auto e = engine(info.Env());
  const int32_t parent = to_id(info[0]);
  const uint64_t seed = to_seed(info[1]);
  return Napi::Number::New(info.Env(), guard(info.Env(), [&] { return e->fork_sequence(parent, seed); }));
}

Napi::Value EngineWrap::release_sequence(const Napi::CallbackInfo& info) {
  auto e = engine(info.Env());
  const int32_t id = to_id(info[0]);
  guard(info.Env(), [&] { e->release_sequence(id); });
  return info.Env().Undefined();
}

Napi::Value EngineWrap::sequence_length(const Napi::CallbackInfo& info) {
  auto e = engine(info.Env());
  const int32_t id = to_id(info[0]);
  return Napi::Number::New(info.Env(), double(guard(info.Env(), [&] { return e->sequence_length(id); })));
}

Napi::Value EngineWrap::kv_blocks_in_use(const Napi::CallbackInfo& info) {
  auto e = engine(info.Env());
  return Napi::Number::New(info.Env(), double(guard(info.Env(), [&] { return e->kv_blocks_in_use(); })));
}

// step({seqs: Int32Array, counts: Int32Array, tokens: Int32Array, logits: Uint8Array,
//       sample: Uint8Array, params: Float32Array(kParamsPerItem per item), banned: Int32Array,
//       bannedCounts: Int32Array(1 per item), forkSeeds: Float64Array, forkCounts: Int32Array(1 per
//       item)}) -> Promise<{sampled, logits, logsumexp, forkIds, forkSampled}>
// Steps run in the order they were submitted (StepQueue); an item whose only token is -1
// (kLastSampled) is fed what its sequence sampled in the step before.
Napi::Value EngineWrap::step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto e = engine(env);
  if (info.Length() < 1 || !info[0].IsObject()) throw_js(env, E_OPTION, "[native] step(request) needs an object");
  Napi::Object req = info[0].As<Napi::Object>();
  auto seqs = typed<int32_t>(req, "seqs");
  auto counts = typed<int32_t>(req, "counts");
  auto tokens = typed<int32_t>(req, "tokens");
  auto logits = typed<uint8_t>(req, "logits");
  auto sample = typed<uint8_t>(req, "sample");
  auto params = typed<float>(req, "params");
  auto banned = typed<int32_t>(req, "banned");
  auto banned_counts = typed<int32_t>(req, "bannedCounts");
  auto fork_seeds = typed<double>(req, "forkSeeds");
  auto fork_counts = typed<int32_t>(req, "forkCounts");
  const size_t n = seqs.ElementLength();
  if (counts.ElementLength() != n || logits.ElementLength() != n || sample.ElementLength() != n ||
      params.ElementLength() != kParamsPerItem * n || banned_counts.ElementLength() != n ||
      fork_counts.ElementLength() != n)
    throw_js(env, E_OPTION,
             "[native] step: seqs, counts, logits, sample, params, bannedCounts, forkCounts lengths disagree");
  size_t fork_offset = 0;
  size_t banned_offset = 0;
  std::vector<StepItem> items(n);
  size_t offset = 0;
  for (size_t i = 0; i < n; i++) {
    StepItem& it = items[i];
    it.seq = seqs[i];
    const int32_t c = counts[i];
    if (c < 0 || offset + size_t(c) > tokens.ElementLength())
      throw_js(env, E_OPTION, "[native] step: counts exceed the tokens array");
    it.tokens.assign(tokens.Data() + offset, tokens.Data() + offset + c);
    offset += size_t(c);
    if (logits[i] > 2) throw_js(env, E_OPTION, "[native] step: logits mode must be 0, 1 or 2");
    it.logits = LogitsMode(logits[i]);
    it.sample = sample[i] != 0;
    const float* p = params.Data() + kParamsPerItem * i;
    if (!(p[1] > 0.f) || !(p[2] >= 0.f) || !(p[3] > 0.f && p[3] <= 1.f) || !(p[4] > 0.f) ||
        !(p[5] >= 0.f && p[5] <= 1.f) || !(p[6] > 0.f && p[6] <= 1.f))
      throw_js(env, E_OPTION, "[native] step: sampling parameters out of range (temperature, topK, topP, "
                              "repetitionPenalty, minP, typicalP)");
    // topK beyond the vocabulary is off; clamped so the conversion to int32 stays defined
    const int32_t top_k = int32_t(std::min(p[2], 2.0e9f));
    it.params = SamplingParams{p[0] != 0.f, p[1], top_k, p[3], p[4], p[5], p[6], {}};
    const int32_t nb = banned_counts[i];
    if (nb < 0 || banned_offset + size_t(nb) > banned.ElementLength())
      throw_js(env, E_OPTION, "[native] step: bannedCounts exceed the banned array");
    it.params.banned.assign(banned.Data() + banned_offset, banned.Data() + banned_offset + nb);
    banned_offset += size_t(nb);
    const int32_t nf = fork_counts[i];
    if (nf < 0 || fork_offset + size_t(nf) > fork_seeds.ElementLength())
      throw_js(env, E_OPTION, "[native] step: forkCounts exceed the forkSeeds array");
    for (int32_t j = 0; j < nf; j++) {
      const double d = fork_seeds[fork_offset + size_t(j)];
      if (!(d >= 0 && d <= 9007199254740991.0))
        throw_js(env, E_OPTION, "[native] step: a fork seed is not an integer in [0, 2^53)");
      it.fork_seeds.push_back(uint64_t(d));
    }
    fork_offset += size_t(nf);
  }
  if (offset != tokens.ElementLength()) throw_js(env, E_OPTION, "[native] step: counts do not cover tokens");
  if (banned_offset != banned.ElementLength())
    throw_js(env, E_OPTION, "[native] step: bannedCounts do not cover banned");
  if (fork_offset != fork_seeds.ElementLength())
    throw_js(env, E_OPTION, "[native] step: forkCounts do not cover forkSeeds");
  return steps_->submit(env, std::move(items));
}

Napi::Value EngineWrap::dispose(const Napi::CallbackInfo& info) {
  engine_.reset();
  if (steps_) steps_->close();
  return info.Env().Undefined();
}

}  // namespace llmcore::addon

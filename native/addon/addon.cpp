// The addon's exports, nothing else. The ergonomic API lives in lib/ (TypeScript).
#include <napi.h>

#include "addon/engine_wrap.h"
#include "addon/js_errors.h"
#include "backends/cpu/cpu_features.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/roofline.h"
#include "core/thread_pool.h"
#include "tests/backend_ops.h"

namespace llmcore::addon {
namespace {

Napi::Value cpu_info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("features", cpu::cpu_features_string());
  o.Set("isa", std::string(cpu::isa_name(cpu::best_isa())));
  o.Set("bf16DotProduct", cpu::bf16_dot_product(cpu::best_isa()));
  o.Set("bf16Kernel", std::string(cpu::bf16_kernel(cpu::best_isa())));
  return o;
}

class BackendOpsWorker : public PromiseWorker {
 public:
  BackendOpsWorker(Napi::Env env, bool quick) : PromiseWorker(env), quick_(quick) {}
  void compute() override { cases_ = run_backend_ops(quick_); }
  Napi::Value result(Napi::Env env) override {
    Napi::Array arr = Napi::Array::New(env, cases_.size());
    for (size_t i = 0; i < cases_.size(); i++) {
      const OpCase& c = cases_[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("backend", c.backend);
      o.Set("op", c.op);
      o.Set("shape", c.shape);
      o.Set("maxErr", c.max_err);
      o.Set("tol", c.tol);
      o.Set("supported", c.supported);
      o.Set("ok", c.ok);
      o.Set("note", c.note);
      arr.Set(uint32_t(i), o);
    }
    return arr;
  }

 private:
  bool quick_;
  std::vector<OpCase> cases_;
};

Napi::Value run_backend_ops_js(const Napi::CallbackInfo& info) {
  auto* w = new BackendOpsWorker(info.Env(), info.Length() > 0 && info[0].ToBoolean());
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

class RooflineWorker : public PromiseWorker {
 public:
  RooflineWorker(Napi::Env env, int threads, double bytes) : PromiseWorker(env), threads_(threads), bytes_(bytes) {}
  void compute() override {
    ThreadPool pool(threads_);
    peak_ = cpu::measure_peak_fma_gflops(pool);
    peak_bf16_ = cpu::measure_peak_bf16_gflops(pool);
    bandwidth_ = cpu::measure_read_bandwidth_gbs(pool, size_t(bytes_));
  }
  Napi::Value result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("peakGflops", peak_);
    if (peak_bf16_ > 0) o.Set("peakBf16Gflops", peak_bf16_);
    else o.Set("peakBf16Gflops", env.Null());
    o.Set("readGBs", bandwidth_);
    o.Set("threads", threads_);
    return o;
  }

 private:
  int threads_;
  double bytes_, peak_ = 0, peak_bf16_ = 0, bandwidth_ = 0;
};

// measureRoofline(threads, bytes) -> Promise<{peakGflops, peakBf16Gflops, readGBs, threads}>
Napi::Value measure_roofline(const Napi::CallbackInfo& info) {
  const int threads = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 1;
  const double bytes = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : double(1 << 30);
  if (threads < 1 || threads > 1024) throw_js(info.Env(), E_OPTION, "[native] measureRoofline: threads out of range");
  auto* w = new RooflineWorker(info.Env(), threads, bytes);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  // Runs once per environment (the main thread and each worker thread that loads the addon).
  // N-API calls fail while an environment shuts down, e.g. a worker terminated mid-require;
  // node-addon-api then throws from its own error path and the process aborts, so nothing may
  // leave here. The facade reports a partial exports object (no interfaceVersion) clearly.
  try {
    exports.Set("Engine", EngineWrap::define(env));
    exports.Set("loadEngine", Napi::Function::New(env, EngineWrap::load));
    exports.Set("cpuInfo", Napi::Function::New(env, cpu_info));
    exports.Set("runBackendOps", Napi::Function::New(env, run_backend_ops_js));
    exports.Set("measureRoofline", Napi::Function::New(env, measure_roofline));
    exports.Set("interfaceVersion", Napi::Number::New(env, kInterfaceVersion));
  } catch (...) {
  }
  return exports;
}

}  // namespace llmcore::addon

static Napi::Object InitLlmcore(Napi::Env env, Napi::Object exports) {
  return llmcore::addon::init(env, exports);
}
NODE_API_MODULE(llmcore, InitLlmcore)

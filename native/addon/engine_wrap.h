// The JS `Engine` object: a thin wrapper over llmcore::Engine. Argument checks here are only
// the type/shape guards a native call needs; the facade (lib/) validates user options first.
#pragma once
#include <napi.h>

#include <memory>

#include "addon/step_queue.h"
#include "core/engine.h"

namespace llmcore::addon {

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function define(Napi::Env env);
  static Napi::Value load(const Napi::CallbackInfo& info);  // loadEngine(options) -> Promise<Engine>
  explicit EngineWrap(const Napi::CallbackInfo& info);
  ~EngineWrap();

 private:
  std::shared_ptr<Engine> engine(Napi::Env env);
  Napi::Value info(const Napi::CallbackInfo& info);
  Napi::Value new_sequence(const Napi::CallbackInfo& info);
  Napi::Value fork_sequence(const Napi::CallbackInfo& info);
  Napi::Value release_sequence(const Napi::CallbackInfo& info);
  Napi::Value sequence_length(const Napi::CallbackInfo& info);
  Napi::Value kv_blocks_in_use(const Napi::CallbackInfo& info);
  Napi::Value step(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);

  // Shared with the step queue, so dispose() during a step frees the engine after it.
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<StepQueue> steps_;
};

}  // namespace llmcore::addon

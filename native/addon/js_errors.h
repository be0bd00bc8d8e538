// C++ exceptions -> JS errors carrying `code` (lib/errors.ts turns codes into error classes),
// and a promise-returning AsyncWorker whose Execute() runs on the libuv pool.
#pragma once
#include <napi.h>

#include <new>
#include <string>

#include "core/errors.h"

namespace llmcore::addon {

inline Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

[[noreturn]] inline void throw_js(Napi::Env env, const char* code, const std::string& message) {
  throw make_error(env, code, message);
}

// Runs compute() off the main thread; resolves with result() or rejects with a coded error.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  explicit PromiseWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  virtual void compute() = 0;
  virtual Napi::Value result(Napi::Env env) = 0;

 private:
  void Execute() override {
    try {
      compute();
    } catch (const Error& e) {
      fail(e.code(), e.what());
    } catch (const std::bad_alloc&) {
      fail(E_OOM, "[llmcore] out of memory");
    } catch (const std::exception& e) {
      fail(E_INTERNAL, std::string("[llmcore] internal error: ") + e.what());
    }
  }
  void fail(const char* code, const std::string& message) {
    code_ = code;
    message_ = message;
    SetError(message);
  }
  // Nothing may escape these: N-API calls fail (node-addon-api throws) while the environment
  // shuts down (a worker thread terminated), and an exception here would abort the process.
  void OnOK() override {
    Napi::Env env = Env();
    try {
      try {
        deferred_.Resolve(result(env));
      } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
      }
    } catch (...) {
    }
  }
  void OnError(const Napi::Error&) override {
    try {
      deferred_.Reject(make_error(Env(), code_, message_).Value());
    } catch (...) {
    }
  }

  Napi::Promise::Deferred deferred_;
  std::string code_, message_;
};

// Runs fn() on the main thread, turning core exceptions into coded JS exceptions.
template <class F>
auto guard(Napi::Env env, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    throw_js(env, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    throw_js(env, E_OOM, "[llmcore] out of memory");
  } catch (const std::exception& e) {
    throw_js(env, E_INTERNAL, std::string("[llmcore] internal error: ") + e.what());
  }
}

}  // namespace llmcore::addon

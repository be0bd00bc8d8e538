// C++ exceptions -> JS errors carrying `code` (lib/errors.ts turns codes into error classes),
// and a promise-returning worker whose compute() runs on the libuv pool.
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

// Runs fn() (off the JS thread); a core exception becomes the code and message of the error
// to reject with later (code stays empty when fn returns).
template <class F>
void run_capturing(F&& fn, std::string& code, std::string& message) {
  try {
    fn();
  } catch (const Error& e) {
    code = e.code();
    message = e.what();
  } catch (const std::bad_alloc&) {
    code = E_OOM;
    message = "[llmcore] out of memory";
  } catch (const std::exception& e) {
    code = E_INTERNAL;
    message = std::string("[llmcore] internal error: ") + e.what();
  }
}

// Settles a promise with the outcome of work done off the JS thread: rejects with the captured
// (code, message), or resolves with make(). N-API calls fail (node-addon-api throws) while the
// environment shuts down (a worker thread terminated): nothing escapes, nobody is left to tell.
template <class F>
void settle(Napi::Env env, Napi::Promise::Deferred& deferred, const std::string& code,
            const std::string& message, F&& make) {
  try {
    if (!code.empty()) {
      deferred.Reject(make_error(env, code, message).Value());
      return;
    }
    try {
      deferred.Resolve(make());
    } catch (const Napi::Error& e) {
      deferred.Reject(e.Value());
    }
  } catch (...) {
  }
}

// Creates and queues plain napi async work (not Napi::AsyncWorker, whose completion opens a
// handle scope outside any catch, which throws and aborts the process while the environment
// shuts down). False if that failed (only then): *work is deleted again, data not touched.
inline bool queue_async_work(napi_env env, const char* name, napi_async_execute_callback execute,
                             napi_async_complete_callback complete, void* data, napi_async_work* work) {
  *work = nullptr;
  napi_value resource;
  napi_status st = napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource);
  if (st == napi_ok) st = napi_create_async_work(env, nullptr, resource, execute, complete, data, work);
  if (st == napi_ok) st = napi_queue_async_work(env, *work);
  if (st == napi_ok) return true;
  if (*work) napi_delete_async_work(env, *work);
  return false;
}

// Runs compute() off the main thread; resolves with result() or rejects with a coded error.
// Plain napi async work (queue_async_work) whose completion lets nothing escape. Queue() hands
// the object over: it deletes itself when done.
class PromiseWorker {
 public:
  explicit PromiseWorker(Napi::Env env) : env_(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  virtual ~PromiseWorker() = default;
  PromiseWorker(const PromiseWorker&) = delete;
  PromiseWorker& operator=(const PromiseWorker&) = delete;
  Napi::Promise promise() { return deferred_.Promise(); }

  void Queue() {
    if (queue_async_work(env_, "llmcore", execute, complete, this, &work_)) return;
    settle(env_, deferred_, E_INTERNAL, "[llmcore] cannot queue work on the libuv pool", [] { return Napi::Value(); });
    delete this;
  }

 protected:
  virtual void compute() = 0;
  virtual Napi::Value result(Napi::Env env) = 0;

 private:
  static void execute(napi_env, void* data) {
    auto* self = static_cast<PromiseWorker*>(data);
    run_capturing([self] { self->compute(); }, self->code_, self->message_);
  }
  static void complete(napi_env env, napi_status status, void* data) {
    auto* self = static_cast<PromiseWorker*>(data);
    napi_delete_async_work(env, self->work_);
    napi_handle_scope scope;
    if (status != napi_cancelled && napi_open_handle_scope(env, &scope) == napi_ok) {
      settle(env, self->deferred_, self->code_, self->message_, [&] { return self->result(Napi::Env(env)); });
      napi_close_handle_scope(env, scope);
    }
    delete self;
  }

  Napi::Env env_;
  napi_async_work work_ = nullptr;
  Napi::Promise::Deferred deferred_;
  std::string code_, message_;  // code_ empty: compute() succeeded
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

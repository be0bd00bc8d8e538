#include "addon/step_queue.h"

#include <string>
#include <utility>

#include "addon/js_errors.h"

namespace llmcore::addon {

struct StepQueue::Job {
  Job(Napi::Env env, std::shared_ptr<StepQueue> q, std::vector<StepItem> its)
      : queue(std::move(q)), items(std::move(its)), deferred(Napi::Promise::Deferred::New(env)) {}
  std::shared_ptr<StepQueue> queue;  // alive until the result is delivered
  std::vector<StepItem> items;
  StepResult out;
  std::string code;  // empty: the step succeeded
  std::string message;
  Napi::Promise::Deferred deferred;
};

// Drains the queue on a libuv worker; a new one starts when a step is submitted to an idle
// queue. Its completion touches no JS (results go through the thread-safe function).
class StepQueue::Runner {
 public:
  static void start(Napi::Env env, std::shared_ptr<StepQueue> q) {
    auto* r = new Runner(std::move(q));
    if (queue_async_work(env, "llmcore step", execute, complete, r, &r->work)) return;
    r->queue->drain();  // only while the environment shuts down: drain here, nobody waits
    delete r;
  }

 private:
  explicit Runner(std::shared_ptr<StepQueue> q) : queue(std::move(q)) {}
  static void execute(napi_env, void* data) { static_cast<Runner*>(data)->queue->drain(); }
  static void complete(napi_env env, napi_status, void* data) {
    auto* r = static_cast<Runner*>(data);
    napi_delete_async_work(env, r->work);
    delete r;
  }
  std::shared_ptr<StepQueue> queue;
  napi_async_work work = nullptr;
};

namespace {

Napi::Object result_object(Napi::Env env, StepResult& out) {
  Napi::Object res = Napi::Object::New(env);
  auto sampled = Napi::Int32Array::New(env, out.sampled.size());
  std::copy(out.sampled.begin(), out.sampled.end(), sampled.Data());
  res.Set("sampled", sampled);
  // Logits can be large (all positions x vocab): hand the vector's memory to JS, no copy.
  auto* logits = new std::vector<float>(std::move(out.logits));
  auto buf = Napi::ArrayBuffer::New(env, logits->data(), logits->size() * sizeof(float),
                                    [](Napi::Env, void*, std::vector<float>* v) { delete v; }, logits);
  res.Set("logits", Napi::Float32Array::New(env, logits->size(), buf, 0));
  auto lse = Napi::Float64Array::New(env, out.logsumexp.size());
  std::copy(out.logsumexp.begin(), out.logsumexp.end(), lse.Data());
  res.Set("logsumexp", lse);
  auto fork_ids = Napi::Int32Array::New(env, out.fork_ids.size());
  std::copy(out.fork_ids.begin(), out.fork_ids.end(), fork_ids.Data());
  res.Set("forkIds", fork_ids);
  auto fork_sampled = Napi::Int32Array::New(env, out.fork_sampled.size());
  std::copy(out.fork_sampled.begin(), out.fork_sampled.end(), fork_sampled.Data());
  res.Set("forkSampled", fork_sampled);
  // Items whose sampling failed (the step's others are fine): [{item, code, message}], in item order.
  auto errors = Napi::Array::New(env, out.errors.size());
  for (size_t i = 0; i < out.errors.size(); i++) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("item", Napi::Number::New(env, double(out.errors[i].item)));
    e.Set("code", Napi::String::New(env, out.errors[i].code));
    e.Set("message", Napi::String::New(env, out.errors[i].message));
    errors.Set(uint32_t(i), e);
  }
  res.Set("errors", errors);
  return res;
}

}  // namespace

std::shared_ptr<StepQueue> StepQueue::create(Napi::Env env, std::shared_ptr<Engine> engine) {
  std::shared_ptr<StepQueue> q(new StepQueue());
  q->engine_ = std::move(engine);
  // One thread-safe-function reference, the queue's own, released at close. Unreferenced while
  // idle so that a loaded model does not keep the process alive.
  q->tsfn_ = Tsfn::New(env, "llmcore step", 0, 1, q.get());
  q->tsfn_.Unref(env);
  return q;
}

StepQueue::~StepQueue() {
  std::lock_guard<std::mutex> lock(mu_);
  release_tsfn_locked();
}

void StepQueue::release_tsfn_locked() {
  if (released_) return;
  released_ = true;
  tsfn_.Release();
}

Napi::Promise StepQueue::submit(Napi::Env env, std::vector<StepItem> items) {
  auto* job = new Job(env, shared_from_this(), std::move(items));
  Napi::Promise promise = job->deferred.Promise();
  bool start = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) {  // EngineWrap checks for dispose first; this is the backstop
      job->deferred.Reject(make_error(env, E_DISPOSED, "[model] this model was disposed").Value());
      delete job;
      return promise;
    }
    jobs_.push_back(job);
    if (!running_) running_ = start = true;
  }
  if (pending_++ == 0) tsfn_.Ref(env);  // a step in flight keeps the process alive
  if (start) Runner::start(env, shared_from_this());
  return promise;
}

void StepQueue::close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  if (!running_) {
    engine_.reset();
    release_tsfn_locked();
  }
}

void StepQueue::drain() {
  for (;;) {
    Job* job = nullptr;
    std::shared_ptr<Engine> engine;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (jobs_.empty()) {
        running_ = false;
        if (closed_) {  // the last step after dispose: free the engine here, off the JS thread
          engine_.reset();
          release_tsfn_locked();
        }
        return;
      }
      job = jobs_.front();
      jobs_.pop_front();
      engine = engine_;
    }
    run_capturing([&] { job->out = engine->step(std::move(job->items)); }, job->code, job->message);
    // Fails only while the environment is being torn down: nobody is left to tell.
    if (tsfn_.NonBlockingCall(job) != napi_ok) delete job;
  }
}

void StepQueue::deliver(Napi::Env env, Napi::Function, StepQueue* self, Job* job) {
  std::unique_ptr<Job> owned(job);
  if (env == nullptr) return;  // teardown
  if (--self->pending_ == 0) {
    std::lock_guard<std::mutex> lock(self->mu_);
    if (!self->released_) self->tsfn_.Unref(env);
  }
  settle(env, job->deferred, job->code, job->message, [&] { return result_object(env, job->out); });
}

}  // namespace llmcore::addon

// An engine's steps, run in the order they were submitted, back to back on one libuv worker:
// a step submitted while another runs is taken by that worker as soon as the running one ends
// (no thread handoff), and each result goes back to the JS thread (a thread-safe function) as
// soon as its step ends. So the facade can submit the next decode step before the current
// one's result arrives, and the per-step round trip (libuv dispatch, wake-ups, the JS turn:
// ~0.45 ms per step measured on a 2-vCPU VM, 5-8% of a batch-1 124M step) overlaps the next
// step instead of separating the two.
#pragma once
#include <napi.h>

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "core/engine.h"

namespace llmcore::addon {

class StepQueue : public std::enable_shared_from_this<StepQueue> {
 public:
  static std::shared_ptr<StepQueue> create(Napi::Env env, std::shared_ptr<Engine> engine);
  ~StepQueue();

  // Main thread. Resolves with the step's result object (see EngineWrap::step).
  Napi::Promise submit(Napi::Env env, std::vector<StepItem> items);
  // Main thread (dispose). Steps already submitted still run; the engine is dropped after the
  // last of them (at once if none is queued), and its memory with it.
  void close();
  // Main thread: whether a submitted step has not delivered its result yet.
  bool busy() const { return pending_ > 0; }

  struct Job;

 private:
  StepQueue() = default;
  void drain();                          // on a libuv worker: runs queued jobs until none is left
  static void deliver(Napi::Env env, Napi::Function, StepQueue* self, Job* job);  // main thread
  void release_tsfn_locked();
  class Runner;

  using Tsfn = Napi::TypedThreadSafeFunction<StepQueue, Job, &StepQueue::deliver>;
  Tsfn tsfn_;
  int pending_ = 0;  // main thread only: submitted, not yet delivered

  std::mutex mu_;  // guards the rest
  std::deque<Job*> jobs_;
  bool running_ = false;  // a Runner is draining
  bool closed_ = false;
  bool released_ = false;  // the thread-safe function
  std::shared_ptr<Engine> engine_;
};

}  // namespace llmcore::addon

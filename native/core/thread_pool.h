// A fixed pool of worker threads for data-parallel loops. The calling thread takes part, so a
// pool of size N starts N-1 workers. Workers spin briefly between loops (a decode step runs
// dozens of short loops back to back) and then sleep, so an idle model costs no CPU.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

namespace llmcore {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(i, thread_id) once for every i in [0, n), spread over the pool; returns when all
  // calls have returned. thread_id is in [0, size()) and unique among concurrent calls, so it
  // can index per-thread scratch. fn must not throw. Not reentrant: one loop at a time.
  template <class F>
  void parallel_for(int64_t n, F&& fn) {
    using Fn = typename std::remove_reference<F>::type;
    run(n, [](void* ctx, int64_t i, int tid) { (*static_cast<Fn*>(ctx))(i, tid); }, &fn);
  }

  void run(int64_t n, void (*fn)(void* ctx, int64_t i, int tid), void* ctx);

  // For streaming loops over [0, n): each thread gets one contiguous share and walks it front
  // to back, calling fn(begin, end, thread_id) on pieces of at most `step` items, so it reads
  // one sequential region instead of pieces scattered among the threads. A thread whose share
  // is done steals the back half (at least min_steal items) of the largest share left, so a
  // thread that starts late or is descheduled holds nothing up. Every item is in exactly one
  // call; calls of one thread are in increasing order within each share it works on.
  template <class F>
  void parallel_shares(int64_t n, int64_t step, int64_t min_steal, F&& fn) {
    using Fn = typename std::remove_reference<F>::type;
    run_shares(n, step, min_steal,
               [](void* ctx, int64_t b, int64_t e, int tid) { (*static_cast<Fn*>(ctx))(b, e, tid); }, &fn);
  }

  void run_shares(int64_t n, int64_t step, int64_t min_steal,
                  void (*fn)(void* ctx, int64_t begin, int64_t end, int tid), void* ctx);

 private:
  struct State;
  State* state_;
  int n_threads_;
};

}  // namespace llmcore

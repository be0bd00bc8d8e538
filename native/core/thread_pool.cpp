// ThreadPool: N-1 workers plus the calling thread, dynamic scheduling through one atomic
// counter, spin-then-sleep between loops.
//
// Protocol (one loop at a time, serialized by run_mutex):
//   caller: writes the job (fn, ctx, n), resets next = 0 and pending = n_workers, then
//           publishes it by incrementing `generation` (seq_cst). If any worker may be asleep
//           (sleepers > 0, seq_cst load) it takes the sleep mutex and notifies. It then takes
//           items itself and finally waits until pending == 0, i.e. every worker has checked
//           out of this generation, so no worker can still touch the job when run() returns
//           and the next job is written.
//   worker: waits until generation != the last one it ran (spinning ~150 us, then sleeping on
//           the condition variable), takes items until the counter passes n, then decrements
//           pending (release). The caller's acquire on pending == 0 makes every fn(i) call
//           happen-before run() returns.
// No lost wakeup: a worker increments `sleepers` and re-checks `generation` under the mutex
// before waiting; the caller stores `generation` then loads `sleepers`. Both are seq_cst, so
// (Dekker) either the caller sees the sleeper and notifies under the mutex, or the worker
// sees the new generation and does not wait.
#include "core/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <immintrin.h>
#define LLMCORE_PAUSE() _mm_pause()
#else
#define LLMCORE_PAUSE() std::this_thread::yield()
#endif

namespace llmcore {

namespace {
// Set while a thread is executing items of some pool's loop: a nested parallel_for from inside
// fn runs inline instead of deadlocking.
thread_local int t_in_loop = 0;

constexpr auto kSpin = std::chrono::microseconds(150);        // worker spin before sleeping
constexpr auto kCallerSpin = std::chrono::microseconds(50);   // caller pure spin before yields

struct alignas(64) PaddedAtomicI64 {
  std::atomic<int64_t> v{0};
};
struct alignas(64) PaddedAtomicI32 {
  std::atomic<int32_t> v{0};
};
struct alignas(64) PaddedAtomicU64 {
  std::atomic<uint64_t> v{0};
};
}  // namespace

struct ThreadPool::State {
  // The job (written by the caller before the generation bump, read by workers after it).
  void (*fn)(void*, int64_t, int) = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;

  PaddedAtomicU64 generation;  // bumped once per loop
  PaddedAtomicI64 next;        // next item index to take
  PaddedAtomicI32 pending;     // workers that have not checked out of the current loop
  std::atomic<int32_t> sleepers{0};
  std::atomic<bool> stop{false};

  std::mutex mu;               // guards the condition-variable wait
  std::condition_variable cv;
  std::mutex run_mutex;        // one loop at a time, even if callers race
  std::vector<std::thread> workers;

  void work(int tid) {
    const int64_t count = n;
    auto f = fn;
    void* c = ctx;
    ++t_in_loop;
    for (;;) {
      const int64_t i = next.v.fetch_add(1, std::memory_order_relaxed);
      if (i >= count) break;
      f(c, i, tid);
    }
    --t_in_loop;
  }

  void worker_main(int tid) {
    uint64_t seen = 0;
    for (;;) {
      // Spin for a while: back-to-back loops find us awake.
      uint64_t g = generation.v.load(std::memory_order_acquire);
      if (g == seen && !stop.load(std::memory_order_relaxed)) {
        auto t0 = std::chrono::steady_clock::now();
        for (int it = 0;; ++it) {
          LLMCORE_PAUSE();
          g = generation.v.load(std::memory_order_acquire);
          if (g != seen || stop.load(std::memory_order_relaxed)) break;
          if ((it & 63) == 63 && std::chrono::steady_clock::now() - t0 > kSpin) break;
        }
      }
      if (g == seen && !stop.load(std::memory_order_relaxed)) {
        std::unique_lock<std::mutex> lk(mu);
        sleepers.fetch_add(1, std::memory_order_seq_cst);
        while ((g = generation.v.load(std::memory_order_seq_cst)) == seen &&
               !stop.load(std::memory_order_seq_cst)) {
          cv.wait(lk);
        }
        sleepers.fetch_sub(1, std::memory_order_relaxed);
      }
      if (g == seen) return;  // stop requested and no new job
      seen = g;
      work(tid);
      pending.v.fetch_sub(1, std::memory_order_release);
    }
  }
};

ThreadPool::ThreadPool(int n_threads) : state_(new State), n_threads_(n_threads < 1 ? 1 : n_threads) {
  state_->workers.reserve(size_t(n_threads_ - 1));
  for (int t = 1; t < n_threads_; ++t) {
    state_->workers.emplace_back([s = state_, t] { s->worker_main(t); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    state_->stop.store(true, std::memory_order_seq_cst);
  }
  state_->cv.notify_all();
  for (auto& th : state_->workers) th.join();
  delete state_;
}

void ThreadPool::run(int64_t n, void (*fn)(void* ctx, int64_t i, int tid), void* ctx) {
  if (n <= 0) return;
  State& s = *state_;
  if (n_threads_ == 1 || n == 1 || t_in_loop > 0) {
    // Inline: one thread, a single item, or a nested call from inside a loop.
    ++t_in_loop;
    for (int64_t i = 0; i < n; ++i) fn(ctx, i, 0);
    --t_in_loop;
    return;
  }
  std::lock_guard<std::mutex> run_lock(s.run_mutex);
  s.fn = fn;
  s.ctx = ctx;
  s.n = n;
  s.next.v.store(0, std::memory_order_relaxed);
  s.pending.v.store(n_threads_ - 1, std::memory_order_relaxed);
  // Publishes the job fields above (workers acquire-load generation).
  s.generation.v.fetch_add(1, std::memory_order_seq_cst);
  if (s.sleepers.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lk(s.mu); }
    s.cv.notify_all();
  }
  s.work(0);
  if (s.pending.v.load(std::memory_order_acquire) != 0) {
    auto t0 = std::chrono::steady_clock::now();
    bool yielding = false;
    for (int it = 0; s.pending.v.load(std::memory_order_acquire) != 0; ++it) {
      if (yielding) {
        std::this_thread::yield();
      } else {
        LLMCORE_PAUSE();
        if ((it & 63) == 63 && std::chrono::steady_clock::now() - t0 > kCallerSpin) yielding = true;
      }
    }
  }
}

}  // namespace llmcore

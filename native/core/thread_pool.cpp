// ThreadPool: N-1 workers plus the calling thread, dynamic scheduling through one atomic
// counter, spin-then-sleep between loops.
//
// Protocol (one loop at a time, serialized by run_mutex). Each worker has a slot whose state is
// Idle (may join the current loop), Busy (inside it) or Locked (shut out of it).
//   caller: with every slot Locked (so no worker is inside a loop), writes the job (fn, ctx, n)
//           and next = 0, stores Idle into every slot (release), then bumps `generation`
//           (seq_cst) and, if any worker may be asleep, notifies under the sleep mutex. It takes
//           items itself until the counter passes n, then shuts every worker out: a CAS
//           Idle -> Locked per slot, waiting while a slot is Busy. When all slots are Locked
//           every item has been handed out and finished, and no worker can touch the job, so
//           run() returns and the next job may be written.
//   worker: waits until generation changes (spinning ~150 us, then sleeping on the condition
//           variable), then tries CAS Idle -> Busy (acquire). If that fails the loop already
//           finished without it. If it succeeds it is pinned to the current job (the caller
//           cannot finish it while the slot is Busy), takes items, and stores Idle (release).
// A worker that is descheduled or asleep when a loop starts therefore never delays it: the
// caller (and the workers that are awake) do the items, and the late one is simply locked out.
// Memory ordering: the job fields are written before the Idle store (release) that the
// worker's successful CAS (acquire) reads; a worker's item effects are released by its Idle
// store and acquired by the caller's CAS Idle -> Locked.
// No lost wakeup: a worker increments `sleepers` and re-checks `generation` under the mutex
// before waiting; the caller bumps `generation` then loads `sleepers`. Both are seq_cst, so
// (Dekker) either the caller sees the sleeper and notifies under the mutex, or the worker sees
// the new generation and does not wait.
#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <exception>
#include <memory>
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
struct LoopDepth {
  LoopDepth() { ++t_in_loop; }
  ~LoopDepth() { --t_in_loop; }
};

constexpr auto kSpin = std::chrono::microseconds(150);       // worker spin before sleeping
constexpr auto kCallerSpin = std::chrono::microseconds(50);  // caller pure spin before yields

enum : int { kIdle = 0, kBusy = 1, kLocked = 2 };

struct alignas(64) Slot {
  std::atomic<int> state{kLocked};
};
struct alignas(64) PaddedAtomicI64 {
  std::atomic<int64_t> v{0};
};
struct alignas(64) PaddedAtomicU64 {
  std::atomic<uint64_t> v{0};
};

// Spins with pause for a while, then yields, until done() holds.
template <class Done>
void wait_until(Done&& done) {
  if (done()) return;
  const auto t0 = std::chrono::steady_clock::now();
  for (int it = 0;; ++it) {
    LLMCORE_PAUSE();
    if (done()) return;
    if ((it & 63) == 63 && std::chrono::steady_clock::now() - t0 > kCallerSpin) break;
  }
  while (!done()) std::this_thread::yield();
}
}  // namespace

struct ThreadPool::State {
  // The job: written by the caller while every slot is Locked, read by workers while Busy.
  void (*fn)(void*, int64_t, int) = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;

  PaddedAtomicU64 generation;  // bumped once per loop
  PaddedAtomicI64 next;        // next item index to take
  std::unique_ptr<Slot[]> slots;
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
    LoopDepth depth;
    for (;;) {
      const int64_t i = next.v.fetch_add(1, std::memory_order_relaxed);
      if (i >= count) break;
      f(c, i, tid);
    }
  }

  void worker_main(int tid) {
    Slot& me = slots[size_t(tid - 1)];
    uint64_t seen = 0;
    for (;;) {
      // Spin for a while: back-to-back loops find us awake.
      uint64_t g = generation.v.load(std::memory_order_acquire);
      if (g == seen && !stop.load(std::memory_order_relaxed)) {
        const auto t0 = std::chrono::steady_clock::now();
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
      if (stop.load(std::memory_order_acquire)) return;
      seen = g;
      int expected = kIdle;
      if (me.state.compare_exchange_strong(expected, kBusy, std::memory_order_acquire,
                                           std::memory_order_relaxed)) {
        work(tid);  // the job current when we got in: the caller cannot move on while Busy
        me.state.store(kIdle, std::memory_order_release);
      }
      // else: locked out, that loop finished without us.
    }
  }
};

ThreadPool::ThreadPool(int n_threads) : state_(new State), n_threads_(n_threads < 1 ? 1 : n_threads) {
  state_->slots.reset(new Slot[size_t(n_threads_)]);
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
    LoopDepth depth;
    for (int64_t i = 0; i < n; ++i) fn(ctx, i, 0);
    return;
  }
  std::lock_guard<std::mutex> run_lock(s.run_mutex);
  const int nw = n_threads_ - 1;
  // Every slot is Locked here (initially, and after the previous loop): no worker reads these.
  s.fn = fn;
  s.ctx = ctx;
  s.n = n;
  s.next.v.store(0, std::memory_order_relaxed);
  for (int w = 0; w < nw; ++w) s.slots[size_t(w)].state.store(kIdle, std::memory_order_release);
  s.generation.v.fetch_add(1, std::memory_order_seq_cst);
  if (s.sleepers.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lk(s.mu); }
    s.cv.notify_all();
  }
  // fn must not throw; if it does on this thread anyway, the workers are still shut out (they
  // may be running items of this job) before the exception leaves, so the pool stays usable.
  // An exception on a worker thread terminates the process.
  std::exception_ptr err;
  try {
    s.work(0);
  } catch (...) {
    s.next.v.store(n, std::memory_order_relaxed);  // stop handing out items
    err = std::current_exception();
  }
  for (int w = 0; w < nw; ++w) {
    std::atomic<int>& st = s.slots[size_t(w)].state;
    wait_until([&] {
      int expected = kIdle;
      return st.compare_exchange_weak(expected, kLocked, std::memory_order_acq_rel,
                                      std::memory_order_relaxed) ||
             expected == kLocked;
    });
  }
  if (err) std::rethrow_exception(err);
}

// Shares: 2 x threads slots of packed [lo, hi) ranges (lo in the low 32 bits). Slots
// [0, threads) start with the contiguous split, the rest empty: they are where a thread that
// joins late (and finds the first items taken) keeps what it steals. An owner takes pieces off
// the front of its slot, a thief the back half of another's, both by CAS on the same word, so
// no item is taken twice. A stolen range is stored into the thief's (empty) slot, where others
// may in turn steal from it; the thief works it front to back like its own.
void ThreadPool::run_shares(int64_t n, int64_t step, int64_t min_steal,
                            void (*fn)(void* ctx, int64_t begin, int64_t end, int tid), void* ctx) {
  if (n <= 0) return;
  if (step < 1) step = 1;
  if (min_steal < 1) min_steal = 1;
  if (n_threads_ == 1 || n <= step || t_in_loop > 0 || n > int64_t(UINT32_MAX)) {
    LoopDepth depth;
    for (int64_t b = 0; b < n; b += step) fn(ctx, b, b + step < n ? b + step : n, 0);
    return;
  }
  const int nt = n_threads_;
  const int slots = 2 * nt;
  std::unique_ptr<PaddedAtomicU64[]> share(new PaddedAtomicU64[size_t(slots)]);
  auto pack = [](int64_t lo, int64_t hi) { return uint64_t(lo) | (uint64_t(hi) << 32); };
  // Share boundaries on multiples of step (the pieces a caller's kernel is built for), but
  // the last.
  auto bound = [&](int i) { return i >= nt ? n : std::min(n, (n * i / nt + step / 2) / step * step); };
  for (int i = 0; i < slots; ++i) {
    const int64_t lo = i < nt ? bound(i) : 0, hi = i < nt ? bound(i + 1) : 0;
    share[size_t(i)].v.store(pack(lo, hi), std::memory_order_relaxed);
  }
  struct Job {
    PaddedAtomicU64* share;
    int slots;
    int64_t step, min_steal;
    void (*fn)(void*, int64_t, int64_t, int);
    void* ctx;
  } job{share.get(), slots, step, min_steal, fn, ctx};
  parallel_for(slots, [&job](int64_t item, int tid) {
    std::atomic<uint64_t>& mine = job.share[item].v;
    for (;;) {
      for (;;) {  // own range, front to back
        uint64_t cur = mine.load(std::memory_order_relaxed);
        const int64_t lo = int64_t(cur & 0xffffffffu), hi = int64_t(cur >> 32);
        if (lo >= hi) break;
        const int64_t end = hi - lo > job.step ? lo + job.step : hi;
        if (mine.compare_exchange_weak(cur, uint64_t(end) | (uint64_t(hi) << 32), std::memory_order_relaxed))
          job.fn(job.ctx, lo, end, tid);
      }
      int victim = -1;
      int64_t most = 0;
      for (int j = 0; j < job.slots; ++j) {
        const uint64_t v = job.share[j].v.load(std::memory_order_relaxed);
        const int64_t left = int64_t(v >> 32) - int64_t(v & 0xffffffffu);
        if (left > most) most = left, victim = j;
      }
      if (victim < 0) return;  // nothing left to take (pieces in flight finish on their takers)
      std::atomic<uint64_t>& theirs = job.share[victim].v;
      uint64_t cur = theirs.load(std::memory_order_relaxed);
      const int64_t lo = int64_t(cur & 0xffffffffu), hi = int64_t(cur >> 32);
      if (lo >= hi) continue;
      int64_t take = (hi - lo) / 2;
      if (take < job.min_steal) take = hi - lo < job.min_steal ? hi - lo : job.min_steal;
      if (theirs.compare_exchange_strong(cur, uint64_t(lo) | (uint64_t(hi - take) << 32), std::memory_order_relaxed))
        mine.store(uint64_t(hi - take) | (uint64_t(hi) << 32), std::memory_order_relaxed);
    }
  });
}

}  // namespace llmcore

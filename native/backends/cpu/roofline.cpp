// Roofline microbenchmarks (see roofline.h). Baseline code: the vector bodies live in the ISA
// files (kern::avx2_fma_loop, kern::avx2_read_sum, ...) and are called only when best_isa()
// allows; the fallbacks here use SSE2, which every x86-64 has.
#include "backends/cpu/roofline.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <emmintrin.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "backends/cpu/cpu_features.h"
#include "backends/cpu/gemm_kernels.h"
#include "core/errors.h"

namespace llmcore::cpu {

namespace {

using Clock = std::chrono::steady_clock;

double sse2_fma_loop(int64_t iters, float* sink) {
  // No FMA on baseline x86-64: a multiply and an add per lane, counted as 2 flops.
  const __m128 b = _mm_set1_ps(0.999999f), d = _mm_set1_ps(1e-6f);
  __m128 a[8];
  for (int j = 0; j < 8; ++j) a[j] = _mm_set1_ps(1.0f + 0.1f * float(j));
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 8; ++j) a[j] = _mm_add_ps(_mm_mul_ps(a[j], b), d);
  __m128 s = a[0];
  for (int j = 1; j < 8; ++j) s = _mm_add_ps(s, a[j]);
  float t[4];
  _mm_storeu_ps(t, s);
  *sink = t[0] + t[1] + t[2] + t[3];
  return double(iters) * 8 * 4 * 2;
}

double sse2_read_streams(const float* f, size_t bytes, int streams) {
  const size_t part = bytes / size_t(streams) / 4;
  __m128 s[8];
  for (int j = 0; j < 8; ++j) s[j] = _mm_setzero_ps();
  for (size_t i = 0; i + 16 <= part; i += 16)
    for (int j = 0; j < streams; ++j)
      for (int q = 0; q < 4; ++q)
        s[(j * 4 + q) & 7] = _mm_add_ps(s[(j * 4 + q) & 7], _mm_load_ps(f + size_t(j) * part + i + 4 * q));
  __m128 t = s[0];
  for (int j = 1; j < 8; ++j) t = _mm_add_ps(t, s[j]);
  float r[4];
  _mm_storeu_ps(r, t);
  return double(r[0]) + r[1] + r[2] + r[3];
}

double sse2_read_sum(const void* p, size_t bytes, int streams, size_t chunk) {
  const float* f = static_cast<const float*>(p);
  if (chunk == 0) return sse2_read_streams(f, bytes, streams);
  const size_t block = size_t(streams) * chunk;
  double sum = 0;
  size_t off = 0;
  for (; off + block <= bytes; off += block) sum += sse2_read_streams(f + off / 4, block, streams);
  if (off < bytes) sum += sse2_read_streams(f + off / 4, bytes - off, 1);
  return sum;
}

// Runs body(tid) once on every pool thread, all at the same time: each item waits at a start
// barrier until all size() items have started, so no thread can take two. Returns the wall
// time from the barrier's release to the last thread's end, or -1 if the barrier timed out
// (a thread never showed up).
template <class Body>
double run_concurrently(ThreadPool& pool, Body&& body) {
  const int n = pool.size();
  std::atomic<int> arrived{0};
  std::atomic<bool> timed_out{false};
  std::vector<Clock::time_point> t0(static_cast<size_t>(n)), t1(static_cast<size_t>(n));
  pool.parallel_for(n, [&](int64_t i, int tid) {
    arrived.fetch_add(1, std::memory_order_acq_rel);
    const auto w0 = Clock::now();
    while (arrived.load(std::memory_order_acquire) < n) {
      _mm_pause();
      if (Clock::now() - w0 > std::chrono::milliseconds(500)) {
        timed_out.store(true);
        break;
      }
    }
    t0[size_t(i)] = Clock::now();
    body(tid);
    t1[size_t(i)] = Clock::now();
  });
  if (timed_out.load()) return -1.0;
  const auto start = *std::min_element(t0.begin(), t0.end());
  const auto end = *std::max_element(t1.begin(), t1.end());
  return std::chrono::duration<double>(end - start).count();
}

double read_sum(Isa isa, const void* p, size_t bytes, int streams, size_t chunk) {
  switch (isa) {
    case Isa::Amx:
    case Isa::Avx512: return kern::avx512_read_sum(p, bytes, streams, chunk);
    case Isa::Avx2: return kern::avx2_read_sum(p, bytes, streams, chunk);
    default: return sse2_read_sum(p, bytes, streams, chunk);
  }
}

}  // namespace

namespace {
// Runs loop(iters, sink) on every pool thread at once, the count calibrated so one trial takes
// ~40 ms; the best of 7 trials in GFLOP/s.
double measure_peak(ThreadPool& pool, double (*loop)(int64_t, float*)) {
  const int n = pool.size();
  std::vector<float> sink(size_t(n) * 16);
  int64_t iters = 1 << 20;
  for (;;) {
    const auto a = Clock::now();
    loop(iters, &sink[0]);
    const double s = std::chrono::duration<double>(Clock::now() - a).count();
    if (s > 0.01 || iters > (int64_t(1) << 34)) {
      iters = int64_t(double(iters) * 0.04 / (s > 1e-6 ? s : 1e-6)) + 1;
      break;
    }
    iters *= 4;
  }
  double best = 0.0;
  for (int trial = 0; trial < 7; ++trial) {
    std::vector<double> flops(size_t(n), 0.0);
    const double s = run_concurrently(pool, [&](int tid) {
      flops[size_t(tid)] = loop(iters, &sink[size_t(tid) * 16]);
    });
    if (s <= 0) continue;
    double total = 0;
    for (double f : flops) total += f;
    best = std::max(best, total / s * 1e-9);
  }
  return best;
}
}  // namespace

double measure_peak_fma_gflops(ThreadPool& pool) {
  switch (best_isa()) {
    case Isa::Amx:
    case Isa::Avx512: return measure_peak(pool, kern::avx512_fma_loop);
    case Isa::Avx2: return measure_peak(pool, kern::avx2_fma_loop);
    default: return measure_peak(pool, sse2_fma_loop);
  }
}

double measure_peak_bf16_gflops(ThreadPool& pool) {
  const Isa isa = best_isa();
  if (isa == Isa::Amx) return measure_peak(pool, kern::amx_bf16_tile_loop);
  if (isa != Isa::Avx512 || !cpu_features().avx512bf16) return 0.0;
  return measure_peak(pool, kern::avx512_bf16_dot_loop);
}

double measure_read_bandwidth_gbs(ThreadPool& pool, size_t bytes) {
  const Isa isa = best_isa();
  const int n = pool.size();
  bytes = std::max<size_t>(bytes / 4096 * 4096, 4096);
  void* buf = nullptr;
  const size_t align = size_t(2) << 20;  // 2 MiB: lets the kernel back it with huge pages
  if (posix_memalign(&buf, align, (bytes + align - 1) / align * align) != 0)
    throw Error(E_OOM, "[roofline] cannot allocate the bandwidth buffer");
#ifdef MADV_HUGEPAGE
  madvise(buf, (bytes + align - 1) / align * align, MADV_HUGEPAGE);
#endif
  // Shares: contiguous, multiples of 4 KiB.
  const size_t share = bytes / size_t(n) / 4096 * 4096;
  std::vector<double> sums(size_t(n), 0.0);
  // First touch by the thread that will read it; real, non-zero data (an untouched buffer
  // would read the shared zero page and measure the cache instead).
  pool.parallel_for(n, [&](int64_t i, int) {
    float* f = reinterpret_cast<float*>(static_cast<char*>(buf) + size_t(i) * share);
    const size_t len = i == n - 1 ? bytes - size_t(i) * share : share;
    for (size_t j = 0; j < len / 4; ++j) f[j] = 1.0f + float(j & 7);
  });
  // One sequential stream per thread is not always enough to saturate the memory system, and
  // streams far apart are not the same as neighbouring ones (the AVX2 GEMV reads 4 neighbouring
  // panels at once), so try several patterns and keep the best trial of any: the honest
  // maximum. chunk 0: the streams split the thread's share into equal far-apart parts.
  struct Pattern {
    int streams;
    size_t chunk;
  };
  const Pattern patterns[] = {{1, 0},          {2, 0},          {4, 0},          {8, 0},
                              {4, 16 << 10},   {4, 48 << 10},   {8, 24 << 10},   {2, 96 << 10}};
  double best = 0.0;
  for (const Pattern& pat : patterns) {
    for (int trial = 0; trial < 3; ++trial) {
      const double s = run_concurrently(pool, [&](int tid) {
        // Threads and shares are paired by thread id; any pairing reads every share once.
        const size_t i = size_t(tid);
        const char* p = static_cast<const char*>(buf) + i * share;
        const size_t len = i == size_t(n) - 1 ? bytes - i * share : share;
        sums[i] += read_sum(isa, p, len, pat.streams, pat.chunk);
      });
      if (trial == 0 || s <= 0) continue;  // the first trial re-warms TLBs after a switch
      best = std::max(best, double(bytes) / s * 1e-9);
    }
  }
  volatile double keep = 0;
  for (double v : sums) keep = keep + v;
  (void)keep;
  std::free(buf);
  return best;
}

}  // namespace llmcore::cpu

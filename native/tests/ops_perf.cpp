// `backend_ops_test --perf`: speed of the CPU backend's non-GEMM ops (attention, layernorm) at
// GPT-2 124M shapes, next to the machine's peak FMA rate and read bandwidth measured in the same
// run (the GEMM has its own bench: gemm_test --bench). Median of 7 samples of >= 50 ms each.
// `--perf NAME` runs only the rows whose name contains NAME.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_features.h"
#include "backends/cpu/roofline.h"
#include "tests/backend_ops.h"

namespace llmcore {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class F>
double median_seconds(F&& fn) {
  fn();  // warm-up
  int inner = 1;
  for (;;) {
    const double t0 = now_s();
    for (int i = 0; i < inner; i++) fn();
    if (now_s() - t0 >= 0.05) break;
    inner *= 2;
  }
  std::vector<double> xs;
  for (int s = 0; s < 7; s++) {
    const double t0 = now_s();
    for (int i = 0; i < inner; i++) fn();
    xs.push_back((now_s() - t0) / inner);
  }
  std::sort(xs.begin(), xs.end());
  return xs[xs.size() / 2];
}

struct AttnShape {
  const char* name;
  int n_seqs, past, n_new;
};

}  // namespace

int run_ops_perf(const char* only) {
  cpu::CpuBackend be(0, cpu::best_isa());
  ThreadPool& pool = *be.host_pool();
  const double peak = cpu::measure_peak_fma_gflops(pool);
  const double bw = cpu::measure_read_bandwidth_gbs(pool);
  std::printf("%s\nlimits: peak FMA %.1f GFLOP/s, streaming read %.1f GB/s\n", be.describe().c_str(),
              peak, bw);
  const int64_t C = 768, NH = 12, HS = C / NH;
  const int L = 1;
  const AttnShape shapes[] = {
      {"prefill 512", 1, 0, 512}, {"prefill 128", 1, 0, 128},
      {"decode b32 ctx 48", 32, 47, 1}, {"decode b1 ctx 512", 1, 511, 1},
  };
  std::printf("%-22s %10s %9s %7s %9s %7s\n", "attention", "ms", "GFLOP/s", "%peak", "KV GB/s", "%bw");
  for (const AttnShape& s : shapes) {
    if (only && !std::strstr(s.name, only)) continue;
    const int T = s.past + s.n_new;
    const int blocks_per_seq = (T + kBlockTokens - 1) / kBlockTokens;
    const size_t block_floats = size_t(L) * 2 * kBlockTokens * C;
    std::vector<float> pool_mem(block_floats * size_t(blocks_per_seq * s.n_seqs), 0.01f);
    std::vector<void*> ptrs;
    for (int b = 0; b < blocks_per_seq * s.n_seqs; b++) ptrs.push_back(pool_mem.data() + size_t(b) * block_floats);
    std::vector<std::vector<int32_t>> tables(size_t(s.n_seqs));
    std::vector<AttnSeq> seqs;
    for (int q = 0; q < s.n_seqs; q++) {
      for (int b = 0; b < blocks_per_seq; b++) tables[size_t(q)].push_back(q * blocks_per_seq + b);
      seqs.push_back(AttnSeq{q * s.n_new, s.n_new, s.past, tables[size_t(q)].data()});
    }
    const int M = s.n_seqs * s.n_new;
    std::vector<float> qkv(size_t(M) * 3 * C), out(size_t(M) * C);
    for (size_t i = 0; i < qkv.size(); i++) qkv[i] = float(int(i % 97) - 48) / 97.0f;
    const KvView kv{ptrs.data(), C, int(NH), DType::F32};
    be.kv_store(qkv.data(), seqs.data(), int(seqs.size()), kv, 0);
    const double secs = median_seconds([&] {
      be.attention(qkv.data(), seqs.data(), int(seqs.size()), kv, 0, out.data());
    });
    // Per query row and head: 2 HS FLOPs per key for the scores, 2 HS for the value sum.
    double flops = 0, kv_bytes = 0;
    for (int i = 0; i < s.n_new; i++) flops += double(s.past + i + 1) * 4.0 * double(HS) * double(NH);
    flops *= s.n_seqs;
    kv_bytes = double(s.n_seqs) * T * 2.0 * double(C) * 4.0;
    std::printf("%-22s %10.3f %9.1f %6.1f%% %9.1f %6.1f%%\n", s.name, secs * 1e3, flops / secs * 1e-9,
                100 * flops / secs * 1e-9 / peak, kv_bytes / secs * 1e-9, 100 * kv_bytes / secs * 1e-9 / bw);
  }
  // A batch-32 decode step's attention over all 12 layers with the KV cache in DRAM (113 MB,
  // past the L3: f16 at context 96, f32 at 48), laid out as KvCache lays it out (a block holds
  // all layers) and handed out as decode hands blocks out (sequence q's block b is block 32 b +
  // q). The rows above fit in the caches; this is what a step of the engine meets. The KV is
  // written in full first: the pages of a fresh cache chunk all read one zero page, which
  // measures nothing. On AVX-512 both decode walks (AttentionTuning), alternating.
  for (const DType dt : {DType::F16, DType::F32}) {
    const bool f16 = dt == DType::F16;
    const char* name = f16 ? "decode b32 ctx 96, 12 layers, KV f16 from DRAM" : "decode b32 ctx 48, 12 layers, KV f32 from DRAM";
    if (only && !std::strstr(name, only)) continue;
    const int Lc = 12, n_seqs = 32, past = f16 ? 95 : 47;
    const int per_seq = (past + 1 + kBlockTokens - 1) / kBlockTokens;
    const int64_t block_elems = int64_t(Lc) * 2 * kBlockTokens * C;
    const size_t n_elems = size_t(n_seqs) * size_t(per_seq) * size_t(block_elems);
    const size_t n_floats = f16 ? n_elems / 2 : n_elems;
    float* mem = be.alloc_cache(n_floats);
    uint16_t* halves = reinterpret_cast<uint16_t*>(mem);
    for (size_t i = 0; i < n_elems; i++) {  // 0.125..0.25
      if (f16) halves[i] = uint16_t(0x3000 + i % 1024);
      else mem[i] = 0.125f + float(i % 1024) / 8192.0f;
    }
    std::vector<void*> ptrs;
    for (int b = 0; b < n_seqs * per_seq; b++)
      ptrs.push_back(f16 ? static_cast<void*>(halves + int64_t(b) * block_elems) : static_cast<void*>(mem + int64_t(b) * block_elems));
    std::vector<std::vector<int32_t>> tables(static_cast<size_t>(n_seqs));
    std::vector<AttnSeq> seqs;
    for (int q = 0; q < n_seqs; q++) {
      for (int b = 0; b < per_seq; b++) tables[size_t(q)].push_back(b * n_seqs + q);
      seqs.push_back(AttnSeq{q, 1, past, tables[size_t(q)].data()});
    }
    std::vector<float> qkv(size_t(n_seqs) * 3 * C), out(size_t(n_seqs) * C);
    for (size_t i = 0; i < qkv.size(); i++) qkv[i] = float(int(i % 97) - 48) / 97.0f;
    const KvView kv{ptrs.data(), C, int(NH), dt};
    const double kv_bytes = double(n_floats) * 4;
    // Each call reads all 113 MB, so back-to-back calls stay cold.
    auto step = [&] {
      for (int l = 0; l < Lc; l++) be.store_and_attend(qkv.data(), seqs.data(), n_seqs, kv, l, out.data());
    };
    const cpu::AttentionTuning mine = be.attn_tuning();
    cpu::AttentionTuning heads = mine, blocks = mine;
    heads.set_walks(false);
    blocks.set_walks(true);
    const bool both = be.isa() >= cpu::Isa::Avx512;
    std::printf("%s (this CPU: %s walk):", name, mine.block_walk(dt) && both ? "block" : "head");
    for (int round = 0; round < (both ? 3 : 1); round++) {
      be.set_attention_tuning(heads);
      const double h = median_seconds(step);
      std::printf(" head walk %.3f ms (%.1f GB/s)", h * 1e3, kv_bytes / h * 1e-9);
      if (both) {
        be.set_attention_tuning(blocks);
        const double b = median_seconds(step);
        std::printf(", block walk %.3f ms (%.1f GB/s);", b * 1e3, kv_bytes / b * 1e-9);
      }
    }
    std::printf(" read %.1f GB/s\n", bw);
    be.set_attention_tuning(mine);
    be.release_cache(mem, n_floats);
  }
  for (int M : {512, 32, 1}) {
    if (only && !std::strstr("layernorm", only)) continue;
    std::vector<float> x(size_t(M) * C, 0.5f), y(size_t(M) * C), g(size_t(C), 1.f), b(size_t(C), 0.f);
    for (size_t i = 0; i < x.size(); i++) x[i] = float(int(i % 89)) / 89.0f;
    const double secs = median_seconds([&] { be.layernorm(x.data(), M, C, g.data(), b.data(), 1e-5f, y.data()); });
    std::printf("layernorm M=%-4d C=%lld %8.3f ms %7.1f GB/s (read + write)\n", M, (long long)C, secs * 1e3,
                2.0 * double(M) * double(C) * 4 / secs * 1e-9);
  }
  return 0;
}

}  // namespace llmcore

// Hardware-limit microbenchmarks, the denominators of the bench's roofline ratios.
// Both run on every thread of the pool at once (a start barrier makes sure each pool thread
// runs exactly one share, concurrently) and report the best of several short trials.
#pragma once
#include <cstddef>

#include "core/thread_pool.h"

namespace llmcore::cpu {

// Peak fp32 FMA throughput in GFLOP/s (2 flops per lane per FMA) with the best ISA
// (best_isa(), so LLMCORE_CPU_ISA caps it): independent FMA chains in registers, no memory.
double measure_peak_fma_gflops(ThreadPool& pool);

// Peak bf16 dot-product throughput in GFLOP/s of the instruction bf16 weights run on (see
// bf16_kernel() in gemm.h): AMX tdpbf16ps tiles where the CPU has AMX-BF16, else vdpbf16ps
// (2 products + 2 adds per fp32 lane) with AVX512_BF16; the compute roof of bf16 weights.
// 0 where bf16 weights are widened to fp32 (their roof is then the FMA peak).
double measure_peak_bf16_gflops(ThreadPool& pool);

// Streaming read bandwidth in GB/s (1e9 bytes/s): every thread sums its contiguous share of a
// `bytes`-sized buffer (default 1 GiB, far larger than any L3) with SIMD loads.
double measure_read_bandwidth_gbs(ThreadPool& pool, size_t bytes = size_t(1) << 30);

}  // namespace llmcore::cpu

// Introspection and self-tests of the native side: CPU features, test-backend-ops, the
// machine's measured limits (for benchmarks' roofline ratios).
import { callNative } from './errors';
import { native, type BackendOpCase, type Roofline } from './native';

/**
 * The CPU's features and the kernels chosen. bf16DotProduct: bf16 matmuls use the CPU's bf16
 * dot product (AVX512_BF16), which rounds the activations to bf16 as well, so their logits
 * differ from the fp32 path by about bf16's rounding.
 */
export function backendInfo(): { cpuFeatures: string; cpuKernels: string; bf16DotProduct: boolean } {
  const info = native().cpuInfo();
  return { cpuFeatures: info.features, cpuKernels: info.isa, bf16DotProduct: info.bf16DotProduct };
}

/** Every op of every backend kernel family against the plain reference (test-backend-ops). */
export function runBackendOps(options?: { quick?: boolean }): Promise<BackendOpCase[]> {
  return callNative(() => native().runBackendOps(options?.quick ?? true));
}

/**
 * The machine's limits with `threads` threads: peak fp32 FMA rate (GFLOP/s), peak bf16
 * dot-product rate (vdpbf16ps, the roof of bf16 weights where backendInfo().bf16DotProduct;
 * null without AVX512_BF16) and streaming read bandwidth (GB/s) over a `bytes` buffer.
 */
export function measureRoofline(threads: number, bytes = 1 << 30): Promise<Roofline> {
  return callNative(() => native().measureRoofline(threads, bytes));
}

// Introspection and self-tests of the native side: CPU features, test-backend-ops, the
// machine's measured limits (for benchmarks' roofline ratios).
import { callNative } from './errors';
import { native, type BackendOpCase, type Roofline } from './native';

/**
 * The CPU's features and the kernels chosen. bf16DotProduct: bf16 matmuls use the CPU's bf16
 * dot product (AMX-BF16 tiles or AVX512_BF16 vdpbf16ps, named by bf16Kernel; 'fma' = widened
 * to fp32), which rounds the activations to bf16 as well, so their logits differ from the fp32
 * path by about bf16's rounding.
 */
export function backendInfo(): {
  cpuFeatures: string;
  cpuKernels: string;
  bf16DotProduct: boolean;
  bf16Kernel: 'amx' | 'vdpbf16ps' | 'fma';
} {
  const info = native().cpuInfo();
  return {
    cpuFeatures: info.features,
    cpuKernels: info.isa,
    bf16DotProduct: info.bf16DotProduct,
    bf16Kernel: info.bf16Kernel,
  };
}

/** Every op of every backend kernel family against the plain reference (test-backend-ops). */
export function runBackendOps(options?: { quick?: boolean }): Promise<BackendOpCase[]> {
  return callNative(() => native().runBackendOps(options?.quick ?? true));
}

/**
 * The machine's limits with `threads` threads: peak fp32 FMA rate (GFLOP/s), peak bf16
 * dot-product rate of the instruction bf16 weights run on (backendInfo().bf16Kernel: AMX tiles
 * or vdpbf16ps; null when they are widened to fp32) and streaming read bandwidth (GB/s) over a
 * `bytes` buffer.
 */
export function measureRoofline(threads: number, bytes = 1 << 30): Promise<Roofline> {
  return callNative(() => native().measureRoofline(threads, bytes));
}

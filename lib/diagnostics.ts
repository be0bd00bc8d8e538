// Introspection and self-tests of the native side: CPU features, test-backend-ops, the
// machine's measured limits (for benchmarks' roofline ratios).
import { callNative } from './errors';
import { native, type BackendOpCase } from './native';

export function backendInfo(): { cpuFeatures: string; cpuKernels: string } {
  const info = native().cpuInfo();
  return { cpuFeatures: info.features, cpuKernels: info.isa };
}

/** Every op of every backend kernel family against the plain reference (test-backend-ops). */
export function runBackendOps(options?: { quick?: boolean }): Promise<BackendOpCase[]> {
  return callNative(() => native().runBackendOps(options?.quick ?? true));
}

/** Peak FMA rate (GFLOP/s) and streaming read bandwidth (GB/s) with `threads` threads. */
export function measureRoofline(threads: number, bytes = 1 << 30): Promise<{ peakGflops: number; readGBs: number; threads: number }> {
  return callNative(() => native().measureRoofline(threads, bytes));
}

// test-backend-ops through the public API: every op of every CPU kernel family this machine can
// run, against the plain reference, in its quick configuration.
import { backendInfo, measureRoofline, runBackendOps } from '../lib';
import type { BackendOpCase } from '../lib/native';

const OPS = ['layernorm', 'matmul', 'kv_store', 'attention', 'store_and_attend', 'embed', 'gather'] as const;

let cases: BackendOpCase[];
beforeAll(async () => {
  cases = await runBackendOps({ quick: true });
});

const describeCase = (c: BackendOpCase) =>
  `${c.backend} ${c.op} [${c.shape}] maxErr=${c.maxErr} tol=${c.tol}${c.note ? ` note: ${c.note}` : ''}`;

test('returns a non-empty, well-formed report', () => {
  expect(Array.isArray(cases)).toBe(true);
  expect(cases.length).toBeGreaterThan(0);
  for (const c of cases) {
    expect(typeof c.backend).toBe('string');
    expect(c.backend).toMatch(/^cpu\//);
    expect(typeof c.op).toBe('string');
    expect(typeof c.shape).toBe('string');
    expect(typeof c.supported).toBe('boolean');
    expect(typeof c.ok).toBe('boolean');
    expect(typeof c.note).toBe('string');
  }
});

test('every supported case is within tolerance', () => {
  const failing = cases.filter((c) => c.supported && !c.ok);
  expect(failing.map(describeCase)).toEqual([]);
  for (const c of cases.filter((x) => x.supported)) {
    // ok must mean a finite error within the stated tolerance (NaN would compare false everywhere)
    expect(Number.isFinite(c.maxErr)).toBe(true);
    expect(c.maxErr).toBeLessThanOrEqual(c.tol);
  }
});

test('every op has cases on every supported backend; unsupported families say why', () => {
  const supported = [...new Set(cases.filter((c) => c.supported).map((c) => c.backend))].sort();
  const unsupported = [...new Set(cases.filter((c) => !c.supported).map((c) => c.backend))].sort();
  expect(supported).toContain('cpu/scalar'); // the portable fallback always runs
  const missing: string[] = [];
  for (const b of supported)
    for (const op of OPS)
      if (!cases.some((c) => c.backend === b && c.op === op && c.supported)) missing.push(`${b}/${op}`);
  expect(missing).toEqual([]);
  for (const b of unsupported) {
    expect(supported).not.toContain(b); // a family is either run or skipped as a whole
    const why = cases.find((c) => c.backend === b && !c.supported)!;
    expect(why.note.length).toBeGreaterThan(0);
    console.log(`${b}: NOT_SUPPORTED on this CPU (${why.note})`);
  }
  console.log(
    `backend-ops: ${cases.filter((c) => c.supported).length} cases on ${supported.join(', ')}` +
      (unsupported.length ? `; skipped ${unsupported.join(', ')}` : ''),
  );
});

test('the kernel family the engine selects is one that passed', () => {
  const { cpuFeatures, cpuKernels } = backendInfo();
  expect(typeof cpuFeatures).toBe('string');
  const selected = `cpu/${cpuKernels}`;
  const ran = cases.filter((c) => c.backend === selected && c.supported);
  expect(ran.length).toBeGreaterThan(0);
  expect(ran.every((c) => c.ok)).toBe(true);
});

test('measureRoofline reports the limits the bench divides by, bf16 only where its kernel runs', async () => {
  const r = await measureRoofline(1, 64 * 2 ** 20);
  expect(r.threads).toBe(1);
  expect(Number.isFinite(r.peakGflops) && r.peakGflops > 0).toBe(true);
  expect(Number.isFinite(r.readGBs) && r.readGBs > 0).toBe(true);
  const { bf16DotProduct, bf16Kernel } = backendInfo();
  expect(bf16DotProduct).toBe(bf16Kernel !== 'fma');
  if (bf16Kernel === 'amx') {
    // One tdpbf16ps does 16 x 16 x 32 products: measured 10x the fp32 FMA flops per core on an
    // Intel Xeon (Emerald Rapids); under 2x would mean the tiles are not doing the work.
    expect(r.peakBf16Gflops).not.toBeNull();
    expect(r.peakBf16Gflops!).toBeGreaterThan(2 * r.peakGflops);
    console.log(`roofline (1 thread): fp32 FMA ${r.peakGflops.toFixed(1)}, bf16 AMX ${r.peakBf16Gflops!.toFixed(1)} GFLOP/s`);
  } else if (bf16Kernel === 'vdpbf16ps') {
    // vdpbf16ps does twice an FMA's flops per instruction; how fast it issues depends on the
    // CPU: measured 2.0x the fp32 FMA flops on AMD Zen 4, 0.49x on Intel Xeon (Emerald Rapids,
    // one per two cycles). Anything outside [0.25x, 4x] would be a broken measurement.
    expect(r.peakBf16Gflops).not.toBeNull();
    expect(r.peakBf16Gflops!).toBeGreaterThan(0.25 * r.peakGflops);
    expect(r.peakBf16Gflops!).toBeLessThan(4 * r.peakGflops);
    console.log(`roofline (1 thread): fp32 FMA ${r.peakGflops.toFixed(1)}, bf16 dot ${r.peakBf16Gflops!.toFixed(1)} GFLOP/s`);
  } else {
    expect(r.peakBf16Gflops).toBeNull();
  }
});

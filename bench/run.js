// npm run bench: prompt and generation throughput of the 124M checkpoint (random weights, real
// shapes) next to this machine's measured limits. Prints a table and writes JSON with machine
// info and medians of several runs; refuses any figure above its roofline (a broken clock or
// a skipped computation, not a fast kernel).
//   node bench/run.js [--runs N] [--dtypes f32,bf16] [--json FILE] [--quick]
// Besides every dtype's rows, batch-32 decode once more with f32 weights and the f16 KV cache.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { parseArgs } = require('node:util');
const llm = require('../dist/cjs/index.js');

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    dtypes: { type: 'string', default: 'f32,bf16' },
    json: { type: 'string', default: path.join(__dirname, 'results', 'latest.json') },
    model: { type: 'string' },
    quick: { type: 'boolean', default: false },
  },
});
const RUNS = Math.max(1, Number(values.runs));
const DECODE_TOKENS = values.quick ? 16 : 64;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function checkpoint() {
  if (values.model) return values.model;
  const dir = path.join(__dirname, '..', '.cache', 'gpt2-random-124M');
  if (!fs.existsSync(path.join(dir, 'model.safetensors'))) {
    console.error(`creating ${dir} ...`);
    await llm.createRandomCheckpoint({ out: dir, preset: '124M', seed: 0 });
  }
  return dir;
}

// Deterministic "random" token ids, so every run and machine feeds the same prompts.
function promptTokens(n, salt) {
  const out = [];
  let s = 12345 + salt * 7919;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    out.push(s % 50000);
  }
  return out;
}

// The machine's limits drift: on a shared host the read bandwidth has been seen to sit near 32
// GB/s for minutes and near 55 GB/s for the next minutes, and it moves inside a row's runs. So
// every timed run also gets the limits measured right before and right after it (the better of
// the two is that run's local roof), on a 256 MiB buffer to keep them short.
const LOCAL_BYTES = 256 * 2 ** 20;
const measureLimits = () => llm.measureRoofline(os.availableParallelism(), LOCAL_BYTES);
const better = (a, b) => ({
  peakGflops: Math.max(a.peakGflops, b.peakGflops),
  peakBf16Gflops: a.peakBf16Gflops === null ? null : Math.max(a.peakBf16Gflops, b.peakBf16Gflops),
  readGBs: Math.max(a.readGBs, b.readGBs),
});

async function timeRuns(fn) {
  await fn();  // warm-up: page in weights, size buffers
  const limits = [await measureLimits()];
  const xs = [];
  for (let i = 0; i < RUNS; i++) {
    xs.push(await fn());
    limits.push(await measureLimits());
  }
  const perRun = xs.map((_, i) => better(limits[i], limits[i + 1]));
  return { median: median(xs), runs: xs, perRunLimits: perRun, local: limits.reduce(better) };
}

// The compute roof of a row: bf16 weights on a CPU with a bf16 dot product run their matmuls
// on it (AMX tiles, or vdpbf16ps: twice the multiplies of an fp32 FMA per instruction; the
// peak is measured, not assumed), while attention and the rest stay on fp32 FMAs. So the
// matmul flops are held to the bf16 peak and the others to the fp32 one.
const computePeak = (lim, bf16Dot) => (bf16Dot ? lim.peakBf16Gflops : lim.peakGflops);
const computeSeconds = (r, lim) =>
  r.bf16Dot
    ? r.matmulFlops / (lim.peakBf16Gflops * 1e9) + (r.flops - r.matmulFlops) / (lim.peakGflops * 1e9)
    : r.flops / (lim.peakGflops * 1e9);
const rooflineSeconds = (r, lim) => Math.max(computeSeconds(r, lim), r.bytes / (lim.readGBs * 1e9));

// kvCacheDtype 'auto' (the library's default): f16 for 16-bit weights, f32 for f32 ones.
async function benchModel(dir, dtype, { kvCacheDtype = 'auto', prefill = true, batches = [1, 8, 32] } = {}) {
  const model = await llm.loadModel(dir, { device: 'cpu', dtype, kvCacheDtype });
  const info = model.info;
  const kvElementBytes = info.kvDtype === 'f16' ? 2 : 4;
  const label = info.kvDtype === 'f16' ? `${info.weightDtype}, KV f16` : info.weightDtype;
  const c = model.config;
  const C = c.nEmbd, L = c.nLayer, V = c.vocabSize;
  const matmulParams = L * 12 * C * C;                       // qkv 3C^2, proj C^2, mlp 8C^2
  const weightBytes = info.weightBytes;                        // matmul weights as kept, LM head included
  const bf16Dot = info.weightDtype === 'BF16' && llm.backendInfo().bf16DotProduct;
  const rows = [];

  for (const T of prefill ? [128, 512] : []) {
    const ids = promptTokens(T, T);
    const t = await timeRuns(async () => {
      const r = await model.generate(ids, { maxNewTokens: 1, doSample: false });
      return r.stats.prefillMs;
    });
    // FLOPs: all T rows through the layers, causal attention, LM head for the last row only.
    const matmulFlops = 2 * matmulParams * T + 2 * V * C;
    const flops = matmulFlops + L * 2 * 2 * C * (T * (T + 1)) / 2;
    const bytes = weightBytes;
    const secs = t.median / 1000;
    rows.push({
      dtype: label, kind: 'prefill', tokens: T, batch: 1, ms: t.median, runsMs: t.runs,
      tokPerSec: T / secs, flops, matmulFlops, bytes, secs, perRun: T, localLimits: t.local, perRunLimits: t.perRunLimits, bf16Dot,
    });
  }

  for (const B of batches) {
    const prompts = Array.from({ length: B }, (_, i) => promptTokens(16, 100 + i));
    const t = await timeRuns(async () => {
      const start = performance.now();
      const results = await model.generate(prompts, { maxNewTokens: DECODE_TOKENS, doSample: false });
      const wall = performance.now() - start;
      const prefill = Math.max(...results.map((r) => r.stats.prefillMs));
      const generated = results.reduce((s, r) => s + r.stats.generatedTokens, 0) - B;  // first tokens came from prefill
      return (wall - prefill) / generated * B;  // ms per decode step of the whole batch
    });
    const stepSecs = t.median / 1000;
    const ctx = 16 + DECODE_TOKENS / 2;                          // mean context during decode
    const kvBytes = B * L * 2 * ctx * C * kvElementBytes;
    const bytes = weightBytes + kvBytes;
    const matmulFlops = B * 2 * (matmulParams + V * C);
    const flops = matmulFlops + B * L * 2 * 2 * C * ctx;
    rows.push({
      dtype: label, kind: 'decode', tokens: DECODE_TOKENS, batch: B, ms: t.median,
      runsMs: t.runs, tokPerSec: B / stepSecs, flops, matmulFlops, bytes, secs: stepSecs, perRun: B,
      localLimits: t.local, perRunLimits: t.perRunLimits, bf16Dot, memoryBound: true,
    });
  }
  model.dispose();
  return { info, rows };
}

(async () => {
  const dir = await checkpoint();
  const threads = os.availableParallelism();
  const roofRuns = [];
  for (let i = 0; i < 3; i++) roofRuns.push(await llm.measureRoofline(threads));
  const roof = { threads, ...roofRuns.reduce(better) };
  const machine = {
    cpu: os.cpus()[0]?.model, cores: threads, memGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`, node: process.version,
    ...llm.backendInfo(), date: new Date().toISOString(),
  };
  const results = [];
  const dtypes = values.dtypes.split(',');
  for (const dtype of dtypes) results.push(await benchModel(dir, dtype));
  // f32 weights with the f16 cache (the 16-bit weights have it by default).
  if (dtypes.includes('f32')) results.push(await benchModel(dir, 'f32', { kvCacheDtype: 'f16', prefill: false, batches: [32] }));
  const rows = results.flatMap((r) => r.rows);
  // The limits: the best of every measurement of the session (at the start and around each run),
  // so a slow moment of the host never inflates a ratio.
  for (const r of rows) Object.assign(roof, better(roof, r.localLimits));
  for (const r of rows) {
    const roofSecs = rooflineSeconds(r, roof);
    r.gflops = r.flops / r.secs / 1e9;
    r.computePeak = r.bf16Dot ? `bf16 ${machine.bf16Kernel}` : 'fp32 FMA';
    // Against the roof of its own units (computeSeconds), and plainly against the fp32 FMA peak.
    r.fractionOfComputePeak = computeSeconds(r, roof) / r.secs;
    r.fractionOfFp32Peak = r.gflops / roof.peakGflops;
    if (r.memoryBound) {
      r.weightGBs = r.bytes / r.secs / 1e9;
      r.fractionOfBandwidth = r.weightGBs / roof.readGBs;
    }
    r.rooflineTokPerSec = r.perRun / roofSecs;
    r.ratioToRoofline = roofSecs / r.secs;
    // Each run against the limits measured around it; the row's figure is their median.
    r.runRatiosToLocalRoofline = r.runsMs.map((ms, i) => rooflineSeconds(r, r.perRunLimits[i]) / (ms / 1000));
    r.ratioToLocalRoofline = median(r.runRatiosToLocalRoofline);
  }
  const report = { machine, limits: roof, runs: RUNS, decodeTokens: DECODE_TOKENS, backend: results[0].info.backend, rows };

  const pct = (x) => (x === undefined ? '' : `${(100 * x).toFixed(0)}%`);
  console.log(`\nmachine: ${machine.cpu}, ${threads} threads, ${machine.cpuFeatures}; kernels ${machine.cpuKernels}`);
  const bf16Peak = roof.peakBf16Gflops === null ? '' : `, bf16 dot product (${machine.bf16Kernel}) ${roof.peakBf16Gflops.toFixed(1)} GFLOP/s`;
  console.log(`limits:  peak fp32 FMA ${roof.peakGflops.toFixed(1)} GFLOP/s${bf16Peak}, streaming read ${roof.readGBs.toFixed(1)} GB/s ` +
    `(the best of all ${3 + rows.reduce((s, r) => s + r.runsMs.length + 1, 0)} measurements of this run)\n`);
  console.log('| weights | phase | batch | tok/s | ms (median) | GFLOP/s | % compute peak | GB/s | % bandwidth | roofline tok/s | % roofline | limits around the runs | % of those (median of runs) |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  const limitText = (r) => {
    const compute = computePeak(r.localLimits, r.bf16Dot).toFixed(0);
    return `${compute} GFLOP/s${r.bf16Dot ? ` ${machine.bf16Kernel}` : ''}, ${Math.min(...r.perRunLimits.map((l) => l.readGBs)).toFixed(0)}-${r.localLimits.readGBs.toFixed(0)} GB/s`;
  };
  for (const r of rows)
    console.log(
      `| ${r.dtype} | ${r.kind === 'prefill' ? `prefill ${r.tokens}` : 'decode'} | ${r.batch} | ${r.tokPerSec.toFixed(1)} | ` +
        `${r.ms.toFixed(1)} | ${r.gflops.toFixed(1)} | ${pct(r.fractionOfComputePeak)}${r.bf16Dot ? ` (${machine.bf16Kernel}; ${pct(r.fractionOfFp32Peak)} of fp32)` : ''} | ${r.weightGBs ? r.weightGBs.toFixed(1) : ''} | ` +
        `${pct(r.fractionOfBandwidth)} | ${r.rooflineTokPerSec.toFixed(1)} | ${pct(r.ratioToRoofline)} | ` +
        `${limitText(r)} | ${pct(r.ratioToLocalRoofline)} |`,
    );
  fs.mkdirSync(path.dirname(values.json), { recursive: true });
  fs.writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n');
  console.log(`\nJSON: ${values.json}`);
  const impossible = rows.filter((r) => r.ratioToRoofline > 1.02 || r.ratioToLocalRoofline > 1.02);
  if (impossible.length > 0) {
    console.error(`REJECTED: ${impossible.length} figure(s) above the roofline; the measurement is wrong`);
    process.exitCode = 1;
  }
})().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});

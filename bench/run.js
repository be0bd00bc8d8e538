// npm run bench: prompt and generation throughput of the 124M checkpoint (random weights, real
// shapes) next to this machine's measured limits. Prints a table and writes JSON with machine
// info and medians of several runs; refuses any figure above its roofline (a broken clock or
// a skipped computation, not a fast kernel).
//   node bench/run.js [--runs N] [--dtypes f32,bf16] [--json FILE] [--quick]
// Besides every dtype's rows, batch-32 decode once more with f32 weights and the f16 KV cache.
//   node bench/run.js --phases SECONDS [--dtypes f32,bf16] [--json FILE]
// Batch-1 decode only, for SECONDS per dtype, each run between two reads (see phaseProbe).
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
    phases: { type: 'string' },
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

// One timed run of batch-B decode: B prompts of 16 tokens, DECODE_TOKENS greedy new tokens each;
// resolves to the ms per decode step of the whole batch (prefill excluded).
const decodeStep = (model, B) => {
  const prompts = Array.from({ length: B }, (_, i) => promptTokens(16, 100 + i));
  return async () => {
    const start = performance.now();
    const results = await model.generate(prompts, { maxNewTokens: DECODE_TOKENS, doSample: false });
    const wall = performance.now() - start;
    const prefill = Math.max(...results.map((r) => r.stats.prefillMs));
    const generated = results.reduce((s, r) => s + r.stats.generatedTokens, 0) - B;  // first tokens came from prefill
    return (wall - prefill) / generated * B;
  };
};

// Matmul weights of the layers (qkv 3C^2, proj C^2, mlp 8C^2), LM head excluded.
const layerMatmulParams = (c) => c.nLayer * 12 * c.nEmbd * c.nEmbd;

// Bytes and FLOPs of one batch-B decode step: matmul weights as kept (LM head included) plus
// the KV cache at the mean context of the run.
function decodeCost(model, B) {
  const { info, config: c } = model;
  const C = c.nEmbd, L = c.nLayer, V = c.vocabSize;
  const kvElementBytes = info.kvDtype === 'f16' ? 2 : 4;
  const ctx = 16 + DECODE_TOKENS / 2;
  const matmulFlops = B * 2 * (layerMatmulParams(c) + V * C);
  return {
    bytes: info.weightBytes + B * L * 2 * ctx * C * kvElementBytes,
    flops: matmulFlops + B * L * 2 * 2 * C * ctx,
    matmulFlops,
    bf16Dot: info.weightDtype === 'BF16' && llm.backendInfo().bf16DotProduct,
  };
}

// kvCacheDtype 'auto' (the library's default): f16 for 16-bit weights, f32 for f32 ones.
async function benchModel(dir, dtype, { kvCacheDtype = 'auto', prefill = true, batches = [1, 8, 32] } = {}) {
  const model = await llm.loadModel(dir, { device: 'cpu', dtype, kvCacheDtype });
  const info = model.info;
  const label = info.kvDtype === 'f16' ? `${info.weightDtype}, KV f16` : info.weightDtype;
  const c = model.config;
  const C = c.nEmbd, L = c.nLayer, V = c.vocabSize;
  const matmulParams = layerMatmulParams(c);
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
    const t = await timeRuns(decodeStep(model, B));
    const stepSecs = t.median / 1000;
    rows.push({
      dtype: label, kind: 'decode', tokens: DECODE_TOKENS, batch: B, ms: t.median,
      runsMs: t.runs, tokPerSec: B / stepSecs, ...decodeCost(model, B), secs: stepSecs, perRun: B,
      localLimits: t.local, perRunLimits: t.perRunLimits, memoryBound: true,
    });
  }
  model.dispose();
  return { info, rows };
}

// Batch-1 decode is bound by the read bandwidth, and on a shared host that bandwidth switches
// between phases (here 55-60 and 90-103 GB/s) for seconds at a time. A row of the main bench
// may sit in one phase while the run's best read came from the other, so this mode runs batch-1
// decode for `seconds`, each run between two 256 MiB reads, and sums the runs up per phase:
// fast where both reads around a run are at >= 80% of the best read of the whole probe, slow
// where both are below it, and mixed (a switch during the run) otherwise; "one phase" when no
// read fell below that mark.
async function phaseProbe(dir, dtype, seconds) {
  const model = await llm.loadModel(dir, { device: 'cpu', dtype });
  const cost = decodeCost(model, 1);
  const run = decodeStep(model, 1);
  await run();  // warm-up
  const runs = [];
  let before = await measureLimits();
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    const ms = await run();
    const after = await measureLimits();
    runs.push({ ms, readBefore: before.readGBs, readAfter: after.readGBs,
      ratioToLocalRoofline: rooflineSeconds(cost, better(before, after)) / (ms / 1000) });
    before = after;
  }
  const label = model.info.weightDtype;
  model.dispose();
  const bestRead = Math.max(...runs.flatMap((r) => [r.readBefore, r.readAfter]));
  const phaseOf = (r) => {
    const fast = [r.readBefore, r.readAfter].map((x) => x >= 0.8 * bestRead);
    return fast[0] && fast[1] ? 'fast' : !fast[0] && !fast[1] ? 'slow' : 'mixed';
  };
  for (const r of runs) {
    r.phase = phaseOf(r);
    r.stepGBs = cost.bytes / r.ms / 1e6;
  }
  // No slow run: the host stayed in one phase (which one, the reads in the table say).
  if (!runs.some((r) => r.phase !== 'fast')) for (const r of runs) r.phase = 'one phase';
  const phases = {};
  for (const phase of ['fast', 'slow', 'mixed', 'one phase']) {
    const rs = runs.filter((r) => r.phase === phase);
    if (rs.length === 0) continue;
    const ms = median(rs.map((r) => r.ms));
    phases[phase] = {
      runs: rs.length, ms, tokPerSec: 1000 / ms, stepGBs: cost.bytes / ms / 1e6,
      readGBs: median(rs.map((r) => Math.max(r.readBefore, r.readAfter))),
      ratioToLocalRoofline: median(rs.map((r) => r.ratioToLocalRoofline)),
      ratioToBestRead: rooflineSeconds(cost, { readGBs: bestRead, peakGflops: Infinity, peakBf16Gflops: Infinity }) / (ms / 1000),
    };
  }
  return { dtype: label, seconds, bytes: cost.bytes, bestRead, phases, runs };
}

async function probeMain(dir, seconds) {
  const probes = [];
  for (const dtype of values.dtypes.split(',')) probes.push(await phaseProbe(dir, dtype, seconds));
  const pct = (x) => `${(100 * x).toFixed(0)}%`;
  console.log(`\nbatch-1 decode by memory phase, ${seconds} s per dtype, ${os.cpus()[0]?.model}, ${os.availableParallelism()} threads`);
  console.log('| weights | phase | runs | tok/s | ms (median) | GB/s | read around the runs | % of those (median of runs) | % of the best read |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const p of probes)
    for (const [phase, s] of Object.entries(p.phases))
      console.log(`| ${p.dtype} | ${phase} | ${s.runs} | ${s.tokPerSec.toFixed(1)} | ${s.ms.toFixed(2)} | ${s.stepGBs.toFixed(1)} | ` +
        `${s.readGBs.toFixed(1)} GB/s | ${pct(s.ratioToLocalRoofline)} | ${pct(s.ratioToBestRead)} of ${p.bestRead.toFixed(1)} GB/s |`);
  const json = values.json.endsWith('latest.json') ? path.join(path.dirname(values.json), 'phases.json') : values.json;
  fs.mkdirSync(path.dirname(json), { recursive: true });
  fs.writeFileSync(json, JSON.stringify({ date: new Date().toISOString(), cpu: os.cpus()[0]?.model, backend: llm.backendInfo(), probes }, null, 2) + '\n');
  console.log(`\nJSON: ${json}`);
}

(async () => {
  const dir = await checkpoint();
  if (values.phases !== undefined) {
    const seconds = Number(values.phases);
    if (!(seconds > 0)) throw new Error(`--phases: expected a number of seconds > 0, got '${values.phases}'`);
    return probeMain(dir, seconds);
  }
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

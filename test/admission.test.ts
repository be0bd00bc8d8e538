// KV-cache admission (lib/admission.ts): requests beyond the loadModel budget (kvCacheBytes,
// maxSequences) wait their turn instead of growing the cache without bound; results do not
// depend on the budget; requests that could never fit fail at once with an OptionError.
import { DisposedError, OptionError, type GenerateOptions, type Model } from '../lib';
import { Admission, type Reservation } from '../lib/admission';
import { CPU, freshModel, model, tokenSequence, type CheckpointOptions } from './helpers/fixtures';

const TINY: CheckpointOptions = { preset: 'tiny' };
const greedy = (o: GenerateOptions = {}): GenerateOptions => ({ doSample: false, ...o });

let unbounded: Model;
let blockBytes: number;
beforeAll(async () => {
  unbounded = await model(TINY);
  blockBytes = unbounded.info.kvBlockBytes;
});

// White-box: the engine's own count. It refuses (throws busy) while a step runs; blocks are
// only taken inside steps and stay taken after them, so sampling between steps sees the peak.
function nativeBlocksInUse(m: Model): number {
  try {
    return (m as unknown as { engine: { kvBlocksInUse(): number } }).engine.kvBlocksInUse();
  } catch {
    return 0;
  }
}

/** Runs fn while sampling kvStats and the native KV blocks in use on every event-loop turn. */
async function watched<T>(m: Model, fn: () => Promise<T>) {
  const peak = { native: 0, reserved: 0, active: 0, queued: 0 };
  const sample = () => {
    const s = m.kvStats();
    peak.native = Math.max(peak.native, nativeBlocksInUse(m));
    peak.reserved = Math.max(peak.reserved, s.reservedBlocks);
    peak.active = Math.max(peak.active, s.activeSequences);
    peak.queued = Math.max(peak.queued, s.queuedRequests);
  };
  const timer = setInterval(sample, 0);
  try {
    const result = await fn();
    sample();
    return { result, peak };
  } finally {
    clearInterval(timer);
  }
}

test('12 prompts through a 6-block KV budget: at most 6 blocks in use, same tokens as unbounded', async () => {
  const m = await freshModel(TINY, { ...CPU, kvCacheBytes: 6 * blockBytes });
  try {
    expect(m.kvStats()).toMatchObject({ capacityBlocks: 6, reservedBlocks: 0, queuedRequests: 0 });
    // 10-token prompts + 20 new tokens: up to 29 positions = 2 blocks each, so 3 run at a time.
    const prompts = Array.from({ length: 12 }, (_, i) => tokenSequence(10, 40 + i));
    const opts = greedy({ maxNewTokens: 20 });
    const { result, peak } = await watched(m, () => m.generate(prompts, opts));
    const want = await unbounded.generate(prompts, opts);
    expect(result.map((r) => r.sequences[0].tokens)).toEqual(want.map((r) => r.sequences[0].tokens));
    expect(peak.queued).toBeGreaterThan(0);
    expect(peak.reserved).toBeLessThanOrEqual(6);
    expect(peak.native).toBeLessThanOrEqual(6);
    expect(m.kvStats()).toMatchObject({ reservedBlocks: 0, activeSequences: 0, queuedRequests: 0 });
  } finally {
    m.dispose();
  }
});

test('maxSequences bounds the sequences decoding at once (forks count)', async () => {
  const m = await freshModel(TINY, { ...CPU, maxSequences: 3 });
  try {
    const opts: GenerateOptions = { doSample: true, seed: 5, maxNewTokens: 8, numReturnSequences: 2 };
    const prompts = ['one', 'two', 'three', 'four'];
    const { result, peak } = await watched(m, () => m.generate(prompts, opts));
    const want = await unbounded.generate(prompts, opts);
    expect(result.map((r) => r.sequences.map((s) => s.tokens))).toEqual(want.map((r) => r.sequences.map((s) => s.tokens)));
    expect(peak.active).toBeLessThanOrEqual(3);
    expect(peak.active).toBeGreaterThanOrEqual(2);
    expect(peak.queued).toBeGreaterThan(0);
  } finally {
    m.dispose();
  }
});

test('a request that can never fit is an OptionError naming kvCacheBytes / maxSequences; the model still works', async () => {
  const m = await freshModel(TINY, { ...CPU, kvCacheBytes: 6 * blockBytes, maxSequences: 2 });
  try {
    // 7 + 100 positions = 7 blocks > 6.
    await expect(m.generate(tokenSequence(8), greedy({ maxNewTokens: 100 }))).rejects.toThrow(OptionError);
    await expect(m.generate(tokenSequence(8), greedy({ maxNewTokens: 100 }))).rejects.toThrow(/kvCacheBytes/);
    await expect(m.logits(tokenSequence(100))).rejects.toThrow(/kvCacheBytes/);
    const sampled: GenerateOptions = { doSample: true, seed: 1, maxNewTokens: 4 };
    await expect(m.generate('hi', { ...sampled, numReturnSequences: 3 })).rejects.toThrow(
      /numReturnSequences=3 exceeds the model's maxSequences=2/,
    );
    const ok = await m.generate('hi', { ...sampled, numReturnSequences: 2 });
    expect(ok.sequences.map((s) => s.tokens.length)).toEqual([4, 4]);
    expect(m.kvStats().reservedBlocks).toBe(0);
  } finally {
    m.dispose();
  }
});

test('aborting a queued request ends it with finishReason abort; the running one is unaffected', async () => {
  const m = await freshModel(TINY, { ...CPU, kvCacheBytes: 3 * blockBytes });
  try {
    const opts = greedy({ maxNewTokens: 30 });  // 2 + 30 positions = 2 blocks: one request at a time
    const running = m.generate(tokenSequence(3, 7), opts);
    const ac = new AbortController();
    const queued = m.generate(tokenSequence(3, 8), { ...opts, signal: ac.signal });
    await new Promise((r) => setImmediate(r));
    expect(m.kvStats().queuedRequests).toBe(1);
    ac.abort();
    const q = await queued;
    expect(q.sequences).toEqual([{ text: '', tokens: [], finishReason: 'abort' }]);
    const r = await running;
    expect(r.sequences[0].tokens).toEqual((await unbounded.generate(tokenSequence(3, 7), opts)).sequences[0].tokens);
    expect(m.kvStats()).toMatchObject({ reservedBlocks: 0, queuedRequests: 0 });
  } finally {
    m.dispose();
  }
});

test('dispose rejects queued requests with DisposedError', async () => {
  const m = await freshModel(TINY, { ...CPU, kvCacheBytes: 3 * blockBytes });
  const opts = greedy({ maxNewTokens: 30 });
  const running = m.generate(tokenSequence(3, 7), opts).then(() => 'done', (e: unknown) => e);
  const queued = m.generate(tokenSequence(3, 8), opts).then(() => 'done', (e: unknown) => e);
  await new Promise((r) => setImmediate(r));
  expect(m.kvStats().queuedRequests).toBe(1);
  m.dispose();
  expect(await queued).toBeInstanceOf(DisposedError);
  expect(await running).toBeInstanceOf(DisposedError);
});

test('loadModel validates kvCacheBytes and maxSequences', async () => {
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ kvCacheBytes: -1 }, /kvCacheBytes must be a positive integer/],
    [{ kvCacheBytes: 0 }, /kvCacheBytes must be a positive integer/],
    [{ kvCacheBytes: 1.5 }, /kvCacheBytes must be a positive integer/],
    [{ kvCacheBytes: '1GB' }, /kvCacheBytes must be a positive integer/],
    [{ kvCacheBytes: 1000 }, /less than one KV block/],
    [{ maxSequences: 0 }, /maxSequences must be an integer/],
    [{ maxSequences: 2.5 }, /maxSequences must be an integer/],
  ];
  for (const [extra, msg] of bad) {
    const p = freshModel(TINY, { ...CPU, ...extra } as never);
    await expect(p).rejects.toThrow(OptionError);
    await expect(p).rejects.toThrow(msg);
  }
});

test('beam searches through a 12-block budget: beams forked and released between steps stay inside it', async () => {
  const m = await freshModel(TINY, { ...CPU, kvCacheBytes: 12 * blockBytes });
  try {
    // 10-token prompts + 20 new tokens, 3 beams: up to 3 x 2 blocks each, so 2 run at a time.
    const prompts = Array.from({ length: 4 }, (_, i) => tokenSequence(10, 60 + i));
    const opts = greedy({ numBeams: 3, numReturnSequences: 2, maxNewTokens: 20 });
    const { result, peak } = await watched(m, () => m.generate(prompts, opts));
    const want = await unbounded.generate(prompts, opts);
    expect(result.map((r) => r.sequences)).toEqual(want.map((r) => r.sequences));
    expect(peak.queued).toBeGreaterThan(0);
    expect(peak.active).toBeLessThanOrEqual(6);
    expect(peak.native).toBeGreaterThan(6);
    expect(peak.native).toBeLessThanOrEqual(12);
    expect(nativeBlocksInUse(m)).toBe(0);
  } finally {
    m.dispose();
  }
});

test('an f16 KV cache fits twice the blocks in the same kvCacheBytes, and runs twice the sequences at once', async () => {
  const m = await freshModel(TINY, { ...CPU, kvCacheBytes: 6 * blockBytes, kvCacheDtype: 'f16' });
  try {
    expect(m.kvStats()).toMatchObject({ capacityBlocks: 12 });
    // as in the first test: 2 blocks per request, so 6 run at a time instead of 3
    const prompts = Array.from({ length: 12 }, (_, i) => tokenSequence(10, 40 + i));
    const { result, peak } = await watched(m, () => m.generate(prompts, greedy({ maxNewTokens: 20 })));
    expect(result).toHaveLength(12);
    expect(peak.active).toBeGreaterThan(3);
    expect(peak.active).toBeLessThanOrEqual(6);
    expect(peak.native).toBeLessThanOrEqual(12);
  } finally {
    m.dispose();
  }
});

test('a reservation gives back parts as sequences end; the rest once; a waiting request is admitted as soon as it fits', async () => {
  const a = new Admission({ blockTokens: 16, blockBytes: 1, capacityBlocks: 10, maxSequences: 4 });
  const first = (await a.acquire('first', 9, 4))!; // 1 shared block + 4 sequences x 2
  let second: Reservation | null = null;
  const waiting = a.acquire('second', 3, 1).then((r) => (second = r));
  await Promise.resolve();
  expect(second).toBeNull();
  expect(a.stats()).toMatchObject({ reservedBlocks: 9, activeSequences: 4, queuedRequests: 1 });
  first.returnPart(2, 1); // one sequence ended: 7 blocks, 3 sequences left
  await waiting;
  expect(second).not.toBeNull();
  expect(a.stats()).toMatchObject({ reservedBlocks: 10, activeSequences: 4, queuedRequests: 0 });
  first.returnPart(100, 100); // clamped to what is left (7 blocks, 3 sequences)
  expect(a.stats()).toMatchObject({ reservedBlocks: 3, activeSequences: 1 });
  first.release(); // nothing left: no-op
  second!.release();
  expect(a.stats()).toMatchObject({ reservedBlocks: 0, activeSequences: 0 });
});

test('forks that stop early return their blocks: a waiting request starts before the first one ends, within the budget', async () => {
  // 10-token prompt, up to 40 new tokens: 4 blocks per sequence, none shared. The first request
  // (4 forks) takes all 16 blocks; the second (1 sequence, 4 blocks) fits once one fork ends.
  const m = await freshModel(TINY, { ...CPU, kvCacheBytes: 16 * blockBytes });
  try {
    const prompt = tokenSequence(10, 7);
    const opts = (seed: number, n: number): GenerateOptions =>
      ({ doSample: true, topK: 0, seed, maxNewTokens: 40, numReturnSequences: n, stop: [' a'] });
    const t0 = performance.now();
    let firstEnd = 0;
    const { result, peak } = await watched(m, () =>
      Promise.all([
        m.generate(prompt, opts(5, 4)).then((r) => ((firstEnd = performance.now()), r)),
        m.generate(tokenSequence(10, 8), { ...opts(6, 1), stop: [] }),
      ]),
    );
    const [a, b] = result;
    const want = [await unbounded.generate(prompt, opts(5, 4)), await unbounded.generate(tokenSequence(10, 8), { ...opts(6, 1), stop: [] })];
    expect(a.sequences.map((s) => s.tokens)).toEqual(want[0].sequences.map((s) => s.tokens));
    expect(b.sequences.map((s) => s.tokens)).toEqual(want[1].sequences.map((s) => s.tokens));
    // the first request's forks end at different lengths (the premise of this test) ...
    const lengths = a.sequences.map((s) => s.tokens.length);
    expect(Math.min(...lengths)).toBeLessThan(Math.max(...lengths));
    // ... so the second got its first token before the first request was over
    expect(t0 + b.stats.prefillMs).toBeLessThan(firstEnd);
    expect(peak.reserved).toBeLessThanOrEqual(16);
    expect(peak.native).toBeLessThanOrEqual(16);
    expect(m.kvStats()).toMatchObject({ reservedBlocks: 0, activeSequences: 0, queuedRequests: 0 });
  } finally {
    m.dispose();
  }
});

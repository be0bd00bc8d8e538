// generate() / stream() semantics: KV-cache decoding against full recomputation, batching and
// concurrency, seeded sampling, top-k / top-p sets checked against recomputed logits, lengths,
// eos, stop strings, streaming, abort, dispose and option validation.
//
// NB: the random checkpoints carry openai-community/gpt2's config, whose task_specific_params
// ask for do_sample: true and max_length: 50; generate() uses those as defaults (see
// lib/config.ts), so every greedy test passes doSample: false explicitly.
import {
  DisposedError, LlmcoreError, OptionError, loadModel, type GenerateOptions, type Model, type StreamChunk,
} from '../lib';
import {
  argmax, checkpoint, countingSteps, freshModel, model, mutableCopy, penalize, replaceFile, rewriteSafetensors, row, sortedDesc,
  tokenSequence, type CheckpointOptions,
} from './helpers/fixtures';
import { Scheduler } from '../lib/scheduler';

const TINY: CheckpointOptions = { preset: 'tiny' };
const SMALL: CheckpointOptions = { preset: 'small' };
const V = 50257;
const greedy = (o: GenerateOptions = {}): GenerateOptions => ({ doSample: false, ...o });

let tiny: Model;
beforeAll(async () => {
  tiny = await model(TINY);
});

/** Logits rows of a full recompute of prompt+generated: rows[i] is what predicted generated[i]. */
async function recomputedRows(m: Model, prompt: number[], generated: number[]): Promise<Float32Array[]> {
  if (generated.length === 0) return [];
  const logits = await m.logits([...prompt, ...generated.slice(0, -1)]);
  return generated.map((_, i) => row(logits, prompt.length - 1 + i, m.config.vocabSize));
}

async function collect(it: AsyncIterable<StreamChunk>): Promise<StreamChunk[]> {
  const out: StreamChunk[] = [];
  for await (const c of it) out.push(c);
  return out;
}

const tokenText = (m: Model, t: number) => m.tokenizer.decode([t]);
// Releases of ended sequences run between steps, after the results: poll (up to 2 s, a loaded
// CI machine) until the count settles at the expected value instead of sleeping a fixed time.
// The engine refuses the query while a step runs ("a step is running"): that is not settled yet.
async function settlesTo(read: () => number, want: number): Promise<void> {
  const deadline = Date.now() + 2000;
  const settled = () => {
    try {
      return read() === want;
    } catch {
      return false;
    }
  };
  while (!settled() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  expect(read()).toBe(want);
}

// -------------------------------------------------------------------------------------------
describe('KV-cache decoding equals full recomputation', () => {
  // Every greedy token must be the argmax of the recomputed (penalized) logits at its position.
  // A token within 1e-5 of the max also passes, in case two logits tie to fp32 precision.
  async function checkGreedy(m: Model, prompt: number[], n: number, penalty: number) {
    const r = await m.generate(prompt, greedy({ maxNewTokens: n, repetitionPenalty: penalty }));
    const gen = r.sequences[0].tokens;
    expect(gen).toHaveLength(n);
    expect(r.sequences[0].finishReason).toBe('length');
    const rows = await recomputedRows(m, prompt, gen);
    const exact: boolean[] = [];
    gen.forEach((tok, i) => {
      const x = penalize(rows[i], [...prompt, ...gen.slice(0, i)], penalty);
      const best = argmax(x);
      exact.push(best === tok);
      expect(x[tok]).toBeGreaterThanOrEqual(x[best] - 1e-5);
    });
    expect(exact.filter((e) => !e).length).toBeLessThanOrEqual(1);
    return gen;
  }

  test('tiny, no penalty, 40 new tokens (KV blocks 1..3)', async () => {
    await checkGreedy(tiny, tokenSequence(5), 40, 1);
  });

  test('tiny, repetition penalty 1.5 applied in the test to the recomputed logits', async () => {
    const gen = await checkGreedy(tiny, tokenSequence(7, 1), 30, 1.5);
    expect(new Set(gen).size).toBeGreaterThan(1);
  });

  test('small (n_embd 200), 20-token prompt + 20 new tokens, penalty 1.2', async () => {
    await checkGreedy(await model(SMALL), tokenSequence(20, 2), 20, 1.2);
  });

  test('a one-token prompt', async () => {
    await checkGreedy(tiny, [464], 18, 1.3);
  });

  // Decode steps (one row) and the full recompute (many rows) may take different kernel paths.
  test('f16 weights as stored, and f32 weights converted to bf16', async () => {
    await checkGreedy(await model({ preset: 'tiny', dtype: 'f16' }), tokenSequence(6, 8), 24, 1.3);
    await checkGreedy(await model(TINY, { device: 'cpu', dtype: 'bf16' }), tokenSequence(6, 8), 24, 1.3);
  });

  test('an f16 KV cache (prefill and decode both read the rounded K/V back from the cache)', async () => {
    await checkGreedy(await model(SMALL, { device: 'cpu', kvCacheDtype: 'f16' }), tokenSequence(20, 2), 20, 1.2);
  });
});

// -------------------------------------------------------------------------------------------
describe('batching and concurrency', () => {
  const prompts = ['Hello world', tokenSequence(9, 3), 'The quick brown fox jumps over the lazy dog, and then'];
  const opts = greedy({ maxNewTokens: 12, repetitionPenalty: 1.4 });

  test('generate([p1, p2, p3]) equals three separate calls', async () => {
    const batched = await tiny.generate(prompts, opts);
    expect(batched).toHaveLength(3);
    for (let i = 0; i < prompts.length; i++) {
      const alone = await tiny.generate(prompts[i], opts);
      expect(batched[i].sequences[0].tokens).toEqual(alone.sequences[0].tokens);
      expect(batched[i].sequences[0].text).toBe(alone.sequences[0].text);
      expect(batched[i].promptTokens).toEqual(alone.promptTokens);
    }
  });

  test("more decode rows than a step's token budget, and a prompt next to them: it still runs, in chunks", async () => {
    const saved = [Scheduler.maxStepTokens, Scheduler.minPromptTokens];
    const late = tokenSequence(10, 1);
    const alone = await tiny.generate(late, opts);
    Scheduler.maxStepTokens = 4;  // 6 one-token prompts decode: over the budget from the first step
    Scheduler.minPromptTokens = 2;
    try {
      const decoding = tiny.generate(Array.from({ length: 6 }, (_, i) => [i + 1]), greedy({ maxNewTokens: 20 }));
      const joined = tiny.generate(late, opts);
      const [d, j] = await Promise.all([decoding, joined]);
      expect(d.map((r) => r.sequences[0].tokens.length)).toEqual(Array(6).fill(20));
      expect(j.sequences).toEqual(alone.sequences);
    } finally {
      [Scheduler.maxStepTokens, Scheduler.minPromptTokens] = saved;
    }
  });

  test('concurrent generate() calls equal sequential ones', async () => {
    const sequential = [];
    for (const p of prompts) sequential.push((await tiny.generate(p, opts)).sequences[0].tokens);
    const concurrent = await Promise.all(prompts.map((p) => tiny.generate(p, opts)));
    expect(concurrent.map((r) => r.sequences[0].tokens)).toEqual(sequential);
  });

  test('seeded sampling is unaffected by other work sharing the batch', async () => {
    const s = { doSample: true, topK: 0, seed: 1234, maxNewTokens: 16 };
    const alone = (await tiny.generate('Once upon a time', s)).sequences[0].tokens;
    const [mixed] = await Promise.all([
      tiny.generate('Once upon a time', s),
      tiny.generate(tokenSequence(30, 4), greedy({ maxNewTokens: 20 })),
      tiny.logits(tokenSequence(25, 5)),
    ]);
    expect(mixed.sequences[0].tokens).toEqual(alone);
  });

  test('the prompt step gives every sequence its first token, alone or forked (numReturnSequences)', async () => {
    // The whole prompt goes in one step, which samples the first sequence's first token and
    // forks the others, each sampling its own from the same logits row: one native step to the
    // first tokens however many sequences, then one batched step per further token. Same seed,
    // same first sequence either way.
    const m = await freshModel(TINY);
    const blocksInUse = () => (m as unknown as { engine: { kvBlocksInUse(): number } }).engine.kvBlocksInUse();
    try {
      const s = { doSample: true, topK: 0, seed: 77, maxNewTokens: 1 };
      const prompt = tokenSequence(12, 6);
      const alone = await countingSteps(m, () => m.generate(prompt, s));
      expect(alone.steps).toBe(1);
      const forked = await countingSteps(m, () => m.generate(prompt, { ...s, numReturnSequences: 3 }));
      expect(forked.steps).toBe(1);
      expect(forked.result.sequences.map((q) => q.tokens.length)).toEqual([1, 1, 1]);
      expect(forked.result.sequences[0].tokens).toEqual(alone.result.sequences[0].tokens);
      const four = await countingSteps(m, () => m.generate(prompt, { ...s, maxNewTokens: 4, numReturnSequences: 3 }));
      expect(four.steps).toBe(4);
      // each fork draws with its own generator: 3 x 4 near-uniform draws, all equal with p ~ 0
      expect(new Set(four.result.sequences.map((q) => q.tokens.join(','))).size).toBeGreaterThan(1);
      const longer = { ...s, maxNewTokens: 10 };
      expect((await m.generate(prompt, { ...longer, numReturnSequences: 2 })).sequences[0])
        .toEqual((await m.generate(prompt, longer)).sequences[0]);
      await settlesTo(blocksInUse, 0);
    } finally {
      m.dispose();
    }
  });

  test('greedy decoding is deterministic across calls', async () => {
    const a = await tiny.generate('Deterministic?', greedy({ maxNewTokens: 15 }));
    const b = await tiny.generate('Deterministic?', greedy({ maxNewTokens: 15 }));
    expect(b.sequences).toEqual(a.sequences);
  });
});

// -------------------------------------------------------------------------------------------
describe('step lookahead (the next decode step submitted before the current one returns)', () => {
  // Scheduler.lookahead off makes every step wait for the previous result: the reference.
  async function bothWays<T>(m: Model, fn: () => Promise<T>) {
    const on = await countingSteps(m, fn);
    Scheduler.lookahead = false;
    try {
      const off = await countingSteps(m, fn);
      return { on, off };
    } finally {
      Scheduler.lookahead = true;
    }
  }

  test('same tokens, text and finish reasons with and without it, over the options that allow it', async () => {
    const plain = (await tiny.generate('Look ahead', greedy({ maxNewTokens: 12 }))).sequences[0].text;
    const cases: Array<[string | number[], GenerateOptions]> = [
      ['Look ahead', greedy({ maxNewTokens: 24 })],
      ['Look ahead', { doSample: true, seed: 5, temperature: 0.9, topK: 40, topP: 0.95, repetitionPenalty: 1.3, maxNewTokens: 24 }],
      [tokenSequence(10, 2), { doSample: true, seed: 9, maxNewTokens: 16, numReturnSequences: 3 }],
      ['Look ahead', greedy({ maxNewTokens: 16, minNewTokens: 8, badWordsIds: [[11], [13]] })],
      // a stop string from the middle of the greedy text: ends while the next step is in flight
      ['Look ahead', greedy({ maxNewTokens: 24, stop: [plain.slice(Math.floor(plain.length / 2), Math.floor(plain.length / 2) + 3)] })],
    ];
    for (const [prompt, o] of cases) {
      const { on, off } = await bothWays(tiny, () => tiny.generate(prompt, o));
      expect(on.result.sequences).toEqual(off.result.sequences);
      // The same steps, only submitted earlier; a lone sequence that ends before its length
      // (the stop string) had one more queued behind its last, computed for nothing.
      const early = on.result.sequences.length === 1 && on.result.sequences[0].finishReason !== 'length';
      expect(on.steps).toBe(off.steps + (early ? 1 : 0));
      expect(on.aheadSteps).toBeGreaterThan(0);
      expect(off.aheadSteps).toBe(0);
    }
    expect((await tiny.generate('Look ahead', cases[4][1])).sequences[0].finishReason).toBe('stop');
  });

  test('concurrent calls of different lengths, and n-gram bans (no lookahead for those) mixed in', async () => {
    const run = () => Promise.all([
      tiny.generate('First of three', greedy({ maxNewTokens: 20 })),
      tiny.generate(tokenSequence(7, 3), { doSample: true, seed: 3, maxNewTokens: 9 }),
      tiny.generate('Third, with bans', greedy({ maxNewTokens: 14, noRepeatNgramSize: 2 })),
    ]);
    const { on, off } = await bothWays(tiny, run);
    expect(on.result.map((r) => r.sequences)).toEqual(off.result.map((r) => r.sequences));
    expect(off.aheadSteps).toBe(0);
    // alone, a call with noRepeatNgramSize is never looked ahead (its bans depend on each token)
    const ngram = await countingSteps(tiny, () => tiny.generate('Third, with bans', greedy({ maxNewTokens: 14, noRepeatNgramSize: 2 })));
    expect(ngram.aheadSteps).toBe(0);
    expect(ngram.result.sequences).toEqual(on.result[2].sequences);
  });

  test('calls arriving and ending at random times each get the tokens they get alone', async () => {
    // Arrivals stop the lookahead (their native sequences are made between steps) and endings
    // leave a step in flight behind them: every call must still match itself run alone.
    const plain = (await tiny.generate('Arrivals', greedy({ maxNewTokens: 20 }))).sequences[0].text;
    const calls: Array<[string | number[], GenerateOptions]> = Array.from({ length: 10 }, (_, i) => {
      const o: GenerateOptions = i % 3 === 0 ? greedy({ maxNewTokens: 6 + i })
        : i % 3 === 1 ? { doSample: true, seed: 100 + i, topK: 20, maxNewTokens: 4 + 2 * i, numReturnSequences: 1 + (i % 2) }
          : greedy({ maxNewTokens: 20, stop: [plain.slice(6 + i, 9 + i)] });
      return [i % 2 ? tokenSequence(5 + i, i) : 'Arrivals', o];
    });
    Scheduler.lookahead = false;
    let alone;
    try {
      alone = [];
      for (const [p, o] of calls) alone.push((await tiny.generate(p, o)).sequences);
    } finally {
      Scheduler.lookahead = true;
    }
    const delays = [0, 3, 1, 7, 0, 12, 5, 2, 9, 4];
    const crowd = await countingSteps(tiny, () => Promise.all(calls.map(([p, o], i) =>
      new Promise((r) => setTimeout(r, delays[i])).then(() => tiny.generate(p, o)).then((r) => r.sequences))));
    expect(crowd.result).toEqual(alone);
    expect(crowd.aheadSteps).toBeGreaterThan(0);
  });

  test('sequences ending with a step in flight (stop, abort) give back every KV block', async () => {
    const m = await freshModel(TINY);
    const blocksInUse = () => (m as unknown as { engine: { kvBlocksInUse(): number } }).engine.kvBlocksInUse();
    try {
      const plain = (await m.generate('Give back', greedy({ maxNewTokens: 30 }))).sequences[0].text;
      const stop = plain.slice(20, 24);
      const r = await m.generate('Give back', greedy({ maxNewTokens: 30, stop: [stop], numReturnSequences: 1 }));
      expect(r.sequences[0].finishReason).toBe('stop');
      const ac = new AbortController();
      let chunks = 0;
      for await (const c of m.stream('Give back', { doSample: true, seed: 2, maxNewTokens: 100, signal: ac.signal })) {
        if (++chunks === 5) ac.abort();
        if (c.finishReason) expect(c.finishReason).toBe('abort');
      }
      await settlesTo(blocksInUse, 0);
      expect((await m.generate('Give back', greedy({ maxNewTokens: 30 }))).sequences[0].text).toBe(plain);
    } finally {
      m.dispose();
    }
  });

  test('native: an item fed its last sample (-1) needs a step that sampled it, even after a failed step', async () => {
    type Step = (r: Record<string, unknown>) => Promise<{ sampled: Int32Array; logits: Float32Array }>;
    const m = await freshModel(TINY);
    const engine = (m as unknown as { engine: { newSequence(s: number): number; step: Step } }).engine; // white-box
    const req = (items: Array<{ seq: number; tokens: number[]; sample?: boolean; logits?: number }>) => ({
      seqs: Int32Array.from(items.map((i) => i.seq)),
      counts: Int32Array.from(items.map((i) => i.tokens.length)),
      tokens: Int32Array.from(items.flatMap((i) => i.tokens)),
      logits: Uint8Array.from(items.map((i) => i.logits ?? 0)),
      sample: Uint8Array.from(items.map((i) => (i.sample ? 1 : 0))),
      params: new Float32Array(items.flatMap(() => [0, 1, 0, 1, 1, 0, 1])),
      banned: new Int32Array(0),
      bannedCounts: new Int32Array(items.length),
      forkSeeds: new Float64Array(0),
      forkCounts: new Int32Array(items.length),
    });
    try {
      const a = engine.newSequence(1);
      const b = engine.newSequence(1);
      await expect(engine.step(req([{ seq: a, tokens: [-1] }]))).rejects.toMatchObject({ code: 'E_OPTION', message: expect.stringMatching(/sampled none/) });
      await engine.step(req([{ seq: a, tokens: [1, 2, 3] }])); // fed, not sampled: still none
      await expect(engine.step(req([{ seq: a, tokens: [-1] }]))).rejects.toMatchObject({ code: 'E_OPTION' });
      // submitted back to back, run in order: the second is fed what the first sampled
      const first = engine.step(req([{ seq: a, tokens: [4], sample: true }, { seq: b, tokens: [1, 2, 3, 4] }]));
      const second = engine.step(req([{ seq: a, tokens: [-1], logits: 1 }]));
      const t = (await first).sampled[0];
      const explicit = await engine.step(req([{ seq: b, tokens: [t], logits: 1 }]));
      expect(Array.from((await second).logits)).toEqual(Array.from(explicit.logits));
      // a failed step (an item out of range) leaves no sample to feed, for any of its sequences
      await engine.step(req([{ seq: a, tokens: [5], sample: true }]));
      await expect(engine.step(req([{ seq: a, tokens: [-1] }, { seq: b, tokens: [V] }]))).rejects.toMatchObject({ code: 'E_OPTION' });
      await expect(engine.step(req([{ seq: a, tokens: [-1] }]))).rejects.toMatchObject({ message: expect.stringMatching(/sampled none/) });
    } finally {
      m.dispose();
    }
  });
});

// -------------------------------------------------------------------------------------------
describe('sampling', () => {
  const base: GenerateOptions = { doSample: true, topK: 0, maxNewTokens: 30 };

  test('same seed, same tokens; another seed, other tokens', async () => {
    const a = await tiny.generate('Seeds', { ...base, seed: 42 });
    const b = await tiny.generate('Seeds', { ...base, seed: 42 });
    const c = await tiny.generate('Seeds', { ...base, seed: 43 });
    expect(b.sequences[0].tokens).toEqual(a.sequences[0].tokens);
    expect(a.sequences[0].tokens).toHaveLength(30);
    // 30 draws from ~50k near-uniform tokens: equal by chance with probability ~0
    expect(c.sequences[0].tokens).not.toEqual(a.sequences[0].tokens);
  });

  test('numReturnSequences: 5 sequences of the requested length, not all identical', async () => {
    const r = await tiny.generate('Five', { ...base, maxNewTokens: 10, numReturnSequences: 5, seed: 7 });
    expect(r.sequences).toHaveLength(5);
    for (const s of r.sequences) {
      if (s.finishReason === 'eos') continue; // possible in principle, 1/50257 per token
      expect(s.tokens).toHaveLength(10);
      expect(s.finishReason).toBe('length');
    }
    expect(new Set(r.sequences.map((s) => s.tokens.join(','))).size).toBeGreaterThan(1);
    expect(r.stats.generatedTokens).toBe(r.sequences.reduce((n, s) => n + s.tokens.length, 0));
    // reproducible as a whole
    const again = await tiny.generate('Five', { ...base, maxNewTokens: 10, numReturnSequences: 5, seed: 7 });
    expect(again.sequences).toEqual(r.sequences);
  });

  test('nearby seeds share no sequence (each sequence seeded by a hash of seed and index)', async () => {
    const o = { ...base, maxNewTokens: 8, numReturnSequences: 3 };
    const a = (await tiny.generate('Nearby', { ...o, seed: 42 })).sequences.map((s) => s.tokens.join(','));
    const b = (await tiny.generate('Nearby', { ...o, seed: 43 })).sequences.map((s) => s.tokens.join(','));
    expect(new Set([...a, ...b]).size).toBe(6);
  });

  test('identical prompts in one call get different samples, seeded or not; seeded calls repeat', async () => {
    const prompts = Array<string>(5).fill('Once upon a time');
    for (const seed of [undefined, 11]) {
      const r = await tiny.generate(prompts, { ...base, maxNewTokens: 8, seed });
      expect(new Set(r.map((x) => x.sequences[0].tokens.join(','))).size).toBe(5);
      if (seed !== undefined)
        expect((await tiny.generate(prompts, { ...base, maxNewTokens: 8, seed })).map((x) => x.sequences)).toEqual(r.map((x) => x.sequences));
    }
    // The first prompt of a seeded call draws as it would alone.
    const alone = await tiny.generate(prompts[0], { ...base, maxNewTokens: 8, seed: 11 });
    const first = await tiny.generate(prompts, { ...base, maxNewTokens: 8, seed: 11 });
    expect(first[0].sequences).toEqual(alone.sequences);
  });

  test('greedy ignores the temperature: 0 is accepted there, as in HF', async () => {
    const a = await tiny.generate('Cold', greedy({ maxNewTokens: 5, temperature: 0 }));
    const b = await tiny.generate('Cold', greedy({ maxNewTokens: 5 }));
    expect(a.sequences).toEqual(b.sequences);
  });

  test('a topK beyond the vocabulary (even beyond int32) is no top-k at all', async () => {
    const o = { doSample: true, maxNewTokens: 6, seed: 21, numReturnSequences: 2 };
    const off = await tiny.generate('Top k off', { ...o, topK: 0 });
    for (const topK of [V, 1e12]) expect((await tiny.generate('Top k off', { ...o, topK })).sequences).toEqual(off.sequences);
  });

  test('topK 3 never picks outside the 3 highest logits (temperature does not change the set)', async () => {
    const prompt = tiny.tokenizer.encode('Top k');
    const r = await tiny.generate(prompt, { doSample: true, topK: 3, temperature: 5, repetitionPenalty: 1, maxNewTokens: 20, numReturnSequences: 3, seed: 99 });
    let notArgmax = 0;
    for (const s of r.sequences) {
      const rows = await recomputedRows(tiny, prompt, s.tokens);
      s.tokens.forEach((tok, i) => {
        const order = sortedDesc(rows[i]);
        const kth = rows[i][order[2]];
        expect(rows[i][tok]).toBeGreaterThanOrEqual(kth - 1e-5);
        if (tok !== order[0]) notArgmax++;
      });
    }
    expect(notArgmax).toBeGreaterThan(0); // it did sample, not just take the argmax
  });

  test('topP: every token lies in the nucleus of softmax(logits / temperature)', async () => {
    const topP = 0.05;
    const temperature = 0.1;
    const prompt = tiny.tokenizer.encode('Nucleus sampling');
    const r = await tiny.generate(prompt, { doSample: true, topK: 0, topP, temperature, maxNewTokens: 20, numReturnSequences: 2, seed: 5 });
    const sizes: number[] = [];
    for (const s of r.sequences) {
      const rows = await recomputedRows(tiny, prompt, s.tokens);
      s.tokens.forEach((tok, i) => {
        const x = rows[i];
        let max = -Infinity;
        for (const v of x) max = Math.max(max, v);
        const p = Float64Array.from(x, (v) => Math.exp((v - max) / temperature));
        const total = p.reduce((a, b) => a + b, 0);
        const order = sortedDesc(p);
        // HF: keep each token whose predecessors (in descending order) sum to < topP
        let before = 0;
        let size = 0;
        while (size < order.length && before < topP * total) before += p[order[size++]];
        sizes.push(size);
        const rank = order.indexOf(tok);
        // the nucleus, or a token right at its edge within fp32 rounding of the cumulative sum
        let cumBefore = 0;
        for (let j = 0; j < rank; j++) cumBefore += p[order[j]];
        expect(rank < size || cumBefore < (topP + 1e-4) * total).toBe(true);
      });
    }
    expect(Math.max(...sizes)).toBeGreaterThan(1); // the nucleus was not trivially one token
  });

  test('minP: every token is at least minP x as likely as the most likely one (after topK)', async () => {
    const minP = 0.3;
    const temperature = 0.05;
    const topK = 20;
    const prompt = tiny.tokenizer.encode('Min p sampling');
    const r = await tiny.generate(prompt, { doSample: true, topK, minP, temperature, maxNewTokens: 20, numReturnSequences: 2, seed: 8 });
    const sizes: number[] = [];
    let notArgmax = 0;
    for (const s of r.sequences) {
      const rows = await recomputedRows(tiny, prompt, s.tokens);
      s.tokens.forEach((tok, i) => {
        const x = Array.from(rows[i], (v) => v / temperature);
        const order = sortedDesc(x);
        const floor = x[order[0]] + Math.log(minP);
        // the kept set: the topK largest, then those within log(minP) of the largest
        sizes.push(order.slice(0, topK).filter((t) => x[t] >= floor).length);
        expect(order.indexOf(tok)).toBeLessThan(topK);
        expect(x[tok]).toBeGreaterThanOrEqual(floor - 1e-4);
        if (tok !== order[0]) notArgmax++;
      });
    }
    expect(Math.max(...sizes)).toBeGreaterThan(1);
    expect(Math.min(...sizes)).toBeLessThan(topK); // minP did cut into the top-k set
    expect(notArgmax).toBeGreaterThan(0);
  });

  test('typicalP: every token lies in the locally typical set of softmax(logits / temperature)', async () => {
    const typicalP = 0.3;
    const temperature = 0.05;
    const prompt = tiny.tokenizer.encode('Typical sampling');
    const r = await tiny.generate(prompt, { doSample: true, topK: 0, typicalP, temperature, maxNewTokens: 20, numReturnSequences: 2, seed: 9 });
    const sizes: number[] = [];
    for (const s of r.sequences) {
      const rows = await recomputedRows(tiny, prompt, s.tokens);
      s.tokens.forEach((tok, i) => {
        // HF TypicalLogitsWarper in float64: rank by |-log p - H|, keep up to the token at which
        // the cumulative probability in that order first reaches typicalP
        const x = Array.from(rows[i], (v) => v / temperature);
        const max = Math.max(...x);
        const logZ = max + Math.log(x.reduce((a, v) => a + Math.exp(v - max), 0));
        const lp = x.map((v) => v - logZ);
        const H = -lp.reduce((a, l) => a + Math.exp(l) * l, 0);
        const shifted = lp.map((l) => Math.abs(-l - H));
        const order = Array.from(shifted.keys()).sort((a, b) => shifted[a] - shifted[b] || a - b);
        let cum = 0;
        let last = 0;
        for (const t of order) {
          cum += Math.exp(lp[t]);
          if (cum < typicalP) last++;
          else break;
        }
        const keepTo = shifted[order[Math.min(last, order.length - 1)]];
        sizes.push(shifted.filter((v) => v <= keepTo).length);
        expect(shifted[tok]).toBeLessThanOrEqual(keepTo + 1e-4);
      });
    }
    expect(Math.max(...sizes)).toBeGreaterThan(1);
    expect(Math.max(...sizes)).toBeLessThan(V / 2);
  });

  test('repetitionPenalty changes the greedy output of a model that repeats', async () => {
    const plain = (await tiny.generate('Repeat', greedy({ maxNewTokens: 20 }))).sequences[0].tokens;
    const penalized = (await tiny.generate('Repeat', greedy({ maxNewTokens: 20, repetitionPenalty: 2 }))).sequences[0].tokens;
    expect(new Set(plain).size).toBeLessThan(plain.length); // random tiny models repeat under greedy
    expect(penalized).not.toEqual(plain);
    expect(new Set(penalized).size).toBeGreaterThan(new Set(plain).size);
  });
});

// -------------------------------------------------------------------------------------------
describe('lengths', () => {
  const prompt = tokenSequence(5, 6);

  test('maxLength counts the prompt', async () => {
    const r = await tiny.generate(prompt, greedy({ maxLength: 12 }));
    expect(r.sequences[0].tokens).toHaveLength(7);
    expect(r.sequences[0].finishReason).toBe('length');
    expect(r.stats.promptTokens).toBe(5);
  });

  test('maxNewTokens takes precedence over maxLength', async () => {
    expect((await tiny.generate(prompt, greedy({ maxLength: 12, maxNewTokens: 3 }))).sequences[0].tokens).toHaveLength(3);
    expect((await tiny.generate(prompt, greedy({ maxLength: 6, maxNewTokens: 9 }))).sequences[0].tokens).toHaveLength(9);
  });

  test('maxLength not above the prompt, or maxNewTokens 0: an OptionError, as HF raises', async () => {
    for (const [o, name] of [[{ maxLength: 5 }, 'maxLength'], [{ maxLength: 2 }, 'maxLength'], [{ maxNewTokens: 0 }, 'maxNewTokens']] as const) {
      const err = await tiny.generate(prompt, greedy(o)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OptionError);
      expect((err as Error).message).toContain(name);
    }
    // The checkpoint's max_length (50) is named as the limit a long prompt ran into.
    const err = await tiny.generate(tokenSequence(60), greedy()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OptionError);
    expect((err as Error).message).toMatch(/60 tokens.*checkpoint's max_length.*50/);
    // And stream() the same, before any piece.
    await expect(collect(tiny.stream(tokenSequence(60), greedy()))).rejects.toBeInstanceOf(OptionError);
  });

  test('maxLength is ignored when maxNewTokens is given, as in HF', async () => {
    const r = await tiny.generate(prompt, greedy({ maxNewTokens: 3, maxLength: 500 }));
    expect(r.sequences[0].tokens).toHaveLength(3);
  });

  test("without length options: the checkpoint's max_length (50, from task_specific_params)", async () => {
    const r = await tiny.generate(prompt, greedy());
    expect(r.sequences[0].tokens).toHaveLength(45);
  });

  test('up to n_positions + 1 tokens in all: the last one is sampled, never fed (as in HF)', async () => {
    const P = tiny.config.nPositions;
    const r = await tiny.generate(prompt, greedy({ maxNewTokens: P + 1 - prompt.length }));
    expect(r.sequences[0].tokens).toHaveLength(P + 1 - prompt.length);
    const full = tokenSequence(P, 4);
    const one = await tiny.generate(full, greedy({ maxNewTokens: 1 }));
    // The one token is the argmax of the last position's logits.
    const logits = await tiny.logits(full);
    expect(one.sequences[0].tokens).toEqual([argmax(row(logits, P - 1, V))]);
    expect((await tiny.generate(full.slice(1), greedy({ maxLength: P + 1 }))).sequences[0].tokens).toHaveLength(2);
  });
});

// -------------------------------------------------------------------------------------------
describe('eos and stop strings', () => {
  const EOS = 50256;

  test('greedy reaching <|endoftext|> ends with finishReason eos (token included, text excluded)', async () => {
    // A penalty < 1 boosts tokens already present; after [eos] that makes eos the argmax here.
    const prompt = [EOS];
    const penalty = 0.5;
    const rows = await tiny.logits(prompt);
    expect(argmax(penalize(row(rows, 0, V), prompt, penalty))).toBe(EOS); // precondition
    const r = await tiny.generate(prompt, greedy({ maxNewTokens: 10, repetitionPenalty: penalty }));
    expect(r.sequences[0]).toEqual({ text: '', tokens: [EOS], finishReason: 'eos' });
    const chunks = await collect(tiny.stream(prompt, greedy({ maxNewTokens: 10, repetitionPenalty: penalty })));
    expect(chunks[chunks.length - 1].finishReason).toBe('eos');
    expect(chunks.flatMap((c) => c.tokens)).toEqual([EOS]);
  });

  test('eosTokenId (option, or generation_config.json as a number or a list) ends sequences, as in HF', async () => {
    const prompt = tokenSequence(6, 9);
    const plain = (await tiny.generate(prompt, greedy({ maxNewTokens: 6 }))).sequences[0].tokens;
    const third = plain[2];
    const cut = plain.indexOf(third) + 1;  // the first time it comes
    const r = await tiny.generate(prompt, greedy({ maxNewTokens: 6, eosTokenId: [EOS, third] }));
    expect(r.sequences[0]).toMatchObject({ tokens: plain.slice(0, cut), finishReason: 'eos' });
    // Every token an eos: each sequence (sampled or a beam) ends at its first, and no text shows it.
    const all = { maxNewTokens: 6, eosTokenId: Array.from({ length: V }, (_, i) => i) };
    for (const o of [greedy(all), { doSample: true, seed: 3, numReturnSequences: 2, ...all }, greedy({ numBeams: 2, numReturnSequences: 2, ...all })])
      for (const s of (await tiny.generate(prompt, o)).sequences) expect(s).toMatchObject({ text: '', finishReason: 'eos' });
    for (const eos of [third, [EOS, third]]) {
      const dir = mutableCopy(tiny.dir, 'gen-config-eos');
      replaceFile(dir, 'generation_config.json', JSON.stringify({ bos_token_id: EOS, eos_token_id: eos }));
      const m = await loadModel(dir, { device: 'cpu' });
      try {
        const g = await m.generate(prompt, greedy({ maxNewTokens: 6 }));
        expect(g.sequences[0]).toMatchObject({ tokens: plain.slice(0, cut), finishReason: 'eos' });
        // The option wins over the checkpoint.
        expect((await m.generate(prompt, greedy({ maxNewTokens: 6, eosTokenId: EOS }))).sequences[0].tokens).toEqual(plain);
      } finally {
        m.dispose();
      }
    }
  });

  test('sampled sequences that reach eos end there; the others run to full length', async () => {
    // topK 2 after [eos] with penalty 0.5: eos is one of two candidates for the first token.
    const r = await tiny.generate([EOS], { doSample: true, topK: 2, repetitionPenalty: 0.5, maxNewTokens: 10, numReturnSequences: 8, seed: 3 });
    const ended = r.sequences.filter((s) => s.finishReason === 'eos');
    const ran = r.sequences.filter((s) => s.finishReason === 'length');
    expect(ended.length + ran.length).toBe(8);
    expect(ended.length).toBeGreaterThan(0);
    expect(ran.length).toBeGreaterThan(0);
    for (const s of ended) {
      expect(s.tokens[s.tokens.length - 1]).toBe(EOS);
      expect(s.tokens.indexOf(EOS)).toBe(s.tokens.length - 1);
      expect(s.text).toBe(tiny.tokenizer.decode(s.tokens.slice(0, -1)));
    }
    for (const s of ran) {
      expect(s.tokens).toHaveLength(10);
      expect(s.tokens).not.toContain(EOS);
    }
  });

  test('minNewTokens / minLength hold eos back: the best non-eos tokens until then (HF min_new_tokens)', async () => {
    // As above: after [eos] with penalty 0.5, greedy's first pick is eos.
    const prompt = [EOS];
    const penalty = 0.5;
    for (const [opts, held] of [[{ minNewTokens: 4 }, 4], [{ minLength: 4 }, 3]] as const) {
      const s = (await tiny.generate(prompt, greedy({ maxNewTokens: 10, repetitionPenalty: penalty, ...opts }))).sequences[0];
      expect(s.tokens.length).toBeGreaterThan(held);
      expect(s.tokens.slice(0, held)).not.toContain(EOS);
      const rows = await recomputedRows(tiny, prompt, s.tokens);
      s.tokens.forEach((tok, i) => {
        const x = penalize(rows[i], [...prompt, ...s.tokens.slice(0, i)], penalty);
        if (i < held) x[EOS] = -Infinity;
        expect(x[tok]).toBeGreaterThanOrEqual(x[argmax(x)] - 1e-5);
      });
      if (s.finishReason === 'eos') expect(s.tokens.indexOf(EOS)).toBe(s.tokens.length - 1);
    }
    // sampled: eos is one of two candidates at every step, and never taken in the first 3
    const r = await tiny.generate(prompt, { doSample: true, topK: 2, repetitionPenalty: penalty, maxNewTokens: 10, numReturnSequences: 8, seed: 3, minNewTokens: 3 });
    for (const seq of r.sequences) {
      expect(seq.tokens.length).toBeGreaterThanOrEqual(4);
      expect(seq.tokens.slice(0, 3)).not.toContain(EOS);
    }
    // (the same call without minNewTokens ends some of them at the first token: the test above)
  });

  /** n-grams of size n in h (as strings), each with the positions it starts at. */
  function ngrams(h: number[], n: number): Map<string, number[]> {
    const m = new Map<string, number[]>();
    for (let i = 0; i + n <= h.length; i++) {
      const k = h.slice(i, i + n).join(',');
      m.set(k, [...(m.get(k) ?? []), i]);
    }
    return m;
  }

  test('noRepeatNgramSize: no n-gram twice in prompt + continuation; each pick the best allowed one', async () => {
    const prompt = tokenSequence(5, 11);
    const plain = (await tiny.generate(prompt, greedy({ maxNewTokens: 24 }))).sequences[0].tokens;
    for (const n of [1, 2, 3]) expect([...ngrams([...prompt, ...plain], n).values()].some((p) => p.length > 1)).toBe(true); // greedy repeats
    for (const n of [1, 2, 3]) {
      const gen = (await tiny.generate(prompt, greedy({ maxNewTokens: 24, noRepeatNgramSize: n }))).sequences[0].tokens;
      expect(gen).toHaveLength(24);
      const h = [...prompt, ...gen];
      expect([...ngrams(h, n).values()].every((p) => p.length === 1)).toBe(true);
      const rows = await recomputedRows(tiny, prompt, gen);
      gen.forEach((tok, i) => {
        const x = Float32Array.from(rows[i]);
        const before = h.slice(0, prompt.length + i);
        const tail = before.slice(before.length - (n - 1)).join(',');
        for (let j = 0; j + n <= before.length; j++)
          if (before.slice(j, j + n - 1).join(',') === tail) x[before[j + n - 1]] = -Infinity;
        expect(x[tok]).toBeGreaterThanOrEqual(x[argmax(x)] - 1e-5);
      });
    }
  });

  test('badWordsIds: a one-token word never appears; a two-token word never completes', async () => {
    const prompt = tokenSequence(5, 11);
    const plain = (await tiny.generate(prompt, greedy({ maxNewTokens: 16 }))).sequences[0].tokens;
    const single = plain[0];
    const gen1 = (await tiny.generate(prompt, greedy({ maxNewTokens: 16, badWordsIds: [[single]] }))).sequences[0].tokens;
    expect(gen1).not.toContain(single);
    // a pair the plain continuation produces: its second token may still appear, not after the first
    const pair = [plain[0], plain[1]];
    const gen2 = (await tiny.generate(prompt, greedy({ maxNewTokens: 16, badWordsIds: [pair] }))).sequences[0].tokens;
    const h = [...prompt, ...gen2];
    expect(h.some((t, i) => i > 0 && h[i - 1] === pair[0] && t === pair[1])).toBe(false);
    expect(gen2[0]).toBe(plain[0]); // the first token alone is allowed
    expect(gen2[1]).not.toBe(plain[1]);
  });

  // A sampled continuation (diverse tokens; the seed makes it reproducible) and its stop strings.
  const sampled: GenerateOptions = { doSample: true, topK: 0, seed: 2024, maxNewTokens: 12 };

  test('a stop string ends the text before it, finishReason stop', async () => {
    const full = (await tiny.generate('Stop here', sampled)).sequences[0];
    const stop = tokenText(tiny, full.tokens[2]);
    expect(stop.length).toBeGreaterThan(0);
    const r = (await tiny.generate('Stop here', { ...sampled, stop })).sequences[0];
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(full.text.slice(0, full.text.indexOf(stop)));
    expect(r.tokens).toEqual(full.tokens.slice(0, r.tokens.length));
    expect(r.tokens.length).toBeLessThanOrEqual(3);
    expect(r.text).not.toContain(stop);
  });

  test('a stop string spanning two tokens, given in an array with one that never occurs', async () => {
    const full = (await tiny.generate('Stop here', sampled)).sequences[0];
    const t4 = tokenText(tiny, full.tokens[4]);
    const t5 = tokenText(tiny, full.tokens[5]);
    const stop = t4.slice(-1) + t5.slice(0, 2);
    const r = (await tiny.generate('Stop here', { ...sampled, stop: ['\u0000never\u0000', stop] })).sequences[0];
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(full.text.slice(0, full.text.indexOf(stop)));
    // stream: same text, and no chunk ever shows part of the stop string that is cut later
    const chunks = await collect(tiny.stream('Stop here', { ...sampled, stop: ['\u0000never\u0000', stop] }));
    expect(chunks.map((c) => c.text).join('')).toBe(r.text);
    expect(chunks[chunks.length - 1].finishReason).toBe('stop');
    expect(chunks.flatMap((c) => c.tokens)).toEqual(r.tokens);
  });

  test('the earliest of several stop strings wins', async () => {
    const full = (await tiny.generate('Stop here', sampled)).sequences[0];
    const early = tokenText(tiny, full.tokens[1]);
    const late = tokenText(tiny, full.tokens[6]);
    const r = (await tiny.generate('Stop here', { ...sampled, stop: [late, early] })).sequences[0];
    expect(r.text).toBe(full.text.slice(0, Math.min(full.text.indexOf(early), full.text.indexOf(late))));
  });
});

// -------------------------------------------------------------------------------------------
describe('stream()', () => {
  const opts = greedy({ maxNewTokens: 25, repetitionPenalty: 1.6 });

  test('pieces concatenate to generate() text; tokens concatenate; only the last chunk has finishReason', async () => {
    const g = (await tiny.generate('Streaming test', opts)).sequences[0];
    const chunks = await collect(tiny.stream('Streaming test', opts));
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.map((c) => c.text).join('')).toBe(g.text);
    expect(chunks.flatMap((c) => c.tokens)).toEqual(g.tokens);
    expect(chunks[chunks.length - 1].finishReason).toBe('length');
    expect(chunks.slice(0, -1).every((c) => c.finishReason === undefined)).toBe(true);
    expect(chunks.every((c) => c.index === 0)).toBe(true);
  });

  test('numReturnSequences: chunks by index rebuild generate()', async () => {
    const o = { doSample: true, topK: 0, seed: 77, maxNewTokens: 8, numReturnSequences: 3 };
    const g = await tiny.generate('Many streams', o);
    const chunks = await collect(tiny.stream('Many streams', o));
    for (let i = 0; i < 3; i++) {
      const mine = chunks.filter((c) => c.index === i);
      expect(mine.map((c) => c.text).join('')).toBe(g.sequences[i].text);
      expect(mine.flatMap((c) => c.tokens)).toEqual(g.sequences[i].tokens);
      expect(mine[mine.length - 1].finishReason).toBe(g.sequences[i].finishReason);
    }
  });

  test('abort after the 3rd chunk: the stream ends with finishReason abort and fewer tokens', async () => {
    const ac = new AbortController();
    const chunks: StreamChunk[] = [];
    for await (const c of tiny.stream('Abort me', greedy({ maxNewTokens: 100, signal: ac.signal }))) {
      chunks.push(c);
      if (chunks.length === 3) ac.abort();
    }
    const last = chunks[chunks.length - 1];
    expect(last.finishReason).toBe('abort');
    const n = chunks.flatMap((c) => c.tokens).length;
    expect(n).toBeGreaterThanOrEqual(3);
    expect(n).toBeLessThan(100);
  });

  test('generate() with an aborted signal, and aborted while running', async () => {
    const pre = new AbortController();
    pre.abort();
    const r = await tiny.generate('x', greedy({ maxNewTokens: 10, numReturnSequences: 1, signal: pre.signal }));
    expect(r.sequences).toEqual([{ text: '', tokens: [], finishReason: 'abort' }]);
    const ac = new AbortController();
    const running = tiny.generate('x', greedy({ maxNewTokens: 120, signal: ac.signal }));
    // Aborted from a stream on the same model, which runs in the same batched steps: its 3rd
    // piece comes a few tokens into the generate(), however fast the CPU. (A 20 ms timer did
    // not: on a Zen 5 the 120 tokens were done before it fired.)
    const other = new AbortController();
    let pieces = 0;
    for await (const _ of tiny.stream('y', greedy({ maxNewTokens: 120, signal: other.signal }))) {
      if (++pieces === 3) ac.abort(), other.abort();
    }
    const s = (await running).sequences[0];
    expect(s.finishReason).toBe('abort');
    expect(s.tokens.length).toBeLessThan(120);
  });

  test('aborted while the prompt step that makes the forks runs: all end, none left behind', async () => {
    const m = await freshModel(TINY);
    try {
      const ac = new AbortController();
      // abort from inside the first native step call, so its result (with the forks) comes back
      // to sequences that have already ended
      const scheduler = (m as unknown as { scheduler: { engine: Record<string, unknown> } }).scheduler;
      const engine = scheduler.engine;
      scheduler.engine = new Proxy(engine, {
        get(target, key: string) {
          const v = target[key] as (...a: unknown[]) => unknown;
          if (typeof v !== 'function') return v;
          return (...a: unknown[]) => {
            if (key === 'step') ac.abort();
            return v.apply(target, a);
          };
        },
      });
      const r = await m.generate('Abort the forks', { doSample: true, maxNewTokens: 20, numReturnSequences: 3, signal: ac.signal });
      scheduler.engine = engine;
      expect(r.sequences.map((q) => q.finishReason)).toEqual(['abort', 'abort', 'abort']);
      expect(r.sequences.every((q) => q.tokens.length === 0)).toBe(true);
      await settlesTo(() => (engine as unknown as { kvBlocksInUse(): number }).kvBlocksInUse(), 0);
      const after = await m.generate('Still works', { doSample: true, maxNewTokens: 3, numReturnSequences: 2 });
      expect(after.sequences[1].tokens).toHaveLength(3);
    } finally {
      m.dispose();
    }
  });

  test('breaking out of for-await ends generation; the model stays usable and frees its KV blocks', async () => {
    const m = await freshModel(TINY);
    try {
      const engine = (m as unknown as { engine: { kvBlocksInUse(): number } }).engine; // white-box
      const before = engine.kvBlocksInUse();
      let seen = 0;
      for await (const c of m.stream('Break early', greedy({ maxNewTokens: 100 }))) {
        seen += c.tokens.length;
        if (seen >= 2) break;
      }
      const after = await m.generate('Still works', greedy({ maxNewTokens: 5 }));
      expect(after.sequences[0].tokens).toHaveLength(5);
      await settlesTo(() => engine.kvBlocksInUse(), before);
    } finally {
      m.dispose();
    }
  });

  test('the event loop keeps ticking during generate (small, 150 tokens, >= 200 ms of it)', async () => {
    const m = await model(SMALL);
    // Ticks are counted only while a generate is in flight, and generates run until 200 ms of
    // it have passed, so the bound below asks for something on any machine: model work on the
    // main thread would leave no tick in flight at all (timers fire only between tasks).
    let inFlight = false;
    let ticks = 0;
    let last = performance.now();
    let maxGap = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
      if (inFlight) ticks++;
    }, 5);
    let busy = 0;
    let calls = 0;
    try {
      while (busy < 200) {
        const t0 = performance.now();
        inFlight = true;
        const r = await m.generate('tick', greedy({ maxNewTokens: 150 }));
        inFlight = false;
        busy += performance.now() - t0;
        calls++;
        expect(r.sequences[0].tokens).toHaveLength(150);
      }
    } finally {
      inFlight = false;
      clearInterval(timer);
    }
    console.log(`event loop: ${ticks} ticks during ${calls} generate calls (${busy.toFixed(0)} ms), max gap ${maxGap.toFixed(1)} ms`);
    // A 5 ms timer on a free event loop fires ~busy / 5 times; ask for a fifth of that.
    expect(ticks).toBeGreaterThanOrEqual(Math.max(10, Math.floor(busy / 25)));
    expect(maxGap).toBeLessThan(250);
  });
});

// -------------------------------------------------------------------------------------------
describe('broken weights', () => {
  // A NaN in the weights must surface as a typed error of the call that meets it, never as a
  // quietly picked token, and leave the model usable for inputs that do not meet it.
  async function withNaN(tensor: string, row: number): Promise<Model> {
    const dir = mutableCopy(await checkpoint(TINY), `nan-${tensor}`);
    rewriteSafetensors(dir, (st) => {
      const key = [...st.tensors.keys()].find((k) => k === tensor || k.endsWith(`.${tensor}`))!;
      const t = st.tensors.get(key)!;
      const f = new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.length));
      f.fill(NaN, row * t.shape[1], (row + 1) * t.shape[1]);
      t.data = Buffer.from(f.buffer);
    });
    return loadModel(dir, { device: 'cpu' });
  }
  const rejection = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e);

  test('a NaN position embedding: the call reaching it fails (E_INTERNAL), shorter ones still work', async () => {
    const m = await withNaN('wpe.weight', 30);
    try {
      const short = await m.generate(tokenSequence(5, 1), greedy({ maxNewTokens: 10 }));
      const err = await rejection(m.generate(tokenSequence(28, 2), greedy({ maxNewTokens: 10 })));
      expect(err).toBeInstanceOf(LlmcoreError);
      expect((err as LlmcoreError).code).toBe('E_INTERNAL');
      expect((err as Error).message).toMatch(/logits are not finite/);
      const sampled = await rejection(m.generate(tokenSequence(28, 2), { doSample: true, seed: 1, maxNewTokens: 10 }));
      expect((sampled as LlmcoreError).code).toBe('E_INTERNAL');
      // In one batch with calls that stay short of it, forks included: only the call reaching it
      // fails (its sampling fails alone in the engine, and its forks with it); the others get
      // their tokens as alone.
      const forked = { doSample: true, seed: 4, maxNewTokens: 10, numReturnSequences: 3 };
      const aloneForked = await m.generate(tokenSequence(5, 7), forked);
      for (const lookahead of [true, false]) {
        Scheduler.lookahead = lookahead;
        try {
          const [bad, ok, okForked] = await Promise.allSettled([
            m.generate(tokenSequence(26, 2), { doSample: true, seed: 1, maxNewTokens: 10, numReturnSequences: 2 }),
            m.generate(tokenSequence(5, 1), greedy({ maxNewTokens: 10 })),
            m.generate(tokenSequence(5, 7), forked),
          ]);
          expect(bad.status).toBe('rejected');
          expect(((bad as PromiseRejectedResult).reason as LlmcoreError).code).toBe('E_INTERNAL');
          expect(ok.status === 'fulfilled' && ok.value.sequences).toEqual(short.sequences);
          expect(okForked.status === 'fulfilled' && okForked.value.sequences).toEqual(aloneForked.sequences);
        } finally {
          Scheduler.lookahead = true;
        }
      }
      await settlesTo(() => (m as unknown as { engine: { kvBlocksInUse(): number } }).engine.kvBlocksInUse(), 0);
      const again = await m.generate(tokenSequence(5, 1), greedy({ maxNewTokens: 10 }));
      expect(again.sequences).toEqual(short.sequences);
    } finally {
      m.dispose();
    }
  });

  test('a NaN in one logit (the tied row of token 7) is an error, not a token skipped over', async () => {
    const m = await withNaN('wte.weight', 7);
    try {
      const err = await rejection(m.generate(tokenSequence(5, 3), greedy({ maxNewTokens: 2 })));
      expect((err as LlmcoreError).code).toBe('E_INTERNAL');
      expect((err as Error).message).toMatch(/not finite/);
      // the same with forks made in the failing step: the error, and none of them left behind
      const forked = await rejection(m.generate(tokenSequence(5, 3), { doSample: true, maxNewTokens: 2, numReturnSequences: 3 }));
      expect((forked as LlmcoreError).code).toBe('E_INTERNAL');
      await new Promise((r) => setTimeout(r, 10));
      expect((m as unknown as { engine: { kvBlocksInUse(): number } }).engine.kvBlocksInUse()).toBe(0);
      // the logits themselves come back as they are: NaN at 7 only
      const logits = await m.logits(tokenSequence(5, 3));
      expect(Number.isNaN(logits[7])).toBe(true);
      expect(Number.isFinite(logits[8])).toBe(true);
      // beam search too (it ranks log-probabilities in JS): the error, not NaN scores
      const beams = await rejection(m.generate(tokenSequence(5, 3), greedy({ maxNewTokens: 2, numBeams: 2 })));
      expect((beams as LlmcoreError).code).toBe('E_INTERNAL');
      expect((beams as Error).message).toMatch(/not finite/);
    } finally {
      m.dispose();
    }
  });
});

describe('dispose', () => {
  test('later calls reject with DisposedError (E_DISPOSED); dispose twice is fine', async () => {
    const m = await freshModel(TINY);
    m.dispose();
    m.dispose();
    for (const p of [m.generate('x', greedy({ maxNewTokens: 2 })), m.logits([1, 2]), m.stream('x').next()]) {
      const err = await (p as Promise<unknown>).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DisposedError);
      expect((err as DisposedError).code).toBe('E_DISPOSED');
    }
  });

  // Regression (lib/scheduler.ts close(), fixed in 3bb1807): dispose() used to *run* the queued
  // bookkeeping ops (a new call's newSequence) while a native step was still running, so the
  // engine refused with E_INTERNAL "[engine] new sequence: a step is running" and that call
  // rejected with it instead of DisposedError. Repro: start long prefills (eight 250-token
  // prompts on 'small'), call generate() and dispose() while a step still runs natively (checked
  // through the engine: white-box).
  test('dispose while calls are running rejects them all with DisposedError, no crash', async () => {
    const describe = (e: unknown) =>
      e instanceof DisposedError ? 'DisposedError' : `${(e as Error)?.constructor?.name} ${(e as LlmcoreError)?.code}: ${(e as Error)?.message}`;
    type Engine = { newSequence(s: number): number; releaseSequence(id: number): void };
    const outcomes: string[] = [];
    let m = await freshModel(SMALL);
    try {
      for (let attempt = 0; attempt < 30 && outcomes.length < 2; attempt++) {
        const engine = (m as unknown as { engine: Engine }).engine;
        // eight 250-token prompts: prefill steps of up to 2048 rows, long enough to catch
        const long = Promise.all(
          Array.from({ length: 8 }, (_, i) => m.generate(tokenSequence(250, attempt * 8 + i), greedy({ maxNewTokens: 1 }))),
        ).catch((e: unknown) => e);
        await new Promise((r) => setTimeout(r, 10)); // the step is issued and its worker thread starts
        let stepRunning = false;
        try {
          engine.releaseSequence(engine.newSequence(0));
        } catch {
          stepRunning = true; // "a step is running": the precondition
        }
        if (!stepRunning) {
          await long; // too late this time: the model is still fine, try again
          continue;
        }
        const queued = m.generate('other', greedy({ maxNewTokens: 10 })).catch((e: unknown) => e);
        m.dispose();
        outcomes.push(`running: ${describe(await long)}; queued: ${describe(await queued)}`);
        m = await freshModel(SMALL);
      }
    } finally {
      m.dispose();
    }
    expect(outcomes).toEqual(Array(2).fill('running: DisposedError; queued: DisposedError'));
  });

  test('dispose during a stream ends it with DisposedError', async () => {
    const m = await freshModel(TINY);
    const it = m.stream('Disposed mid-way', greedy({ maxNewTokens: 100 }));
    expect((await it.next()).done).toBe(false);
    m.dispose();
    const rest = await (async () => {
      try {
        for (;;) if ((await it.next()).done) return 'done';
      } catch (e) {
        return e;
      }
    })();
    expect(rest).toBeInstanceOf(DisposedError);
  });

  // Node 20 defines Symbol.asyncDispose as Symbol.for('nodejs.asyncDispose') on the main realm's
  // Symbol only; jest runs tests in a vm context whose Symbol lacks it. There lib/model.ts's
  // `async [Symbol.asyncDispose]()` is evaluated as a method named "undefined", so `await using`
  // cannot find it, so lib/model.ts keys the method by
  // `Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose')`, which works in every realm.
  // In a plain Node process it works as is: test/esm.test.ts checks that.
  test('Symbol.asyncDispose and `await using` (in a vm realm without Symbol.asyncDispose)', async () => {
    const sym = (Symbol as { asyncDispose?: symbol }).asyncDispose ?? Symbol.for('nodejs.asyncDispose');
    (Symbol as { asyncDispose?: symbol }).asyncDispose = sym; // what TS's `await using` helper looks up
    const m = await freshModel(TINY);
    expect(typeof (m as unknown as Record<symbol, unknown>)[sym]).toBe('function');
    let escaped: Model | undefined;
    {
      await using scoped = await freshModel(TINY);
      escaped = scoped;
      expect((await scoped.generate('x', greedy({ maxNewTokens: 1 }))).sequences[0].tokens).toHaveLength(1);
    }
    await expect(escaped.generate('x', greedy({ maxNewTokens: 1 }))).rejects.toBeInstanceOf(DisposedError);
    await m[Symbol.asyncDispose]();
    await expect(m.logits([1])).rejects.toBeInstanceOf(DisposedError);
  });
});

// -------------------------------------------------------------------------------------------
describe('option validation (OptionError, E_OPTION, the message names the option)', () => {
  const bad: [string, GenerateOptions | Record<string, unknown>, string][] = [
    ['NaN temperature', { temperature: NaN }, 'temperature'],
    ['zero temperature when sampling', { temperature: 0, doSample: true }, 'temperature'],
    ['negative temperature when greedy', { temperature: -1, doSample: false }, 'temperature'],
    ['negative maxNewTokens', { maxNewTokens: -1 }, 'maxNewTokens'],
    ['fractional maxNewTokens', { maxNewTokens: 2.5 }, 'maxNewTokens'],
    ['maxNewTokens above n_positions', { maxNewTokens: 129 }, 'maxNewTokens'],
    ['maxNewTokens 0', { maxNewTokens: 0 }, 'maxNewTokens'],
    ['maxLength 0', { maxLength: 0 }, 'maxLength'],
    ['maxLength above n_positions + 1', { maxLength: 130 }, 'maxLength'],
    ['topP above 1', { topP: 1.5 }, 'topP'],
    ['topP 0', { topP: 0 }, 'topP'],
    ['minP above 1', { minP: 1.5 }, 'minP'],
    ['minP negative', { minP: -0.1 }, 'minP'],
    ['typicalP 0', { typicalP: 0 }, 'typicalP'],
    ['typicalP NaN', { typicalP: NaN }, 'typicalP'],
    ['negative topK', { topK: -1 }, 'topK'],
    ['repetitionPenalty 0', { repetitionPenalty: 0 }, 'repetitionPenalty'],
    ['NaN repetitionPenalty', { repetitionPenalty: NaN }, 'repetitionPenalty'],
    ['repetitionPenalty 0 in float32', { repetitionPenalty: 1e-300 }, 'repetitionPenalty'],
    ['topP 0 in float32', { doSample: true, topP: 1e-50 }, 'topP'],
    ['negative seed', { seed: -1 }, 'seed'],
    ['negative minNewTokens', { minNewTokens: -1 }, 'minNewTokens'],
    ['minLength above n_positions', { minLength: 129 }, 'minLength'],
    ['negative noRepeatNgramSize', { noRepeatNgramSize: -1 }, 'noRepeatNgramSize'],
    ['badWordsIds not nested', { badWordsIds: [5] }, 'badWordsIds'],
    ['badWordsIds with an empty word', { badWordsIds: [[]] }, 'badWordsIds'],
    ['badWordsIds beyond the vocabulary', { badWordsIds: [[50257]] }, 'badWordsIds'],
    ['numReturnSequences 0', { numReturnSequences: 0, doSample: true }, 'numReturnSequences'],
    ['numReturnSequences > 1 when greedy', { numReturnSequences: 2, doSample: false }, 'numReturnSequences'],
    ['doSample not a boolean', { doSample: 'yes' }, 'doSample'],
    ['empty stop string', { stop: '' }, 'stop'],
    ['signal not an AbortSignal', { signal: {} }, 'signal'],
    ['eosTokenId beyond the vocabulary', { eosTokenId: V }, 'eosTokenId'],
    ['eosTokenId an empty list', { eosTokenId: [] }, 'eosTokenId'],
    ['unknown option', { temprature: 1 }, 'temprature'],
  ];

  test.each(bad)('%s', async (_, options, name) => {
    const length = 'maxLength' in options || 'maxNewTokens' in options ? {} : { maxNewTokens: 1 };
    const err = await tiny.generate('x', { ...length, ...options } as GenerateOptions).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OptionError);
    expect((err as OptionError).code).toBe('E_OPTION');
    expect((err as Error).message).toContain(name);
  });

  test("a bad default from the checkpoint is named as the checkpoint's, in its own spelling", async () => {
    const dir = mutableCopy(tiny.dir, 'bad-gen-config');
    replaceFile(dir, 'generation_config.json', JSON.stringify({ eos_token_id: 50256, top_k: -1, repetition_penalty: 1e-300 }));
    const m = await loadModel(dir, { device: 'cpu' });
    try {
      await expect(m.generate('x', { maxNewTokens: 1 })).rejects.toThrow(/the checkpoint's top_k/);
      await expect(m.generate('x', { maxNewTokens: 1, topK: 5 })).rejects.toThrow(/the checkpoint's repetition_penalty/);
      expect((await m.generate('x', { maxNewTokens: 1, topK: 5, repetitionPenalty: 1 })).sequences[0].tokens).toHaveLength(1);
    } finally {
      m.dispose();
    }
  });

  test('bans that leave no token are an OptionError, greedy, sampled or with beams', async () => {
    const everything = { badWordsIds: Array.from({ length: V }, (_, i) => [i]) };
    for (const o of [greedy(everything), { doSample: true, ...everything }, greedy({ ...everything, numBeams: 2 })]) {
      const err = await tiny.generate('x', { maxNewTokens: 2, ...o }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OptionError);
      expect((err as Error).message).toMatch(/every token is banned/);
    }
    expect((await tiny.generate('x', greedy({ maxNewTokens: 2 }))).sequences[0].tokens).toHaveLength(2);
  });

  test('bans that leave no token mid-run fail that call only, not the others in its steps', async () => {
    const prompt = tokenSequence(4, 2);
    const g = (await tiny.generate(prompt, greedy({ maxNewTokens: 1 }))).sequences[0].tokens[0];
    const trap = { badWordsIds: Array.from({ length: V }, (_, t) => [g, t]) };  // nothing may follow g
    const other = tiny.generate(tokenSequence(4, 3), greedy({ maxNewTokens: 6 }));
    const err = await tiny.generate(prompt, greedy({ maxNewTokens: 4, ...trap })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OptionError);
    expect((err as Error).message).toMatch(/every token is banned/);
    expect((await other).sequences[0].tokens).toHaveLength(6);
    await settlesTo(() => tiny.kvStats().activeSequences, 0);
  });

  test('a sequence failing mid-run ends its siblings before the call rejects (and before its KV blocks go back)', async () => {
    const m = await freshModel(TINY);
    try {
      const prompt = 'Once upon a time there';
      const x = (await m.generate(prompt, greedy({ maxNewTokens: 1 }))).sequences[0].tokens[0];
      const trap = { badWordsIds: Array.from({ length: V }, (_, t) => [x, t]) };  // a sequence that samples x fails
      // Steps submitted after the rejection: the siblings ran on to maxNewTokens before the fix.
      const scheduler = m as unknown as { scheduler: { engine: Record<string, unknown> } };
      const engine = scheduler.scheduler.engine;
      let rejected = false;
      let stepsAfter = 0;
      scheduler.scheduler.engine = new Proxy(engine, {
        get: (target, key) => {
          const v = target[key as string];
          if (typeof v !== 'function') return v;
          return (...a: unknown[]) => {
            if (key === 'step' && rejected) stepsAfter++;
            return (v as (...b: unknown[]) => unknown).apply(target, a);
          };
        },
      });
      const err = await m.generate(prompt, { doSample: true, topK: 2, numReturnSequences: 4, maxNewTokens: 100, seed: 0, ...trap })
        .catch((e: unknown) => e);
      rejected = true;
      expect(err).toBeInstanceOf(OptionError);
      await new Promise((r) => setTimeout(r, 100));
      expect(stepsAfter).toBe(0);
      await settlesTo(() => (engine.kvBlocksInUse as () => number).call(engine), 0);
    } finally {
      m.dispose();
    }
  });

  test('snake_case option names get a camelCase hint', async () => {
    for (const [snake, camel] of [['max_length', 'maxLength'], ['max_new_tokens', 'maxNewTokens'], ['top_p', 'topP'], ['repetition_penalty', 'repetitionPenalty']]) {
      const err = await tiny.generate('x', { [snake]: 5 } as GenerateOptions).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OptionError);
      expect((err as Error).message).toContain(snake);
      expect((err as Error).message).toContain(camel);
    }
  });

  test('prompt + maxNewTokens beyond n_positions', async () => {
    const err = await tiny.generate(tokenSequence(100), greedy({ maxNewTokens: 30 })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OptionError);
    expect((err as Error).message).toMatch(/maxNewTokens/);
    expect((err as Error).message).toMatch(/n_positions=128/);
    // n_positions + 1 is fine (tested in 'lengths'); a prompt alone longer than n_positions is not
    await expect(tiny.generate(tokenSequence(129), greedy({ maxNewTokens: 1 }))).rejects.toBeInstanceOf(OptionError);
    await expect(tiny.logits(tokenSequence(129))).rejects.toThrow(/n_positions/);
  });

  test('token ids out of range, or not integers', async () => {
    for (const ids of [[V], [-1], [1.5], [3, Number.NaN]]) {
      const err = await tiny.generate(ids, greedy({ maxNewTokens: 1 })).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OptionError);
      expect((err as Error).message).toContain('token id');
      await expect(tiny.logits(ids)).rejects.toBeInstanceOf(OptionError);
    }
  });

  test('empty prompts', async () => {
    await expect(tiny.generate('', greedy({ maxNewTokens: 1 }))).rejects.toThrow(OptionError);
    await expect(tiny.generate([], greedy({ maxNewTokens: 1 }))).rejects.toThrow(OptionError);
    await expect(tiny.logits([])).rejects.toThrow(OptionError);
  });

  test('invalid options reject stream() on its first next()', async () => {
    const err = await tiny.stream('x', { topP: 2 }).next().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OptionError);
    expect((err as Error).message).toContain('topP');
  });

  test('one bad prompt in a batch rejects the call before any prompt starts, and the model still works', async () => {
    const good = Array.from({ length: 8 }, (_, i) => tokenSequence(4, i));
    for (const bad of [[V + 5], [], tokenSequence(200)]) {
      await expect(tiny.generate([...good, bad], greedy({ maxNewTokens: 40 }))).rejects.toBeInstanceOf(OptionError);
      // Nothing was admitted: no prompt runs on in the background.
      expect(tiny.kvStats()).toMatchObject({ reservedBlocks: 0, activeSequences: 0, queuedRequests: 0 });
    }
    expect((await tiny.generate('ok', greedy({ maxNewTokens: 2 }))).sequences[0].tokens).toHaveLength(2);
  });

  test('signal: null is no signal; stream() checks its signal and takes one prompt', async () => {
    const none = { signal: null } as unknown as GenerateOptions;
    expect((await tiny.generate('x', greedy({ maxNewTokens: 2, ...none }))).sequences[0].tokens).toHaveLength(2);
    expect(await collect(tiny.stream('x', greedy({ maxNewTokens: 2, ...none })))).not.toHaveLength(0);
    const bad = { signal: {} } as unknown as GenerateOptions;
    await expect(tiny.stream('x', greedy({ maxNewTokens: 2, ...bad })).next()).rejects.toThrow(/signal/);
    const two = ['a', 'b'] as unknown as string;
    await expect(tiny.stream(two, greedy({ maxNewTokens: 2 })).next()).rejects.toThrow(/one prompt/);
  });

  test('one signal shared by many prompts and calls: no listener-leak warning, all abort', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const ac = new AbortController();
      const prompts = Array.from({ length: 30 }, (_, i) => tokenSequence(3, i));
      const calls = [tiny.generate(prompts, greedy({ maxNewTokens: 100, signal: ac.signal }))];
      for (let i = 0; i < 15; i++) calls.push(tiny.generate([prompts[i]], greedy({ maxNewTokens: 100, signal: ac.signal })));
      // Aborted mid-run: from the 3rd piece of a stream that runs in the same batched steps.
      let pieces = 0;
      for await (const _ of tiny.stream('watch', greedy({ maxNewTokens: 100, signal: ac.signal }))) if (++pieces === 3) ac.abort();
      const results = (await Promise.all(calls)).flat();
      expect(results.every((r) => r.sequences[0].finishReason === 'abort')).toBe(true);
      await new Promise((r) => setImmediate(r));
      expect(warnings.filter((w) => w === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });
});

// -------------------------------------------------------------------------------------------
// A checkpoint whose vocab_size is padded past the tokenizer (50301 > 50257; nanoGPT-style
// exports pad to 50304) accepts ids in [50257, vocab_size): they decode to nothing, as in HF.
test('padded vocab: a prompt with ids past the tokenizer does not fail with a plain RangeError', async () => {
  const padded = await model({ preset: 'tiny', config: { vocab_size: 50301, n_layer: 3, n_embd: 48, n_head: 3, n_positions: 40 } });
  const outcome = await padded.generate([464, 50300], greedy({ maxNewTokens: 3 })).then(
    () => 'resolved',
    (e: unknown) => e,
  );
  if (outcome !== 'resolved') {
    expect(outcome).toBeInstanceOf(LlmcoreError);
  }
});

// The fixture checkpoint really is what these tests assume.
test('fixture sanity', async () => {
  expect(tiny.config).toMatchObject({ nPositions: 128, vocabSize: V, eosTokenId: 50256 });
  expect(await checkpoint(TINY)).toBe(tiny.dir);
});

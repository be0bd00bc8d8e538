// Beam search (numBeams > 1) against the float64 transcription of Hugging Face's _beam_search
// (test/reference/beam-search-f64.ts): the same finished hypotheses in the same order with the
// same scores, through eos and the length limit, every earlyStopping mode, several length
// penalties and the logits processors; plus batch invariance, KV-cache hygiene and validation.
import { loadModel, OptionError, type GenerateOptions, type Model } from '../lib';
import {
  CPU, checkpoint, countingSteps, model, mutableCopy, readJsonFile, replaceFile, tokenSequence,
} from './helpers/fixtures';
import { beamSearchReference, type BeamReferenceOptions } from './reference/beam-search-f64';
import { loadGpt2Reference, type Gpt2Reference } from './reference/gpt2-f64';
import { decode as r50kDecode } from 'gpt-tokenizer/cjs/encoding/r50k_base';

const EOS = 50256;
// Engine logits are within ~1e-5 of the float64 ones on the tiny checkpoint (test/logits.test.ts);
// a score is a sum of up to ~12 log-probabilities divided by a length.
const SCORE_TOL = 2e-4;
// Cases whose reference has two candidate scores closer than this could legitimately order them
// differently in float32: the fixtures below were chosen with wider margins (asserted).
const MIN_MARGIN = 1e-4;

let tinyDir: string;
let tiny: Model;
let ref: Gpt2Reference;
beforeAll(async () => {
  tinyDir = await checkpoint({ preset: 'tiny' });
  tiny = await model({ preset: 'tiny' });
  ref = loadGpt2Reference(tinyDir);
});

const beams = (o: GenerateOptions): GenerateOptions => ({ doSample: false, ...o });

function refOptions(o: GenerateOptions, eosTokenId = EOS): BeamReferenceOptions {
  return {
    numBeams: o.numBeams!, maxNewTokens: o.maxNewTokens!, eosTokenId,
    lengthPenalty: o.lengthPenalty, earlyStopping: o.earlyStopping, repetitionPenalty: o.repetitionPenalty,
    noRepeatNgramSize: o.noRepeatNgramSize, minNewTokens: o.minNewTokens,
    // the reference decodes with the peer tokenizer library
    stop: typeof o.stop === 'string' ? [o.stop] : o.stop, decode: (ids) => r50kDecode(ids),
  };
}

async function expectMatchesReference(m: Model, r: Gpt2Reference, prompt: number[], o: GenerateOptions, eos = EOS) {
  const want = beamSearchReference(r, prompt, refOptions(o, eos));
  expect(want.margin).toBeGreaterThan(MIN_MARGIN);
  const { result: got, steps } = await countingSteps(m, () => m.generate(prompt, beams(o)));
  // one step for the prompt, then one per reference step: the search stops where HF's does
  expect(steps).toBe(want.steps);  // the prompt's own step is the first beam step
  const n = o.numReturnSequences ?? 1;
  expect(got.sequences).toHaveLength(n);
  const stops = typeof o.stop === 'string' ? [o.stop] : o.stop ?? [];
  got.sequences.forEach((s, i) => {
    expect(s.tokens).toEqual(want.hypotheses[i].tokens);
    expect(Math.abs(s.score! - want.hypotheses[i].score)).toBeLessThan(SCORE_TOL);
    const full = m.tokenizer.decode(s.tokens, { skipSpecialTokens: true });
    const cuts = stops.map((st) => full.indexOf(st)).filter((at) => at >= 0);
    const reason = s.tokens[s.tokens.length - 1] === eos ? 'eos' : cuts.length > 0 ? 'stop' : 'length';
    expect(s.finishReason).toBe(reason);
    // The eos token ends the tokens but not the text (special or not), as without beams.
    const text = reason === 'eos' ? m.tokenizer.decode(s.tokens.slice(0, -1), { skipSpecialTokens: true }) : full;
    expect(s.text).toBe(reason === 'stop' ? full.slice(0, Math.min(...cuts)) : text);
  });
  return { got, want };
}

describe('beam search matches the float64 reference of HF _beam_search', () => {
  test('4 beams, 4 returned, to the length limit', async () => {
    const { got } = await expectMatchesReference(tiny, ref, tokenSequence(6, 1),
      { numBeams: 4, numReturnSequences: 4, maxNewTokens: 10 });
    // the returned hypotheses are distinct and best first
    expect(new Set(got.sequences.map((s) => s.tokens.join(','))).size).toBe(4);
    for (let i = 1; i < 4; i++) expect(got.sequences[i].score!).toBeLessThanOrEqual(got.sequences[i - 1].score!);
  });

  test('repetitionPenalty and noRepeatNgramSize act on the log-probabilities', async () => {
    await expectMatchesReference(tiny, ref, tokenSequence(5, 2),
      { numBeams: 3, numReturnSequences: 2, maxNewTokens: 9, repetitionPenalty: 1.6, noRepeatNgramSize: 2 });
  });

  test('a stop string ends a hypothesis as eos does (HF StopStringCriteria); the text ends before it', async () => {
    const prompt = tokenSequence(6, 13);
    const o: GenerateOptions = { numBeams: 3, numReturnSequences: 3, maxNewTokens: 10 };
    // the stop string: the text of a token the plain search's best hypothesis generates
    const plain = await tiny.generate(prompt, beams(o));
    const token = plain.sequences[0].tokens.slice(2).find((t) => /^ ?[A-Za-z]{3,}$/.test(tiny.tokenizer.decode([t])));
    expect(token).toBeDefined();
    const stop = tiny.tokenizer.decode([token!]).trim();
    // lengthPenalty 0 (sums): the hypotheses the stop string ends early rank first
    const { got } = await expectMatchesReference(tiny, ref, prompt, { ...o, stop, lengthPenalty: 0 });
    expect(got.sequences.some((s) => s.finishReason === 'stop')).toBe(true);
    for (const s of got.sequences) expect(s.text).not.toContain(stop);
  });

  test('one beam of several returned, a prompt of one token', async () => {
    await expectMatchesReference(tiny, ref, [464], { numBeams: 5, maxNewTokens: 7 });
  });
});

describe('beam search through eos', () => {
  // A copy of the checkpoint whose eos is token 26111: one of the tokens of the plain 3-beam
  // run from this prompt, picked (by a search over the references) so that every variant below
  // returns an eos-ended hypothesis, earlyStopping true ends 4 steps early, lengthPenalty 0 and
  // -1 stop by the heuristic, and no two candidate scores of any step are within 2e-4.
  const EOS_TOKEN = 26111;
  const prompt = tokenSequence(5, 12);
  let eosDir: string;
  let eosModel: Model;
  let eosRef: Gpt2Reference;
  beforeAll(async () => {
    eosDir = mutableCopy(tinyDir, 'beam-eos');
    replaceFile(eosDir, 'config.json', JSON.stringify({ ...readJsonFile(tinyDir, 'config.json'), eos_token_id: EOS_TOKEN }));
    // generation_config.json's eos_token_id is the one generate() uses (HF), so it moves too.
    replaceFile(eosDir, 'generation_config.json', JSON.stringify({ ...readJsonFile(tinyDir, 'generation_config.json'), eos_token_id: EOS_TOKEN }));
    eosModel = await loadModel(eosDir, CPU);
    eosRef = loadGpt2Reference(eosDir);
  });
  afterAll(() => eosModel?.dispose());

  const results = new Map<string, number[][]>();
  test.each([
    [1, false], [1, true], [1, 'never'], [0, false], [2, 'never'], [-1, false],
  ] as Array<[number, boolean | 'never']>)('lengthPenalty %p, earlyStopping %p', async (lengthPenalty, earlyStopping) => {
    const { got, want } = await expectMatchesReference(eosModel, eosRef, prompt,
      { numBeams: 3, numReturnSequences: 3, maxNewTokens: 10, lengthPenalty, earlyStopping }, EOS_TOKEN);
    // the case really goes through eos
    expect(want.hypotheses.some((h) => h.tokens[h.tokens.length - 1] === EOS_TOKEN)).toBe(true);
    expect(got.sequences.some((s) => s.finishReason === 'eos')).toBe(true);
    results.set(`${lengthPenalty} ${String(earlyStopping)}`, got.sequences.map((s) => s.tokens));
  });

  test('earlyStopping true returns other hypotheses than false here', () => {
    expect(results.get('1 true')).toBeDefined();
    expect(results.get('1 true')).not.toEqual(results.get('1 false'));
  });

  test('minNewTokens holds eos back', async () => {
    const { got } = await expectMatchesReference(eosModel, eosRef, prompt,
      { numBeams: 3, numReturnSequences: 3, maxNewTokens: 10, minNewTokens: 4 }, EOS_TOKEN);
    for (const s of got.sequences) expect(s.tokens.slice(0, 4)).not.toContain(EOS_TOKEN);
  });
});

describe('beam search in the engine', () => {
  test('the same result alone and among concurrent requests (batch-invariant kernels)', async () => {
    const prompt = tokenSequence(7, 4);
    const o = beams({ numBeams: 4, numReturnSequences: 4, maxNewTokens: 12 });
    const alone = await tiny.generate(prompt, o);
    const [crowded] = await Promise.all([
      tiny.generate(prompt, o),
      tiny.generate(tokenSequence(30, 5), { doSample: true, numReturnSequences: 3, maxNewTokens: 20, seed: 1 }),
      tiny.generate([tokenSequence(9, 6), tokenSequence(3, 7)], beams({ numBeams: 2, maxNewTokens: 15 })),
    ]);
    expect(crowded.sequences).toEqual(alone.sequences);
  });

  test('every native sequence is released, also after an abort', async () => {
    const inUse = () => (tiny as unknown as { engine: { kvBlocksInUse(): number } }).engine.kvBlocksInUse();
    const before = inUse();
    await tiny.generate(tokenSequence(20, 8), beams({ numBeams: 6, maxNewTokens: 20 }));
    const ac = new AbortController();
    const run = tiny.generate(tokenSequence(20, 9), beams({ numBeams: 4, numReturnSequences: 2, maxNewTokens: 60, signal: ac.signal }));
    setTimeout(() => ac.abort(), 30);
    const r = await run;
    expect(r.sequences).toHaveLength(2);
    // settle the queued releases
    await tiny.generate([1], beams({ maxNewTokens: 1 }));
    expect(inUse()).toBe(before);
    expect(tiny.kvStats().reservedBlocks).toBe(0);
  });

  test('a caller\'s numBeams wins over the checkpoint\'s do_sample default (task_specific_params)', async () => {
    expect(tiny.generationDefaults.doSample).toBe(true);
    const p = tokenSequence(4, 11);
    const implicit = await tiny.generate(p, { numBeams: 3, numReturnSequences: 2, maxNewTokens: 5 });
    const explicit = await tiny.generate(p, beams({ numBeams: 3, numReturnSequences: 2, maxNewTokens: 5 }));
    expect(implicit.sequences).toEqual(explicit.sequences);
  });

  test('options are validated', async () => {
    const p = [464];
    await expect(tiny.generate(p, { numBeams: 3, doSample: true })).rejects.toThrow(/beam sampling/);
    await expect(tiny.generate(p, beams({ numBeams: 2, numReturnSequences: 3 }))).rejects.toThrow(/<= numBeams=2/);
    await expect(tiny.generate(p, beams({ numBeams: 0 }))).rejects.toThrow(OptionError);
    await expect(tiny.generate(p, beams({ numBeams: 2.5 }))).rejects.toThrow(/numBeams/);
    await expect(tiny.generate(p, beams({ numBeams: 2, lengthPenalty: NaN }))).rejects.toThrow(/lengthPenalty/);
    await expect(tiny.generate(p, beams({ numBeams: 2, earlyStopping: 'sometimes' as never }))).rejects.toThrow(/earlyStopping/);
    const it = tiny.stream(p, beams({ numBeams: 2 }));
    await expect(it.next()).rejects.toThrow(/cannot stream/);
    await expect(tiny.generate('', beams({ numBeams: 2 }))).rejects.toThrow(/prompt is empty/);
    await expect(tiny.generate([50257], beams({ numBeams: 2 }))).rejects.toThrow(OptionError);
    // greedy with several sequences names both ways out
    await expect(tiny.generate(p, beams({ numReturnSequences: 2 }))).rejects.toThrow(/doSample: true or numBeams/);
  });

  test('num_beams, length_penalty and early_stopping come from generation_config.json', async () => {
    const dir = mutableCopy(tinyDir, 'beam-defaults');
    replaceFile(dir, 'generation_config.json', JSON.stringify({ num_beams: 3, length_penalty: 0, early_stopping: true, do_sample: false }));
    const m = await loadModel(dir, CPU);
    try {
      const prompt = tokenSequence(4, 10);
      const want = beamSearchReference(ref, prompt, { numBeams: 3, maxNewTokens: 6, eosTokenId: EOS, lengthPenalty: 0, earlyStopping: true });
      const got = await m.generate(prompt, { maxNewTokens: 6 });
      expect(got.sequences[0].tokens).toEqual(want.hypotheses[0].tokens);
      expect(Math.abs(got.sequences[0].score! - want.hypotheses[0].score)).toBeLessThan(SCORE_TOL);
    } finally {
      m.dispose();
    }
  });
});

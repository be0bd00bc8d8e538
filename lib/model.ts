// The user-facing model: loadModel() and generate / stream / logits / dispose.
import { setMaxListeners } from 'node:events';
import * as os from 'node:os';
import { onAbort } from './abort';
import { Admission, type KvStats } from './admission';
import { readCheckpoint, type GenerationDefaults, type ModelConfig } from './config';
import { BackendError, DisposedError, ModelFormatError, OptionError, callNative } from './errors';
import {
  checkTokenIds, planPrompt, prefill, promptSeed, runPrompt, type GenerationContext, type GenerationResult, type StreamChunk,
} from './generation';
import { runBeamSearch } from './beam-search';
import { native, type NativeEngine, type NativeEngineInfo } from './native';
import { checkSignal, resolveOptions, type GenerateOptions, type ResolvedOptions } from './options';
import { LogitsMode, Scheduler } from './scheduler';
import { Gpt2Tokenizer } from './tokenizer';

export type Device = 'auto' | 'cpu' | 'cuda';
export type WeightDtype = 'auto' | 'f32' | 'f16' | 'bf16';
export type KvCacheDtype = 'auto' | 'f32' | 'f16';

export interface LoadOptions {
  /** 'auto' (default): CUDA when a CUDA backend can start, else the CPU. */
  device?: Device;
  /** CPU threads; default one per core. */
  threads?: number;
  /** Keep matmul weights as stored ('auto', default) or convert once at load. */
  dtype?: WeightDtype;
  /**
   * KV-cache budget in bytes (default: a quarter of the machine's memory, at most 16 GiB).
   * Requests beyond it wait (first come, first served) until running ones finish.
   */
  kvCacheBytes?: number;
  /** Sequences decoding at once, the largest step batch (default 256); more wait. */
  maxSequences?: number;
  /**
   * KV-cache element type: 'f32' (exact) or 'f16' (half the memory, so twice the sequences fit
   * in kvCacheBytes, and half of attention's memory traffic; K and V are rounded to f16 when
   * stored). 'auto' (default): f16 when the matmul weights are kept in 16 bits (bf16 or f16),
   * f32 for f32 weights, as HF keeps the cache in the model's dtype. `info.kvDtype` says which.
   */
  kvCacheDtype?: KvCacheDtype;
}

export type Prompt = string | number[];

export interface ModelInfo extends NativeEngineInfo {
  dir: string;
  device: 'cpu' | 'cuda';
}

const LOAD_KEYS = new Set(['device', 'threads', 'dtype', 'kvCacheBytes', 'maxSequences', 'kvCacheDtype']);
const defaultKvCacheBytes = () => Math.min(Math.floor(os.totalmem() / 4), 16 * 2 ** 30);

// Node defines Symbol.asyncDispose; a vm realm (jest) may not, and then uses the registry key.
const asyncDispose: typeof Symbol.asyncDispose =
  Symbol.asyncDispose ?? (Symbol.for('nodejs.asyncDispose') as typeof Symbol.asyncDispose);

function checkLoadOptions(o: LoadOptions | undefined): Required<LoadOptions> {
  if (o !== undefined && (typeof o !== 'object' || o === null)) throw new OptionError('[loadModel] options must be an object');
  for (const k of Object.keys(o ?? {}))
    if (!LOAD_KEYS.has(k))
      throw new OptionError(`[loadModel] unknown option ${k} (expected ${[...LOAD_KEYS].join(', ')})`);
  const device = o?.device ?? 'auto';
  if (!['auto', 'cpu', 'cuda'].includes(device))
    throw new OptionError(`[loadModel] option device must be 'auto', 'cpu' or 'cuda', got ${String(device)}`);
  const threads = o?.threads ?? 0;  // 0: one per core (the native default)
  if (o?.threads !== undefined && (!Number.isInteger(threads) || threads < 1 || threads > 1024))
    throw new OptionError(`[loadModel] option threads must be an integer in [1, 1024], got ${String(threads)}`);
  const dtype = o?.dtype ?? 'auto';
  if (!['auto', 'f32', 'f16', 'bf16'].includes(dtype))
    throw new OptionError(`[loadModel] option dtype must be 'auto', 'f32', 'f16' or 'bf16', got ${String(dtype)}`);
  const kvCacheBytes = o?.kvCacheBytes ?? defaultKvCacheBytes();
  if (typeof kvCacheBytes !== 'number' || !Number.isSafeInteger(kvCacheBytes) || kvCacheBytes <= 0)
    throw new OptionError(`[loadModel] option kvCacheBytes must be a positive integer (bytes), got ${String(kvCacheBytes)}`);
  const maxSequences = o?.maxSequences ?? 256;
  if (!Number.isInteger(maxSequences) || maxSequences < 1 || maxSequences > 65536)
    throw new OptionError(`[loadModel] option maxSequences must be an integer in [1, 65536], got ${String(maxSequences)}`);
  const kvCacheDtype = o?.kvCacheDtype ?? 'auto';
  if (!['auto', 'f32', 'f16'].includes(kvCacheDtype))
    throw new OptionError(`[loadModel] option kvCacheDtype must be 'auto', 'f32' or 'f16', got ${String(kvCacheDtype)}`);
  return { device, threads, dtype, kvCacheBytes, maxSequences, kvCacheDtype };
}

/** Loads a Hugging Face GPT-2 checkpoint directory (config.json, model.safetensors, tokenizer), or a repo id from the local HF cache. */
export async function loadModel(dir: string, options?: LoadOptions): Promise<Model> {
  if (typeof dir !== 'string' || dir.length === 0) throw new OptionError('[loadModel] dir must be a non-empty path');
  const opts = checkLoadOptions(options);
  const ckpt = await readCheckpoint(dir);
  const tokenizer = await Gpt2Tokenizer.fromDirectory(ckpt.dir);
  if (tokenizer.vocabSize > ckpt.config.vocabSize)
    throw new ModelFormatError(
      `[loadModel] ${ckpt.dir}: the tokenizer has ${tokenizer.vocabSize} tokens but config.json vocab_size is ${ckpt.config.vocabSize}`,
    );
  const c = ckpt.config;
  const load = (device: string) =>
    callNative(() =>
      native().loadEngine({
        files: ckpt.weightFiles,
        config: {
          vocabSize: c.vocabSize, nPositions: c.nPositions, nEmbd: c.nEmbd, nLayer: c.nLayer, nHead: c.nHead,
          layerNormEpsilon: c.layerNormEpsilon, tieWordEmbeddings: c.tieWordEmbeddings,
        },
        device,
        threads: opts.threads,
        dtype: opts.dtype,
        kvDtype: opts.kvCacheDtype,
      }),
    );
  let engine: NativeEngine;
  let device: 'cpu' | 'cuda' = opts.device === 'cuda' ? 'cuda' : 'cpu';
  if (opts.device === 'auto') {
    try {
      engine = await load('cuda');
      device = 'cuda';
    } catch (err) {
      if (!(err instanceof BackendError)) throw err;
      engine = await load('cpu');
    }
  } else {
    engine = await load(opts.device);
  }
  const info = engine.info();
  const capacityBlocks = Math.floor(opts.kvCacheBytes / info.kvBlockBytes);
  const fullContext = Math.ceil(c.nPositions / info.kvBlockTokens);
  if (capacityBlocks < 1) {
    engine.dispose();
    throw new OptionError(
      `[loadModel] option kvCacheBytes=${opts.kvCacheBytes} is less than one KV block of this model ` +
        `(${info.kvBlockBytes} bytes; one full ${c.nPositions}-position sequence needs ${fullContext * info.kvBlockBytes})`,
    );
  }
  const admission = new Admission({
    blockTokens: info.kvBlockTokens, blockBytes: info.kvBlockBytes, capacityBlocks, maxSequences: opts.maxSequences,
  });
  return new Model(ckpt.dir, c, ckpt.generationDefaults, tokenizer, engine, device, admission);
}

export class Model {
  readonly info: ModelInfo;
  private readonly scheduler: Scheduler;
  private disposed = false;

  /** @internal use loadModel() */
  constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly generationDefaults: GenerationDefaults,
    readonly tokenizer: Gpt2Tokenizer,
    private readonly engine: NativeEngine,
    device: 'cpu' | 'cuda',
    private readonly admission: Admission,
  ) {
    this.info = { ...engine.info(), dir, device };
    this.scheduler = new Scheduler(engine, config.vocabSize);
  }

  /**
   * Generates numReturnSequences continuations of a prompt (text or token ids), or of each
   * prompt of an array; concurrent calls share batched forward passes.
   */
  generate(prompt: Prompt, options?: GenerateOptions): Promise<GenerationResult>;
  generate(prompts: Prompt[], options?: GenerateOptions): Promise<GenerationResult[]>;
  async generate(input: Prompt | Prompt[], options?: GenerateOptions): Promise<GenerationResult | GenerationResult[]> {
    this.checkAlive();
    const opts = resolveOptions(options, this.config, this.generationDefaults);
    const many = Array.isArray(input) && input.length > 0 && typeof input[0] !== 'number';
    const prompts = (many ? input : [input]) as Prompt[];
    if (Array.isArray(input) && input.length === 0) throw new OptionError('[generate] no prompt given (empty array)');
    const encoded = prompts.map((p) => this.encodePrompt(p));
    // Every prompt is checked before any starts: a bad one fails the call with nothing running.
    const ctx = this.context();
    for (const [ids] of encoded) planPrompt(ctx, ids, opts);
    // The prompts' abort: the caller's signal (one listener for the call, however many prompts),
    // or the first prompt that fails, which ends the others (the call rejects with its error).
    const stop = new AbortController();
    setMaxListeners(0, stop.signal);  // a listener per prompt and sequence: no leak warning
    const unsubscribe = onAbort(opts.signal, () => stop.abort());
    const run = opts.numBeams > 1 ? runBeamSearch : runPrompt;
    try {
      const results = await Promise.all(encoded.map(([ids, text], i) =>
        run(ctx, ids, text, { ...opts, seed: promptSeed(opts.seed, i), signal: stop.signal }).catch((err: unknown) => {
          stop.abort();
          throw err;
        })));
      return many ? results : results[0];
    } finally {
      unsubscribe();
    }
  }

  /** Streams a prompt's continuation(s) as text pieces with their token ids. */
  async *stream(prompt: Prompt, options?: GenerateOptions): AsyncGenerator<StreamChunk, void, undefined> {
    this.checkAlive();
    if (Array.isArray(prompt) && prompt.some((t) => typeof t !== 'number'))
      throw new OptionError('[stream] takes one prompt (a string or an array of token ids); stream each, or generate() them all');
    if (options !== undefined && (typeof options !== 'object' || options === null))
      throw new OptionError('[stream] options must be an object');
    // The sequences end when the caller's signal aborts or the consumer stops iterating.
    const stop = new AbortController();
    const unsubscribe = onAbort(checkSignal(options?.signal, 'stream'), () => stop.abort());
    let opts: ResolvedOptions;
    let ids: number[], text: string;
    try {
      opts = resolveOptions({ ...options, signal: stop.signal }, this.config, this.generationDefaults);
      if (opts.numBeams > 1)
        throw new OptionError('[stream] numBeams > 1 cannot stream (any beam may be replaced at a later step); use generate()');
      [ids, text] = this.encodePrompt(prompt);
    } catch (err) {
      unsubscribe();
      throw err;
    }
    const queue: StreamChunk[] = [];
    let wake: (() => void) | undefined;
    let finished = false;
    let failure: unknown;
    const run = runPrompt(this.context(), ids, text, opts, (c) => {
      queue.push(c);
      wake?.();
    }).then(
      () => { finished = true; wake?.(); },
      (err) => { failure = err; finished = true; wake?.(); },
    );
    try {
      for (;;) {
        const next = queue.shift();
        if (next) {
          yield next;
          continue;
        }
        if (finished) {
          if (failure) throw failure;
          return;
        }
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      stop.abort();  // the consumer stopped early: end the sequences
      unsubscribe();
      await run;
    }
  }

  /** Logits of every position: a Float32Array of tokenIds.length * vocabSize. */
  async logits(tokenIds: number[]): Promise<Float32Array> {
    this.checkAlive();
    if (!Array.isArray(tokenIds) || tokenIds.length === 0) throw new OptionError('[logits] tokenIds must be a non-empty array');
    tokenIds = tokenIds.slice();  // checked now, fed later: the caller may change its array meanwhile
    checkTokenIds(tokenIds, this.config, 'logits');
    if (tokenIds.length > this.config.nPositions)
      throw new OptionError(`[logits] ${tokenIds.length} tokens exceed the model's n_positions=${this.config.nPositions}`);
    const V = this.config.vocabSize;
    const out = new Float32Array(tokenIds.length * V);
    let filled = 0;
    const reservation = (await this.admission.acquire('logits', this.admission.blocksFor(0, tokenIds.length, 1), 1))!;
    try {
      const id = await this.scheduler.exclusive((e) => e.newSequence(0));
      try {
        await prefill(this.scheduler, id, tokenIds, LogitsMode.All, (rows) => {
          out.set(rows, filled);
          filled += rows.length;
        });
      } finally {
        this.scheduler.exclusive((e) => e.releaseSequence(id)).catch(() => undefined);
      }
    } finally {
      reservation.release();
    }
    return out;
  }

  /** KV-cache admission: reserved blocks and running sequences against the budget, queued requests. */
  kvStats(): KvStats {
    return this.admission.stats();
  }

  /** Frees the native model; later calls throw DisposedError. Safe to call twice. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const reason = new DisposedError('[model] the model was disposed while this call was running');
    this.admission.close(reason);
    this.scheduler.close(reason);
    this.engine.dispose();
  }

  async [asyncDispose](): Promise<void> {
    this.dispose();
  }

  private checkAlive(): void {
    if (this.disposed) throw new DisposedError();
  }

  private context(): GenerationContext {
    return { scheduler: this.scheduler, admission: this.admission, tokenizer: this.tokenizer, config: this.config };
  }

  private encodePrompt(p: Prompt): [number[], string] {
    if (typeof p === 'string') return [this.tokenizer.encode(p), p];
    if (Array.isArray(p)) {
      checkTokenIds(p, this.config, 'generate');
      return [p.slice(), this.tokenizer.decode(p)];
    }
    throw new OptionError('[generate] a prompt must be a string or an array of token ids');
  }
}

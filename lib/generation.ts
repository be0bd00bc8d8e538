// One prompt -> numReturnSequences continuations: the prompt is computed once, in one step whose
// logits row every continuation samples its first token from (the engine forks the KV cache in
// that step), and every sequence then decodes in the shared scheduler batch. Used by generate()
// (collects) and stream() (emits pieces as they complete).
import type { Admission } from './admission';
import type { ModelConfig } from './config';
import { OptionError } from './errors';
import { newTokenBudget, type ResolvedOptions } from './options';
import { LogitsMode, NOT_SAMPLED, Scheduler, type ActiveSequence } from './scheduler';
import type { Gpt2Tokenizer } from './tokenizer';

export type FinishReason = 'length' | 'eos' | 'stop' | 'abort';

export interface GeneratedSequence {
  /** The continuation (the prompt not included); ends before a matched stop string. */
  text: string;
  /** Generated token ids (an end-of-text token included when finishReason is 'eos'). */
  tokens: number[];
  finishReason: FinishReason;
  /** Beam search only: the hypothesis' score, sum of log-probabilities / (tokens ** lengthPenalty) (HF sequences_scores). */
  score?: number;
}

export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  /** From the call to the first new token of every sequence. */
  prefillMs: number;
  /** From there to the last sequence's end. */
  decodeMs: number;
}

export interface GenerationResult {
  /** The prompt as text (decoded when it was given as token ids). */
  prompt: string;
  promptTokens: number[];
  sequences: GeneratedSequence[];
  stats: GenerationStats;
}

export interface StreamChunk {
  /** Which of the numReturnSequences this piece belongs to. */
  index: number;
  /** New text; never splits a UTF-8 character, never shows part of a stop string. */
  text: string;
  /** Token ids generated since the previous chunk of this sequence. */
  tokens: number[];
  /** Set on the sequence's last chunk. */
  finishReason?: FinishReason;
}

export interface GenerationContext {
  scheduler: Scheduler;
  admission: Admission;
  tokenizer: Gpt2Tokenizer;
  config: ModelConfig;
}

export function checkTokenIds(ids: readonly number[], config: ModelConfig, what: string): void {
  for (const t of ids)
    if (!Number.isInteger(t) || t < 0 || t >= config.vocabSize)
      throw new OptionError(`[${what}] token id ${String(t)} is not an integer in [0, ${config.vocabSize})`);
}

/** Feeds tokens to a sequence without sampling; resolves once they are all in its KV cache. */
export function prefill(scheduler: Scheduler, id: number, tokens: number[], logits: LogitsMode,
                        onLogits?: (rows: Float32Array) => void, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const seq: ActiveSequence = {
      id,
      pending: tokens.slice(),
      sample: false,
      logits,
      params: NOT_SAMPLED,
      banned: [],
      cancelled: false,
      onStep: (_sampled, rows, drained) => {
        if (rows && onLogits) onLogits(rows);
        if (drained) resolve();
      },
      onError: reject,
    };
    signal?.addEventListener('abort', () => {
      seq.cancelled = true;
      resolve();
    }, { once: true });
    scheduler.add(seq);
  });
}

/** Where the first match of any stop string starts in text (searching from `from`), or -1. */
export function firstStop(text: string, stops: readonly string[], from = 0): number {
  let cut = -1;
  for (const s of stops) {
    const at = text.indexOf(s, from);
    if (at >= 0 && (cut < 0 || at < cut)) cut = at;
  }
  return cut;
}

/** Longest suffix of text that is a proper prefix of a stop string: text that may not show yet. */
function heldBack(text: string, stops: string[]): number {
  let held = 0;
  for (const s of stops)
    for (let k = Math.min(s.length - 1, text.length); k > held; k--)
      if (text.endsWith(s.slice(0, k))) {
        held = k;
        break;
      }
  return held;
}

/**
 * Tokens the next pick may not be: the bans of HF's MinNewTokensLength, NoRepeatNGram and
 * NoBadWords logits processors, over the prompt and the tokens generated so far.
 */
export function bannedTokens(prompt: readonly number[], gen: readonly number[], minNewTokens: number,
                             opts: ResolvedOptions): number[] {
  const banned: number[] = [];
  if (gen.length < minNewTokens) banned.push(...opts.eosTokenIds);
  const n = opts.noRepeatNgramSize;
  const bad = opts.badWordsIds;
  if (n > 0 || bad.length > 0) {
    const h = prompt.concat(gen);
    const L = h.length;
    // every n-gram seen so far whose first n - 1 tokens are the last n - 1: its last is banned
    if (n > 0 && L + 1 >= n) {
      for (let i = 0; i + n <= L; i++) {
        let match = true;
        for (let j = 0; j < n - 1 && match; j++) match = h[i + j] === h[L - n + 1 + j];
        if (match) banned.push(h[i + n - 1]);
      }
    }
    // a bad word's last token, once the text ends with the rest of it (at once if one token)
    for (const w of bad) {
      const k = w.length - 1;
      let match = k <= L;
      for (let j = 0; j < k && match; j++) match = h[L - k + j] === w[j];
      if (match) banned.push(w[k]);
    }
  }
  return banned;
}

const leavesNoToken = (banned: readonly number[], vocabSize: number) =>
  banned.length >= vocabSize && new Set(banned).size >= vocabSize;
const ALL_BANNED = '[generate] every token is banned (badWordsIds, noRepeatNgramSize or minNewTokens leave none to pick)';

/** HF min_new_tokens and min_length (prompt included) both hold eos back; at most the budget. */
export function minNewTokensFor(opts: ResolvedOptions, promptLength: number, budget: number): number {
  return Math.min(budget, Math.max(opts.minNewTokens, opts.minLength - promptLength));
}

class SequenceRun implements ActiveSequence {
  pending: number[];
  sample = true;
  logits: LogitsMode = LogitsMode.None;
  cancelled = false;
  readonly params: Float32Array;
  readonly out: GeneratedSequence = { text: '', tokens: [], finishReason: 'length' };
  firstTokenAt = 0;
  /** Tokens the next sample may not be: eos before minNewTokens, noRepeatNgramSize, badWordsIds. */
  banned: number[] = [];
  /** Called once when the sequence ends, after its native release is queued. */
  onEnd?: () => void;
  /** The first sequence of a prompt: the others, which the engine forks from it (see onForked). */
  forkSeeds?: number[];
  forkRuns: SequenceRun[] = [];
  private emittedText = 0;
  private emittedTokens = 0;
  private readonly decoder;
  private done = false;
  private resolveDone!: () => void;
  private rejectDone!: (err: unknown) => void;
  readonly finished = new Promise<void>((res, rej) => {
    this.resolveDone = res;
    this.rejectDone = rej;
  });

  constructor(
    /** The native sequence; -1 for a fork until the step that makes it (attach). */
    public id: number,
    readonly index: number,
    private readonly prompt: readonly number[],
    private readonly budget: number,
    private readonly minNewTokens: number,
    private readonly ctx: GenerationContext,
    private readonly opts: ResolvedOptions,
    /** What to feed before the first sample: the prompt, or nothing for a fork (it starts in attach). */
    feed: readonly number[],
    private readonly onChunk?: (c: StreamChunk) => void,
  ) {
    this.pending = [...feed];
    // layout: NativeStepRequest.params
    // Greedy ignores the temperature (it may be 0 then: options.ts); the engine checks it anyway.
    this.params = Float32Array.of(opts.doSample ? 1 : 0, opts.doSample ? opts.temperature : 1, opts.topK, opts.topP, opts.repetitionPenalty,
      opts.minP, opts.typicalP);
    this.updateBanned();
    this.decoder = ctx.tokenizer.createStreamDecoder({ skipSpecialTokens: true });
  }

  onStep(token: number, _logits: Float32Array | null, drained: boolean): void {
    if (this.done || !drained) return;
    if (this.out.tokens.length === 0) this.firstTokenAt = performance.now();
    this.out.tokens.push(token);
    this.updateBanned();
    if (this.opts.eosTokenIds.includes(token)) return this.finish('eos');
    const before = this.out.text.length;
    this.out.text += this.decoder.push(token);
    const stops = this.opts.stop;
    if (stops.length > 0 && this.out.text.length > before) {
      const longest = Math.max(...stops.map((s) => s.length));
      const cut = firstStop(this.out.text, stops, Math.max(0, before - longest + 1));
      if (cut >= 0) {
        this.out.text = this.out.text.slice(0, cut);
        return this.finish('stop');
      }
    }
    if (this.out.tokens.length >= this.budget) return this.finish('length');
    // Failed here, the one sequence fails; in the engine it would fail its whole step.
    if (leavesNoToken(this.banned, this.ctx.config.vocabSize)) return this.onError(new OptionError(ALL_BANNED));
    this.emit(false);
    this.pending.push(token);
  }

  nextStepBans(): number[] | null {
    if (this.done || (this.forkSeeds?.length ?? 0) > 0) return null;
    // n-gram and multi-token bad-word bans depend on the token being sampled now
    if (this.opts.noRepeatNgramSize > 0 || this.opts.badWordsIds.some((w) => w.length > 1)) return null;
    const after = this.out.tokens.length + 1;  // generated once the step in flight is in
    if (after >= this.budget) return null;     // its token is the last: nothing is fed after it
    // What is left depends only on how many tokens there are, not on which.
    const bans = bannedTokens(this.prompt, new Array<number>(after).fill(0), this.minNewTokens, this.opts);
    return leavesNoToken(bans, this.ctx.config.vocabSize) ? null : bans;
  }

  onForked(ids: Int32Array, sampled: Int32Array): void {
    this.forkSeeds = undefined;  // once: its later steps sample for itself alone
    this.forkRuns.forEach((run, j) => run.attach(ids[j], sampled[j]));
  }

  /** A fork's start: its native sequence and first token, from the step that sampled its parent. */
  private attach(id: number, token: number): void {
    this.id = id;
    if (this.done) {  // aborted (or failed) while that step ran: only the native sequence is left
      this.ctx.scheduler.exclusive((e) => e.releaseSequence(id)).catch(() => undefined);
      return;
    }
    this.onStep(token, null, true);
    if (!this.done) this.ctx.scheduler.add(this);
  }

  onError(err: unknown): void {
    // Forks not made yet share their parent's fate.
    for (const run of this.forkRuns) if (run.id < 0) run.onError(err);
    if (this.done) return;
    this.done = true;
    this.cancelled = true;
    this.release();
    this.rejectDone(err);
  }

  abort(): void {
    if (!this.done) this.finish('abort');
  }

  private finish(reason: FinishReason): void {
    this.done = true;
    this.cancelled = true;
    this.out.finishReason = reason;
    if (reason !== 'stop') this.out.text += this.decoder.flush();
    this.emit(true);
    this.release();
    this.resolveDone();
  }

  private emit(final: boolean): void {
    if (!this.onChunk) return;
    const upTo = final ? this.out.text.length : this.out.text.length - heldBack(this.out.text, this.opts.stop);
    if (upTo <= this.emittedText && !final) return;
    const chunk: StreamChunk = {
      index: this.index,
      text: this.out.text.slice(this.emittedText, Math.max(upTo, this.emittedText)),
      tokens: this.out.tokens.slice(this.emittedTokens),
    };
    if (final) chunk.finishReason = this.out.finishReason;
    this.emittedText = Math.max(upTo, this.emittedText);
    this.emittedTokens = this.out.tokens.length;
    this.onChunk(chunk);
  }

  private updateBanned(): void {
    this.banned = bannedTokens(this.prompt, this.out.tokens, this.minNewTokens, this.opts);
  }

  private release(): void {
    const id = this.id;
    if (id >= 0) this.ctx.scheduler.exclusive((e) => e.releaseSequence(id)).catch(() => undefined);
    this.onEnd?.();
  }
}

// 32-bit finalizer of murmur3-like hashes (lowbias32): every input bit moves every output bit.
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The seed of stream i (> 0) of a seed (< 2^53): a hash of both, so nearby seeds share no
 * streams (seed + i would give seed 43's first sequence to seed 42's second). Stream 0 is the
 * seed itself. A 53-bit result, as the native sequences take.
 */
function seedFor(seed: number, i: number): number {
  if (i === 0) return seed;
  const lo = seed % 2 ** 32, hi = Math.floor(seed / 2 ** 32);
  const a = mix32((lo ^ mix32(i)) >>> 0);
  const b = mix32((hi ^ mix32(a ^ 0x9e3779b9) ^ i) >>> 0);
  return (b & 0x1fffff) * 2 ** 32 + a;
}

// Prompt j of a call draws its sequences' seeds from its own stream of the call's seed, far
// from the sequences' own streams (seedFor(seed, i) for sequence i < 1024).
const PROMPT_STREAMS = 2 ** 31;
export const promptSeed = (seed: number, j: number) => (j === 0 ? seed : seedFor(seed, PROMPT_STREAMS + j));

/** The result of one prompt's generation, with its timing from `start` and the first new token at `firstAt`. */
export function promptResult(promptText: string, promptTokens: number[], sequences: GeneratedSequence[],
                             start: number, firstAt: number): GenerationResult {
  const end = performance.now();
  return {
    prompt: promptText,
    promptTokens,
    sequences,
    stats: {
      promptTokens: promptTokens.length,
      generatedTokens: sequences.reduce((s, q) => s + q.tokens.length, 0),
      prefillMs: (firstAt || end) - start,
      decodeMs: firstAt ? end - firstAt : 0,
    },
  };
}

/** What a prompt asks of the KV cache: its new-token budget, blocks and sequences at most. */
export interface PromptPlan {
  budget: number;
  blocks: number;
  seqs: number;
}

/**
 * Checks a prompt against the options and the KV-cache budget, throwing what runPrompt or
 * runBeamSearch would throw before starting (so a call of many prompts can check them all
 * before any starts), and returns its plan. Each sequence grows to P + budget - 1 positions
 * (its last sampled token is never fed); the full blocks of a prompt's P positions are shared by
 * its forks, those of P - 1 by its beams (as runBeamSearch has always counted them).
 */
export function planPrompt(ctx: GenerationContext, promptTokens: number[], opts: ResolvedOptions): PromptPlan {
  const P = promptTokens.length;
  if (P === 0) throw new OptionError('[generate] the prompt is empty (no tokens)');
  checkTokenIds(promptTokens, ctx.config, 'generate');
  const budget = newTokenBudget(opts, P, ctx.config);
  if (leavesNoToken(bannedTokens(promptTokens, [], minNewTokensFor(opts, P, budget), opts), ctx.config.vocabSize))
    throw new OptionError(ALL_BANNED);
  const beams = opts.numBeams > 1;
  const seqs = beams ? opts.numBeams : opts.numReturnSequences;
  const blocks = ctx.admission.blocksFor(beams ? P - 1 : P, P + budget - 1, seqs);
  ctx.admission.check('generate', blocks, seqs, beams ? 'numBeams' : 'numReturnSequences');
  return { budget, blocks, seqs };
}

export async function runPrompt(
  ctx: GenerationContext,
  promptTokens: number[],
  promptText: string,
  opts: ResolvedOptions,
  onChunk?: (c: StreamChunk) => void,
): Promise<GenerationResult> {
  const start = performance.now();
  const { scheduler, admission } = ctx;
  const { budget, blocks } = planPrompt(ctx, promptTokens, opts);
  const n = opts.numReturnSequences;
  const result = (sequences: GeneratedSequence[], firstAt: number) =>
    promptResult(promptText, promptTokens, sequences, start, firstAt);
  const empty = (reason: FinishReason) =>
    Array.from({ length: n }, (_, index) => {
      onChunk?.({ index, text: '', tokens: [], finishReason: reason });
      return { text: '', tokens: [], finishReason: reason };
    });
  if (opts.signal?.aborted) return result(empty('abort'), 0);
  // Wait for room in the KV cache (planPrompt).
  const P = promptTokens.length;
  const reservation = await admission.acquire('generate', blocks, n, opts.signal);
  if (!reservation) return result(empty('abort'), 0);
  // A sequence that ends early (eos, stop, abort) returns its own blocks at once; the prompt's
  // shared blocks go back when the last one ends. Its native release runs between steps, before
  // any request admitted with those blocks gets a native sequence (scheduler order), so the
  // blocks really in use never exceed the budget.
  const ownBlocks = admission.blocksFor(P, P + budget - 1, 1) - admission.blocksFor(P, P, 0);
  try {
    // The whole prompt goes into one sequence in one step, which samples its first token and
    // makes the other n - 1 sequences: forks sharing its KV cache, each sampling its own first
    // token from the same logits row with its own generator (no step of its own for the prompt's
    // last token: that would read every weight once more, ~17-24 ms for the 124M f32 model).
    const parent = await scheduler.exclusive((e) => e.newSequence(seedFor(opts.seed, 0)));
    const minNew = minNewTokensFor(opts, P, budget);
    const runs = Array.from({ length: n }, (_, i) =>
      new SequenceRun(i === 0 ? parent : -1, i, promptTokens, budget, minNew, ctx, opts, i === 0 ? promptTokens : [], onChunk));
    runs[0].forkSeeds = runs.slice(1).map((r) => seedFor(opts.seed, r.index));
    runs[0].forkRuns = runs.slice(1);
    for (const r of runs) r.onEnd = () => reservation.returnPart(ownBlocks, 1);
    const onAbort = () => runs.forEach((r) => r.abort());
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      if (opts.signal?.aborted) onAbort();
      else scheduler.add(runs[0]);
      await Promise.all(runs.map((r) => r.finished)).catch(async (err: unknown) => {
        // One sequence failed, so the call does: its others end before their blocks go back.
        onAbort();
        await Promise.allSettled(runs.map((r) => r.finished));
        throw err;
      });
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    const firstAt = Math.max(...runs.map((r) => r.firstTokenAt));
    return result(runs.map((r) => r.out), firstAt);
  } finally {
    reservation.release();
  }
}

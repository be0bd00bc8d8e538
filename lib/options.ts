// Validation of user options, before anything native runs. Names follow Hugging Face's
// generate() in camelCase; errors name the option and what was expected.
import { OptionError } from './errors';
import type { GenerationDefaults, ModelConfig } from './config';

export interface GenerateOptions {
  /** Total length, prompt included (HF max_length). Default: the checkpoint's, else 20. */
  maxLength?: number;
  /** New tokens to generate; takes precedence over maxLength (HF max_new_tokens). */
  maxNewTokens?: number;
  /** eos is not sampled before this many new tokens (HF min_new_tokens). Default 0. */
  minNewTokens?: number;
  /** eos is not sampled before the total length, prompt included, reaches this (HF min_length). */
  minLength?: number;
  /** No n-gram of this size occurs twice in prompt + continuation (HF no_repeat_ngram_size; 0: off). */
  noRepeatNgramSize?: number;
  /** Token sequences that never appear in the continuation (HF bad_words_ids). */
  badWordsIds?: number[][];
  /** Sequences per prompt; the prompt is computed once and its KV cache forked. */
  numReturnSequences?: number;
  /** Beam search over this many beams (HF num_beams; 1: off). Returns the numReturnSequences best. */
  numBeams?: number;
  /** Beam search: a finished hypothesis scores sum(log p) / (new tokens ** lengthPenalty). Default 1. */
  lengthPenalty?: number;
  /**
   * Beam search (HF early_stopping): true stops once numBeams hypotheses are finished; false
   * (default) also when the best running beam cannot beat them at its current length; 'never'
   * only when no running beam can (at the longest possible length for lengthPenalty > 0).
   */
  earlyStopping?: boolean | 'never';
  /** Sample (true) or greedy (false). Default: the checkpoint's generation defaults, else false. */
  doSample?: boolean;
  temperature?: number;
  /** Keep the k most likely tokens (0: off). HF default 50. */
  topK?: number;
  /** Nucleus sampling mass in (0, 1]. */
  topP?: number;
  /** Keep tokens with probability >= minP x the most likely one's (HF min_p; 0: off). */
  minP?: number;
  /** Locally typical sampling mass in (0, 1] (HF typical_p; 1: off). */
  typicalP?: number;
  /** HF repetition_penalty (> 0; 1: off). */
  repetitionPenalty?: number;
  /**
   * Same seed, same output. Default: random. Each sequence draws from its own generator, seeded
   * from (seed, prompt index, sequence index), so identical prompts in one call get different
   * samples.
   */
  seed?: number;
  /** Token ids that end a sequence (HF eos_token_id). Default: generation_config.json's, else config.json's. */
  eosTokenId?: number | number[];
  /** Stop when the continuation contains any of these; the text ends before it. */
  stop?: string | string[];
  /** Aborts generation; sequences end with finishReason 'abort'. */
  signal?: AbortSignal;
}

export interface ResolvedOptions {
  maxLength: number | undefined;
  /** Where maxLength came from, for the error of a prompt that leaves no room. */
  maxLengthFrom: 'option' | 'checkpoint' | 'default';
  maxNewTokens: number | undefined;
  minNewTokens: number;
  minLength: number;
  noRepeatNgramSize: number;
  badWordsIds: number[][];
  numReturnSequences: number;
  numBeams: number;
  lengthPenalty: number;
  earlyStopping: boolean | 'never';
  doSample: boolean;
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  typicalP: number;
  repetitionPenalty: number;
  seed: number;
  eosTokenIds: number[];
  stop: string[];
  signal: AbortSignal | undefined;
}

const known: ReadonlySet<string> = new Set([
  'maxLength', 'maxNewTokens', 'minNewTokens', 'minLength', 'noRepeatNgramSize', 'badWordsIds', 'numReturnSequences', 'numBeams',
  'lengthPenalty', 'earlyStopping', 'doSample', 'temperature', 'topK', 'topP', 'minP', 'typicalP',
  'repetitionPenalty', 'seed', 'eosTokenId', 'stop', 'signal',
]);

const camel = (s: string) => s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

// `name`: what the value is, 'option topK' or (from the checkpoint) "the checkpoint's top_k".
function int(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new OptionError(`[generate] ${name} must be an integer in [${min}, ${max}], got ${String(v)}`);
  return v;
}

// The engine takes these as float32: a value that rounds out of range there (1e-50 > 0 is 0 in
// float32) is refused here, where the message can name it.
function num(name: string, v: unknown, ok: (x: number) => boolean, expected: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v) || !ok(Math.fround(v)))
    throw new OptionError(`[generate] ${name} must be ${expected}, got ${String(v)}`);
  return v;
}

function eosIds(v: unknown, vocabSize: number, name: string): number[] {
  const ids = Array.isArray(v) ? v : [v];
  if (ids.length === 0 || !ids.every((t) => Number.isInteger(t) && t >= 0 && t < vocabSize))
    throw new OptionError(`[generate] ${name} must be a token id below vocab_size=${vocabSize} or a non-empty array of them, ` +
      `got ${JSON.stringify(v)}`);
  return ids as number[];
}

/** Checks a user's signal option (null and undefined: none); any AbortSignal-like object will do. */
export function checkSignal(v: unknown, what: string): AbortSignal | undefined {
  if (v === undefined || v === null) return undefined;
  const s = v as AbortSignal;
  if (typeof s !== 'object' || typeof s.aborted !== 'boolean' || typeof s.addEventListener !== 'function' ||
      typeof s.removeEventListener !== 'function')
    throw new OptionError(`[${what}] option signal must be an AbortSignal`);
  return s;
}

function badWords(v: unknown, vocabSize: number): number[][] {
  if (v === undefined || v === null) return [];
  const ok = Array.isArray(v) && v.every((w) => Array.isArray(w) && w.length > 0 &&
    w.every((t) => Number.isInteger(t) && t >= 0 && t < vocabSize));
  if (!ok)
    throw new OptionError(
      `[generate] option badWordsIds must be an array of non-empty arrays of token ids below vocab_size=${vocabSize}`,
    );
  return v as number[][];
}

export function resolveOptions(
  options: GenerateOptions | undefined,
  config: ModelConfig,
  defaults: GenerationDefaults,
): ResolvedOptions {
  if (options !== undefined && (typeof options !== 'object' || options === null))
    throw new OptionError('[generate] options must be an object');
  const o = (options ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (known.has(key) || o[key] === undefined) continue;
    const hint = known.has(camel(key)) ? ` (did you mean ${camel(key)}?)` : '';
    throw new OptionError(`[generate] unknown option ${key}${hint}`);
  }
  const pick = <K extends keyof GenerateOptions & keyof GenerationDefaults>(k: K) =>
    o[k] !== undefined ? o[k] : defaults[k];
  // Which value is checked: the caller's option, or the checkpoint's default (generation_config.json
  // or config.json's task_specific_params), named in the checkpoint's snake_case.
  const snake = (k: string) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
  const src = (k: keyof GenerateOptions & keyof GenerationDefaults) =>
    o[k] === undefined && defaults[k] !== undefined ? `the checkpoint's ${snake(k)} (generation defaults)` : `option ${k}`;
  const P = config.nPositions;
  // Length: the caller's maxNewTokens, else the caller's maxLength, else the checkpoint's
  // max_new_tokens, else its max_length, else HF's default max_length of 20; the others are
  // ignored, as in HF. The last token is sampled but never fed, so a sequence holds at most
  // n_positions + 1 tokens, prompt included.
  let maxNewTokens: number | undefined;
  let maxLength: number | undefined;
  let maxLengthFrom: ResolvedOptions['maxLengthFrom'] = 'option';
  if (o.maxNewTokens !== undefined) maxNewTokens = int('option maxNewTokens', o.maxNewTokens, 1, P);
  else if (o.maxLength !== undefined) maxLength = int('option maxLength', o.maxLength, 1, P + 1);
  else if (defaults.maxNewTokens !== undefined) maxNewTokens = int(src('maxNewTokens'), defaults.maxNewTokens, 1, P);
  else {
    maxLengthFrom = defaults.maxLength === undefined ? 'default' : 'checkpoint';
    maxLength = Math.min(int(src('maxLength'), defaults.maxLength ?? 20, 1, Number.MAX_SAFE_INTEGER), P + 1);
  }
  // Beams: each step keeps the 2 * numBeams best (beam, token) pairs, so the vocabulary bounds them.
  const numBeams = int(src('numBeams'), pick('numBeams') ?? 1, 1, Math.min(256, Math.floor(config.vocabSize / 2)));
  // A caller's numBeams wins over a checkpoint's do_sample (gpt2's comes from its sampling
  // pipeline's task_specific_params); doSample: true next to numBeams > 1 is refused below.
  const doSample = o.numBeams !== undefined && numBeams > 1 && o.doSample === undefined ? false : pick('doSample') ?? false;
  if (typeof doSample !== 'boolean') throw new OptionError(`[generate] option doSample must be a boolean`);
  const n = o.numReturnSequences === undefined ? 1 : int('option numReturnSequences', o.numReturnSequences, 1, 1024);
  if (numBeams > 1 && doSample)
    throw new OptionError(`[generate] option numBeams=${numBeams} with doSample: true (beam sampling) is not supported; pass doSample: false`);
  if (numBeams > 1 && n > numBeams)
    throw new OptionError(`[generate] option numReturnSequences=${n} must be <= numBeams=${numBeams} (the finished beams are the candidates)`);
  if (n > 1 && !doSample && numBeams === 1)
    throw new OptionError(
      `[generate] option numReturnSequences=${n} needs doSample: true or numBeams >= ${n} (greedy decoding would return ${n} identical sequences)`,
    );
  const earlyStopping = pick('earlyStopping') ?? false;
  if (earlyStopping !== true && earlyStopping !== false && earlyStopping !== 'never')
    throw new OptionError(`[generate] option earlyStopping must be true, false or 'never', got ${String(earlyStopping)}`);
  let stop: string[] = [];
  if (o.stop !== undefined) {
    stop = typeof o.stop === 'string' ? [o.stop] : (o.stop as string[]);
    if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string' || s.length === 0))
      throw new OptionError('[generate] option stop must be a non-empty string or an array of them');
  }
  const signal = checkSignal(o.signal, 'generate');
  const eosTokenIds = o.eosTokenId !== undefined ? eosIds(o.eosTokenId, config.vocabSize, 'option eosTokenId')
    : defaults.eosTokenId !== undefined ? eosIds(defaults.eosTokenId, config.vocabSize, "the checkpoint's eos_token_id")
    : [config.eosTokenId];
  const seed = o.seed === undefined ? Math.floor(Math.random() * 2 ** 32) : int('option seed', o.seed, 0, Number.MAX_SAFE_INTEGER);
  // Sampling only: greedy ignores the temperature, as HF does (which only warns), so 0 is fine there.
  const temperature = num(src('temperature'), pick('temperature') ?? 1, (x) => (doSample ? x > 0 : x >= 0),
    doSample ? 'a number > 0' : 'a number >= 0');
  return {
    maxLength,
    maxLengthFrom,
    maxNewTokens,
    minNewTokens: int(src('minNewTokens'), pick('minNewTokens') ?? 0, 0, P),
    minLength: int(src('minLength'), pick('minLength') ?? 0, 0, P),
    noRepeatNgramSize: int(src('noRepeatNgramSize'), pick('noRepeatNgramSize') ?? 0, 0, P),
    badWordsIds: badWords(pick('badWordsIds'), config.vocabSize),
    numReturnSequences: n,
    numBeams,
    lengthPenalty: num(src('lengthPenalty'), pick('lengthPenalty') ?? 1, () => true, 'a finite number'),
    earlyStopping,
    doSample,
    temperature,
    topK: int(src('topK'), pick('topK') ?? 50, 0, Number.MAX_SAFE_INTEGER),
    topP: num(src('topP'), pick('topP') ?? 1, (x) => x > 0 && x <= 1, 'a number in (0, 1]'),
    minP: num(src('minP'), pick('minP') ?? 0, (x) => x >= 0 && x <= 1, 'a number in [0, 1]'),
    typicalP: num(src('typicalP'), pick('typicalP') ?? 1, (x) => x > 0 && x <= 1, 'a number in (0, 1]'),
    repetitionPenalty: num(src('repetitionPenalty'), pick('repetitionPenalty') ?? 1, (x) => x > 0, 'a number > 0'),
    seed,
    eosTokenIds,
    stop,
    signal,
  };
}

/**
 * New tokens for a prompt of promptLength (>= 1), checked against the context size: prompt and
 * new tokens together hold at most n_positions + 1 (the last token is never fed). A prompt that
 * leaves maxLength no room is an error, as in HF (which raises a ValueError).
 */
export function newTokenBudget(opts: ResolvedOptions, promptLength: number, config: ModelConfig): number {
  const P = config.nPositions;
  if (promptLength > P)
    throw new OptionError(`[generate] prompt of ${promptLength} tokens exceeds the model's n_positions=${P}`);
  if (opts.maxNewTokens !== undefined) {
    if (promptLength + opts.maxNewTokens > P + 1)
      throw new OptionError(
        `[generate] prompt (${promptLength} tokens) + maxNewTokens (${opts.maxNewTokens}) exceeds the model's ` +
          `n_positions=${P} (+ 1: the last token is not fed)`,
      );
    return opts.maxNewTokens;
  }
  const maxLength = opts.maxLength ?? 20;
  if (promptLength >= maxLength) {
    const from = opts.maxLengthFrom === 'option' ? '' : opts.maxLengthFrom === 'checkpoint'
      ? ", the checkpoint's max_length" : ", HF's default";
    throw new OptionError(
      `[generate] the prompt is ${promptLength} tokens, but maxLength (prompt included${from}) is ${maxLength}: ` +
        `raise maxLength or, better, set maxNewTokens`,
    );
  }
  return maxLength - promptLength;
}

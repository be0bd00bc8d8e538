// GPT-2 byte-level BPE tokenizer: loads a Hugging Face model directory and wraps
// @huggingface/tokenizers, plus a streaming decoder that never splits a UTF-8 character.
import { ModelFormatError, OptionError } from './errors';
import { promises as fs } from 'fs';
import * as path from 'path';
import { Tokenizer } from '@huggingface/tokenizers';

/** Tokenizer file problems are model-format errors (E_MODEL_FORMAT), named after the file. */
function formatError(message: string): ModelFormatError {
  return new ModelFormatError(`[tokenizer] ${message}`);
}

export const END_OF_TEXT = '<|endoftext|>';

export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** The parts of a tokenizer.json this class relies on; everything else passes through untouched. */
export interface TokenizerJson {
  version: string;
  truncation: unknown;
  padding: unknown;
  added_tokens: AddedTokenJson[];
  normalizer: unknown;
  pre_tokenizer: unknown;
  post_processor: unknown;
  decoder: { type: string; [key: string]: unknown } | null;
  model: {
    type?: string;
    vocab: Record<string, number>;
    merges: string[] | [string, string][];
    [key: string]: unknown;
  };
}

type TokenSpec = string | { content: string };

export interface TokenizerConfigJson {
  add_prefix_space?: boolean;
  bos_token?: TokenSpec | null;
  eos_token?: TokenSpec | null;
  added_tokens_decoder?: Record<string, Omit<AddedTokenJson, 'id'>>;
  [key: string]: unknown;
}

/** GPT-2's bytes_to_unicode(): printable stand-in characters for all 256 byte values. */
export function bytesToUnicode(): string[] {
  const table: string[] = new Array<string>(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : next++);
  }
  return table;
}

const BYTE_TOKENS: readonly string[] = bytesToUnicode();
const UNICODE_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TOKENS.map((ch, b) => [ch, b]));

/**
 * The tokenizer.json GPT2TokenizerFast would produce from vocab.json + merges.txt.
 * Special tokens default to `<|endoftext|>` with the id the vocabulary gives it.
 */
export function buildGpt2TokenizerJson(
  vocab: Record<string, number>,
  merges: string[],
  options: { addPrefixSpace?: boolean; addedTokens?: AddedTokenJson[] } = {},
): TokenizerJson {
  const eosId = vocab[END_OF_TEXT];
  const defaultAdded: AddedTokenJson[] =
    eosId === undefined
      ? []
      : [{ id: eosId, content: END_OF_TEXT, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }];
  const byteLevel = { type: 'ByteLevel', add_prefix_space: options.addPrefixSpace ?? false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: options.addedTokens ?? defaultAdded,
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

/** merges.txt: optional "#version" header, then one "left right" pair per line. */
export function parseMerges(text: string, file: string): string[] {
  const merges: string[] = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((line, i) => {
    if (line === '' || (i === 0 && line.startsWith('#version'))) return;
    const parts = line.split(' ');
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
      throw formatError(`${file}: line ${i + 1} is not a "left right" merge pair: ${JSON.stringify(line)}`);
    }
    merges.push(line);
  });
  if (merges.length === 0) throw formatError(`${file}: contains no merges`);
  return merges;
}

async function readOptionalText(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw formatError(`${file}: cannot read (${(err as Error).message})`);
  }
}

async function readOptionalJson(file: string): Promise<unknown> {
  const text = await readOptionalText(file);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw formatError(`${file}: invalid JSON (${(err as Error).message})`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// Token ids are array indices here (and int32 in the engine); no real vocabulary comes near this.
const MAX_TOKEN_ID = 2 ** 24;
const validId = (id: unknown): id is number => typeof id === 'number' && Number.isInteger(id) && id >= 0 && id < MAX_TOKEN_ID;

function checkVocab(value: unknown, file: string): Record<string, number> {
  if (!isObject(value)) throw formatError(`${file}: vocabulary must be a JSON object of token -> id`);
  const seen = new Set<number>();
  for (const [token, id] of Object.entries(value)) {
    if (!validId(id)) {
      throw formatError(`${file}: token ${JSON.stringify(token)} has invalid id ${JSON.stringify(id)} ` +
        `(expected an integer in [0, ${MAX_TOKEN_ID}))`);
    }
    if (seen.has(id)) throw formatError(`${file}: id ${id} is used by more than one token`);
    seen.add(id);
  }
  return value as Record<string, number>;
}

function checkTokenizerJson(value: unknown, file: string): TokenizerJson {
  if (!isObject(value) || !isObject(value.model)) throw formatError(`${file}: missing "model" object`);
  const model = value.model;
  if (model.type !== undefined && model.type !== 'BPE') throw formatError(`${file}: model type ${String(model.type)} is not BPE`);
  checkVocab(model.vocab, `${file} (model.vocab)`);
  if (!Array.isArray(model.merges)) throw formatError(`${file}: model.merges must be an array`);
  // "left right" strings, or [left, right] pairs (the newer tokenizers format)
  const badMerge = model.merges.findIndex((m: unknown) => !(typeof m === 'string' && m.split(' ').length === 2) &&
    !(Array.isArray(m) && m.length === 2 && m.every((x) => typeof x === 'string')));
  if (badMerge >= 0)
    throw formatError(`${file}: model.merges[${badMerge}] is ${JSON.stringify(model.merges[badMerge])}, not a "left right" merge or a [left, right] pair`);
  if (!isObject(value.decoder) || value.decoder.type !== 'ByteLevel') {
    throw formatError(`${file}: decoder must be ByteLevel (GPT-2 byte-level BPE)`);
  }
  if (value.added_tokens !== undefined && !Array.isArray(value.added_tokens)) {
    throw formatError(`${file}: added_tokens must be an array`);
  }
  ((value.added_tokens as unknown[] | undefined) ?? []).forEach((t, i) => checkAddedToken(t, `${file}: added_tokens[${i}]`));
  // Optional in the format, but the wrapped library insists on every stage key.
  const stages = { normalizer: null, pre_tokenizer: null, post_processor: null };
  return { ...stages, ...value, added_tokens: (value.added_tokens as AddedTokenJson[] | undefined) ?? [] } as TokenizerJson;
}

function checkAddedToken(t: unknown, what: string): void {
  if (!isObject(t) || !validId(t.id) || typeof t.content !== 'string' || t.content === '')
    throw formatError(`${what} is ${JSON.stringify(t)}: expected {"id": an integer in [0, ${MAX_TOKEN_ID}), "content": a non-empty string, ...}`);
}

function tokenContent(spec: TokenSpec | undefined): string | undefined {
  if (spec === undefined) return undefined;
  return typeof spec === 'string' ? spec : spec.content;
}

export interface DecodeOptions {
  /** Drop special tokens (`<|endoftext|>`) from the text. Default false. */
  skipSpecialTokens?: boolean;
}

export interface StreamDecoder {
  /** Text completed by this token; bytes of an unfinished UTF-8 character are held back. */
  push(id: number): string;
  /** Whatever is still held back (an incomplete character becomes U+FFFD), and reset. */
  flush(): string;
}

export class Gpt2Tokenizer {
  readonly vocabSize: number;
  readonly eosTokenId: number | null;
  readonly bosTokenId: number | null;
  private readonly hf: Tokenizer;
  private readonly idToTokenTable: (string | undefined)[];
  /** Added tokens are emitted verbatim by the decoder, never byte-decoded. */
  private readonly addedById: Map<number, AddedTokenJson>;
  private readonly bytesCache: (Uint8Array | undefined)[];

  private constructor(json: TokenizerJson, config: TokenizerConfigJson, source: string) {
    try {
      this.hf = new Tokenizer(json, config);
    } catch (err) {
      throw formatError(`${source}: unsupported tokenizer (${(err as Error).message})`);
    }
    this.idToTokenTable = [];
    for (const [token, id] of Object.entries(json.model.vocab)) this.idToTokenTable[id] = token;
    this.addedById = new Map();
    for (const added of json.added_tokens) {
      this.idToTokenTable[added.id] = added.content;
      this.addedById.set(added.id, added);
    }
    this.vocabSize = this.idToTokenTable.length;
    // Byte-level BPE spells any text with its 256 byte tokens; without one, some text has no tokens.
    const missing = BYTE_TOKENS.findIndex((ch) => json.model.vocab[ch] === undefined);
    if (missing >= 0)
      throw formatError(`${source}: the vocabulary lacks the byte-level token ${JSON.stringify(BYTE_TOKENS[missing])} ` +
        `(byte 0x${missing.toString(16).padStart(2, '0')}); a GPT-2 vocabulary holds all 256`);
    this.bytesCache = new Array<Uint8Array | undefined>(this.vocabSize);
    // Unset means GPT-2's default (<|endoftext|>); an explicit null means there is none.
    const idOf = (spec: TokenSpec | null | undefined): number | null =>
      spec === null ? null : (this.tokenToId(tokenContent(spec) ?? END_OF_TEXT) ?? null);
    this.eosTokenId = idOf(config.eos_token);
    this.bosTokenId = idOf(config.bos_token);
  }

  /**
   * Loads tokenizer.json (+ tokenizer_config.json) from a model directory, or, when there is
   * no tokenizer.json, builds the same tokenizer from vocab.json + merges.txt.
   */
  static async fromDirectory(dir: string): Promise<Gpt2Tokenizer> {
    const configFile = path.join(dir, 'tokenizer_config.json');
    const rawConfig = await readOptionalJson(configFile);
    if (rawConfig !== undefined && !isObject(rawConfig)) throw formatError(`${configFile}: must be a JSON object`);
    const config = (rawConfig ?? {}) as TokenizerConfigJson;

    const tokenizerFile = path.join(dir, 'tokenizer.json');
    const tokenizerJson = await readOptionalJson(tokenizerFile);
    if (tokenizerJson !== undefined) {
      return new Gpt2Tokenizer(checkTokenizerJson(tokenizerJson, tokenizerFile), config, tokenizerFile);
    }

    const vocabFile = path.join(dir, 'vocab.json');
    const vocabJson = await readOptionalJson(vocabFile);
    if (vocabJson === undefined) throw formatError(`${dir}: found neither tokenizer.json nor vocab.json`);
    const vocab = checkVocab(vocabJson, vocabFile);
    const mergesFile = path.join(dir, 'merges.txt');
    const mergesText = await readOptionalText(mergesFile);
    if (mergesText === undefined) throw formatError(`${mergesFile}: missing (vocab.json needs merges.txt)`);
    const merges = parseMerges(mergesText, mergesFile);
    const decoderTokens = config.added_tokens_decoder;
    if (decoderTokens !== undefined && !isObject(decoderTokens))
      throw formatError(`${configFile}: added_tokens_decoder must be an object of id -> token`);
    const addedTokens = decoderTokens
      ? Object.entries(decoderTokens).map(([id, token]) => {
        // the key is the id (a decimal string)
        const added = { ...(isObject(token) ? token : { content: token }), id: /^\d+$/.test(id) ? Number(id) : NaN };
        checkAddedToken(added, `${configFile}: added_tokens_decoder[${JSON.stringify(id)}]`);
        return added as AddedTokenJson;
      })
      : undefined;
    const json = buildGpt2TokenizerJson(vocab, merges, { addPrefixSpace: config.add_prefix_space, addedTokens });
    return new Gpt2Tokenizer(json, config, vocabFile);
  }

  /**
   * Token ids for `text`; no BOS/EOS is added (GPT-2 adds none). Like Hugging Face, a literal
   * "<|endoftext|>" in the text is the special token and encodes to its id (50256).
   */
  encode(text: string): number[] {
    if (typeof text !== 'string') throw new OptionError(`[tokenizer] encode expects a string, got ${typeof text}`);
    return this.hf.encode(text, { add_special_tokens: false }).ids;
  }

  /**
   * Text for `ids`. Tokenization spaces are never "cleaned up" (whatever the config says),
   * so decode(encode(x)) === x and decode agrees with the stream decoder.
   */
  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    // Ids the vocabulary lacks (a model's padded rows past the tokenizer) decode to nothing, as
    // in Hugging Face tokenizers; non-integers are a caller bug.
    const list = Array.from(ids, (id) => this.checkId(id)).filter((id) => this.idToTokenTable[id] !== undefined);
    if (list.length === 0) return '';
    return this.hf.decode(list, {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: false,
    });
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return Number.isInteger(id) ? this.idToTokenTable[id] : undefined;
  }

  /** Incremental decoder: concatenated push() results + flush() equal decode() of all ids. */
  createStreamDecoder(opts: DecodeOptions = {}): StreamDecoder {
    const skipSpecial = opts.skipSpecialTokens ?? false;
    // fatal:false and ignoreBOM:true exactly as the wrapped decoder, so both give the same text.
    const utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
    return {
      push: (id: number): string => {
        this.checkId(id);
        if (this.idToTokenTable[id] === undefined) return '';
        const added = this.addedById.get(id);
        if (added === undefined) return utf8.decode(this.tokenBytes(id), { stream: true });
        if (added.special && skipSpecial) return '';
        // decode() byte-decodes the run before an added token on its own, so finish it here too.
        return utf8.decode() + added.content;
      },
      flush: (): string => utf8.decode(),
    };
  }

  private checkId(id: number): number {
    if (!Number.isInteger(id) || id < 0) {
      throw new OptionError(`[tokenizer] token id ${String(id)} is not a non-negative integer`);
    }
    return id;
  }

  /** Raw bytes of a byte-level token string; a token with unmapped characters is its UTF-8. */
  private tokenBytes(id: number): Uint8Array {
    const cached = this.bytesCache[id];
    if (cached) return cached;
    const token = this.idToTokenTable[id] ?? '';
    const chars = Array.from(token);
    const mapped = chars.map((ch) => UNICODE_TO_BYTE.get(ch));
    const bytes = mapped.every((b): b is number => b !== undefined)
      ? Uint8Array.from(mapped)
      : new TextEncoder().encode(token);
    this.bytesCache[id] = bytes;
    return bytes;
  }
}

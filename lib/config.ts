// Reads a Hugging Face GPT-2 checkpoint directory (or a repo id in the local hub cache):
// config.json, generation defaults, and the safetensors file list (single file or sharded
// index). Everything checked, errors name the file.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { LlmcoreError, ModelFormatError } from './errors';
import { currentRepoId, findInHubCache, looksLikeRepoId } from './hub-cache';

export interface ModelConfig {
  modelType: 'gpt2';
  vocabSize: number;
  nPositions: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  layerNormEpsilon: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number;
  eosTokenId: number;
}

/** Defaults for generate(): generation_config.json, then the text-generation task params. */
export interface GenerationDefaults {
  doSample?: boolean;
  maxLength?: number;
  maxNewTokens?: number;
  minNewTokens?: number;
  minLength?: number;
  noRepeatNgramSize?: number;
  badWordsIds?: unknown;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  typicalP?: number;
  repetitionPenalty?: number;
  numBeams?: number;
  lengthPenalty?: number;
  earlyStopping?: unknown;
  /** generation_config.json's eos_token_id: a token id or a list of them (checked by resolveOptions). */
  eosTokenId?: unknown;
}

export interface Checkpoint {
  dir: string;
  config: ModelConfig;
  generationDefaults: GenerationDefaults;
  weightFiles: string[];
}

type Json = Record<string, unknown>;

async function readJson(file: string, what: string): Promise<Json | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new LlmcoreError('E_IO', `[${what}] ${file}: cannot read: ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ModelFormatError(`[${what}] ${file}: invalid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new ModelFormatError(`[${what}] ${file}: expected a JSON object`);
  return value as Json;
}

// Sizes beyond int32 are no model anyone can run, and the engine counts in int64 products of them.
const MAX_SIZE = 2 ** 31 - 1;

function positiveInt(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > MAX_SIZE)
    throw new ModelFormatError(`[config] ${file}: "${key}" must be a positive integer up to ${MAX_SIZE}, got ${JSON.stringify(cfg[key])}`);
  return v;
}

function expectValue(cfg: Json, key: string, file: string, allowed: unknown, fallback: unknown): void {
  const v = key in cfg ? cfg[key] : fallback;
  if (v !== allowed)
    throw new ModelFormatError(
      `[config] ${file}: "${key}" is ${JSON.stringify(v)}; llmcore supports only ${JSON.stringify(allowed)}`,
    );
}

export function parseConfig(cfg: Json, file: string): ModelConfig {
  const type = cfg.model_type;
  if (type !== 'gpt2')
    throw new ModelFormatError(
      `[config] ${file}: model_type ${JSON.stringify(type)} is not supported; llmcore runs "gpt2" (GPT2LMHeadModel)`,
    );
  const archs = cfg.architectures;
  if (Array.isArray(archs) && archs.length > 0 && !archs.includes('GPT2LMHeadModel'))
    throw new ModelFormatError(`[config] ${file}: architectures ${JSON.stringify(archs)} has no GPT2LMHeadModel`);
  expectValue(cfg, 'activation_function', file, 'gelu_new', 'gelu_new');
  expectValue(cfg, 'scale_attn_weights', file, true, true);
  expectValue(cfg, 'scale_attn_by_inverse_layer_idx', file, false, false);
  expectValue(cfg, 'reorder_and_upcast_attn', file, false, false);
  expectValue(cfg, 'add_cross_attention', file, false, false);
  const nEmbd = positiveInt(cfg, 'n_embd', file);
  const nHead = positiveInt(cfg, 'n_head', file);
  if (nEmbd % nHead !== 0)
    throw new ModelFormatError(`[config] ${file}: n_embd=${nEmbd} is not divisible by n_head=${nHead}`);
  const eps = cfg.layer_norm_epsilon ?? 1e-5;
  // The engine keeps it as float32: 1e-300 would be 0 there, 1e300 inf.
  if (typeof eps !== 'number' || !(Math.fround(eps) > 0) || !Number.isFinite(Math.fround(eps)))
    throw new ModelFormatError(`[config] ${file}: "layer_norm_epsilon" must be a positive number within float32's range, got ${JSON.stringify(eps)}`);
  const tie = cfg.tie_word_embeddings ?? true;
  if (typeof tie !== 'boolean') throw new ModelFormatError(`[config] ${file}: "tie_word_embeddings" must be a boolean`);
  const vocabSize = positiveInt(cfg, 'vocab_size', file);
  const tokenId = (key: string) => {
    const v = cfg[key] ?? 50256;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= vocabSize)
      throw new ModelFormatError(`[config] ${file}: "${key}" must be a token id below vocab_size=${vocabSize}`);
    return v;
  };
  return {
    modelType: 'gpt2',
    vocabSize,
    nPositions: positiveInt(cfg, 'n_positions', file, cfg.n_ctx as number | undefined),
    nEmbd,
    nLayer: positiveInt(cfg, 'n_layer', file),
    nHead,
    layerNormEpsilon: eps,
    tieWordEmbeddings: tie,
    bosTokenId: tokenId('bos_token_id'),
    eosTokenId: tokenId('eos_token_id'),
  };
}

function pickDefaults(src: Json | undefined): GenerationDefaults {
  if (!src) return {};
  const out: GenerationDefaults = {};
  const num = (k: string) => (typeof src[k] === 'number' ? (src[k] as number) : undefined);
  if (typeof src.do_sample === 'boolean') out.doSample = src.do_sample;
  if (num('max_length') !== undefined) out.maxLength = num('max_length');
  if (num('max_new_tokens') !== undefined) out.maxNewTokens = num('max_new_tokens');
  if (num('min_new_tokens') !== undefined) out.minNewTokens = num('min_new_tokens');
  if (num('min_length') !== undefined) out.minLength = num('min_length');
  if (num('no_repeat_ngram_size') !== undefined) out.noRepeatNgramSize = num('no_repeat_ngram_size');
  if (src.bad_words_ids !== undefined && src.bad_words_ids !== null) out.badWordsIds = src.bad_words_ids; // checked by resolveOptions
  if (num('temperature') !== undefined) out.temperature = num('temperature');
  if (num('top_k') !== undefined) out.topK = num('top_k');
  if (num('top_p') !== undefined) out.topP = num('top_p');
  if (num('min_p') !== undefined) out.minP = num('min_p');
  if (num('typical_p') !== undefined) out.typicalP = num('typical_p');
  if (num('repetition_penalty') !== undefined) out.repetitionPenalty = num('repetition_penalty');
  if (num('num_beams') !== undefined) out.numBeams = num('num_beams');
  if (num('length_penalty') !== undefined) out.lengthPenalty = num('length_penalty');
  if (src.early_stopping !== undefined && src.early_stopping !== null) out.earlyStopping = src.early_stopping; // checked by resolveOptions
  if (src.eos_token_id !== undefined && src.eos_token_id !== null) out.eosTokenId = src.eos_token_id; // checked by resolveOptions
  return out;
}

async function findWeightFiles(dir: string): Promise<string[]> {
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  const exists = (f: string) => fs.stat(f).then((s) => s.isFile(), () => false);
  if (await exists(single)) return [single];
  const idx = await readJson(index, 'model');
  if (idx) {
    const map = idx.weight_map;
    if (typeof map !== 'object' || map === null)
      throw new ModelFormatError(`[model] ${index}: missing "weight_map" object`);
    const files = [...new Set(Object.values(map as Json))];
    if (files.length === 0) throw new ModelFormatError(`[model] ${index}: "weight_map" is empty (no tensor names a file)`);
    for (const f of files)
      if (typeof f !== 'string' || f === '' || f === '.' || f === '..' || /[/\\\0]/.test(f))
        throw new ModelFormatError(`[model] ${index}: weight_map value ${JSON.stringify(f)} is not a file name in the checkpoint folder`);
    return (files as string[]).sort().map((f) => path.join(dir, f));
  }
  const hint = (await exists(path.join(dir, 'pytorch_model.bin')))
    ? ' (found pytorch_model.bin: llmcore reads safetensors only; convert it, e.g. with transformers save_pretrained(safe_serialization=True))'
    : '';
  throw new ModelFormatError(`[model] ${dir}: no model.safetensors or model.safetensors.index.json${hint}`);
}

/**
 * A checkpoint folder, or a repo id ('gpt2', 'openai-community/gpt2') found in the local Hugging
 * Face hub cache when no such folder exists (lib/hub-cache.ts; nothing is downloaded).
 */
async function resolveDir(dir: string): Promise<string> {
  const abs = path.resolve(dir);
  const stat = await fs.stat(abs).catch(() => undefined);
  if (stat?.isDirectory()) return abs;
  if (!stat && looksLikeRepoId(dir)) {
    const found = await findInHubCache(dir);
    if (found.dir) return found.dir;
    throw new ModelFormatError(
      `[model] ${dir}: no such folder, and not in the Hugging Face cache (looked for ${found.searched.join(', ')}); ` +
        `download it (e.g. huggingface-cli download ${currentRepoId(dir)}) or pass a checkpoint folder`,
    );
  }
  throw new ModelFormatError(`[model] ${abs}: not a directory (expected a Hugging Face checkpoint folder)`);
}

export async function readCheckpoint(dir: string): Promise<Checkpoint> {
  const abs = await resolveDir(dir);
  const configFile = path.join(abs, 'config.json');
  const cfg = await readJson(configFile, 'config');
  if (!cfg) throw new ModelFormatError(`[config] ${configFile}: missing (expected a Hugging Face config.json)`);
  const config = parseConfig(cfg, configFile);
  const genFile = path.join(abs, 'generation_config.json');
  const gen = await readJson(genFile, 'generation_config');
  const task = (cfg.task_specific_params as Json | undefined)?.['text-generation'] as Json | undefined;
  const generationDefaults = { ...pickDefaults(task), ...pickDefaults(gen) };
  return { dir: abs, config, generationDefaults, weightFiles: await findWeightFiles(abs) };
}

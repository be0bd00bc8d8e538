// The `llmcore` command: generate text, write random checkpoints, show backend info.
import { parseArgs } from 'node:util';
import { createRandomCheckpoint, type CheckpointDtype, type CheckpointPreset } from './checkpoint';
import { backendInfo } from './diagnostics';
import { LlmcoreError } from './errors';
import type { GenerationResult } from './generation';
import { loadModel, type Device, type KvCacheDtype, type WeightDtype } from './model';
import type { GenerateOptions } from './options';

const USAGE = `usage:
  llmcore generate PROMPT --model DIR [options]
      --max-length N  --max-new-tokens N  --min-new-tokens N  --min-length N  --num-return-sequences N
      --no-repeat-ngram-size N  --bad-words-ids JSON (e.g. '[[318],[1049,1110]]')  --eos-token-id N
      --num-beams N  --length-penalty L  --early-stopping true|false|never
      --do-sample | --greedy  --temperature T  --top-k K  --top-p P  --min-p P  --typical-p P
      --repetition-penalty R  --seed N  --stop STRING (repeatable)
      --device auto|cpu|cuda  --threads N  --dtype auto|f32|f16|bf16  --kv-cache-dtype auto|f32|f16
      --stream (print tokens as they come; one sequence, no beams)  --json (the whole result)
  llmcore create-random --out DIR [--preset tiny|small|124M] [--dtype f32|f16|bf16] [--seed N]
      [--layout bare|prefixed]
  llmcore info`;

function number(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new LlmcoreError('E_OPTION', `--${name} expects a number, got '${v}'`);
  return n;
}

function jsonValue(name: string, v: string | undefined): unknown {
  if (v === undefined) return undefined;
  try {
    return JSON.parse(v);
  } catch {
    throw new LlmcoreError('E_OPTION', `--${name} expects JSON, got '${v}'`);
  }
}

function earlyStopping(v: string | undefined): boolean | 'never' | undefined {
  if (v === undefined) return undefined;
  if (v === 'true' || v === 'false') return v === 'true';
  if (v === 'never') return v;
  throw new LlmcoreError('E_OPTION', `--early-stopping expects true, false or never, got '${v}'`);
}

async function generate(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      model: { type: 'string' },
      'max-length': { type: 'string' },
      'max-new-tokens': { type: 'string' },
      'min-new-tokens': { type: 'string' },
      'min-length': { type: 'string' },
      'no-repeat-ngram-size': { type: 'string' },
      'bad-words-ids': { type: 'string' },
      'eos-token-id': { type: 'string' },
      'num-return-sequences': { type: 'string' },
      'num-beams': { type: 'string' },
      'length-penalty': { type: 'string' },
      'early-stopping': { type: 'string' },
      'do-sample': { type: 'boolean' },
      greedy: { type: 'boolean' },
      temperature: { type: 'string' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string' },
      'min-p': { type: 'string' },
      'typical-p': { type: 'string' },
      'repetition-penalty': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      device: { type: 'string' },
      threads: { type: 'string' },
      dtype: { type: 'string' },
      'kv-cache-dtype': { type: 'string' },
      stream: { type: 'boolean' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 1 || !values.model) {
    console.error(USAGE);
    return 2;
  }
  if (values['do-sample'] && values.greedy) throw new LlmcoreError('E_OPTION', '--do-sample and --greedy contradict each other: pass one');
  if (values.stream && values.json) throw new LlmcoreError('E_OPTION', '--stream prints text as it comes, --json the whole result: pass one');
  if (values.stream && (number('num-return-sequences', values['num-return-sequences']) ?? 1) > 1)
    throw new LlmcoreError('E_OPTION', '--stream prints one sequence: drop --num-return-sequences or --stream');
  const prompt = positionals[0];
  const model = await loadModel(values.model, {
    device: values.device as Device | undefined,
    threads: number('threads', values.threads),
    dtype: values.dtype as WeightDtype | undefined,
    kvCacheDtype: values['kv-cache-dtype'] as KvCacheDtype | undefined,
  });
  try {
    const opts: GenerateOptions = {
      maxLength: number('max-length', values['max-length']),
      maxNewTokens: number('max-new-tokens', values['max-new-tokens']),
      minNewTokens: number('min-new-tokens', values['min-new-tokens']),
      minLength: number('min-length', values['min-length']),
      noRepeatNgramSize: number('no-repeat-ngram-size', values['no-repeat-ngram-size']),
      badWordsIds: jsonValue('bad-words-ids', values['bad-words-ids']) as number[][] | undefined,
      eosTokenId: number('eos-token-id', values['eos-token-id']),
      numReturnSequences: number('num-return-sequences', values['num-return-sequences']),
      numBeams: number('num-beams', values['num-beams']),
      lengthPenalty: number('length-penalty', values['length-penalty']),
      earlyStopping: earlyStopping(values['early-stopping']),
      doSample: values['do-sample'] ? true : values.greedy ? false : undefined,
      temperature: number('temperature', values.temperature),
      topK: number('top-k', values['top-k']),
      topP: number('top-p', values['top-p']),
      minP: number('min-p', values['min-p']),
      typicalP: number('typical-p', values['typical-p']),
      repetitionPenalty: number('repetition-penalty', values['repetition-penalty']),
      seed: number('seed', values.seed),
      stop: values.stop,
    };
    const start = performance.now();
    if (values.stream) {
      let tokens = 0;
      let first = true;
      for await (const chunk of model.stream(prompt, opts)) {
        if (first) process.stdout.write(prompt);  // after the options passed their checks
        first = false;
        process.stdout.write(chunk.text);
        tokens += chunk.tokens.length;
      }
      const s = (performance.now() - start) / 1000;
      process.stdout.write('\n');
      console.error(`${tokens} tokens in ${s.toFixed(2)} s (${(tokens / s).toFixed(1)} tok/s) · ${model.info.backend}`);
      return 0;
    }
    const result = await model.generate(prompt, opts);
    if (values.json) {
      console.log(JSON.stringify(result, null, 2));
      return 0;
    }
    result.sequences.forEach((seq, i) => {
      const score = seq.score === undefined ? '' : ` (score ${seq.score.toFixed(4)})`;
      console.log(`${i}${score}: ${result.prompt}${seq.text}`);
      console.log('');
    });
    console.log(speedLine(result, model.info.backend, model.info.weightDtype));
    return 0;
  } finally {
    model.dispose();
  }
}

function speedLine(r: GenerationResult, backend: string, dtype: string): string {
  const s = r.stats;
  const rate = (n: number, ms: number) => (ms > 0 ? (n / (ms / 1000)).toFixed(1) : '-');
  return (
    `speed: prompt ${s.promptTokens} tok in ${s.prefillMs.toFixed(1)} ms (${rate(s.promptTokens, s.prefillMs)} tok/s) · ` +
    `generated ${s.generatedTokens} tok in ${s.decodeMs.toFixed(1)} ms (${rate(s.generatedTokens, s.decodeMs)} tok/s, ` +
    `${r.sequences.length} sequences) · ${backend} · weights ${dtype}`
  );
}

async function createRandom(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      help: { type: 'boolean', short: 'h' },
      out: { type: 'string' },
      preset: { type: 'string', default: 'tiny' },
      dtype: { type: 'string', default: 'f32' },
      seed: { type: 'string', default: '0' },
      layout: { type: 'string', default: 'bare' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!values.out) {
    console.error(USAGE);
    return 2;
  }
  if (!['tiny', 'small', '124M'].includes(values.preset!))
    throw new LlmcoreError('E_OPTION', `--preset must be tiny, small or 124M, got '${values.preset}'`);
  if (!['f32', 'f16', 'bf16'].includes(values.dtype!))
    throw new LlmcoreError('E_OPTION', `--dtype must be f32, f16 or bf16, got '${values.dtype}'`);
  if (!['bare', 'prefixed'].includes(values.layout!))
    throw new LlmcoreError('E_OPTION', `--layout must be bare or prefixed, got '${values.layout}'`);
  const start = performance.now();
  const ck = await createRandomCheckpoint({
    out: values.out,
    preset: values.preset as CheckpointPreset,
    dtype: values.dtype as CheckpointDtype,
    seed: number('seed', values.seed),
    layout: values.layout as 'bare' | 'prefixed',
  });
  const c = ck.config;
  console.log(
    `wrote ${ck.dir} (${values.preset}: n_layer=${c.n_layer} n_embd=${c.n_embd} n_head=${c.n_head} ` +
      `n_positions=${c.n_positions} vocab=${c.vocab_size}, ${values.dtype}) in ${((performance.now() - start) / 1000).toFixed(1)} s`,
  );
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'generate':
      return generate(rest);
    case 'create-random':
      return createRandom(rest);
    case 'info':
      console.log(JSON.stringify(backendInfo(), null, 2));
      return 0;
    default:
      console.error(USAGE);
      return command === undefined || command === '--help' || command === '-h' ? 0 : 2;
  }
}

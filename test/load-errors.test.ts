// Every kind of broken checkpoint gives a typed error (a code, an llmcore class) whose message
// names the file and the tensor or key at fault, and never crashes the process. Each case edits
// a symlink copy of a good fixture (test/helpers/fixtures.ts mutableCopy), never the fixture.
import * as fs from 'fs';
import * as path from 'path';

import {
  BackendError, LlmcoreError, ModelFormatError, OptionError, loadModel, type ErrorCode, type LoadOptions,
} from '../lib';
import {
  CPU, checkpoint, encodeSafetensors, mutableCopy, readJsonFile, readRawSafetensors, removeFile, replaceFile,
  rewriteSafetensors, scratchDir, tokenSequence, type RawSafetensors,
} from './helpers/fixtures';

let good: string; // tiny, f32, bare keys
let goodPrefixed: string;
beforeAll(async () => {
  good = await checkpoint({ preset: 'tiny' });
  goodPrefixed = await checkpoint({ preset: 'tiny', layout: 'prefixed' });
});

const CLASS_FOR: Partial<Record<ErrorCode, new (...a: never[]) => LlmcoreError>> = {
  E_MODEL_FORMAT: ModelFormatError,
  E_OPTION: OptionError,
  E_BACKEND: BackendError,
  E_IO: LlmcoreError,
};

/** Errors whose code was right but whose class was not (see the last test). */
const wrongClass: string[] = [];

async function loadError(dir: string, opts: LoadOptions = CPU): Promise<Error & { code?: string }> {
  const outcome = await loadModel(dir, opts).then(
    (m) => {
      m.dispose();
      return undefined;
    },
    (e: unknown) => e,
  );
  if (outcome === undefined) throw new Error(`expected loadModel(${dir}) to fail, but it loaded`);
  return outcome as Error & { code?: string };
}

/** Checks code and message; records (instead of failing on) a wrong class. */
async function expectLoadError(
  label: string,
  dir: string,
  code: ErrorCode | ErrorCode[],
  contains: (string | RegExp)[],
  opts?: LoadOptions,
): Promise<Error> {
  const err = await loadError(dir, opts);
  const codes = Array.isArray(code) ? code : [code];
  expect(`${err.code}: ${err.message}`).toMatch(new RegExp(`^(${codes.join('|')}): `));
  for (const c of contains) {
    if (typeof c === 'string') expect(err.message).toContain(c);
    else expect(err.message).toMatch(c);
  }
  const cls = CLASS_FOR[err.code as ErrorCode] ?? LlmcoreError;
  if (!(err instanceof cls) || !(err instanceof LlmcoreError))
    wrongClass.push(`${label}: ${err.code} arrived as ${err.constructor?.name}, expected ${cls.name}`);
  return err;
}

const ST = 'model.safetensors';
const stPath = (dir: string) => path.join(dir, ST);
const cfgPath = (dir: string) => path.join(dir, 'config.json');
const withConfig = (dir: string, patch: Record<string, unknown>) =>
  replaceFile(dir, 'config.json', JSON.stringify({ ...readJsonFile(dir, 'config.json'), ...patch }));

// -------------------------------------------------------------------------------------------
describe('directory and config.json', () => {
  test('missing directory', async () => {
    const dir = path.join(scratchDir('gone'), 'does-not-exist');
    await expectLoadError('missing dir', dir, ['E_MODEL_FORMAT', 'E_IO'], [dir]);
  });

  test('a file instead of a directory', async () => {
    await expectLoadError('file as dir', cfgPath(good), ['E_MODEL_FORMAT', 'E_IO'], [cfgPath(good), 'not a directory']);
  });

  test('missing config.json', async () => {
    const dir = mutableCopy(good);
    removeFile(dir, 'config.json');
    await expectLoadError('no config', dir, 'E_MODEL_FORMAT', [cfgPath(dir), 'missing']);
  });

  test('config.json is not valid JSON', async () => {
    const dir = mutableCopy(good);
    replaceFile(dir, 'config.json', '{"model_type": "gpt2", "n_embd": 64,');
    await expectLoadError('broken config', dir, 'E_MODEL_FORMAT', [cfgPath(dir), 'invalid JSON']);
  });

  test('config.json is a JSON array', async () => {
    const dir = mutableCopy(good);
    replaceFile(dir, 'config.json', '[1, 2]');
    await expectLoadError('array config', dir, 'E_MODEL_FORMAT', [cfgPath(dir), 'object']);
  });

  test.each([
    ['model_type "llama"', { model_type: 'llama' }, ['model_type', 'llama']],
    ['activation_function "relu"', { activation_function: 'relu' }, ['activation_function', 'relu']],
    ['n_embd not divisible by n_head', { n_head: 5 }, ['n_embd=64', 'n_head=5']],
    ['n_layer missing', { n_layer: undefined }, ['"n_layer"']],
    ['n_layer negative', { n_layer: -2 }, ['"n_layer"']],
    ['vocab_size a string', { vocab_size: '50257' }, ['"vocab_size"']],
    ['layer_norm_epsilon 0', { layer_norm_epsilon: 0 }, ['layer_norm_epsilon']],
    ['eos_token_id past vocab_size', { eos_token_id: 60000 }, ['eos_token_id']],
    ['n_embd 1e300 (an integer to JS, no size to anyone)', { n_embd: 1e300 }, ['"n_embd"', 'up to']],
    ['n_positions 2^31', { n_positions: 2 ** 31 }, ['"n_positions"']],
    ['layer_norm_epsilon 1e-300 (0 in float32)', { layer_norm_epsilon: 1e-300 }, ['layer_norm_epsilon']],
    ['layer_norm_epsilon 1e300 (inf in float32)', { layer_norm_epsilon: 1e300 }, ['layer_norm_epsilon']],
    ['architectures without GPT2LMHeadModel', { architectures: ['GPT2Model2'] }, ['architectures']],
    ['scale_attn_by_inverse_layer_idx true', { scale_attn_by_inverse_layer_idx: true }, ['scale_attn_by_inverse_layer_idx']],
  ])('%s', async (label, patch, contains) => {
    const dir = mutableCopy(good);
    withConfig(dir, patch);
    await expectLoadError(label, dir, 'E_MODEL_FORMAT', [cfgPath(dir), ...contains]);
  });
});

// -------------------------------------------------------------------------------------------
describe('weight and tokenizer files', () => {
  test('missing model.safetensors', async () => {
    const dir = mutableCopy(good);
    removeFile(dir, ST);
    const err = await expectLoadError('no safetensors', dir, 'E_MODEL_FORMAT', [dir, ST]);
    expect(err.message).not.toContain('pytorch_model.bin');
  });

  test('missing model.safetensors next to a pytorch_model.bin: the conversion hint', async () => {
    const dir = mutableCopy(good);
    removeFile(dir, ST);
    replaceFile(dir, 'pytorch_model.bin', 'not really a pickle');
    await expectLoadError('pytorch only', dir, 'E_MODEL_FORMAT', [ST, 'pytorch_model.bin', 'safetensors']);
  });

  test('model.safetensors is a directory', async () => {
    const dir = mutableCopy(good);
    removeFile(dir, ST);
    fs.mkdirSync(stPath(dir));
    await expectLoadError('dir as safetensors', dir, ['E_MODEL_FORMAT', 'E_IO'], [ST]);
  });

  test('no tokenizer.json and no vocab.json', async () => {
    const dir = mutableCopy(good);
    removeFile(dir, 'tokenizer.json');
    removeFile(dir, 'vocab.json');
    await expectLoadError('no tokenizer', dir, 'E_MODEL_FORMAT', [dir, 'tokenizer.json', 'vocab.json']);
  });

  test('broken tokenizer.json', async () => {
    const dir = mutableCopy(good);
    replaceFile(dir, 'tokenizer.json', '{"model": {"type": "BPE", "vocab": {');
    await expectLoadError('broken tokenizer.json', dir, 'E_MODEL_FORMAT', [path.join(dir, 'tokenizer.json'), 'invalid JSON']);
  });

  test('tokenizer.json of another kind (WordPiece)', async () => {
    const dir = mutableCopy(good);
    replaceFile(dir, 'tokenizer.json', JSON.stringify({ model: { type: 'WordPiece', vocab: { a: 0 } }, decoder: { type: 'ByteLevel' } }));
    await expectLoadError('wordpiece', dir, 'E_MODEL_FORMAT', ['tokenizer.json', 'WordPiece']);
  });

  test('vocab.json without merges.txt (and no tokenizer.json)', async () => {
    const dir = mutableCopy(good);
    removeFile(dir, 'tokenizer.json');
    removeFile(dir, 'merges.txt');
    await expectLoadError('no merges', dir, 'E_MODEL_FORMAT', [path.join(dir, 'merges.txt')]);
  });

  test.each([
    ['a vocab id past 2^24 (not an index)', (t: Record<string, any>) => { t.model.vocab.hello = 2 ** 32; }, ['"hello"', '4294967296']],
    ['a vocab id that is a string', (t: Record<string, any>) => { t.model.vocab.hello = '7'; }, ['"hello"']],
    ['an added token that is null', (t: Record<string, any>) => { t.added_tokens = [null]; }, ['added_tokens[0]']],
    ['an added token whose id is a string', (t: Record<string, any>) => { t.added_tokens[0].id = 'abc'; }, ['added_tokens[0]']],
    ['merges that are numbers', (t: Record<string, any>) => { t.model.merges = [1, 2, 3]; }, ['model.merges[0]']],
    ['no byte-level token for byte 0x21', (t: Record<string, any>) => { delete t.model.vocab['!']; }, ['"!"', '0x21']],
  ])('tokenizer.json with %s', async (label, patch, contains) => {
    const dir = mutableCopy(good);
    const t = readJsonFile(dir, 'tokenizer.json') as Record<string, any>;
    patch(t);
    replaceFile(dir, 'tokenizer.json', JSON.stringify(t));
    await expectLoadError(label, dir, 'E_MODEL_FORMAT', [path.join(dir, 'tokenizer.json'), ...contains]);
  });

  test('tokenizer_config.json with a null added_tokens_decoder entry (vocab.json + merges.txt)', async () => {
    const dir = mutableCopy(good);
    removeFile(dir, 'tokenizer.json');
    const c = readJsonFile(dir, 'tokenizer_config.json') as Record<string, unknown>;
    replaceFile(dir, 'tokenizer_config.json', JSON.stringify({ ...c, added_tokens_decoder: { 50256: null } }));
    await expectLoadError('null added token', dir, 'E_MODEL_FORMAT', [path.join(dir, 'tokenizer_config.json'), 'added_tokens_decoder["50256"]']);
  });

  test('vocab.json + merges.txt alone (no tokenizer.json) is enough', async () => {
    const dir = mutableCopy(good);
    removeFile(dir, 'tokenizer.json');
    const m = await loadModel(dir, CPU);
    try {
      expect(m.tokenizer.encode('Hello world')).toEqual([15496, 995]);
    } finally {
      m.dispose();
    }
  });
});

// -------------------------------------------------------------------------------------------
describe('safetensors container', () => {
  const bytes = () => fs.readFileSync(stPath(good));
  const headerLength = () => Number(bytes().readBigUInt64LE(0));
  const write = (dir: string, b: Uint8Array) => replaceFile(dir, ST, b);

  test('truncated in the middle of the tensor data', async () => {
    const dir = mutableCopy(good);
    const b = bytes();
    write(dir, b.subarray(0, Math.floor((8 + headerLength() + b.length) / 2)));
    await expectLoadError('truncated data', dir, 'E_MODEL_FORMAT', [stPath(dir), /tensor "[^"]+"/, 'exceed']);
  });

  test('truncated inside the header', async () => {
    const dir = mutableCopy(good);
    write(dir, bytes().subarray(0, 8 + Math.floor(headerLength() / 2)));
    await expectLoadError('truncated header', dir, 'E_MODEL_FORMAT', [stPath(dir), 'header length']);
  });

  test('shorter than the 8-byte length prefix, and empty', async () => {
    for (const n of [5, 0]) {
      const dir = mutableCopy(good);
      write(dir, bytes().subarray(0, n));
      await expectLoadError(`${n}-byte file`, dir, 'E_MODEL_FORMAT', [stPath(dir), '8-byte']);
    }
  });

  test('header length larger than the file', async () => {
    const dir = mutableCopy(good);
    const b = Buffer.from(bytes());
    b.writeBigUInt64LE(BigInt(b.length + 100), 0);
    write(dir, b);
    await expectLoadError('lying header length', dir, 'E_MODEL_FORMAT', [stPath(dir), 'header length', 'exceeds file size']);
  });

  test('header length 0, and beyond the 100 MiB limit', async () => {
    for (const [n, what] of [[0n, 'header length is 0'], [1n << 40n, 'limit']] as const) {
      const dir = mutableCopy(good);
      const b = Buffer.from(bytes());
      b.writeBigUInt64LE(n, 0);
      write(dir, b);
      await expectLoadError(`header length ${n}`, dir, 'E_MODEL_FORMAT', [stPath(dir), what]);
    }
  });

  test('header JSON broken', async () => {
    const dir = mutableCopy(good);
    const b = Buffer.from(bytes());
    b.write('{"wte.weight": {"dtype": "F32", "shape": [', 8, 'utf8'); // overwrites the start: unbalanced
    b.write('@', 8 + 60, 'utf8');
    write(dir, b);
    await expectLoadError('broken header JSON', dir, 'E_MODEL_FORMAT', [stPath(dir), 'header']);
  });

  test('header JSON not an object', async () => {
    const dir = mutableCopy(good);
    const h = Buffer.from('[1, 2, 3]       ');
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(h.length));
    write(dir, Buffer.concat([prefix, h]));
    await expectLoadError('array header', dir, 'E_MODEL_FORMAT', [stPath(dir), 'array']);
  });

  const edit = (label: string, fn: (st: RawSafetensors) => void, contains: (string | RegExp)[], src?: () => string) =>
    test(label, async () => {
      const dir = mutableCopy(src ? src() : good);
      rewriteSafetensors(dir, fn);
      await expectLoadError(label, dir, 'E_MODEL_FORMAT', [stPath(dir), ...contains]);
    });

  edit('dtype F8_E4M3 for a real weight', (st) => {
    st.tensors.get('h.0.attn.c_attn.weight')!.dtype = 'F8_E4M3';
  }, ['h.0.attn.c_attn.weight', 'F8_E4M3']);

  edit('dtype I32 for a real weight', (st) => {
    st.tensors.get('h.0.ln_1.weight')!.dtype = 'I32';
  }, ['h.0.ln_1.weight', 'I32']);

  edit('a dtype the format does not define', (st) => {
    st.tensors.get('ln_f.bias')!.dtype = 'Q4_0';
  }, ['ln_f.bias', 'unknown dtype', 'Q4_0']);

  edit('shape and byte range disagree', (st) => {
    st.tensors.get('h.1.ln_2.bias')!.shape = [63];
  }, ['h.1.ln_2.bias', 'data_offsets span']);

  edit('a tensor with the wrong shape for the config (same byte size)', (st) => {
    st.tensors.get('h.0.attn.c_proj.weight')!.shape = [32, 128];
  }, ["'h.0.attn.c_proj.weight'", '[32, 128]', '[64, 64]']);

  edit('a missing tensor (h.1.mlp.c_fc.bias dropped)', (st) => {
    st.tensors.delete('h.1.mlp.c_fc.bias');
  }, ['missing tensor', "'h.1.mlp.c_fc.bias'"]);

  edit('a missing tensor in a prefixed checkpoint names the prefixed key', (st) => {
    st.tensors.delete('transformer.h.0.ln_2.weight');
  }, ['missing tensor', "'transformer.h.0.ln_2.weight'"], () => goodPrefixed);

  edit('no wte.weight at all', (st) => {
    st.tensors.delete('wte.weight');
  }, ["'wte.weight'", 'transformer.wte.weight']);

  edit('an unexpected extra tensor', (st) => {
    st.tensors.set('h.0.mlp.c_gate.weight', { dtype: 'F32', shape: [4], data: Buffer.alloc(16) });
  }, ['unexpected tensor', "'h.0.mlp.c_gate.weight'"]);

  edit('an lm_head.weight of the wrong shape', (st) => {
    st.tensors.set('lm_head.weight', { dtype: 'F32', shape: [10, 64], data: Buffer.alloc(10 * 64 * 4) });
  }, ["'lm_head.weight'", '[10, 64]']);

  edit('overlapping data_offsets', (st) => {
    // two [64] F32 tensors: the second claims the first's bytes
    const names = [...st.tensors.keys()];
    const a = names.indexOf('h.0.ln_1.bias');
    let offset = 0;
    const offsets = new Map<string, [number, number]>();
    for (const [n, t] of st.tensors) {
      offsets.set(n, [offset, offset + t.data.length]);
      offset += t.data.length;
    }
    expect(a).toBeGreaterThanOrEqual(0);
    st.tensors.get('h.0.ln_1.weight')!.dataOffsets = offsets.get('h.0.ln_1.bias');
  }, ['overlap', 'h.0.ln_1.bias', 'h.0.ln_1.weight']);

  edit('data_offsets with begin > end', (st) => {
    const t = st.tensors.get('h.0.ln_2.bias')!;
    t.dataOffsets = [256, 0];
  }, ['h.0.ln_2.bias', 'begin > end']);

  edit('an unexpected key in a tensor entry', (st) => {
    st.tensors.get('wpe.weight')!.extra = { quantization: 'none' };
  }, ['wpe.weight', 'unexpected key "quantization"']);

  edit('__metadata__ with a non-string value', (st) => {
    st.metadata = { format: 'pt', step: 3 as unknown as string };
  }, ['__metadata__', 'step']);

  test('config n_embd disagrees with the tensors', async () => {
    const dir = mutableCopy(good);
    withConfig(dir, { n_embd: 32, n_head: 4 });
    await expectLoadError('n_embd mismatch', dir, 'E_MODEL_FORMAT', [stPath(dir), "'wte.weight'", '[50257, 64]', 'n_embd=32']);
  });

  test('config n_layer larger than the file: the first missing layer is named', async () => {
    const dir = mutableCopy(good);
    withConfig(dir, { n_layer: 3 });
    await expectLoadError('n_layer 3', dir, 'E_MODEL_FORMAT', [stPath(dir), "'h.2.ln_1.weight'"]);
  });

  test('config n_layer smaller than the file: the extra layer is unexpected', async () => {
    const dir = mutableCopy(good);
    withConfig(dir, { n_layer: 1 });
    await expectLoadError('n_layer 1', dir, 'E_MODEL_FORMAT', [stPath(dir), 'unexpected tensor', "'h.1."]);
  });

  test('tie_word_embeddings false without lm_head.weight', async () => {
    const dir = mutableCopy(good);
    withConfig(dir, { tie_word_embeddings: false });
    await expectLoadError('untied without head', dir, 'E_MODEL_FORMAT', [stPath(dir), "'lm_head.weight'", 'tie_word_embeddings']);
  });

  test('attn.bias buffers stored as BOOL / U8 are ignored, and the model loads', async () => {
    const dir = mutableCopy(good);
    rewriteSafetensors(dir, (st) => {
      st.tensors.set('h.0.attn.bias', { dtype: 'BOOL', shape: [1, 1, 4, 4], data: Buffer.alloc(16, 1) });
      st.tensors.set('h.1.attn.masked_bias', { dtype: 'U8', shape: [1], data: Buffer.alloc(1) });
    });
    const m = await loadModel(dir, CPU);
    m.dispose();
  });
});

// -------------------------------------------------------------------------------------------
describe('sharded checkpoints (model.safetensors.index.json)', () => {
  /** Splits the good file into two shards by tensor, with an index. */
  function shard(dir: string, mutate?: (a: RawSafetensors, b: RawSafetensors, map: Record<string, string>) => void) {
    const st = readRawSafetensors(stPath(good));
    const a: RawSafetensors = { metadata: st.metadata, tensors: new Map() };
    const b: RawSafetensors = { metadata: st.metadata, tensors: new Map() };
    const map: Record<string, string> = {};
    for (const [name, t] of st.tensors) {
      const second = name.startsWith('h.1.') || name.startsWith('ln_f');
      (second ? b : a).tensors.set(name, t);
      map[name] = second ? 'model-00002-of-00002.safetensors' : 'model-00001-of-00002.safetensors';
    }
    mutate?.(a, b, map);
    removeFile(dir, ST);
    replaceFile(dir, 'model-00001-of-00002.safetensors', encodeSafetensors(a));
    replaceFile(dir, 'model-00002-of-00002.safetensors', encodeSafetensors(b));
    replaceFile(dir, 'model.safetensors.index.json', JSON.stringify({ metadata: {}, weight_map: map }));
  }

  test('two shards load and give the same logits as the single file', async () => {
    const dir = mutableCopy(good, 'sharded');
    shard(dir);
    const [m1, m2] = await Promise.all([loadModel(dir, CPU), loadModel(good, CPU)]);
    try {
      const t = tokenSequence(6);
      const [x, y] = [await m1.logits(t), await m2.logits(t)];
      expect(x.length).toBe(y.length);
      let same = true;
      for (let i = 0; i < x.length; i++) same &&= x[i] === y[i];
      expect(same).toBe(true);
    } finally {
      m1.dispose();
      m2.dispose();
    }
  });

  test('a tensor in two shards', async () => {
    const dir = mutableCopy(good, 'sharded');
    shard(dir, (a, b) => b.tensors.set('wpe.weight', a.tensors.get('wpe.weight')!));
    await expectLoadError('duplicate across shards', dir, 'E_MODEL_FORMAT', ["'wpe.weight'", 'two files', 'model-00002-of-00002.safetensors']);
  });

  test('a shard listed in the index is missing', async () => {
    const dir = mutableCopy(good, 'sharded');
    shard(dir);
    removeFile(dir, 'model-00002-of-00002.safetensors');
    await expectLoadError('missing shard', dir, ['E_IO', 'E_MODEL_FORMAT'], [path.join(dir, 'model-00002-of-00002.safetensors')]);
  });

  test('an index whose weight_map is not an object, or names a path', async () => {
    const dir = mutableCopy(good, 'sharded');
    shard(dir);
    replaceFile(dir, 'model.safetensors.index.json', JSON.stringify({ weight_map: 3 }));
    await expectLoadError('bad weight_map', dir, 'E_MODEL_FORMAT', ['model.safetensors.index.json', 'weight_map']);
    replaceFile(dir, 'model.safetensors.index.json', JSON.stringify({ weight_map: { 'wte.weight': '../x.safetensors' } }));
    await expectLoadError('path in weight_map', dir, 'E_MODEL_FORMAT', ['model.safetensors.index.json', '../x.safetensors']);
    // names that are no file of the folder: the folder itself, its parent, nothing, or a NUL
    // that would cut the name short in C++
    for (const name of ['..', '.', '', 'model-00001-of-00002.safetensors\u0000junk']) {
      replaceFile(dir, 'model.safetensors.index.json', JSON.stringify({ weight_map: { 'wte.weight': name } }));
      await expectLoadError(`weight_map ${JSON.stringify(name)}`, dir, 'E_MODEL_FORMAT', ['model.safetensors.index.json', 'not a file name']);
    }
    replaceFile(dir, 'model.safetensors.index.json', JSON.stringify({ weight_map: {} }));
    await expectLoadError('empty weight_map', dir, 'E_MODEL_FORMAT', ['model.safetensors.index.json', 'empty']);
  });
});

// -------------------------------------------------------------------------------------------
describe('random header corruption never crashes', () => {
  test('12 deterministic mutations: each loads or fails with E_MODEL_FORMAT / E_IO', async () => {
    const original = fs.readFileSync(stPath(good));
    const n = Number(original.readBigUInt64LE(0));
    let x = 0x2545f491;
    const rand = (k: number) => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) % k;
    };
    const outcomes: string[] = [];
    for (let i = 0; i < 12; i++) {
      const b = Buffer.from(original);
      if (i % 3 === 0) {
        // flip a few header bytes
        for (let j = 0; j < 3; j++) b[8 + rand(n)] ^= 1 << rand(8);
      } else if (i % 3 === 1) {
        // replace a header byte with a JSON-significant character
        b[8 + rand(n)] = '{}[]",:0-'.charCodeAt(rand(9));
      } else {
        // change a digit inside the header (offsets and shapes)
        const text = b.toString('latin1', 8, 8 + n);
        const digits = [...text.matchAll(/[0-9]/g)].map((m) => m.index!);
        b[8 + digits[rand(digits.length)]] = 0x30 + rand(10);
      }
      const dir = mutableCopy(good, 'fuzz');
      replaceFile(dir, ST, b);
      const outcome = await loadModel(dir, CPU).then(
        (m) => {
          m.dispose();
          return 'loaded';
        },
        (e: { code?: string }) => String(e.code),
      );
      outcomes.push(outcome);
    }
    expect(outcomes.filter((o) => !['loaded', 'E_MODEL_FORMAT', 'E_IO'].includes(o))).toEqual([]);
  });
});

// -------------------------------------------------------------------------------------------
describe('load options', () => {
  test.each([
    ['unknown option', { device: 'cpu', thread: 2 }, 'thread'],
    ['threads -1', { device: 'cpu', threads: -1 }, 'threads'],
    ['threads 1.5', { device: 'cpu', threads: 1.5 }, 'threads'],
    ['dtype f8', { device: 'cpu', dtype: 'f8' }, 'dtype'],
    ['device tpu', { device: 'tpu' }, 'device'],
  ])('%s', async (label, opts, name) => {
    const err = await loadError(good, opts as LoadOptions);
    expect(err).toBeInstanceOf(OptionError);
    expect(err.code).toBe('E_OPTION');
    expect(err.message).toContain(name);
  });

  test('empty dir argument', async () => {
    await expect(loadModel('', CPU)).rejects.toBeInstanceOf(OptionError);
  });

  test("device 'cuda' in a build without CUDA: E_BACKEND", async () => {
    await expectLoadError("device 'cuda'", good, 'E_BACKEND', ['cuda'], { device: 'cuda' });
  });

  // The addon's errors belong to the realm it was loaded in; under jest's vm sandbox
  // `instanceof Error` is false for them, so wrapNativeError must duck-type them, or the device
  // 'auto' fallback (which tests `err instanceof BackendError`) would not fall back.
  test("device 'auto' (the default) falls back to the CPU", async () => {
    const outcome = await loadModel(good).then(
      (m) => {
        const device = m.info.device;
        m.dispose();
        return device;
      },
      (e: Error) => `rejected: ${e.message}`,
    );
    expect(outcome).toBe('cpu');
  });
});

// -------------------------------------------------------------------------------------------
describe('afterwards', () => {
  test('a good checkpoint still loads and generates in the same process', async () => {
    const m = await loadModel(good, CPU);
    try {
      const r = await m.generate('Still alive', { doSample: false, maxNewTokens: 5 });
      expect(r.sequences[0].tokens).toHaveLength(5);
    } finally {
      m.dispose();
    }
  });

  // Every case above records here an error whose class does not match its code.
  test('every load error above is an instance of the llmcore class for its code', () => {
    expect(wrongClass).toEqual([]);
  });
});

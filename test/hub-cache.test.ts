// loadModel('gpt2') / loadModel('openai-community/gpt2') with no such folder: the checkpoint is
// looked up in the local Hugging Face hub cache, laid out here exactly as huggingface_hub writes
// it (refs/main -> snapshots/<commit>/ of relative symlinks into blobs/), never downloaded.
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { ModelFormatError, loadModel } from '../lib';
import { hubCacheDir } from '../lib/hub-cache';
import { CPU, checkpoint, scratchDir, tokenSequence } from './helpers/fixtures';

const COMMIT = '607a30d783dfa663caf39e06633721c8d4cfcd7e';

/** A hub cache holding `src`'s files as repo `repo`; returns the cache root. */
function fakeHubCache(src: string, repo: string, opts: { refsMain?: boolean } = {}): string {
  const cache = path.join(scratchDir('hub'), 'hub');
  const folder = path.join(cache, `models--${repo.replace('/', '--')}`);
  const snapshot = path.join(folder, 'snapshots', COMMIT);
  fs.mkdirSync(path.join(folder, 'blobs'), { recursive: true });
  fs.mkdirSync(snapshot, { recursive: true });
  for (const f of fs.readdirSync(src)) {
    if (f.endsWith('.fixture.json')) continue;
    const data = fs.readFileSync(path.join(src, f));
    const blob = crypto.createHash('sha256').update(data).digest('hex');
    fs.writeFileSync(path.join(folder, 'blobs', blob), data);
    fs.symlinkSync(path.join('..', '..', 'blobs', blob), path.join(snapshot, f));
  }
  if (opts.refsMain ?? true) {
    fs.mkdirSync(path.join(folder, 'refs'));
    fs.writeFileSync(path.join(folder, 'refs', 'main'), COMMIT);
  }
  return cache;
}

const saved = process.env.HF_HUB_CACHE;
afterEach(() => {
  if (saved === undefined) delete process.env.HF_HUB_CACHE;
  else process.env.HF_HUB_CACHE = saved;
});

let dir: string;
let want: Float32Array;
beforeAll(async () => {
  dir = await checkpoint({ preset: 'tiny' });
  const m = await loadModel(dir, CPU);
  want = await m.logits(tokenSequence(9, 3));
  m.dispose();
});

/** Bitwise equality (jest's toEqual walks a 450 000-element Float32Array for seconds). */
const sameBits = (a: Float32Array, b: Float32Array) =>
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

async function logitsOf(id: string): Promise<{ dir: string; logits: Float32Array }> {
  const m = await loadModel(id, CPU);
  try {
    return { dir: m.info.dir, logits: await m.logits(tokenSequence(9, 3)) };
  } finally {
    m.dispose();
  }
}

test('a repo id is found in HF_HUB_CACHE, through the symlinked snapshot, with the same logits', async () => {
  process.env.HF_HUB_CACHE = fakeHubCache(dir, 'openai-community/gpt2');
  const got = await logitsOf('openai-community/gpt2');
  expect(got.dir).toContain(path.join('models--openai-community--gpt2', 'snapshots', COMMIT));
  expect(sameBits(got.logits, want)).toBe(true);
});

test("the old bare name 'gpt2' also finds openai-community/gpt2", async () => {
  process.env.HF_HUB_CACHE = fakeHubCache(dir, 'openai-community/gpt2');
  expect(sameBits((await logitsOf('gpt2')).logits, want)).toBe(true);
});

test("and the other way: 'openai-community/gpt2' finds what from_pretrained('gpt2') cached as models--gpt2", async () => {
  process.env.HF_HUB_CACHE = fakeHubCache(dir, 'gpt2');
  expect(sameBits((await logitsOf('openai-community/gpt2')).logits, want)).toBe(true);
});

test('a snapshot with safetensors wins over an older one with only pytorch_model.bin', async () => {
  const cache = fakeHubCache(dir, 'openai-community/gpt2');
  // an old from_pretrained('gpt2') download: config and pytorch_model.bin, no safetensors
  const old = path.join(cache, 'models--gpt2', 'snapshots', 'e7da7f221d5bf496a48136c0cd264e630fe9fcc8');
  fs.mkdirSync(old, { recursive: true });
  fs.copyFileSync(path.join(dir, 'config.json'), path.join(old, 'config.json'));
  fs.writeFileSync(path.join(old, 'pytorch_model.bin'), 'not read');
  process.env.HF_HUB_CACHE = cache;
  expect(sameBits((await logitsOf('gpt2')).logits, want)).toBe(true);
});

test('without refs/main, a single snapshot is used', async () => {
  process.env.HF_HUB_CACHE = fakeHubCache(dir, 'someone/tiny-gpt2', { refsMain: false });
  expect(sameBits((await logitsOf('someone/tiny-gpt2')).logits, want)).toBe(true);
});

test('a repo id in neither place: ModelFormatError naming the folders looked at and how to download', async () => {
  process.env.HF_HUB_CACHE = path.join(scratchDir('hub-empty'), 'hub');
  const err = await loadModel('gpt2', CPU).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  expect(err).toBeInstanceOf(ModelFormatError);
  expect(err!.message).toContain('not in the Hugging Face cache');
  expect(err!.message).toContain('models--gpt2');
  expect(err!.message).toContain('models--openai-community--gpt2');
  expect(err!.message).toContain('huggingface-cli download openai-community/gpt2');
});

test('names of Object.prototype members are ordinary repo ids', async () => {
  process.env.HF_HUB_CACHE = path.join(scratchDir('hub-empty'), 'hub');
  for (const id of ['constructor', 'toString', '__proto__'])
    await expect(loadModel(id, CPU)).rejects.toThrow(id === '__proto__' ? /not a directory|not in the Hugging Face cache/ : /not in the Hugging Face cache/);
});

test('a path that does not exist is not looked up as a repo id', async () => {
  await expect(loadModel('./no/such/checkpoint', CPU)).rejects.toThrow(/not a directory/);
  await expect(loadModel('/no/such/checkpoint', CPU)).rejects.toThrow(/not a directory/);
});

test('the cache location follows huggingface_hub: HF_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME, ~/.cache', () => {
  expect(hubCacheDir({ HF_HUB_CACHE: '/a', HF_HOME: '/b' })).toBe('/a');
  expect(hubCacheDir({ HF_HOME: '/b', XDG_CACHE_HOME: '/c' })).toBe(path.join('/b', 'hub'));
  expect(hubCacheDir({ XDG_CACHE_HOME: '/c' })).toBe(path.join('/c', 'huggingface', 'hub'));
  expect(hubCacheDir({})).toMatch(/\.cache\/huggingface\/hub$/);
  expect(hubCacheDir({ HF_HOME: '~/hf' })).toBe(path.join(os.homedir(), 'hf', 'hub')); // ~ expanded
});

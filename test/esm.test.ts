// The published entry points, in a plain Node process: `import 'llmcore'` (dist/esm, a wrapper
// over the CommonJS build) and `require('llmcore')` (dist/cjs) must give the very same objects,
// so instanceof works whichever way a program loads the package. The package is resolved by
// self-reference through its "exports" from the repo root. Needs dist/ (npm test builds it first).
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

import { checkpoint, REPO_ROOT } from './helpers/fixtures';

const ESM_ENTRY = path.join(REPO_ROOT, 'dist', 'esm', 'index.mjs');
const CJS_ENTRY = path.join(REPO_ROOT, 'dist', 'cjs', 'index.js');

function requireDist(): void {
  for (const f of [ESM_ENTRY, CJS_ENTRY])
    if (!fs.existsSync(f))
      throw new Error(`${path.relative(REPO_ROOT, f)} is missing: run \`npm run build:ts\` first (\`npm test\` does it before jest)`);
  // A stale build tests old code: say so (not fatal, lib/ may be mid-edit by someone else).
  const built = fs.statSync(CJS_ENTRY).mtimeMs;
  const newer = fs.readdirSync(path.join(REPO_ROOT, 'lib')).filter((f) => fs.statSync(path.join(REPO_ROOT, 'lib', f)).mtimeMs > built);
  if (newer.length) console.warn(`dist/ is older than lib/${newer.join(', lib/')}: run \`npm run build:ts\` for an up-to-date check`);
}

function runModule(source: string, env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['--input-type=module', '-e', source],
      { cwd: REPO_ROOT, env: { ...process.env, ...env }, timeout: 60_000 },
      (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\nstdout:\n${stdout}\nstderr:\n${stderr}`)) : resolve({ stdout, stderr })),
    );
  });
}

beforeAll(requireDist);

test('import and require give the same exports (same class objects)', async () => {
  const { stdout } = await runModule(`
    import * as esm from 'llmcore';
    import def, { loadModel, OptionError, ModelFormatError, DisposedError, LlmcoreError, Model, createRandomCheckpoint, runBackendOps } from 'llmcore';
    import { createRequire } from 'node:module';
    const require = createRequire(import.meta.url);
    const cjs = require('llmcore');
    const names = Object.keys(cjs).filter((k) => k !== '__esModule' && k !== 'default').sort();
    const mismatched = names.filter((k) => esm[k] !== cjs[k]);
    const missing = ['loadModel', 'OptionError', 'ModelFormatError', 'DisposedError', 'LlmcoreError', 'BackendError', 'AbortError',
                     'Model', 'Gpt2Tokenizer', 'createRandomCheckpoint', 'runBackendOps', 'backendInfo'].filter((k) => !(k in esm));
    const err = new OptionError('x');
    console.log(JSON.stringify({
      names, mismatched, missing,
      named: [loadModel === cjs.loadModel, OptionError === cjs.OptionError, ModelFormatError === cjs.ModelFormatError,
              DisposedError === cjs.DisposedError, Model === cjs.Model, createRandomCheckpoint === cjs.createRandomCheckpoint,
              runBackendOps === cjs.runBackendOps],
      defaultIsCjs: def === cjs,
      crossInstanceof: err instanceof cjs.OptionError && err instanceof cjs.LlmcoreError && err.code === 'E_OPTION',
      resolved: { esm: import.meta.resolve('llmcore'), cjs: require.resolve('llmcore') },
    }));
  `);
  const r = JSON.parse(stdout.trim().split('\n').pop()!);
  expect(r.mismatched).toEqual([]);
  expect(r.missing).toEqual([]);
  expect(r.names.length).toBeGreaterThan(5);
  expect(r.named.every(Boolean)).toBe(true);
  expect(r.defaultIsCjs).toBe(true);
  expect(r.crossInstanceof).toBe(true);
  expect(r.resolved.esm).toMatch(/dist\/esm\/index\.mjs$/);
  expect(r.resolved.cjs).toMatch(/dist[\\/]cjs[\\/]index\.js$/);
});

test('a model loaded through import: errors are instances of the classes require() gives', async () => {
  const dir = await checkpoint({ preset: 'tiny' });
  const { stdout } = await runModule(
    `
    import { loadModel, OptionError, DisposedError, ModelFormatError } from 'llmcore';
    import { createRequire } from 'node:module';
    import { mkdtempSync, copyFileSync, readdirSync, writeFileSync, rmSync } from 'node:fs';
    import { tmpdir } from 'node:os';
    import { join } from 'node:path';
    const cjs = createRequire(import.meta.url)('llmcore');
    const out = {};
    const m = await loadModel(process.env.CKPT); // device 'auto': must fall back to the CPU here
    out.device = m.info.device;
    const r = await m.generate('Hello', { doSample: false, maxNewTokens: 3 });
    out.tokens = r.sequences[0].tokens.length;
    const bad = await m.generate('Hello', { max_length: 5 }).catch((e) => e);
    out.optionError = bad instanceof cjs.OptionError && bad instanceof OptionError && /maxLength/.test(bad.message);
    // a native error (truncated safetensors) arrives as the llmcore class in a plain Node realm
    const broken = mkdtempSync(join(tmpdir(), 'llmcore-esm-'));
    try {
      for (const f of readdirSync(process.env.CKPT)) if (!f.endsWith('.fixture.json')) copyFileSync(join(process.env.CKPT, f), join(broken, f));
      writeFileSync(join(broken, 'model.safetensors'), Buffer.alloc(16));
      const e = await loadModel(broken, { device: 'cpu' }).catch((x) => x);
      out.nativeFormatError = e instanceof cjs.ModelFormatError && e instanceof ModelFormatError && e.code === 'E_MODEL_FORMAT';
    } finally {
      rmSync(broken, { recursive: true, force: true });
    }
    // Symbol.asyncDispose (what \`await using\` calls) in a plain Node realm
    out.asyncDispose = typeof m[Symbol.asyncDispose];
    await m[Symbol.asyncDispose]();
    const gone = await m.generate('x', { doSample: false, maxNewTokens: 1 }).catch((e) => e);
    out.disposed = gone instanceof cjs.DisposedError && gone instanceof DisposedError && gone.code === 'E_DISPOSED';
    console.log(JSON.stringify(out));
    `,
    { CKPT: dir },
  );
  const r = JSON.parse(stdout.trim().split('\n').pop()!);
  expect(r).toEqual({
    device: 'cpu',
    tokens: 3,
    optionError: true,
    nativeFormatError: true,
    asyncDispose: 'function',
    disposed: true,
  });
});

// dispose() frees the native model at once, not whenever the garbage collector gets to it: in a
// fresh Node process (so jest's own heap does not blur the numbers) the resident memory must
// drop by most of the weights' bytes right after dispose(). And models in worker threads that
// are terminated mid-step, or a process exiting mid-step, end cleanly. Needs dist/ (npm test
// builds it).
import { execFile } from 'child_process';
import * as path from 'path';

import { checkpoint, REPO_ROOT } from './helpers/fixtures';

const CJS_ENTRY = path.join(REPO_ROOT, 'dist', 'cjs', 'index.js');

function runScript(source: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', source], { cwd: REPO_ROOT, timeout: 120_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\nstdout:\n${stdout}\nstderr:\n${stderr}`)) : resolve(stdout),
    );
  });
}

test('dispose() returns the weights memory to the OS right away', async () => {
  // ~150 MB of matmul weights (n_embd 512, 4 layers, the GPT-2 vocabulary), enough to see in RSS
  const dir = await checkpoint({ preset: 'small', config: { n_embd: 512, n_head: 8, n_layer: 4 } });
  const out = await runScript(`
    const { loadModel } = require(${JSON.stringify(CJS_ENTRY)});
    (async () => {
      const m = await loadModel(${JSON.stringify(dir)}, { device: 'cpu' });
      await m.generate([464, 3797, 318], { maxNewTokens: 2, doSample: false });
      const loaded = process.memoryUsage().rss;
      const weightBytes = m.info.weightBytes;
      m.dispose();
      await new Promise((r) => setTimeout(r, 20));
      console.log(JSON.stringify({ loaded, disposed: process.memoryUsage().rss, weightBytes }));
    })();
  `);
  const { loaded, disposed, weightBytes } = JSON.parse(out) as { loaded: number; disposed: number; weightBytes: number };
  console.log(`RSS ${(loaded / 2 ** 20).toFixed(0)} MiB loaded, ${(disposed / 2 ** 20).toFixed(0)} MiB after dispose(); weights ${(weightBytes / 2 ** 20).toFixed(0)} MiB`);
  expect(weightBytes).toBeGreaterThan(100 * 2 ** 20);
  expect(loaded - disposed).toBeGreaterThan(0.8 * weightBytes);
});

// Steps hand their results to the JS thread through a thread-safe function; when that thread is
// a worker being terminated, or the process exits, with steps in flight, nothing may crash (a
// C++ exception escaping a callback aborted the process: found with this test) or hang. Workers
// terminated while they load the addon or a model, too; and the main thread, which loaded the
// addon first, still makes models after (each environment has its own Engine constructor).
test('terminating worker threads mid-load and mid-generation, and exiting mid-generation, neither crash nor hang', async () => {
  const dir = await checkpoint({ preset: 'tiny' });
  const out = await runScript(`
    const { Worker } = require('worker_threads');
    const { loadModel } = require(${JSON.stringify(CJS_ENTRY)});
    const body = \`
      const { parentPort, workerData } = require('worker_threads');
      const { loadModel, measureRoofline } = require(${JSON.stringify(CJS_ENTRY)});
      (async () => {
        const [m] = await Promise.all([loadModel(workerData.dir, { device: 'cpu' }), measureRoofline(1, 1 << 24)]);
        parentPort.postMessage('going');
        const r = await m.generate([464, 3797], { maxNewTokens: workerData.n, doSample: false });
        parentPort.postMessage(r.sequences[0].tokens.length);
      })();
    \`;
    const start = (n) => new Worker(body, { eval: true, workerData: { dir: ${JSON.stringify(dir)}, n } });
    (async () => {
      const first = await loadModel(${JSON.stringify(dir)}, { device: 'cpu' });
      const log = [];
      for (let i = 0; i < 8; i++) {  // at 10-80 ms: while requiring, loading or measuring
        const w = start(120);
        await new Promise((r) => setTimeout(r, 10 * (i + 1)));
        await w.terminate();
      }
      log.push('terminated early');
      for (let i = 0; i < 4; i++) {
        const w = start(120);
        await new Promise((res) => w.on('message', (msg) => {
          if (msg === 'going') setTimeout(() => w.terminate().then(res), 5 + 15 * i);
        }));
        log.push('terminated');
      }
      const w = start(5);
      w.on('message', (msg) => { if (msg !== 'going') log.push('generated ' + msg); });
      await new Promise((res) => w.on('exit', res));
      const m = await loadModel(${JSON.stringify(dir)}, { device: 'cpu' });
      log.push('main ' + (await first.generate([464], { maxNewTokens: 3, doSample: false })).sequences[0].tokens.length);
      m.generate([464, 3797], { maxNewTokens: 120, doSample: false });
      setTimeout(() => { console.log(log.join(', ')); process.exit(0); }, 30);
    })();
  `);
  expect(out.trim()).toBe('terminated early, terminated, terminated, terminated, terminated, generated 5, main 3');
});

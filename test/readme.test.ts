// README's API example, run as written (on the random tiny checkpoint instead of a downloaded
// gpt2), so the documented calls and result shapes cannot drift from the library.
import * as fs from 'fs';
import * as path from 'path';
import * as llmcore from '../lib';
import { checkpoint, REPO_ROOT } from './helpers/fixtures';

function readmeApiExample(): string {
  const readme = fs.readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## The API'));
  const match = /```js\n([\s\S]*?)```/.exec(section);
  if (!match) throw new Error('README.md: no ```js block under "## The API"');
  return match[1];
}

test("README's API example runs as written and prints what it says", async () => {
  const code = readmeApiExample();
  expect(code).toContain("loadModel('gpt2'");
  const dir = await checkpoint({ preset: 'tiny' });
  const lines: string[] = [];
  let streamed = '';
  const fakeConsole = { log: (...args: unknown[]) => lines.push(args.map(String).join(' ')) };
  const fakeProcess = { stdout: { write: (s: string) => { streamed += s; return true; } } };
  const fakeRequire = (id: string) => {
    if (id !== 'llmcore') throw new Error(`the example requires ${id}`);
    // The one substitution: the checkpoint folder the example names ('gpt2') is the tiny one here.
    return { ...llmcore, loadModel: (name: string, o: llmcore.LoadOptions) => llmcore.loadModel(name === 'gpt2' ? dir : name, o) };
  };
  // Its last statements' values, to check them: appended as a return.
  const run = new Function('require', 'console', 'process',
    `return (async () => {\n${code}\nreturn { sequences, stats, beams, results, logits, model };\n})();`);
  const out = await run(fakeRequire, fakeConsole, fakeProcess);

  expect(out.sequences).toHaveLength(5);
  expect(lines).toHaveLength(5);
  for (const line of lines) expect(line).toMatch(/^The cat is on the table[\s\S]* (length|eos)$/);
  expect(out.stats.promptTokens).toBe(6);
  expect(out.beams.sequences).toHaveLength(5);
  expect(out.beams.sequences.every((s: { score?: number }) => typeof s.score === 'number')).toBe(true);
  expect(out.results).toHaveLength(2);
  expect(out.results.map((r: llmcore.GenerationResult) => r.prompt)).toEqual(['Hello', 'Once upon a time']);
  expect(streamed.length).toBeGreaterThan(0);
  expect(out.logits).toBeInstanceOf(Float32Array);
  expect(out.logits.length).toBe(2 * 50257);
  // The example ends with dispose().
  await expect(out.model.generate('x', { maxNewTokens: 1 })).rejects.toBeInstanceOf(llmcore.DisposedError);
});

// Offline lookup of a Hugging Face repo id in the local hub cache, as transformers'
// from_pretrained('gpt2') finds a model that `huggingface-cli download` (without --local-dir) or
// an earlier from_pretrained stored there. Nothing is downloaded.
//
// Cache layout (huggingface_hub): <cache>/models--<org>--<name>/refs/<revision> holds a commit
// hash, snapshots/<hash>/ holds the files (symlinks into ../../blobs). <cache> is HF_HUB_CACHE,
// else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else
// ~/.cache/huggingface/hub.
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** The five GPT-2 checkpoints moved from bare names to organisations on the Hub. */
const MOVED = new Map<string, string>([
  ['gpt2', 'openai-community/gpt2'],
  ['gpt2-medium', 'openai-community/gpt2-medium'],
  ['gpt2-large', 'openai-community/gpt2-large'],
  ['gpt2-xl', 'openai-community/gpt2-xl'],
  ['distilgpt2', 'distilbert/distilgpt2'],
]);
const MOVED_FROM = new Map([...MOVED].map(([old, now]) => [now, old]));

/** The repo id to download `id` under today. */
export const currentRepoId = (id: string): string => MOVED.get(id) ?? id;

// huggingface_hub expands ~ in these variables.
const expandHome = (p: string) => (p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p);

const REPO_ID = /^(?:[A-Za-z0-9][A-Za-z0-9._-]*\/)?[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return expandHome(env.HF_HUB_CACHE);
  if (env.HUGGINGFACE_HUB_CACHE) return expandHome(env.HUGGINGFACE_HUB_CACHE);
  if (env.HF_HOME) return path.join(expandHome(env.HF_HOME), 'hub');
  const xdg = env.XDG_CACHE_HOME ? expandHome(env.XDG_CACHE_HOME) : path.join(os.homedir(), '.cache');
  return path.join(xdg, 'huggingface', 'hub');
}

/** True when `s` reads as a repo id ('gpt2', 'openai-community/gpt2') rather than a path. */
export function looksLikeRepoId(s: string): boolean {
  return REPO_ID.test(s) && !s.includes('..'); // (REPO_ID already rules out a leading '.' per part)
}

export interface HubLookup {
  /** The snapshot directory, when found. */
  dir?: string;
  /** The repo folders looked at, for the error message. */
  searched: string[];
}

/**
 * Finds the snapshot of repo `id` at revision main, under its old or new name for a moved GPT-2
 * (from_pretrained('gpt2') caches under models--gpt2). A snapshot with safetensors wins over one
 * without (an old cache may hold only pytorch_model.bin; loading then says so).
 */
export async function findInHubCache(id: string, env: NodeJS.ProcessEnv = process.env): Promise<HubLookup> {
  const cache = hubCacheDir(env);
  const other = MOVED.get(id) ?? MOVED_FROM.get(id);
  const searched: string[] = [];
  let fallback: string | undefined;
  for (const repo of other ? [id, other] : [id]) {
    const folder = path.join(cache, `models--${repo.replace('/', '--')}`);
    searched.push(folder);
    const dir = await snapshotOf(folder);
    if (!dir) continue;
    if (await hasSafetensors(dir)) return { dir, searched };
    fallback ??= dir;
  }
  return { dir: fallback, searched };
}

async function hasSafetensors(dir: string): Promise<boolean> {
  const isFile = (f: string) => fs.stat(path.join(dir, f)).then((s) => s.isFile(), () => false);
  return (await isFile('model.safetensors')) || (await isFile('model.safetensors.index.json'));
}

async function snapshotOf(folder: string): Promise<string | undefined> {
  const isDir = (p: string) => fs.stat(p).then((s) => s.isDirectory(), () => false);
  if (!(await isDir(folder))) return undefined;
  const hash = (await fs.readFile(path.join(folder, 'refs', 'main'), 'utf8').catch(() => '')).trim();
  if (/^[0-9a-f]{7,64}$/.test(hash) && (await isDir(path.join(folder, 'snapshots', hash))))
    return path.join(folder, 'snapshots', hash);
  // No usable refs/main (a revision-pinned download): a single snapshot is unambiguous.
  const snaps = await fs.readdir(path.join(folder, 'snapshots')).catch(() => [] as string[]);
  return snaps.length === 1 ? path.join(folder, 'snapshots', snaps[0]) : undefined;
}

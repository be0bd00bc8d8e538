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
const MOVED: Record<string, string> = {
  gpt2: 'openai-community/gpt2',
  'gpt2-medium': 'openai-community/gpt2-medium',
  'gpt2-large': 'openai-community/gpt2-large',
  'gpt2-xl': 'openai-community/gpt2-xl',
  distilgpt2: 'distilbert/distilgpt2',
};

/** The repo id to download `id` under today. */
export const currentRepoId = (id: string): string => MOVED[id] ?? id;

const REPO_ID = /^(?:[A-Za-z0-9][A-Za-z0-9._-]*\/)?[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  if (env.HF_HOME) return path.join(env.HF_HOME, 'hub');
  const xdg = env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(xdg, 'huggingface', 'hub');
}

/** True when `s` reads as a repo id ('gpt2', 'openai-community/gpt2') rather than a path. */
export function looksLikeRepoId(s: string): boolean {
  return REPO_ID.test(s) && !s.includes('..') && !/^\.|\/\./.test(s);
}

export interface HubLookup {
  /** The snapshot directory, when found. */
  dir?: string;
  /** The repo folders looked at, for the error message. */
  searched: string[];
}

/** Finds the snapshot of repo `id` (and of its new name for a moved GPT-2) at revision main. */
export async function findInHubCache(id: string, env: NodeJS.ProcessEnv = process.env): Promise<HubLookup> {
  const cache = hubCacheDir(env);
  const ids = MOVED[id] ? [id, MOVED[id]] : [id];
  const searched: string[] = [];
  for (const repo of ids) {
    const folder = path.join(cache, `models--${repo.replace('/', '--')}`);
    searched.push(folder);
    const dir = await snapshotOf(folder);
    if (dir) return { dir, searched };
  }
  return { searched };
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

// Admission control for the KV cache: a request (one prompt and its numReturnSequences forks,
// or a logits() call) starts only once its worst-case KV blocks and sequence count fit the
// model's budget, so any number of concurrent prompts runs in bounded memory instead of
// growing the cache until the process is killed. First come, first served: a large request at
// the head of the queue is not overtaken forever by small ones.
import { OptionError } from './errors';

export interface KvBudget {
  /** Positions per KV block and bytes per block (from the engine). */
  blockTokens: number;
  blockBytes: number;
  /** Blocks the admitted requests may reserve in all. */
  capacityBlocks: number;
  /** Sequences that may decode at once (the largest batch of a step). */
  maxSequences: number;
}

export interface KvStats {
  /** Blocks reserved by the running requests (worst case: every sequence to its full length). */
  reservedBlocks: number;
  capacityBlocks: number;
  /** Sequences of the running requests, and the limit. */
  activeSequences: number;
  maxSequences: number;
  /** Requests waiting for room. */
  queuedRequests: number;
}

/** What a running request holds; it gives back parts as its sequences end, the rest at the end. */
export interface Reservation {
  /** Returns `blocks` and `seqs` of it now (a sequence that ended); clamped to what is left. */
  returnPart(blocks: number, seqs: number): void;
  /** Returns whatever is left; later calls do nothing. */
  release(): void;
}

interface Waiter {
  blocks: number;
  seqs: number;
  admit: () => void;
  fail: (reason: unknown) => void;
}

export class Admission {
  private reservedBlocks = 0;
  private activeSequences = 0;
  private readonly queue: Waiter[] = [];
  private closed: unknown = undefined;

  constructor(readonly budget: KvBudget) {}

  /**
   * Blocks a request needs at most: `prefix` prompt positions shared by all `seqs` sequences
   * (full blocks are shared between forks, the partial last one is copied), each sequence
   * then growing to `finalLength` positions.
   */
  blocksFor(prefix: number, finalLength: number, seqs: number): number {
    const T = this.budget.blockTokens;
    const shared = Math.floor(prefix / T);
    return shared + seqs * (Math.ceil(finalLength / T) - shared);
  }

  /**
   * Throws OptionError for a request that could never fit, naming `what`, the option that set
   * its sequences (`seqsOption`) and the load option to raise.
   */
  check(what: string, blocks: number, seqs: number, seqsOption = 'numReturnSequences'): void {
    const b = this.budget;
    if (blocks > b.capacityBlocks) {
      const mib = (n: number) => `${((n * b.blockBytes) / 2 ** 20).toFixed(1)} MiB`;
      throw new OptionError(
        `[${what}] this request needs up to ${mib(blocks)} of KV cache (${blocks} blocks of ${b.blockTokens} positions), ` +
          `more than the model's kvCacheBytes budget of ${mib(b.capacityBlocks)}: lower maxNewTokens, ` +
          `${seqsOption} or the prompt length, or raise loadModel's kvCacheBytes`,
      );
    }
    if (seqs > b.maxSequences)
      throw new OptionError(
        `[${what}] ${seqsOption}=${seqs} exceeds the model's maxSequences=${b.maxSequences} ` +
          `(raise loadModel's maxSequences)`,
      );
  }

  /**
   * Waits until `blocks` and `seqs` fit, then reserves them. Resolves to the reservation, or to
   * null when `signal` aborts first. Throws at once what check() throws.
   */
  async acquire(what: string, blocks: number, seqs: number, signal?: AbortSignal): Promise<Reservation | null> {
    this.check(what, blocks, seqs);
    if (this.closed) throw this.closed;
    if (signal?.aborted) return null;
    if (this.queue.length === 0 && this.fits(blocks, seqs)) return this.reserve(blocks, seqs);
    return new Promise<Reservation | null>((resolve, reject) => {
      const onAbort = () => {
        const i = this.queue.indexOf(waiter);
        if (i >= 0) this.queue.splice(i, 1);
        resolve(null);
        this.admitWaiting();  // the head may have been what held the others back
      };
      const waiter: Waiter = {
        blocks,
        seqs,
        admit: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(this.reserve(blocks, seqs));
        },
        fail: (reason) => {
          signal?.removeEventListener('abort', onAbort);
          reject(reason);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(waiter);
    });
  }

  stats(): KvStats {
    return {
      reservedBlocks: this.reservedBlocks,
      capacityBlocks: this.budget.capacityBlocks,
      activeSequences: this.activeSequences,
      maxSequences: this.budget.maxSequences,
      queuedRequests: this.queue.length,
    };
  }

  /** Fails every waiting request with `reason` and refuses new ones. */
  close(reason: unknown): void {
    this.closed = reason;
    for (const w of this.queue.splice(0)) w.fail(reason);
  }

  private fits(blocks: number, seqs: number): boolean {
    return this.reservedBlocks + blocks <= this.budget.capacityBlocks &&
      this.activeSequences + seqs <= this.budget.maxSequences;
  }

  private reserve(blocks: number, seqs: number): Reservation {
    this.reservedBlocks += blocks;
    this.activeSequences += seqs;
    let heldBlocks = blocks;
    let heldSeqs = seqs;
    const give = (b: number, s: number) => {
      b = Math.min(Math.max(0, b), heldBlocks);
      s = Math.min(Math.max(0, s), heldSeqs);
      if (b === 0 && s === 0) return;
      heldBlocks -= b;
      heldSeqs -= s;
      this.reservedBlocks -= b;
      this.activeSequences -= s;
      this.admitWaiting();
    };
    return {
      returnPart: give,
      release: () => give(heldBlocks, heldSeqs),
    };
  }

  private admitWaiting(): void {
    while (this.queue.length > 0 && this.fits(this.queue[0].blocks, this.queue[0].seqs)) this.queue.shift()!.admit();
  }
}

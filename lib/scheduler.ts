// The step loop: every active sequence of every concurrent call (generate, stream, logits)
// goes into one batched native step: pending prompt chunks and one decode token per running
// sequence. Native sequence bookkeeping (new/fork/release) runs only between steps, so it
// never waits on one. One loop per model; it runs while there is work and then stops.
import { PARAMS_PER_ITEM, type NativeEngine, type NativeStepRequest } from './native';
import { wrapNativeError } from './errors';

/** Which positions' logits a step returns for a sequence. */
export const LogitsMode = { None: 0, Last: 1, All: 2 } as const;
export type LogitsMode = (typeof LogitsMode)[keyof typeof LogitsMode];

/** Sampling parameters of a sequence that is only fed (layout: NativeStepRequest.params). */
export const NOT_SAMPLED: Float32Array = Float32Array.of(0, 1, 0, 1, 1, 0, 1);

/** A native sequence taking part in steps. Its owner refills `pending` from onStep. */
export interface ActiveSequence {
  readonly id: number;
  /** Tokens still to feed; the scheduler takes them from the front, chunked to its budget. */
  pending: number[];
  /** Sample a next token once `pending` is drained. */
  sample: boolean;
  logits: LogitsMode;
  /** doSample, temperature, topK, topP, repetitionPenalty, minP, typicalP */
  params: Float32Array;
  /** Tokens its next sample may not be (kept up to date by the owner). */
  banned: readonly number[];
  /** Set by the owner to leave the batch before the next step. */
  cancelled: boolean;
  /**
   * Seeds of sequences to fork from this one in the next step that samples it (its prompt's
   * last step), each taking its own first token from the same logits; see onForked, where the
   * owner clears it.
   */
  forkSeeds?: readonly number[];
  /**
   * After each step it took part in. drained: pending is empty; sampled: the new token or -1;
   * logits: the requested rows, and logsumexp: their log-softmax normalisers (one per row).
   */
  onStep(sampled: number, logits: Float32Array | null, drained: boolean, logsumexp: Float64Array | null): void;
  /**
   * Before onStep of the step that made this sequence's forks (forkSeeds): their native ids and
   * first tokens, in seed order. The owner now holds those sequences (and must release them).
   */
  onForked?(ids: Int32Array, sampled: Int32Array): void;
  onError(err: unknown): void;
}

export class Scheduler {
  /** Prompt tokens per step across all sequences: large enough to keep the GEMMs efficient. */
  static maxStepTokens = 2048;

  private readonly active = new Set<ActiveSequence>();
  private readonly between: Array<{ run: () => void; fail: (reason: unknown) => void }> = [];
  private running = false;
  private closed: unknown = undefined;

  constructor(private readonly engine: NativeEngine, private readonly vocabSize: number) {}

  /** Runs a native bookkeeping call between steps. */
  exclusive<T>(fn: (engine: NativeEngine) => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(this.closed);
      this.between.push({
        run: () => {
          try {
            resolve(fn(this.engine));
          } catch (err) {
            reject(wrapNativeError(err));
          }
        },
        fail: reject,
      });
      this.kick();
    });
  }

  add(seq: ActiveSequence): void {
    if (this.closed) return seq.onError(this.closed);
    this.active.add(seq);
    this.kick();
  }

  /** Fails everything queued and refuses new work with `reason`. */
  close(reason: unknown): void {
    this.closed = reason;
    for (const seq of this.active) seq.onError(reason);
    this.active.clear();
    for (const op of this.between.splice(0)) op.fail(reason);
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    // From a microtask: sequences added in the same tick (the forks of a prompt, the beams of a
    // beam-search step) then share the first step instead of the first one going alone.
    queueMicrotask(() => void this.loop());
  }

  private async loop(): Promise<void> {
    try {
      while (!this.closed && (this.between.length > 0 || this.active.size > 0)) {
        for (const op of this.between.splice(0)) op.run();
        const batch = this.takeBatch();
        if (batch.length === 0) continue;
        let result;
        const req = this.request(batch);
        try {
          result = await this.engine.step(req);
        } catch (err) {
          const e = wrapNativeError(err);
          for (const { seq } of batch) {
            this.active.delete(seq);
            seq.onError(e);
          }
          continue;
        }
        if (this.closed) break;
        let row = 0;
        let fork = 0;
        batch.forEach(({ seq, take }, i) => {
          const forks = req.forkCounts[i];
          const forkIds = result.forkIds.subarray(fork, fork + forks);
          const forkSampled = result.forkSampled.subarray(fork, fork + forks);
          fork += forks;
          const rows = seq.logits === LogitsMode.All ? take : seq.logits === LogitsMode.Last ? 1 : 0;
          const logits = rows > 0 ? result.logits.subarray(row * this.vocabSize, (row + rows) * this.vocabSize) : null;
          const lse = rows > 0 ? result.logsumexp.subarray(row, row + rows) : null;
          row += rows;
          try {
            if (forks > 0) seq.onForked!(forkIds, forkSampled);
            seq.onStep(result.sampled[i], logits, seq.pending.length === 0, lse);
          } catch (err) {
            seq.cancelled = true;
            seq.onError(err);
          }
          // Still in the batch only if the owner gave it more to feed.
          if (seq.cancelled || seq.pending.length === 0) this.active.delete(seq);
        });
      }
    } finally {
      this.running = false;
      if (!this.closed && (this.between.length > 0 || this.active.size > 0)) this.kick();
    }
  }

  /** Decode tokens first (latency), then prompt chunks up to the step budget. */
  private takeBatch(): Array<{ seq: ActiveSequence; tokens: number[]; take: number }> {
    const batch: Array<{ seq: ActiveSequence; tokens: number[]; take: number }> = [];
    let budget = Scheduler.maxStepTokens;
    const ordered = [...this.active].sort((a, b) => a.pending.length - b.pending.length);
    for (const seq of ordered) {
      if (seq.cancelled) {
        this.active.delete(seq);
        continue;
      }
      if (seq.pending.length === 0) continue;
      const take = seq.pending.length === 1 ? 1 : Math.min(seq.pending.length, budget);
      if (take === 0) continue;
      budget -= take;
      batch.push({ seq, tokens: seq.pending.splice(0, take), take });
    }
    return batch;
  }

  private request(batch: Array<{ seq: ActiveSequence; tokens: number[]; take: number }>): NativeStepRequest {
    const n = batch.length;
    const total = batch.reduce((s, b) => s + b.take, 0);
    const sampled = (seq: ActiveSequence) => seq.pending.length === 0 && seq.sample;
    const totalBanned = batch.reduce((s, b) => s + (sampled(b.seq) ? b.seq.banned.length : 0), 0);
    const forkSeeds = (seq: ActiveSequence) => (sampled(seq) && seq.onForked ? seq.forkSeeds ?? [] : []);
    const totalForks = batch.reduce((s, b) => s + forkSeeds(b.seq).length, 0);
    const req: NativeStepRequest = {
      seqs: new Int32Array(n),
      counts: new Int32Array(n),
      tokens: new Int32Array(total),
      logits: new Uint8Array(n),
      sample: new Uint8Array(n),
      params: new Float32Array(PARAMS_PER_ITEM * n),
      banned: new Int32Array(totalBanned),
      bannedCounts: new Int32Array(n),
      forkSeeds: new Float64Array(totalForks),
      forkCounts: new Int32Array(n),
    };
    let offset = 0;
    let bannedOffset = 0;
    let forkOffset = 0;
    batch.forEach(({ seq, tokens, take }, i) => {
      req.seqs[i] = seq.id;
      req.counts[i] = take;
      req.tokens.set(tokens, offset);
      offset += take;
      req.logits[i] = seq.logits;
      req.sample[i] = sampled(seq) ? 1 : 0;
      req.params.set(seq.params, PARAMS_PER_ITEM * i);
      if (sampled(seq)) {
        req.banned.set(seq.banned, bannedOffset);
        req.bannedCounts[i] = seq.banned.length;
        bannedOffset += seq.banned.length;
      }
      const seeds = forkSeeds(seq);
      req.forkSeeds.set(seeds, forkOffset);
      req.forkCounts[i] = seeds.length;
      forkOffset += seeds.length;
    });
    return req;
  }
}

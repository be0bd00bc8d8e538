// The step loop: every active sequence of every concurrent call (generate, stream, logits)
// goes into one batched native step: pending prompt chunks and one decode token per running
// sequence. Native sequence bookkeeping (new/fork/release) runs only between steps, so it
// never waits on one. One loop per model; it runs while there is work and then stops.
//
// Lookahead: when every active sequence is decoding and its owner can say what its next step
// will be if it does not end (nextStepBans), the next step is submitted before the current
// one's result is back, each sequence fed "its last sampled token" (the engine runs steps in
// order). The steps are the ones the loop would have made anyway, so the tokens are too; what
// goes is the round trip between steps (~0.45 ms each on a 2-vCPU VM). A sequence that ends in
// the current step has one step computed for nothing, which its release then frees.
import { LAST_SAMPLED, PARAMS_PER_ITEM, type NativeEngine, type NativeStepRequest, type NativeStepResult } from './native';
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
  /**
   * Asked while a step that samples this sequence (and feeds all its pending tokens) is in
   * flight: if, unless that step ends it, the owner will feed exactly the sampled token next,
   * with the same params and no logits, the bans that next step will have; otherwise null (its
   * bans depend on the token, or that token is its last). Absent: null.
   */
  nextStepBans?(): readonly number[] | null;
}

type Batch = Array<{ seq: ActiveSequence; tokens: number[]; take: number }>;

/** A submitted step; `ahead`: submitted before the previous step's result was handled. */
interface InFlight {
  batch: Batch;
  req: NativeStepRequest;
  result: Promise<NativeStepResult>;
  ahead: boolean;
}

export class Scheduler {
  /** Prompt tokens per step across all sequences: large enough to keep the GEMMs efficient. */
  static maxStepTokens = 2048;
  /**
   * Prompt tokens a step takes even when its decode rows use up maxStepTokens (thousands of
   * sequences decoding at once), so prompts still start.
   */
  static minPromptTokens = 256;
  /** Submit the next step before the current one's result when it is known (file comment). */
  static lookahead = true;

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
      let next: InFlight | null = null;
      while (!this.closed && (next || this.between.length > 0 || this.active.size > 0)) {
        let step: InFlight;
        if (next) {
          step = next;
          next = null;
        } else {
          for (const op of this.between.splice(0)) op.run();
          const batch = this.takeBatch();
          if (batch.length === 0) continue;
          step = this.submit(batch, this.request(batch), false);
        }
        next = this.lookahead(step);
        let result: NativeStepResult;
        try {
          result = await step.result;
        } catch (err) {
          const e = wrapNativeError(err);
          for (const { seq } of step.batch) {
            this.active.delete(seq);
            seq.onError(e);
          }
          // The step queued behind it fed the same sequences (the engine refuses to feed them a
          // sample it did not make: it fails too). Let it end before the releases run.
          if (next) await next.result.catch(() => undefined);
          next = null;
          continue;
        }
        if (this.closed) break;
        this.deliver(step, result, next);
      }
    } catch (err) {
      // An error of the loop itself (a bug) must not become an unhandled rejection, which ends
      // the process: the sequences it was running fail with it (their owners release them).
      const e = wrapNativeError(err);
      const failed = [...this.active];
      this.active.clear();
      for (const seq of failed) seq.onError(e);
    } finally {
      this.running = false;
      if (!this.closed && (this.between.length > 0 || this.active.size > 0)) this.kick();
    }
  }

  private submit(batch: Batch, req: NativeStepRequest, ahead: boolean): InFlight {
    let result: Promise<NativeStepResult>;
    try {
      result = this.engine.step(req);
    } catch (err) {
      result = Promise.reject(err);  // refused at once: fails this step's sequences as any step error does
    }
    result.catch(() => undefined);  // handled where awaited; not awaited if the loop stops first
    return { batch, req, result, ahead };
  }

  /** The step after `step`, submitted now if it is already known (see the file comment). */
  private lookahead(step: InFlight): InFlight | null {
    if (!Scheduler.lookahead || this.closed || this.between.length > 0) return null;
    const inStep = new Set(step.batch.map((b) => b.seq));
    const bans: Array<readonly number[]> = [];
    for (const seq of this.active) {
      if (!inStep.has(seq) || seq.cancelled || seq.pending.length > 0 || !seq.sample) return null;
      if (seq.logits !== LogitsMode.None || (seq.forkSeeds?.length ?? 0) > 0) return null;
      const b = seq.nextStepBans?.() ?? null;
      if (b === null) return null;
      bans.push(b);
    }
    if (bans.length === 0) return null;
    const batch: Batch = [...this.active].map((seq) => ({ seq, tokens: [LAST_SAMPLED], take: 1 }));
    return this.submit(batch, this.request(batch, bans), true);
  }

  /** Hands a step's rows to their sequences; `next` (if any) already feeds some of them. */
  private deliver(step: InFlight, result: NativeStepResult, next: InFlight | null): void {
    const fedAhead = new Set(next ? next.batch.map((b) => b.seq) : []);
    const failed = new Map(result.errors.map((e) => [e.item, wrapNativeError({ code: e.code, message: e.message })]));
    let row = 0;
    let fork = 0;
    step.batch.forEach(({ seq, take }, i) => {
      const forks = step.req.forkCounts[i];
      const forkIds = result.forkIds.subarray(fork, fork + forks);
      const forkSampled = result.forkSampled.subarray(fork, fork + forks);
      fork += forks;
      const rows = seq.logits === LogitsMode.All ? take : seq.logits === LogitsMode.Last ? 1 : 0;
      const logits = rows > 0 ? result.logits.subarray(row * this.vocabSize, (row + rows) * this.vocabSize) : null;
      const lse = rows > 0 ? result.logsumexp.subarray(row, row + rows) : null;
      row += rows;
      // A sequence fed ahead that has ended since (abort) takes no more rows: its release
      // waits for the steps in flight.
      if (step.ahead && seq.cancelled) {
        this.active.delete(seq);
        return;
      }
      const sampled = result.sampled[i];
      const err = failed.get(i);
      if (err !== undefined) {
        // Its sampling failed (its forks were released in the engine): it fails, the others go on.
        seq.cancelled = true;
        this.active.delete(seq);
        seq.onError(err);
        return;
      }
      try {
        if (forks > 0) seq.onForked!(forkIds, forkSampled);
        seq.onStep(sampled, logits, seq.pending.length === 0, lse);
        if (fedAhead.has(seq) && !seq.cancelled) {
          // The owner queued its sample, as nextStepBans promised; the next step feeds it.
          if (seq.pending.length !== 1 || seq.pending[0] !== sampled)
            throw new Error(`[llmcore] internal error: sequence ${seq.id} was fed ahead, but its owner queued ` +
              `${JSON.stringify(seq.pending)} after sampling ${sampled}`);
          seq.pending.length = 0;
          return;  // stays active: its next row comes from `next`
        }
      } catch (err) {
        seq.cancelled = true;
        seq.onError(err);
      }
      // Still in the batch only if the owner gave it more to feed.
      if (seq.cancelled || seq.pending.length === 0) this.active.delete(seq);
    });
  }

  /**
   * Decode tokens first (latency: every one goes in), then prompt chunks in what is left of
   * maxStepTokens, at least minPromptTokens.
   */
  private takeBatch(): Batch {
    const batch: Batch = [];
    const ordered = [...this.active].sort((a, b) => a.pending.length - b.pending.length);
    let decodes = 0;
    for (const seq of ordered) if (!seq.cancelled && seq.pending.length === 1) decodes++;
    let budget = Math.max(Scheduler.maxStepTokens - decodes, Scheduler.minPromptTokens);
    for (const seq of ordered) {
      if (seq.cancelled) {
        this.active.delete(seq);
        continue;
      }
      if (seq.pending.length === 0) continue;
      const take = seq.pending.length === 1 ? 1 : Math.min(seq.pending.length, budget);
      if (take <= 0) continue;
      if (seq.pending.length > 1) budget -= take;
      batch.push({ seq, tokens: seq.pending.splice(0, take), take });
    }
    return batch;
  }

  /** The native request for `batch`; `bans`: per item, in place of its sequence's `banned`. */
  private request(batch: Batch, bans?: ReadonlyArray<readonly number[]>): NativeStepRequest {
    const n = batch.length;
    const total = batch.reduce((s, b) => s + b.take, 0);
    const sampled = (seq: ActiveSequence) => seq.pending.length === 0 && seq.sample;
    const bannedOf = (seq: ActiveSequence, i: number) => (bans ? bans[i] : seq.banned);
    const totalBanned = batch.reduce((s, b, i) => s + (sampled(b.seq) ? bannedOf(b.seq, i).length : 0), 0);
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
        const banned = bannedOf(seq, i);
        req.banned.set(banned, bannedOffset);
        req.bannedCounts[i] = banned.length;
        bannedOffset += banned.length;
      }
      const seeds = forkSeeds(seq);
      req.forkSeeds.set(seeds, forkOffset);
      req.forkCounts[i] = seeds.length;
      forkOffset += seeds.length;
    });
    return req;
  }
}

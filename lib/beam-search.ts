// Beam search (numBeams > 1), with the semantics of Hugging Face's GenerationMixin._beam_search
// (transformers >= 4.51; batch of one prompt): every step scores each running beam's next token by
// log_softmax + logits processors + the beam's running sum, keeps the 2 * numBeams best
// (beam, token) pairs, finishes those of the first numBeams that end (eos, a stop string or the
// length limit) with score sum / newTokens ** lengthPenalty, and continues with the numBeams best
// that do not end.
//
// Each running beam is a native sequence. Between steps the beams are reordered on the KV cache
// itself: a beam no successor comes from is released, a beam that several come from is forked
// (the full blocks are shared, only the partial last one is copied), so no prefix is recomputed.
import type { GeneratedSequence, GenerationContext, GenerationResult } from './generation';
import { LlmcoreError, OptionError } from './errors';
import { bannedTokens, firstStop, minNewTokensFor, planPrompt, promptResult } from './generation';
import type { ResolvedOptions } from './options';
import { LogitsMode, NOT_SAMPLED, type ActiveSequence } from './scheduler';

interface Beam {
  id: number;
  /** Generated tokens (the prompt not included). */
  tokens: number[];
  /** Sum of the (processed) log-probabilities of its tokens. */
  sum: number;
}

interface Candidate {
  sum: number;
  beam: number;
  token: number;
}

interface Hypothesis {
  tokens: number[];
  score: number;
  /** Its text; for a stop-string end, cut before the stop string. */
  text: string;
  reason: GeneratedSequence['finishReason'];
}

interface Row {
  logits: Float32Array;
  /** log(sum(exp(logits))) */
  logZ: number;
}

/**
 * Feeds tokens to a sequence (one, or the whole prompt) and resolves to the logits of the last
 * position: a view of the step's result, which the addon allocates anew every step (nothing
 * writes it afterwards).
 */
function stepLogits(ctx: GenerationContext, id: number, tokens: readonly number[]): Promise<Row> {
  return new Promise<Row>((resolve, reject) => {
    const seq: ActiveSequence = {
      id,
      pending: [...tokens],
      sample: false,
      logits: LogitsMode.Last,
      params: NOT_SAMPLED,
      banned: [],
      cancelled: false,
      onStep: (_sampled, rows, drained, logsumexp) => {
        if (!drained || !rows || !logsumexp) return;
        // As the sampler does (E_INTERNAL): a NaN or inf logit makes the normaliser NaN or inf.
        if (!Number.isFinite(logsumexp[0]))
          return reject(new LlmcoreError('E_INTERNAL', '[beam search] logits are not finite (NaN or inf in the model output)'));
        resolve({ logits: rows, logZ: logsumexp[0] });
      },
      onError: reject,
    };
    ctx.scheduler.add(seq);
  });
}

/** Candidates are ordered by score, ties by (beam, token) so the order is total. */
const better = (a: Candidate, b: Candidate) =>
  a.sum !== b.sum ? a.sum > b.sum : a.beam !== b.beam ? a.beam < b.beam : a.token < b.token;

/**
 * The k best (beam, token) pairs of one beam: log_softmax of its logits, HF's logits processors
 * on the log-probabilities (repetition penalty over prompt + beam, banned tokens at -inf), plus
 * the beam's running sum. Appends them to `out`. The normaliser comes with the row from the
 * engine; one pass selects among the tokens no processor touches, the touched ones are then
 * scored one by one.
 */
function beamCandidates(row: Row, beam: Beam, index: number, history: readonly number[],
                        banned: readonly number[], penalty: number, k: number, out: Candidate[]): void {
  const { logits, logZ } = row;
  const V = logits.length;
  const bannedSet = new Set(banned);
  const penalized = penalty !== 1 ? new Set(history) : new Set<number>();
  // top k by log-probability, ties to the lower token: values descending in val[0..n)
  const val = new Float64Array(k);
  const tok = new Int32Array(k);
  let n = 0;
  const insert = (lp: number, t: number) => {
    if (n === k && !(lp > val[k - 1] || (lp === val[k - 1] && t < tok[k - 1]))) return;
    let i = n === k ? k - 1 : n++;
    while (i > 0 && (lp > val[i - 1] || (lp === val[i - 1] && t < tok[i - 1]))) {
      val[i] = val[i - 1];
      tok[i] = tok[i - 1];
      i--;
    }
    val[i] = lp;
    tok[i] = t;
  };
  for (let v = 0; v < V; v++) {
    const lp = logits[v] - logZ;
    if (n === k && lp < val[k - 1]) continue; // the common case, before any set lookup
    if (bannedSet.has(v) || penalized.has(v)) continue;
    insert(lp, v);
  }
  for (const t of penalized) {
    if (bannedSet.has(t)) continue;
    const lp = logits[t] - logZ;
    insert(lp < 0 ? lp * penalty : lp / penalty, t);
  }
  for (let i = 0; i < n; i++) out.push({ sum: beam.sum + val[i], beam: index, token: tok[i] });
}

export async function runBeamSearch(
  ctx: GenerationContext,
  promptTokens: number[],
  promptText: string,
  opts: ResolvedOptions,
): Promise<GenerationResult> {
  const start = performance.now();
  const { scheduler, admission, tokenizer } = ctx;
  const { numBeams: B, lengthPenalty, earlyStopping } = opts;
  const P = promptTokens.length;
  const { budget, blocks } = planPrompt(ctx, promptTokens, opts);
  const decode = (tokens: number[]) => tokenizer.decode(tokens, { skipSpecialTokens: true });
  const empty = (reason: GeneratedSequence['finishReason']) =>
    promptResult(promptText, promptTokens, Array.from({ length: opts.numReturnSequences },
      () => ({ text: '', tokens: [], finishReason: reason, score: 0 })), start, 0);

  if (opts.signal?.aborted) return empty('abort');
  const reservation = await admission.acquire('generate', blocks, B, opts.signal);
  if (!reservation) return empty('abort');
  let beams: Beam[] = [];
  const releaseAll = () => {
    const ids = beams.map((b) => b.id);
    beams = [];
    return scheduler.exclusive((e) => ids.forEach((id) => e.releaseSequence(id))).catch(() => undefined);
  };
  try {
    beams = [{ id: await scheduler.exclusive((e) => e.newSequence(opts.seed)), tokens: [], sum: 0 }];
    const minNew = minNewTokensFor(opts, P, budget);
    const finished: Hypothesis[] = []; // the best numBeams, best first
    let firstAt = 0;
    for (;;) {
      if (opts.signal?.aborted) break;
      // HF starts with numBeams copies of the prompt, all but the first at -1e9, so the first step
      // only ever expands the first: one beam here until then, and its first step is the prompt's.
      const rows = await Promise.all(beams.map((b) =>
        stepLogits(ctx, b.id, b.tokens.length > 0 ? b.tokens.slice(-1) : promptTokens)));
      if (!firstAt) firstAt = performance.now();
      const newTokens = beams[0].tokens.length + 1; // of every candidate
      const all: Candidate[] = [];
      beams.forEach((b, i) => {
        const banned = bannedTokens(promptTokens, b.tokens, minNew, opts);
        beamCandidates(rows[i], b, i, promptTokens.concat(b.tokens), banned, opts.repetitionPenalty, 2 * B, all);
      });
      if (all.length === 0)
        throw new OptionError('[generate] every token is banned (badWordsIds, noRepeatNgramSize or minNewTokens leave none to pick)');
      all.sort((a, b) => (better(a, b) ? -1 : better(b, a) ? 1 : 0));
      const candidates = all.slice(0, 2 * B);
      // How each candidate ends, if it does: eos, a stop string, or the length limit.
      const endings = candidates.map((c): Hypothesis | null => {
        const tokens = beams[c.beam].tokens.concat(c.token);
        const score = c.sum / newTokens ** lengthPenalty;
        // The text leaves the eos token out (special or not), as without beams.
        if (opts.eosTokenIds.includes(c.token)) return { tokens, score, text: decode(tokens.slice(0, -1)), reason: 'eos' };
        // A stop string ends a candidate as eos does (HF's StopStringCriteria), matched in the
        // continuation's text as without beams; the text ends before it.
        const text = opts.stop.length > 0 || newTokens >= budget ? decode(tokens) : '';
        const cut = firstStop(text, opts.stop);
        if (cut >= 0) return { tokens, score, text: text.slice(0, cut), reason: 'stop' };
        return newTokens >= budget ? { tokens, score, text, reason: 'length' } : null;
      });
      // Finished: of the numBeams best candidates, those that end (once numBeams are finished with
      // earlyStopping true, no more).
      if (!(earlyStopping === true && finished.length === B)) {
        for (let i = 0; i < B && i < candidates.length; i++) {
          const h = endings[i];
          if (h) finished.push(h);
        }
        finished.sort((a, b) => b.score - a.score);
        finished.splice(B);
      }
      const next = candidates.filter((_, i) => !endings[i]).slice(0, B);
      // Stop when every candidate ended, when numBeams are finished and (HF's heuristic) the best
      // running beam cannot beat the worst of them, or with earlyStopping true once they are.
      if (next.length === 0) break;
      if (finished.length === B) {
        if (earlyStopping === true) break;
        const bestLength = earlyStopping === 'never' && lengthPenalty > 0 ? budget : newTokens;
        if (next[0].sum / bestLength ** lengthPenalty <= finished[B - 1].score) break;
      }
      try {
        beams = await reorder(ctx, beams, next);
      } catch (err) {
        beams = []; // reorder released them
        throw err;
      }
    }
    // Aborted: the running beams count as hypotheses of their current length.
    const pool = finished.slice();
    if (opts.signal?.aborted)
      for (const b of beams) {
        const score = b.tokens.length ? b.sum / b.tokens.length ** lengthPenalty : 0;
        pool.push({ tokens: b.tokens, score, text: decode(b.tokens), reason: 'abort' });
      }
    pool.sort((a, b) => b.score - a.score);
    const out: GeneratedSequence[] = pool.slice(0, opts.numReturnSequences).map((h) => ({
      text: h.text, tokens: h.tokens, finishReason: h.reason, score: h.score,
    }));
    while (out.length < opts.numReturnSequences) out.push({ text: '', tokens: [], finishReason: 'abort', score: 0 });
    return promptResult(promptText, promptTokens, out, start, firstAt);
  } finally {
    await releaseAll();
    reservation.release();
  }
}

/**
 * The next running beams on the KV cache: each candidate continues its parent's native sequence
 * (the first one in place, the others as forks); parents none continues are released first, so
 * at most numBeams sequences exist at any time.
 */
function reorder(ctx: GenerationContext, beams: Beam[], next: Candidate[]): Promise<Beam[]> {
  return ctx.scheduler.exclusive((e) => {
    const used = new Set(next.map((c) => c.beam));
    beams.forEach((b, i) => {
      if (!used.has(i)) e.releaseSequence(b.id);
    });
    const taken = new Set<number>();
    const out: Beam[] = [];
    try {
      for (const c of next) {
        const parent = beams[c.beam];
        const id = taken.has(c.beam) ? e.forkSequence(parent.id, 0) : parent.id;
        taken.add(c.beam);
        out.push({ id, tokens: parent.tokens.concat(c.token), sum: c.sum });
      }
    } catch (err) {
      // release what exists now: the forks made and the parents kept
      for (const b of out) if (!beams.some((p) => p.id === b.id)) e.releaseSequence(b.id);
      beams.forEach((b, i) => {
        if (used.has(i)) e.releaseSequence(b.id);
      });
      throw err;
    }
    return out;
  });
}

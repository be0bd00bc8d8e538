// The beam-search oracle: Hugging Face's GenerationMixin._beam_search (transformers 4.51, one
// prompt) transcribed step by step in float64 on top of the float64 GPT-2 reference: numBeams
// running rows from the start (all but the first at -1e9), top 2 * numBeams of the flattened
// (beam x vocab) scores, -1e9 masks, finished beams merged by top-k, the early-stop heuristic.
// Every hypothesis is recomputed from scratch (no KV cache); nothing is shared with lib/.
import type { Gpt2Reference } from './gpt2-f64';

export interface BeamReferenceOptions {
  numBeams: number;
  maxNewTokens: number;
  eosTokenId: number;
  lengthPenalty?: number;
  earlyStopping?: boolean | 'never';
  repetitionPenalty?: number;
  noRepeatNgramSize?: number;
  minNewTokens?: number;
  /** Stop strings, searched in decode(generated tokens): a candidate containing one stops. */
  stop?: string[];
  decode?: (tokens: number[]) => string;
}

export interface BeamReferenceResult {
  /** The numBeams finished hypotheses, best first: generated tokens and HF's sequence score. */
  hypotheses: Array<{ tokens: number[]; score: number }>;
  /** Smallest gap between neighbouring scores among the top 2 * numBeams + 1 of any step. */
  margin: number;
  steps: number;
}

const NEG = -1e9;

// Last-position logits by token sequence, per reference model: the runs of a test share prefixes.
const logitsCache = new WeakMap<Gpt2Reference, Map<string, Float64Array>>();

/** Indices of the k largest values, largest first; ties to the lower index. */
function topk(values: ArrayLike<number>, k: number): number[] {
  // the k-th largest value by a numeric sort of a copy, then the indices at or above it
  const sorted = Float64Array.from(values).sort();
  const threshold = sorted[Math.max(0, sorted.length - k)];
  const idx: number[] = [];
  for (let i = 0; i < values.length; i++) if (values[i] >= threshold) idx.push(i);
  idx.sort((a, b) => (values[b] - values[a]) || (a - b));
  return idx.slice(0, k);
}

export function beamSearchReference(model: Gpt2Reference, prompt: number[], o: BeamReferenceOptions): BeamReferenceResult {
  const B = o.numBeams;
  const K = 2 * B;
  const V = model.config.vocab_size;
  const P = prompt.length;
  const maxLength = P + o.maxNewTokens;
  const lp = o.lengthPenalty ?? 1;
  const early = o.earlyStopping ?? false;
  let cache = logitsCache.get(model);
  if (!cache) logitsCache.set(model, (cache = new Map()));
  const lastLogits = (seq: number[]) => {
    const key = seq.join(',');
    let l = cache!.get(key);
    if (!l) cache!.set(key, (l = model.lastLogits(seq)));
    return l;
  };

  let running: number[][] = Array.from({ length: B }, () => prompt.slice());
  let runningScores: number[] = Array.from({ length: B }, (_, i) => (i === 0 ? 0 : NEG));
  let finished: number[][] = Array.from({ length: B }, () => prompt.slice());
  let finishedScores = Array.from({ length: B }, () => NEG);
  let isFinished = Array.from({ length: B }, () => false);
  let curLen = P;
  let margin = Infinity;
  let steps = 0;

  for (;;) {
    steps++;
    // b. log_softmax, then the logits processors on the log-probabilities, then + running score
    const flat = new Float64Array(B * V);
    for (let b = 0; b < B; b++) {
      const logits = lastLogits(running[b]);
      let max = -Infinity;
      for (const v of logits) max = Math.max(max, v);
      let z = 0;
      for (const v of logits) z += Math.exp(v - max);
      const logZ = max + Math.log(z);
      const lp_ = Array.from(logits, (v) => v - logZ);
      const seq = running[b];
      if ((o.repetitionPenalty ?? 1) !== 1)
        for (const t of new Set(seq)) lp_[t] = lp_[t] < 0 ? lp_[t] * o.repetitionPenalty! : lp_[t] / o.repetitionPenalty!;
      const n = o.noRepeatNgramSize ?? 0;
      if (n > 0 && seq.length + 1 >= n) {
        const prefix = seq.slice(seq.length - n + 1).join(',');
        for (let i = 0; i + n <= seq.length; i++)
          if (seq.slice(i, i + n - 1).join(',') === prefix) lp_[seq[i + n - 1]] = -Infinity;
      }
      if (curLen - P < (o.minNewTokens ?? 0)) lp_[o.eosTokenId] = -Infinity;
      for (let v = 0; v < V; v++) flat[b * V + v] = lp_[v] + runningScores[b];
    }
    // c. the top 2B continuations
    const top = topk(flat, K + 1);
    for (let i = 0; i < K; i++) {
      const gap = flat[top[i]] - flat[top[i + 1]];
      if (flat[top[i + 1]] > NEG / 2) margin = Math.min(margin, gap);
    }
    const cand = top.slice(0, K).map((idx) => ({
      score: flat[idx],
      seq: running[Math.floor(idx / V)].concat(idx % V),
    }));
    // d. which of them stop (eos, a stop string, or max_length reached)
    const stopped = (seq: number[]) => (o.stop ?? []).some((s) => o.decode!(seq.slice(P)).includes(s));
    const hits = cand.map((c) => c.seq[c.seq.length - 1] === o.eosTokenId || c.seq.length >= maxLength || stopped(c.seq));
    // e. the running beams: top B after masking the stopped ones with -1e9
    const masked = cand.map((c, i) => c.score + (hits[i] ? NEG : 0));
    const nextIdx = topk(masked, B);
    const nextRunning = nextIdx.map((i) => cand[i].seq);
    const nextRunningScores = nextIdx.map((i) => masked[i]);
    // f. finished beams: length penalty, masks, merge with the old ones, keep the top B
    const full = isFinished.every(Boolean) && early === true;
    const newScores = cand.map((c, i) => {
      let s = c.score / (curLen + 1 - P) ** lp;
      if (full) s += NEG;
      if (!(hits[i] && i < B)) s += NEG;
      return s;
    });
    const mergedSeqs = finished.concat(cand.map((c) => c.seq));
    const mergedScores = finishedScores.concat(newScores);
    const mergedFinished = isFinished.concat(cand.map((_, i) => hits[i] && i < B));
    const keep = topk(mergedScores, B);
    finished = keep.map((i) => mergedSeqs[i]);
    finishedScores = keep.map((i) => mergedScores[i]);
    isFinished = keep.map((i) => mergedFinished[i]);
    running = nextRunning;
    runningScores = nextRunningScores;
    curLen++;
    // g. stop?
    const bestLength = early === 'never' && lp > 0 ? maxLength - P : curLen - P;
    const bestPossible = runningScores[0] / bestLength ** lp;
    const minFinished = Math.min(...finishedScores);
    const improvementPossible = isFinished.some((f) => bestPossible > (f ? minFinished : NEG));
    const openBeam = !(isFinished.every(Boolean) && early === true);
    const validContinuations = !hits.every(Boolean);
    if (!(improvementPossible && openBeam && validContinuations)) break;
  }
  return {
    hypotheses: finished.map((seq, i) => ({ tokens: seq.slice(P), score: finishedScores[i] })),
    margin,
    steps,
  };
}

// One listener per caller's AbortSignal, however many calls and prompts share it: a signal
// shared by 10 000 prompts would otherwise carry 10 000 listeners (and Node's leak warning).
const subscribers = new WeakMap<AbortSignal, Set<() => void>>();

/** Calls fn when `signal` aborts (now, if it has); returns the unsubscribe. */
export function onAbort(signal: AbortSignal | undefined, fn: () => void): () => void {
  if (!signal) return () => undefined;
  if (signal.aborted) {
    fn();
    return () => undefined;
  }
  let set = subscribers.get(signal);
  if (!set) {
    const fns = new Set<() => void>();
    set = fns;
    subscribers.set(signal, fns);
    signal.addEventListener('abort', () => {
      subscribers.delete(signal);
      for (const f of fns) f();
    }, { once: true });
  }
  const fns = set;
  fns.add(fn);
  return () => fns.delete(fn);
}

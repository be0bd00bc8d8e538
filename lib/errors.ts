// Error classes. Native failures arrive as Errors with a `code`; wrapNativeError() gives them
// the class for that code, so callers can `instanceof` or switch on `code`.

export type ErrorCode =
  | 'E_MODEL_FORMAT'
  | 'E_IO'
  | 'E_OPTION'
  | 'E_DISPOSED'
  | 'E_BACKEND'
  | 'E_OOM'
  | 'E_ABORTED'
  | 'E_NATIVE_LOAD'
  | 'E_INTERNAL';

export class LlmcoreError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A checkpoint file is missing, malformed, or does not match its config. */
export class ModelFormatError extends LlmcoreError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_MODEL_FORMAT', message, options);
  }
}

/** An option or argument is invalid (names the option and what was expected). */
export class OptionError extends LlmcoreError {
  constructor(message: string) {
    super('E_OPTION', message);
  }
}

/** The model was disposed. */
export class DisposedError extends LlmcoreError {
  constructor(message = '[model] this model was disposed') {
    super('E_DISPOSED', message);
  }
}

/** The requested backend (device) cannot start. */
export class BackendError extends LlmcoreError {
  constructor(message: string) {
    super('E_BACKEND', message);
  }
}

/** The operation was aborted through its AbortSignal. */
export class AbortError extends LlmcoreError {
  constructor(message = '[generate] aborted') {
    super('E_ABORTED', message);
  }
}

const byCode: Partial<Record<string, (message: string) => LlmcoreError>> = {
  E_MODEL_FORMAT: (m) => new ModelFormatError(m),
  E_OPTION: (m) => new OptionError(m),
  E_DISPOSED: (m) => new DisposedError(m),
  E_BACKEND: (m) => new BackendError(m),
};

/** Converts an error thrown by the addon into its llmcore class (other errors pass through). */
export function wrapNativeError(err: unknown): unknown {
  // Duck-typed, not instanceof Error: the addon's errors belong to the main realm, which is not
  // the caller's under vm-based runners such as jest.
  if (err instanceof LlmcoreError || typeof err !== 'object' || err === null) return err;
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (typeof code !== 'string' || typeof message !== 'string') return err;
  const make = byCode[code];
  return make ? make(message) : new LlmcoreError(code as ErrorCode, message);
}

/** Runs fn (sync or async), rethrowing native errors as llmcore classes. */
export async function callNative<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw wrapNativeError(err);
  }
}

export function callNativeSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw wrapNativeError(err);
  }
}

import { AbortedError, VmlbError } from '../errors.js';
import { describe, isTransientS3Error } from './s3-errors.js';

export interface RetryOptions {
  /** Attempts in all, the first included. @default 6 */
  tries?: number;
  /** The wait after the first failure; doubled after each next one. @default 250 */
  firstDelayMs?: number;
  /** @default 4000 */
  maxDelayMs?: number;
}

export interface RetryInfo {
  /** What was being done, e.g. `upload layers/<key>.qcow2`. */
  what: string;
  /** The attempt that failed (1-based), of `tries`. */
  attempt: number;
  tries: number;
  delayMs: number;
  error: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Called before each wait between attempts. */
  onRetry?: (info: RetryInfo) => void;
}

/**
 * Runs `fn` until it succeeds, retrying transient S3 failures (isTransientS3Error) with
 * exponential backoff: `fail` turns what is given up on into the error thrown (a refusal at
 * once, not retryable; a transient failure after `tries`, retryable). The engine's own errors
 * and an abort pass through as they are.
 */
export async function withRetry<T>(
  what: string,
  fn: () => Promise<T>,
  o: CallOptions,
  policy: {
    retry: Required<RetryOptions>;
    onRetry?: (info: RetryInfo) => void;
    fail: (what: string, e: unknown, f: { retryable: boolean; tries?: number }) => Error;
  },
): Promise<T> {
  const { tries, firstDelayMs, maxDelayMs } = policy.retry;
  for (let attempt = 1; ; attempt++) {
    if (o.signal?.aborted) throw new AbortedError();
    try {
      return await fn();
    } catch (e) {
      if (o.signal?.aborted) throw new AbortedError();
      if (e instanceof VmlbError) throw e;
      if (!isTransientS3Error(e)) throw policy.fail(what, e, { retryable: false });
      if (attempt >= tries) throw policy.fail(what, e, { retryable: true, tries: attempt });
      // Exponential, with ±25% jitter so a fleet of workers does not retry in step.
      const delayMs = Math.round(Math.min(maxDelayMs, firstDelayMs * 2 ** (attempt - 1)) * (0.75 + Math.random() * 0.5));
      const info: RetryInfo = { what, attempt, tries, delayMs, error: describe(e) };
      policy.onRetry?.(info);
      o.onRetry?.(info);
      await sleep(delayMs, o.signal);
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    };
    const t = setTimeout(done, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new AbortedError());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `p`, or an AbortedError as soon as `signal` fires (after `onAbort` has stopped the work). */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined, onAbort: () => void): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    const abort = () => {
      onAbort();
      reject(new AbortedError());
    };
    if (signal.aborted) return abort();
    signal.addEventListener('abort', abort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', abort));
  });
}

/** Rejects when `p` has not settled within `ms` (the scheduler's probes, the worker-presence look). */
export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms / 1000} s`)), ms).unref()));
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

import type { ResultPromise } from 'execa';

/** SIGKILL to a detached child's process group (the child alone when that fails). */
export function killGroup(child: ResultPromise): void {
  try {
    if (child.pid) process.kill(-child.pid, 'SIGKILL');
    else child.kill('SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

/**
 * Waits for a runner (runScript's, runAttached's): on abort, or once `timeoutMs` has passed,
 * `kill` stops it; either way it is reaped and its status returned.
 */
export async function awaitRunner(
  child: ResultPromise,
  kill: () => void,
  o: { signal?: AbortSignal; timeoutMs?: number },
): Promise<{ exitCode: number | undefined; signal: string | undefined; timedOut: boolean; aborted: boolean }> {
  let timedOut = false;
  let aborted = false;
  const timer = o.timeoutMs
    ? setTimeout(() => {
        timedOut = true;
        kill();
      }, o.timeoutMs)
    : undefined;
  const onAbort = () => {
    aborted = true;
    kill();
  };
  if (o.signal?.aborted) onAbort();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const r = await child;
    return { exitCode: typeof r.exitCode === 'number' ? r.exitCode : undefined, signal: r.signal ?? undefined, timedOut, aborted };
  } catch (e) {
    const r = e as { exitCode?: number; signal?: string };
    return { exitCode: r.exitCode, signal: r.signal, timedOut, aborted };
  } finally {
    if (timer) clearTimeout(timer);
    o.signal?.removeEventListener('abort', onAbort);
  }
}

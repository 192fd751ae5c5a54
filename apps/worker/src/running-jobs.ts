import { AbortedError } from '@vmlb/layer-engine';

/** Why a job was stopped before its end. */
export type StopCause = 'shutdown' | 'cancelled' | 'claim-lost' | 'bullmq';

/**
 * One running job's stop switch. Every source of a stop (the worker's shutdown, the build's
 * cancellation, a lost claim, BullMQ's own cancel) aborts the one signal the job's work uses,
 * and the first cause is kept, so the job can answer each the right way.
 */
export class JobStop {
  private readonly controller = new AbortController();
  cause: StopCause | undefined;

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  stop(cause: StopCause, message: string): void {
    if (this.controller.signal.aborted) return;
    this.cause = cause;
    this.controller.abort(new AbortedError(message));
  }

  /** Stops this job when `signal` aborts. */
  follow(signal: AbortSignal | undefined, cause: StopCause, message: string): () => void {
    if (!signal) return () => {};
    const on = () => this.stop(cause, message);
    if (signal.aborted) on();
    else signal.addEventListener('abort', on, { once: true });
    return () => signal.removeEventListener('abort', on);
  }
}

export interface RunningJob {
  id: string;
  queue: 'layer' | 'flatten';
  stop: JobStop;
  /** Layer keys it uses: kept out of eviction while it runs. */
  keys: Set<string>;
  startedAt: number;
}

/** The jobs this worker runs now: its busy slots, the keys eviction must spare, and shutdown. */
export class RunningJobs {
  private readonly jobs = new Map<string, RunningJob>();
  private handingBack = false;
  private markHandedBack: () => void = () => {};
  /** Resolves once handBackAll() has been called. */
  readonly handedBack = new Promise<void>((r) => (this.markHandedBack = r));

  add(id: string, queue: 'layer' | 'flatten'): RunningJob {
    const job: RunningJob = { id, queue, stop: new JobStop(), keys: new Set(), startedAt: Date.now() };
    this.jobs.set(id, job);
    if (this.handingBack) job.stop.stop('shutdown', 'the worker is stopping');
    return job;
  }

  remove(id: string): void {
    this.jobs.delete(id);
  }

  get busy(): number {
    return this.jobs.size;
  }

  list(): RunningJob[] {
    return [...this.jobs.values()];
  }

  /** Every key a running job uses. */
  protectedKeys(): Set<string> {
    const keys = new Set<string>();
    for (const j of this.jobs.values()) for (const k of j.keys) keys.add(k);
    return keys;
  }

  /** Stops every running job (and any that starts from now on) so it hands itself back. */
  handBackAll(): void {
    this.handingBack = true;
    this.markHandedBack();
    for (const j of this.jobs.values()) j.stop.stop('shutdown', 'the worker is stopping');
  }
}

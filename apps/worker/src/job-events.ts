import type { Redis } from 'ioredis';
import type { BuildEvent } from '@vmlb/layer-engine';
import { appendEvent, type FleetEvent } from '@vmlb/fleet';
import type { Logger } from './logger.js';

/** How often a layer's log output goes to the stream: one event per batch, not per chunk. */
export const LOG_BATCH_MS = 200;
/** A batch this big goes at once. */
const LOG_BATCH_BYTES = 64 * 1024;

type JobFields = Omit<Extract<FleetEvent, { type: 'job' }>, 'type' | 'at' | 'index' | 'worker' | 'status'>;
type FlattenFields = Omit<Extract<FleetEvent, { type: 'flatten' }>, 'type' | 'at' | 'worker' | 'status'>;

/**
 * What one job appends to its build's event stream, in order: its status changes (awaited),
 * and the engine's events for its layer (queued; layer-log chunks batched every LOG_BATCH_MS).
 * A failing append is logged, not thrown: the build's outcome is the job's, not its log's.
 */
export class JobEvents {
  private readonly redis: Redis;
  private readonly buildId: string;
  private readonly index: number;
  private readonly worker: string;
  private readonly log: Logger;
  private tail: Promise<unknown> = Promise.resolve();
  private pending: Extract<BuildEvent, { type: 'layer-log' }> | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(redis: Redis, buildId: string, index: number, worker: string, log: Logger) {
    this.redis = redis;
    this.buildId = buildId;
    this.index = index;
    this.worker = worker;
    this.log = log;
  }

  /** A job status change, after everything queued before it. */
  async job(status: Extract<FleetEvent, { type: 'job' }>['status'], fields: JobFields = {}): Promise<void> {
    this.flushLog();
    await this.push({ type: 'job', at: Date.now(), index: this.index, status, worker: this.worker, ...fields });
  }

  async flatten(status: Extract<FleetEvent, { type: 'flatten' }>['status'], fields: FlattenFields = {}): Promise<void> {
    await this.push({ type: 'flatten', at: Date.now(), status, worker: this.worker, ...fields });
  }

  /** An engine event of this job's layer (not awaited: the build goes on while it is sent). */
  engine(event: BuildEvent): void {
    if (event.type === 'layer-log') {
      if (this.pending) this.pending = { ...this.pending, chunk: this.pending.chunk + event.chunk };
      else this.pending = event;
      if (this.pending.chunk.length >= LOG_BATCH_BYTES) this.flushLog();
      else this.timer ??= setTimeout(() => this.flushLog(), LOG_BATCH_MS);
      return;
    }
    this.flushLog();
    void this.push({ type: 'engine', at: event.at, index: this.index, worker: this.worker, event });
  }

  /** Waits until everything is sent. */
  async close(): Promise<void> {
    this.flushLog();
    await this.tail;
  }

  private flushLog(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const e = this.pending;
    this.pending = undefined;
    if (e) void this.push({ type: 'engine', at: e.at, index: this.index, worker: this.worker, event: e });
  }

  private push(e: FleetEvent): Promise<unknown> {
    this.tail = this.tail.then(() =>
      appendEvent(this.redis, this.buildId, e).catch((err: unknown) => {
        this.log.warn('could not append a build event', { buildId: this.buildId, event: e.type, error: (err as Error).message });
      }),
    );
    return this.tail;
  }
}

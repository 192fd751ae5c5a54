import type { Redis } from 'ioredis';
import { droppedMarker, formatBytes, type BuildEvent, type OutputLimits } from '@vmlb/layer-engine';
import { appendEvent, BUILD_LOG_BUDGET, takeLogBudget, type FleetEvent } from '@vmlb/fleet';
import type { Logger } from './logger.js';

/** How often a layer's log output goes to the stream: one event per batch, not per chunk. */
export const LOG_BATCH_MS = 200;
/** A batch this big (characters) goes at once: no stream entry holds more output than this. */
export const LOG_BATCH_CHARS = 32 * 1024;

/**
 * What of a layer's output a worker streams through Redis (the engine's OutputLimiter, per
 * layer job): lines cut at 4 KiB, at most 1 MiB a layer, at 128 KiB/s on average with bursts
 * of 512 KiB; lines over it are dropped and counted ("… N lines dropped, full log in the
 * store"). The whole build's stream holds at most BUILD_LOG_BUDGET (4 MiB) of output, however
 * many layers print. The layer's log in the store keeps it all, up to VMLB_LOG_MAX.
 */
export const STREAM_OUTPUT_LIMITS: OutputLimits = { lineMax: 4096, totalMax: 1024 * 1024, ratePerSec: 128 * 1024, burst: 512 * 1024 };

type LogEvent = Extract<BuildEvent, { type: 'layer-log' }>;

function countNewlines(s: string): number {
  let n = 0;
  for (let i = s.indexOf('\n'); i >= 0; i = s.indexOf('\n', i + 1)) n++;
  return n;
}

type JobFields = Omit<Extract<FleetEvent, { type: 'job' }>, 'type' | 'at' | 'index' | 'worker' | 'status'>;
type FlattenFields = Omit<Extract<FleetEvent, { type: 'flatten' }>, 'type' | 'at' | 'worker' | 'status'>;

/**
 * What one job appends to its build's event stream, in order: its status changes (awaited),
 * and the engine's events for its layer (queued; layer-log chunks batched every LOG_BATCH_MS,
 * each batch taken from the build's BUILD_LOG_BUDGET: past it, output is dropped and counted,
 * and a marker says how many lines at the layer's end).
 * A failing append is logged, not thrown: the build's outcome is the job's, not its log's.
 */
export class JobEvents {
  private readonly redis: Redis;
  private readonly buildId: string;
  private readonly index: number;
  private readonly worker: string;
  private readonly log: Logger;
  private tail: Promise<unknown> = Promise.resolve();
  private pending: LogEvent | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** The build's budget for output in its stream is spent: output is counted, not sent. */
  private budgetSpent = false;
  private droppedLines = 0;
  /** The last dropped text ended inside a line. */
  private droppedPartial = false;
  private lastLog: { index: number; name: string } | undefined;
  private readonly budget: number;

  constructor(redis: Redis, buildId: string, index: number, worker: string, log: Logger, o: { budget?: number } = {}) {
    this.budget = o.budget ?? BUILD_LOG_BUDGET;
    this.redis = redis;
    this.buildId = buildId;
    this.index = index;
    this.worker = worker;
    this.log = log;
  }

  /** A job status change, after everything queued before it. */
  async job(status: Extract<FleetEvent, { type: 'job' }>['status'], fields: JobFields = {}): Promise<void> {
    this.flushLog();
    this.flushDropped();
    await this.push({ type: 'job', at: Date.now(), index: this.index, status, worker: this.worker, ...fields });
  }

  async flatten(status: Extract<FleetEvent, { type: 'flatten' }>['status'], fields: FlattenFields = {}): Promise<void> {
    await this.push({ type: 'flatten', at: Date.now(), status, worker: this.worker, ...fields });
  }

  /** An engine event of this job's layer (not awaited: the build goes on while it is sent). */
  engine(event: BuildEvent): void {
    if (event.type === 'layer-log') {
      this.lastLog = { index: event.index, name: event.name };
      if (this.budgetSpent) return this.drop(event.chunk);
      if (this.pending && this.pending.index === event.index) this.pending = { ...this.pending, chunk: this.pending.chunk + event.chunk };
      else {
        this.flushLog();
        this.pending = event;
      }
      if (this.pending.chunk.length >= LOG_BATCH_CHARS) this.flushLog();
      else this.timer ??= setTimeout(() => this.flushLog(), LOG_BATCH_MS);
      return;
    }
    this.flushLog();
    if (event.type === 'layer-done' || event.type === 'layer-failed') this.flushDropped();
    void this.push({ type: 'engine', at: event.at, index: this.index, worker: this.worker, event });
  }

  /** Waits until everything is sent. */
  async close(): Promise<void> {
    this.flushLog();
    this.flushDropped();
    await this.tail;
  }

  private drop(text: string): void {
    if (!text) return;
    this.droppedLines += countNewlines(text);
    this.droppedPartial = !text.endsWith('\n');
  }

  /** The marker for output dropped past the build's budget, once the queued batches have taken theirs. */
  private flushDropped(): void {
    this.enqueue(async () => {
      const n = this.droppedLines + (this.droppedPartial ? 1 : 0);
      if (n === 0 || !this.lastLog) return;
      this.droppedLines = 0;
      this.droppedPartial = false;
      const chunk = droppedMarker(n, `past the build's ${formatBytes(this.budget)} of streamed output`);
      await this.append({ type: 'engine', at: Date.now(), index: this.index, worker: this.worker, event: { type: 'layer-log', at: Date.now(), ...this.lastLog, chunk } });
    });
  }

  private flushLog(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const e = this.pending;
    this.pending = undefined;
    if (!e) return;
    // Entries of at most LOG_BATCH_CHARS, cut after a line where there is one.
    for (let at = 0; at < e.chunk.length; ) {
      let end = Math.min(e.chunk.length, at + LOG_BATCH_CHARS);
      if (end < e.chunk.length) {
        const nl = e.chunk.lastIndexOf('\n', end - 1);
        if (nl >= at) end = nl + 1;
      }
      this.sendLog({ ...e, chunk: e.chunk.slice(at, end) });
      at = end;
    }
  }

  /** Sends one batch, as much of it as the build's budget still allows. */
  private sendLog(e: LogEvent): void {
    this.enqueue(async () => {
      if (this.budgetSpent) return this.drop(e.chunk);
      let chunk = e.chunk;
      const allowed = await takeLogBudget(this.redis, this.buildId, chunk.length, this.budget);
      if (allowed < chunk.length) {
        // Spent: what fits goes (to its last whole line), the rest is counted; later output is dropped at once.
        this.budgetSpent = true;
        const cut = allowed > 0 ? chunk.lastIndexOf('\n', allowed - 1) + 1 : 0;
        this.drop(chunk.slice(cut));
        chunk = `${chunk.slice(0, cut)}… output past the build's ${formatBytes(this.budget)} is not streamed here, full log in the store\n`;
      }
      await this.append({ type: 'engine', at: e.at, index: this.index, worker: this.worker, event: { ...e, chunk } });
    });
  }

  private push(e: FleetEvent): Promise<unknown> {
    return this.enqueue(() => this.append(e));
  }

  /** Runs `task` after everything queued before it; a failure is logged. */
  private enqueue(task: () => Promise<unknown>): Promise<unknown> {
    this.tail = this.tail.then(task).catch((err: unknown) => {
      this.log.warn('could not append a build event', { buildId: this.buildId, error: (err as Error).message });
    });
    return this.tail;
  }

  private append(e: FleetEvent): Promise<unknown> {
    return appendEvent(this.redis, this.buildId, e);
  }
}

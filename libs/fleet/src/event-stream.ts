import type { Redis } from 'ioredis';
import type { BuildState, FleetEvent } from './build-record.js';
import { redisKeys } from './names.js';

/**
 * A build's event stream, `vmlb:events:<buildId>`: workers append FleetEvents (JSON in field
 * `e`), the scheduler reads them from an id on and folds them into the build record. Redis
 * holds live state only, so a stream is bounded however much a build's layers print:
 *
 * - in entries: at most about EVENTS_MAXLEN (XADD MAXLEN ~);
 * - in bytes: a layer's output goes in as batches of at most 32 KiB, at most 1 MiB a layer
 *   (4 KiB a line, 128 KiB/s with bursts of 512 KiB: see apps/worker/src/job-events.ts) and
 *   at most BUILD_LOG_BUDGET for the whole build (takeLogBudget); what is over is dropped,
 *   with a "… N lines dropped, full log in the store" line;
 * - in time: it expires EVENTS_TTL_S after its last event while the build runs, and
 *   EVENTS_FINISHED_TTL_S after the build ended (endEventStream), its record being stored.
 */

export const EVENTS_MAXLEN = 10_000;
/** A week: a running build's stream outlives any scheduler outage. */
export const EVENTS_TTL_S = 7 * 24 * 3600;
/** A day: a finished build's stream, kept for clients that replay it (its record has the rest). */
export const EVENTS_FINISHED_TTL_S = 24 * 3600;
/** The most layer output (characters) all of a build's jobs together put in its stream: 4 MiB. */
export const BUILD_LOG_BUDGET = 4 * 1024 * 1024;

export interface StreamedEvent {
  /** The stream entry id (pass the last one seen to readEvents to go on after it). */
  id: string;
  event: FleetEvent;
}

/** Appends an event; returns its stream id. */
export async function appendEvent(redis: Redis, buildId: string, event: FleetEvent): Promise<string> {
  const key = redisKeys.events(buildId);
  const r = await redis.multi().xadd(key, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'e', JSON.stringify(event)).expire(key, EVENTS_TTL_S).exec();
  const [err, id] = r?.[0] ?? [new Error('XADD was not run'), null];
  if (err) throw err;
  return id as string;
}

export interface ReadOptions {
  /** Wait this long for an event when there is none after `from` (XREAD BLOCK); 0 returns at once. @default 0 */
  blockMs?: number;
  /** @default 500 */
  count?: number;
}

/**
 * The events after stream id `from` ('0' for all of them). With `blockMs` this waits for the
 * next one: give it a connection of its own (a blocked connection serves nobody else).
 */
export async function readEvents(redis: Redis, buildId: string, from = '0', o: ReadOptions = {}): Promise<StreamedEvent[]> {
  const key = redisKeys.events(buildId);
  const count = o.count ?? 500;
  const reply = o.blockMs
    ? await redis.xread('COUNT', count, 'BLOCK', o.blockMs, 'STREAMS', key, from)
    : await redis.xread('COUNT', count, 'STREAMS', key, from);
  const entries = reply?.[0]?.[1] ?? [];
  const out: StreamedEvent[] = [];
  for (const [id, fields] of entries) {
    const i = fields.indexOf('e');
    if (i < 0 || i + 1 >= fields.length) continue;
    try {
      out.push({ id, event: JSON.parse(fields[i + 1]!) as FleetEvent });
    } catch {
      /* not ours: skipped */
    }
  }
  return out;
}

/**
 * Takes `n` characters of the build's stream budget for layer output (BUILD_LOG_BUDGET, shared
 * by all its jobs, on any worker); returns how many of them may go in (0 once it is spent).
 */
export async function takeLogBudget(redis: Redis, buildId: string, n: number, budget = BUILD_LOG_BUDGET): Promise<number> {
  const key = redisKeys.logBudget(buildId);
  const r = await redis.multi().incrby(key, n).expire(key, EVENTS_TTL_S).exec();
  const [err, total] = r?.[0] ?? [new Error('INCRBY was not run'), null];
  if (err) throw err;
  const before = Number(total) - n;
  return Math.max(0, Math.min(n, budget - before));
}

/**
 * The build has ended (its final record is stored): its stream says so last (an `ended` event,
 * for the schedulers that follow it without writing its record), and it and the log budget
 * expire EVENTS_FINISHED_TTL_S from now.
 */
export async function endEventStream(redis: Redis, buildId: string, state: BuildState): Promise<void> {
  const key = redisKeys.events(buildId);
  const ended: FleetEvent = { type: 'ended', at: Date.now(), state };
  await redis.multi().xadd(key, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'e', JSON.stringify(ended)).expire(key, EVENTS_FINISHED_TTL_S).expire(redisKeys.logBudget(buildId), EVENTS_FINISHED_TTL_S).exec();
}

import type { Redis } from 'ioredis';
import type { FleetEvent } from './build-record.js';
import { redisKeys } from './names.js';

/**
 * A build's event stream, `vmlb:events:<buildId>`: workers append FleetEvents (JSON in field
 * `e`), the scheduler reads them from an id on and folds them into the build record. Redis
 * holds live state only: the stream is capped (about EVENTS_MAXLEN entries: a layer's log is
 * batched, so that is plenty) and expires EVENTS_TTL_S after its last event.
 */

export const EVENTS_MAXLEN = 10_000;
/** A week: long after the scheduler has folded them into the stored build record. */
export const EVENTS_TTL_S = 7 * 24 * 3600;

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

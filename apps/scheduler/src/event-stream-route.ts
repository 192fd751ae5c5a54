import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { redisKeys } from '@vmlb/fleet';
import type { BuildEvent } from '@vmlb/layer-engine';
import type { StoredRecord } from './build-records.js';
import type { BuildHistory } from './build-history.js';
import { compareStreamIds, parseEntry, type BuildFollower, type FollowerMessage } from './build-follower.js';
import { DisplayEvents } from './display-events.js';
import { publicRecord } from './public-record.js';

/**
 * GET /v1/builds/:id/events, as server-sent events:
 *
 *   data: <BuildEvent>               what `vmlb build --json` prints; `id:` is the Redis stream id
 *                                    for the events that came from a worker
 *   event: end / data: <record>      the build's final record; the stream ends after it
 *
 * First the build's plan and hits (from its record), then every event already in its Redis
 * stream, then the live ones as this scheduler's follower reads them (whether or not it is the
 * one that leads: any scheduler serves this), then the outcome. A client that
 * reconnects with Last-Event-ID (or ?after=ID) gets only what came after that id. A build
 * whose stream has expired is told from its record.
 */
export async function streamBuildEvents(
  req: FastifyRequest,
  reply: FastifyReply,
  ctx: { redis: Redis; follower: BuildFollower; records: BuildHistory; imageLocation: (path: string) => string; pingMs?: number },
  record: StoredRecord,
): Promise<void> {
  const id = record.id;
  const query = req.query as { after?: string };
  const after = (req.headers['last-event-id'] as string | undefined) ?? query.after;
  const resumeFrom = after && /^\d+-\d+$/.test(after) ? after : undefined;

  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  // Node sends the headers with the first write: a resumed stream (Last-Event-ID) may have
  // nothing to write until the build moves on, and its client (or a proxy) would wait for them.
  raw.flushHeaders();
  let closed = false;
  const write = (text: string) => {
    if (!closed) raw.write(text);
  };
  const sendEvent = (e: BuildEvent, streamId?: string) => write(`${streamId ? `id: ${streamId}\n` : ''}data: ${JSON.stringify(e)}\n\n`);

  const tr = new DisplayEvents(record, ctx.imageLocation);
  let lastSent = resumeFrom ?? '0';
  let live = false;
  const buffered: FollowerMessage[] = [];
  let finished: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (finished = resolve));

  const end = (final: StoredRecord) => {
    for (const e of tr.finale(final)) sendEvent(e);
    write(`event: end\ndata: ${JSON.stringify(publicRecord(final))}\n\n`);
    closed = true;
    raw.end();
    finished();
  };
  const handle = (m: FollowerMessage) => {
    if (m.type === 'end') return end(m.record);
    if (compareStreamIds(m.entry.id, lastSent) <= 0) return;
    lastSent = m.entry.id;
    for (const e of tr.fromFleet(m.entry.event)) sendEvent(e, m.entry.id);
  };

  // Subscribe before reading the history, so nothing falls between the two.
  const unsubscribe = ctx.follower.subscribe(record, (m) => (live ? handle(m) : buffered.push(m)));
  const ping = setInterval(() => write(': ping\n\n'), ctx.pingMs ?? 15_000);
  // The response's close, not the request's: a GET's request stream may close as soon as it is read.
  raw.on('close', () => {
    closed = true;
    finished();
  });

  try {
    if (!resumeFrom) for (const e of tr.prelude()) sendEvent(e);
    let sawHistory = false;
    for (;;) {
      const entries = (await ctx.redis.xrange(redisKeys.events(id), `(${lastSent}`, '+', 'COUNT', 500)) as Array<[string, string[]]>;
      if (entries.length === 0 || closed) break;
      for (const [streamId, fields] of entries) {
        sawHistory = true;
        lastSent = streamId;
        const entry = parseEntry(streamId, fields);
        if (entry) for (const e of tr.fromFleet(entry.event)) sendEvent(e, streamId);
      }
    }
    if (!unsubscribe) {
      // Not followed: the build is finished. Its stored record is the truth.
      const final = (await ctx.records.get(id)) ?? record;
      if (!sawHistory && !resumeFrom) for (const e of tr.fromRecord(final)) sendEvent(e);
      end(final);
    } else {
      live = true;
      for (const m of buffered.splice(0)) handle(m);
    }
    await done;
  } finally {
    clearInterval(ping);
    unsubscribe?.();
    if (!raw.writableEnded) raw.end();
  }
}

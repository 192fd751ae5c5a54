/**
 * The schedulers' leader lease on a real redis-server: one leads, a clean close hands over, a
 * dead leader's lease runs out and another takes it, and a leader cut off from Redis (the server
 * frozen with SIGSTOP: no error, no answer, as in a partition) steps down by itself before its
 * lease can run out.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { redisKeys } from '../libs/fleet/src/names.js';
import { LeaderLease } from '../apps/scheduler/src/leader-lease.js';
import type { Logger } from '../apps/scheduler/src/logger.js';
import { startRedis, type RedisServer } from './helpers/redis-server.js';

let server: RedisServer;
const conns: Redis[] = [];

beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  server.thaw();
  for (const c of conns) c.disconnect();
  await server.close();
});

/** A lease as the scheduler makes it (a connection that queues commands and retries for ever). */
function lease(id: string, changes: Array<{ leading: boolean; at: number; why: string }>): LeaderLease {
  const redis = new Redis(server.url, { maxRetriesPerRequest: null });
  conns.push(redis);
  let why = '';
  const log: Logger = { info: (_m, f) => (why = String(f?.why ?? '')), warn() {}, error() {} };
  return new LeaderLease(redis, id, (leading) => changes.push({ leading, at: Date.now(), why }), log, { ttlMs: 2000, renewMs: 400 });
}

async function until(what: string, ok: () => boolean | Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.skipIf(Boolean(process.env.REDIS_URL))('leader lease', () => {
  test('one of two leads; a clean close hands the lease over at the next try', async () => {
    const ca: Array<{ leading: boolean; at: number; why: string }> = [];
    const cb: typeof ca = [];
    const a = lease('sched-a', ca);
    const b = lease('sched-b', cb);
    await a.start();
    await b.start();
    expect([a.isLeader, b.isLeader]).toEqual([true, false]);
    const t0 = Date.now();
    await a.close();
    await until('b taking the lease', () => b.isLeader, 2000);
    expect(Date.now() - t0).toBeLessThan(1500);
    await b.close();
  });

  test('a leader that stops renewing (its process gone) loses the lease within ttl + renew', async () => {
    const cc: Array<{ leading: boolean; at: number; why: string }> = [];
    const cd: typeof cc = [];
    const c = lease('sched-c', cc);
    await c.start();
    expect(c.isLeader).toBe(true);
    // As a kill -9 leaves it: nobody renews, nobody releases.
    (c as unknown as { closed: boolean }).closed = true;
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    const d = lease('sched-d', cd);
    await d.start();
    await until('d taking the lease', () => d.isLeader, 4000);
    expect(Date.now() - t0).toBeLessThan(2000 + 400 + 500);
    await d.close();
  });

  test('a leader cut off from Redis steps down by itself before its lease runs out, and one leads again after', async () => {
    const ce: Array<{ leading: boolean; at: number; why: string }> = [];
    const cf: typeof ce = [];
    const e = lease('sched-e', ce);
    const f = lease('sched-f', cf);
    await e.start();
    await f.start();
    expect(e.isLeader).toBe(true);
    await new Promise((r) => setTimeout(r, 500)); // a renewal or so
    server.freeze();
    const frozenAt = Date.now();
    try {
      // ttl 2 s since the last renewal (≤ 0.4 s before the freeze), less one try: down within 2 s.
      await until('e stepping down', () => !e.isLeader, 4000);
      expect(Date.now() - frozenAt).toBeLessThanOrEqual(2000 + 100);
      expect(ce.at(-1)).toMatchObject({ leading: false });
      expect(ce.at(-1)!.why).toMatch(/could not renew the lease for [\d.]+ s \(no answer within 0.4 s\)/);
      expect(f.isLeader).toBe(false);
    } finally {
      server.thaw();
    }
    // Redis answers again: exactly one of the two leads, and the key names it.
    await until('a leader again', () => e.isLeader || f.isLeader, 4000);
    await new Promise((r) => setTimeout(r, 1000));
    expect(Number(e.isLeader) + Number(f.isLeader)).toBe(1);
    const probe = new Redis(server.url);
    conns.push(probe);
    expect(await probe.get(redisKeys.leader)).toBe(e.isLeader ? 'sched-e' : 'sched-f');
    await e.close();
    await f.close();
  });
});

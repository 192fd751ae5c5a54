/**
 * A scheduler whose start fails half-way leaves nothing open: what it had acquired before the
 * failure (Redis connections, the build history's pool, its temporary folder) is released, last
 * first (apps/scheduler/src/exit-stack.ts). Checked from the outside, on this file's own
 * redis-server (`CLIENT LIST`: no connection but this file's) and PostgreSQL (`pg_stat_activity`),
 * so that a leak shows whatever the scheduler's code thinks it closed.
 */
import { Redis } from 'ioredis';
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fleetConfigFrom } from '../libs/fleet/src/index.js';
import { createScheduler, Teams } from '../apps/scheduler/src/index.js';
import { memoryLogger, teamsJson, waitFor } from './helpers/fleet-api.js';
import { startFleetServices } from './helpers/fleet-services.js';
import { testDatabaseUrl } from './helpers/postgres.js';
import { freePort } from './helpers/redis-server.js';

// With an external REDIS_URL, other clients share the server: its client list proves nothing.
const externalRedis = !!process.env.REDIS_URL;

/** This file's Redis, S3 and PostgreSQL database, and a folder the schedulers get as TMPDIR. */
async function startServices() {
  const services = await startFleetServices('scheduler-start');
  const tmp = path.join(services.sb.dir, 'tmp');
  await mkdir(tmp, { recursive: true });
  const probe = new Redis(services.redis.url, { maxRetriesPerRequest: null });
  return { ...services, tmp, probe, databaseUrl: await testDatabaseUrl(services.sharedUrl) };
}

let f: Awaited<ReturnType<typeof startServices>>;
beforeAll(async () => void (f = await startServices()));
afterAll(async () => {
  f?.probe.disconnect();
  await f?.close();
});

/** The server's connections other than this file's probe. */
async function otherRedisClients(): Promise<string[]> {
  const own = String(await f.probe.client('ID'));
  const list = String(await f.probe.client('LIST'));
  return list.split('\n').filter((l) => l.trim() && !l.startsWith(`id=${own} `));
}

/** Connections to the database other than the one asking. */
async function otherDatabaseSessions(): Promise<number> {
  const c = new pg.Client({ connectionString: f.databaseUrl });
  await c.connect();
  try {
    const r = await c.query<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()');
    return Number(r.rows[0]!.n);
  } finally {
    await c.end();
  }
}

/**
 * Nothing of the scheduler's stays connected: none now, and none a moment later (a connection
 * left to ioredis would come back by itself).
 */
async function expectNoRedisClients(): Promise<void> {
  await waitFor('the scheduler\'s Redis connections to close', async () => (await otherRedisClients()).length === 0, 5000).catch(() => undefined);
  expect(await otherRedisClients()).toEqual([]);
  await new Promise((r) => setTimeout(r, 500));
  expect(await otherRedisClients()).toEqual([]);
}

/** Starts a scheduler with TMPDIR pointing into the sandbox, so that its own work folder can be seen. */
async function start(env: Record<string, string>) {
  const config = { ...fleetConfigFrom(env), schedulerHost: '127.0.0.1', schedulerPort: 0 };
  const before = process.env.TMPDIR;
  process.env.TMPDIR = f.tmp;
  try {
    return await createScheduler({ config, teams: Teams.parse(teamsJson(), 'test teams'), log: memoryLogger(), follower: { blockMs: 200, checkEveryMs: 500 } });
  } finally {
    if (before === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = before;
  }
}

describe.skipIf(externalRedis)('a start that fails half-way', () => {
  it('a build history that does not answer: the Redis connections and the work folder made before are gone', async () => {
    const port = await freePort();
    await expect(start({ ...f.env, VMLB_DATABASE_URL: `postgres://vmlb@127.0.0.1:${port}/vmlb` })).rejects.toThrow(`PostgreSQL at 127.0.0.1:${port}/vmlb: nothing listens there`);
    await expectNoRedisClients();
    expect(await readdir(f.tmp)).toEqual([]);
  });

  it('a shared store that does not answer (after Redis and PostgreSQL are open): neither keeps a connection', async () => {
    const port = await freePort();
    const env = { ...f.env, S3_ENDPOINT: `http://127.0.0.1:${port}`, VMLB_DATABASE_URL: f.databaseUrl };
    await expect(start(env)).rejects.toThrow(`at http://127.0.0.1:${port}: list builds/ failed`);
    await expectNoRedisClients();
    await waitFor('the history\'s connections to close', async () => (await otherDatabaseSessions()) === 0, 5000);
    expect(await readdir(f.tmp)).toEqual([]);
  });

  it('a whole start, closed twice: everything is released once', async () => {
    const scheduler = await start({ ...f.env, VMLB_DATABASE_URL: f.databaseUrl });
    expect((await otherRedisClients()).length).toBeGreaterThan(0);
    await Promise.all([scheduler.close(), scheduler.close()]);
    await scheduler.close();
    await expectNoRedisClients();
    await waitFor('the history\'s connections to close', async () => (await otherDatabaseSessions()) === 0, 5000);
    expect(await readdir(f.tmp)).toEqual([]);
  });
});

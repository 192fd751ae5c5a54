/**
 * The build history in PostgreSQL and more than one scheduler: records from before (the
 * shared store's builds/*.json) imported once and nothing lost; the API's filters and search;
 * two schedulers on one Redis and one database, exactly one of them leading, the other taking
 * over when it goes; a record final in the history never overwritten.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { s3ConfigFrom, SharedStore } from '../libs/layer-engine/src/index.js';
import { BuildHistory } from '../apps/scheduler/src/build-history.js';
import { StoreIndexRecords, newBuildId, type StoredRecord } from '../apps/scheduler/src/build-records.js';
import { ObjectStore } from '../apps/scheduler/src/object-store.js';
import { apiFor, startScheduler, TOKENS, type RunningScheduler } from './helpers/fleet-api.js';
import { startFleetServices, type FleetServices } from './helpers/fleet-services.js';
import { testDatabaseUrl } from './helpers/postgres.js';

let services: FleetServices;
let shared: SharedStore;
let history: BuildHistory;

const record = (o: Partial<StoredRecord> & { team: string; createdAt: string }): StoredRecord => ({
  version: 1,
  id: newBuildId(Date.parse(o.createdAt)),
  pool: 'default',
  project: 'a'.repeat(64),
  state: 'done',
  finishedAt: new Date(Date.parse(o.createdAt) + 30_000).toISOString(),
  layers: [
    { index: 0, name: '01_base', kind: 'base-image', key: 'k0'.padEnd(64, '0'), status: 'hit', source: 'shared' },
    { index: 1, name: '02_app', kind: 'build-layer', key: 'k1'.padEnd(64, '1'), status: 'done', worker: 'w1', seconds: 12, bytes: 1000 },
  ],
  output: 'chain',
  image: null,
  ...o,
});

beforeAll(async () => {
  services = await startFleetServices('history');
  shared = new SharedStore(s3ConfigFrom(services.sharedUrl, services.env));
  history = await BuildHistory.open(await testDatabaseUrl(services.sharedUrl));
});

afterAll(async () => {
  await history?.close();
  shared?.close();
  await services?.close();
});

describe('the history', () => {
  const old: StoredRecord[] = [];
  let sched: RunningScheduler | undefined;
  afterAll(async () => sched?.close());

  it('imports the shared store\'s records once, each as it was, listed in an index or not', async () => {
    const legacy = new StoreIndexRecords(shared as never, new ObjectStore(s3ConfigFrom(services.sharedUrl, services.env)));
    for (let i = 0; i < 30; i++) old.push(record({ team: i % 3 ? 'web' : 'data', createdAt: new Date(Date.UTC(2026, 10, 1, i)).toISOString(), state: i === 7 ? 'failed' : 'done', error: i === 7 ? 'layer 02_app failed with exit code 2' : undefined }));
    for (const r of old) await legacy.put(r);
    // One record with no line in any index (an index write lost): imported too.
    const orphan = record({ team: 'web', createdAt: '2026-11-20T10:00:00.000Z' });
    await shared.putJson(`builds/${orphan.id}.json`, orphan);
    old.push(orphan);
    // Two objects under builds/ that are no records: skipped, counted, left in place; the rest imported.
    await shared.putJson('builds/bnotarecord1.json', { note: 'not a build record' });
    const half = path.join(os.tmpdir(), `vmlb-history-half-${process.pid}.json`);
    await writeFile(half, '{ half');
    await shared.putFile('builds/bnotjson0002.json', half);
    await rm(half, { force: true });

    sched = await startScheduler(services.env);
    expect(sched.log.lines.join('\n')).toMatch(/imported the shared store's build records into the history .*"records":31,"skipped":2/);
    expect(sched.log.lines.join('\n')).toMatch(/2 object\(s\) under builds\/ in the shared store are no build records/);
    for (const r of old) expect(await history.get(r.id)).toEqual(JSON.parse(JSON.stringify(r)));
    await sched.close();
    // A second start imports nothing again.
    sched = await startScheduler(services.env);
    expect(sched.log.lines.join('\n')).not.toMatch(/imported/);
  });

  it('lists with filters and search, newest first, and pages with before=', async () => {
    const api = apiFor(() => sched!.url, TOKENS.web);
    await history.putMany([
      record({ team: 'web', createdAt: '2026-11-25T10:00:00.000Z', projectName: 'edge-router', gitBranch: 'main', gitCommit: 'abcdef0123', submitter: 'ana@ci' }),
      record({ team: 'web', createdAt: '2026-11-25T11:00:00.000Z', projectName: 'edge-router', gitBranch: 'feature/tls', gitCommit: 'abc9990000', submitter: 'bo@laptop', state: 'failed' }),
      record({ team: 'data', createdAt: '2026-11-25T12:00:00.000Z', projectName: 'warehouse', gitBranch: 'main', submitter: 'cy@ci' }),
    ]);
    const ids = async (q: string, token: string = TOKENS.web) => {
      const r = await api.json('GET', `/v1/builds?${q}`, { token });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      return (r.body.builds as Array<{ projectName?: string; gitBranch?: string; team: string; state: string }>).map((b) => `${b.team}:${b.projectName ?? '-'}@${b.gitBranch ?? '-'}:${b.state}`);
    };
    expect(await ids('project=edge-router')).toEqual(['web:edge-router@feature/tls:failed', 'web:edge-router@main:done']);
    expect(await ids('branch=main')).toEqual(['web:edge-router@main:done']);
    expect(await ids('commit=abc9')).toEqual(['web:edge-router@feature/tls:failed']);
    expect(await ids('q=ROUTER&state=failed')).toEqual(['web:edge-router@feature/tls:failed']);
    expect(await ids('q=laptop')).toEqual(['web:edge-router@feature/tls:failed']);
    // A team sees only its own; an admin every team's.
    expect(await ids('q=warehouse')).toEqual([]);
    expect(await ids('q=warehouse', TOKENS.ops)).toEqual(['data:warehouse@main:done']);
    expect(await ids('since=2026-11-25T10:30:00Z&until=2026-11-25T11:30:00Z')).toEqual(['web:edge-router@feature/tls:failed']);
    // Pages: 5, then the 5 after the last.
    const page1 = (await api.json('GET', '/v1/builds?limit=5')).body.builds as Array<{ id: string; createdAt: string }>;
    const page2 = (await api.json('GET', `/v1/builds?limit=5&before=${page1[4]!.id}`)).body.builds as Array<{ id: string; createdAt: string }>;
    expect(page2).toHaveLength(5);
    expect(page2[0]!.createdAt <= page1[4]!.createdAt).toBe(true);
    expect(new Set([...page1, ...page2].map((b) => b.id)).size).toBe(10);
    const bad = await api.json('GET', '/v1/builds?since=yesterday');
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toMatch(/^since must be an ISO time/);
  });

  it('series: hit rate and durations per bucket, from the history', async () => {
    const api = apiFor(() => sched!.url, TOKENS.ops);
    const now = Date.now();
    const at = new Date(Math.floor(now / 3600_000) * 3600_000 + 60_000).toISOString();
    await history.putMany([record({ team: 'data', createdAt: at }), record({ team: 'data', createdAt: at, finishedAt: new Date(Date.parse(at) + 90_000).toISOString() })]);
    const r = await api.json('GET', '/v1/stats/cache?hours=2&bucketMinutes=60&team=data');
    expect(r.status).toBe(200);
    const last = r.body.teams.data.at(-1);
    expect(last).toMatchObject({ builds: 2, lookups: 4, hits: 2, rate: 0.5, p50Seconds: 60 });
  });

  it('never overwrites a final record with another state', async () => {
    const r = record({ team: 'web', createdAt: new Date().toISOString(), state: 'building', finishedAt: undefined });
    expect(await history.put(r)).toBe(true);
    expect(await history.put({ ...r, state: 'cancelled', finishedAt: new Date().toISOString(), error: 'cancelled by web' })).toBe(true);
    // A late write of the leader's, still building: refused.
    expect(await history.put({ ...r, state: 'building' })).toBe(false);
    expect(await history.put({ ...r, state: 'failed', error: 'x' })).toBe(false);
    expect((await history.get(r.id))?.state).toBe('cancelled');
  });
});

describe('two schedulers', () => {
  it('serve the API both; exactly one leads, and the other takes over when it goes', async () => {
    const lease = { ttlMs: 1500, renewMs: 300 };
    const a = await startScheduler(services.env, { lease });
    const b = await startScheduler(services.env, { lease });
    try {
      expect([a.scheduler.leading, b.scheduler.leading].filter(Boolean)).toHaveLength(1);
      const [leader, other] = a.scheduler.leading ? [a, b] : [b, a];
      for (const s of [a, b]) {
        const health = await (await fetch(`${s.url}/healthz`)).json();
        expect(health).toMatchObject({ ok: true, database: 'ok', leader: s === leader });
        expect((await apiFor(() => s.url, TOKENS.web).json('GET', '/v1/builds?limit=1')).status).toBe(200);
      }
      // The fleet's state (queues, workers) once, from the leader: a sum over the schedulers counts each once.
      const fleetSeries = async (s: typeof a) => (await (await fetch(`${s.url}/metrics`)).text()).split('\n').filter((l) => /^vmlb_(queue_jobs|queue_oldest_job_age_seconds|fleet_workers|fleet_slots)\{/.test(l));
      expect((await fleetSeries(leader)).length).toBeGreaterThan(0);
      expect(await fleetSeries(other)).toEqual([]);
      expect(await (await fetch(`${other.url}/metrics`)).text()).toMatch(/^vmlb_scheduler_leader 0$/m);
      const t0 = Date.now();
      await leader.close();
      while (!other.scheduler.leading) {
        if (Date.now() - t0 > 5000) throw new Error('the other scheduler did not take the lead within 5 s');
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(other.log.lines.join('\n')).toMatch(/this scheduler leads/);
      expect((await fleetSeries(other)).length).toBeGreaterThan(0);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('a database that is not there', () => {
  it('stops the scheduler with one line naming it', async () => {
    const url = new URL(await testDatabaseUrl(services.sharedUrl));
    url.pathname = '/no_such_db';
    await expect(startScheduler({ ...services.env, VMLB_DATABASE_URL: url.toString() })).rejects.toThrow(/^preparing the build history: PostgreSQL at 127\.0\.0\.1:\d+\/no_such_db: no such database$/);
    const c = new pg.Client({ connectionString: url.toString().replace('/no_such_db', '/postgres') });
    await c.connect();
    expect((await c.query("SELECT 1 FROM pg_database WHERE datname = 'no_such_db'")).rowCount).toBe(0);
    await c.end();
  });
});

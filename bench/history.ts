/**
 * history-scale: the build history at a fleet's scale, simulated. A private PostgreSQL gets
 * 1,000,000 build records of 100 teams (100,000 with --quick), made by a seeded generator and
 * written through BuildHistory.putMany in batches (the scheduler's own write path); then an
 * in-process scheduler on that database (over a private Redis and s3rver) answers, over HTTP on
 * loopback, one request at a time (keep-alive), each query ≥ 200 times after a warm-up:
 *
 *   list          GET /v1/builds, a team's token (its first page); ?state=failed
 *   filters       ?state=failed&project=…&branch=…&since=… (a team's own project and branch)
 *   search        ?q=WORD (a word of the team's project names), ?q= three characters of a
 *                 commit, ?q= a short commit (7 characters)
 *   deep page     ?before=ID, ID the last build of the 10th page
 *   build page    GET /v1/builds/:id
 *   series        GET /v1/stats/cache?hours=720&bucketMinutes=360 (30 days of hit rate)
 *
 * and with the admin token (every team) the list, a search and the series. The team queries
 * rotate over 20 teams (each with its own token), so no answer is the one before it again. The
 * generated records are all final (a scheduler that leads follows the unfinished ones), times
 * relative to the run's start. The full run takes about 7 minutes here, --quick about 2.
 *
 * Beside it, the store index of before (StoreIndexRecords: a record per object and one index per
 * team in the shared store, s3rver here) with 10,000 records of the same generator, served by
 * the scheduler's routes as they were before the history (GET /v1/builds filtered in memory,
 * GET /v1/builds/:id from the store, hitRateSeries over the indexes), rebuilt in this file over
 * the same classes: the queries it can answer, and the ratios.
 *
 * VMLB_BENCH_HISTORY_RECORDS overrides the number of records (a look at another scale).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { fleetConfigFrom } from '@vmlb/fleet';
import type { BuildSummary } from '@vmlb/fleet';
import { SharedStore, s3ConfigFrom } from '@vmlb/layer-engine';
import { BuildHistory } from '../apps/scheduler/src/build-history.js';
import { StoreIndexRecords, type StoredRecord } from '../apps/scheduler/src/build-records.js';
import { ObjectStore } from '../apps/scheduler/src/object-store.js';
import { startPrivatePostgres } from '../apps/scheduler/src/private-postgres.js';
import { createScheduler } from '../apps/scheduler/src/scheduler.js';
import { sha256Hex, Teams } from '../apps/scheduler/src/teams.js';
import { silentLogger } from '../apps/scheduler/src/logger.js';
import { startRedis } from '../test/helpers/redis-server.js';
import { startS3Server } from '../test/helpers/s3-server.js';
import { TMP_ROOT, progress, type BenchOptions, type Row } from './harness.js';
import { REQUESTS, WARMUP, client, type Client, type Get, type Timing } from './history-client.js';
import { legacyServer } from './history-legacy-server.js';
import { DAY_MS, POOLS, TEAM_COUNT, generateRecords, teamName } from './history-records.js';
import { checkInterrupted } from './run-command.js';

const FULL_RECORDS = 1_000_000;
const QUICK_RECORDS = 100_000;
const LEGACY_RECORDS = 10_000;
const DAYS = 365;
const BATCH = 1000;
/** putMany calls in flight while loading. */
const WRITERS = 2;
/** StoreIndexRecords.put calls in flight per batch (its index writes are queued per team). */
const LEGACY_PUTS = 8;
/** Requests rotate over this many teams. */
const ROUND = 20;
const TARGET_MS = 100;

const token = (team: string) => `bench-history-${team}-0123456789`;
const ADMIN = 'bench-history-admin-0123456789';

function teamsOf(): Teams {
  const list = Array.from({ length: TEAM_COUNT }, (_, i) => ({ team: teamName(i), tokenSha256: sha256Hex(token(teamName(i))), pool: POOLS[i % POOLS.length]! }));
  return Teams.parse(JSON.stringify({ teams: [...list, { team: 'ops', tokenSha256: sha256Hex(ADMIN), admin: true }] }), 'history-scale teams');
}

/** fn over items, at most k at a time. */
async function inParallel<T>(items: T[], k: number, fn: (x: T) => Promise<unknown>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: Math.min(k, items.length) }, async () => {
    while (i < items.length) await fn(items[i++]!);
  }));
}

/** Writes `n` generated records through `put` in batches of BATCH, WRITERS at a time; records/s. */
async function load(n: number, from: number, to: number, put: (batch: StoredRecord[]) => Promise<unknown>, label: string): Promise<number> {
  const it = generateRecords(n, { from, to });
  const t0 = performance.now();
  let taken = 0;
  let reported = 0;
  const next = (): StoredRecord[] => {
    const b: StoredRecord[] = [];
    while (b.length < BATCH) {
      const x = it.next();
      if (x.done) break;
      b.push(x.value);
    }
    taken += b.length;
    return b;
  };
  await Promise.all(
    Array.from({ length: WRITERS }, async () => {
      for (let b = next(); b.length; b = next()) {
        checkInterrupted();
        await put(b);
        if (taken - reported >= n / 10) {
          reported = taken;
          progress(`history-scale: ${label}: ${taken.toLocaleString('en')} of ${n.toLocaleString('en')} records, ${(taken / ((performance.now() - t0) / 1000)).toFixed(0)}/s`);
        }
      }
    }),
  );
  return n / ((performance.now() - t0) / 1000);
}

/** The queries of one team, made from what the history holds of it. */
interface TeamQueries {
  team: string;
  list: Get;
  failed: Get;
  filters: Get;
  word: Get;
  three: Get;
  commit: Get;
  deep: Get;
  page: Get[];
  series: Get;
}

async function teamQueries(c: Client, history: BuildHistory, team: string, now: number): Promise<TeamQueries> {
  const t = token(team);
  const g = (p: string): Get => ({ path: p, token: t });
  const top = (await c.json<{ builds: BuildSummary[] }>(g('/v1/builds?limit=500'))).builds;
  if (top.length < 150) throw new Error(`history-scale: ${team} has only ${top.length} builds`);
  const recent = top[0]!;
  const project = recent.projectName!;
  const word = project.split('-')[1]!;
  const commit = top[123]!.gitCommit!;
  // The last build of the 10th page (of an earlier one when the team has fewer than 11).
  const deep = top[Math.min(499, top.length - 51)]!;
  const sample = await history.pool.query<{ id: string }>('SELECT id FROM builds WHERE team = $1 ORDER BY md5(id) LIMIT 10', [team]);
  const since = new Date(now - 180 * DAY_MS).toISOString();
  return {
    team,
    list: g('/v1/builds'),
    failed: g('/v1/builds?state=failed'),
    filters: g(`/v1/builds?state=failed&project=${encodeURIComponent(project)}&branch=main&since=${encodeURIComponent(since)}`),
    word: g(`/v1/builds?q=${encodeURIComponent(word)}`),
    three: g(`/v1/builds?q=${commit.slice(10, 13)}`),
    commit: g(`/v1/builds?q=${commit.slice(0, 7)}`),
    deep: g(`/v1/builds?before=${deep.id}`),
    page: sample.rows.map((r) => g(`/v1/builds/${r.id}`)),
    series: g('/v1/stats/cache?hours=720&bucketMinutes=360'),
  };
}

const ms = (x: number) => (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0));
const fmt = (t: Timing) => `p50 ${ms(t.p50)} ms, p99 ${ms(t.p99)} ms`;
const count = (n: number) => n.toLocaleString('en');

async function historyScale(o: BenchOptions): Promise<Row[]> {
  const n = Number(process.env.VMLB_BENCH_HISTORY_RECORDS) || (o.quick ? QUICK_RECORDS : FULL_RECORDS);
  const dir = await mkdtemp(path.join(TMP_ROOT, 'vmlb-bench-history-'));
  const [redis, s3, pgServer] = await Promise.all([startRedis(), startS3Server(), startPrivatePostgres({ fast: true, dir: path.join(dir, 'pg') })]);
  const closers: Array<() => Promise<unknown>> = [];
  try {
    const now = Date.now();
    const from = now - DAYS * DAY_MS;
    const teams = teamsOf();
    const databaseUrl = await pgServer.ensureDatabase('vmlb');
    const sharedUrl = 's3://vmlb-bench/history-scale';
    const legacyUrl = 's3://vmlb-bench/history-legacy';
    const env: Record<string, string> = { ...s3.env, REDIS_URL: redis.url, VMLB_SHARED: sharedUrl, VMLB_DATABASE_URL: databaseUrl };
    const shared = new SharedStore(s3ConfigFrom(sharedUrl, env));
    await shared.ensureBucket();
    shared.close();

    // ---- 1. the history: n records through putMany
    const history = await BuildHistory.open(databaseUrl);
    closers.push(() => history.close());
    progress(`history-scale: writing ${count(n)} records of ${TEAM_COUNT} teams through BuildHistory.putMany (batches of ${BATCH}, ${WRITERS} at a time)`);
    const rate = await load(n, from, now, (b) => history.putMany(b), 'PostgreSQL');
    const t0 = performance.now();
    await history.pool.query('VACUUM (ANALYZE) builds');
    await history.pool.query('ANALYZE build_layers');
    const vacuumS = (performance.now() - t0) / 1000;
    const size = (await history.pool.query<{ s: string }>(`SELECT pg_database_size(current_database()) AS s`)).rows[0]!.s;
    const states = (await history.pool.query<{ state: string; n: string }>(`SELECT state, count(*) AS n FROM builds GROUP BY state ORDER BY count(*) DESC`)).rows;
    const mix = states.map((x) => `${((100 * Number(x.n)) / n).toFixed(1)}% ${x.state}`).join(' / ');
    checkInterrupted();

    // ---- 2. the store index of before: LEGACY_RECORDS records through StoreIndexRecords.put
    const legacyShared = new SharedStore(s3ConfigFrom(legacyUrl, env));
    closers.push(async () => legacyShared.close());
    const legacyRecords = new StoreIndexRecords(legacyShared, new ObjectStore(s3ConfigFrom(legacyUrl, env)));
    progress(`history-scale: writing ${count(LEGACY_RECORDS)} records through StoreIndexRecords.put (s3rver)`);
    const legacyRate = await load(LEGACY_RECORDS, from, now, (b) => inParallel(b, LEGACY_PUTS, (r) => legacyRecords.put(r)), 'store index');
    checkInterrupted();

    // ---- 3. the servers
    const scheduler = await createScheduler({ config: { ...fleetConfigFrom(env), schedulerHost: '127.0.0.1', schedulerPort: 0 }, teams, log: silentLogger, follower: { blockMs: 200, checkEveryMs: 1000 } });
    closers.push(() => scheduler.close());
    const c = client(await scheduler.listen());
    closers.push(async () => c.close());
    // A fresh StoreIndexRecords: the indexes are read from the store again (then kept in memory, as the scheduler did).
    const legacy = await legacyServer(teams, new StoreIndexRecords(legacyShared, new ObjectStore(s3ConfigFrom(legacyUrl, env))));
    closers.push(legacy.close);
    const lc = client(legacy.url);
    closers.push(async () => lc.close());

    // The teams the requests rotate over, and their queries (on both sides, from each side's records).
    const round = Array.from({ length: ROUND }, (_, i) => teamName((i * TEAM_COUNT) / ROUND));
    const qs = await Promise.all(round.map((t) => teamQueries(c, history, t, now)));
    const legacyPages: Get[] = [];
    for (const t of round) {
      const lines = (await lc.json<{ builds: BuildSummary[] }>({ path: '/v1/builds?limit=1000', token: token(t) })).builds;
      if (lines.length === 0) throw new Error(`history-scale: ${t} has no build in the store index`);
      for (const b of lines.slice(0, 5)) legacyPages.push({ path: `/v1/builds/${b.id}`, token: token(t) });
    }
    const admin = (p: string): Get => ({ path: p, token: ADMIN });
    const word = qs[0]!.word.path.split('q=')[1]!;
    // Every query answers, and a team's token sees its own team only.
    for (const q of qs) {
      for (const k of ['list', 'failed', 'word', 'three', 'commit', 'deep'] as const) {
        const r = await c.json<{ builds: BuildSummary[] }>(q[k]);
        if (r.builds.length === 0) throw new Error(`history-scale: ${q[k].path} (${q.team}) found no build`);
        if (r.builds.some((b) => b.team !== q.team)) throw new Error(`history-scale: ${q[k].path} answered another team's builds`);
      }
    }

    type Line = { name: string; what: string; pg: Get[]; legacy?: Get[]; legacyNote?: string };
    const each = <K extends keyof TeamQueries>(k: K) => qs.map((q) => q[k]) as Get[];
    const lines: Line[] = [
      { name: 'list', what: 'GET /v1/builds, a team\'s token: its first page (50)', pg: each('list'), legacy: each('list') },
      { name: 'state filter', what: 'GET /v1/builds?state=failed, a team\'s token', pg: each('failed'), legacy: each('failed') },
      {
        name: 'filters',
        what: 'GET /v1/builds?state=failed&project=P&branch=main&since=(180 days ago), a team\'s token, P one of its projects',
        pg: each('filters'),
        legacyNote: 'the index had no project/branch/since filters',
      },
      { name: 'search', what: 'GET /v1/builds?q=WORD, a word of one of the team\'s project names (e.g. "router")', pg: each('word'), legacyNote: 'the index had no search' },
      { name: 'search (3 characters)', what: 'GET /v1/builds?q=XYZ, 3 hex characters of one of the team\'s commits', pg: each('three'), legacyNote: 'the index had no search' },
      { name: 'search (short commit)', what: 'GET /v1/builds?q=COMMIT7, the 7 first characters of a commit of the team', pg: each('commit'), legacyNote: 'the index had no search' },
      { name: 'deep page', what: 'GET /v1/builds?before=ID, ID the last build of the team\'s 10th page (of 50)', pg: each('deep'), legacyNote: 'the index had no paging' },
      { name: 'build page', what: 'GET /v1/builds/:id, 10 builds of each team spread over the year', pg: qs.flatMap((q) => q.page), legacy: legacyPages },
      { name: 'series', what: 'GET /v1/stats/cache?hours=720&bucketMinutes=360 (30 days of hit rate and durations, 120 buckets), a team\'s token', pg: each('series'), legacy: each('series') },
      { name: 'list, admin', what: 'GET /v1/builds, the admin token: every team\'s first page', pg: [admin('/v1/builds')], legacy: [admin('/v1/builds')] },
      { name: 'search, admin', what: `GET /v1/builds?q=${word}, the admin token (every team)`, pg: [admin(`/v1/builds?q=${word}`)], legacyNote: 'the index had no search' },
      {
        name: 'series, admin',
        what: `GET /v1/stats/cache?hours=720&bucketMinutes=360, the admin token: overall and ${TEAM_COUNT} teams' series`,
        pg: [admin('/v1/stats/cache?hours=720&bucketMinutes=360')],
        legacy: [admin('/v1/stats/cache?hours=720&bucketMinutes=360')],
      },
    ];
    const rows: Row[] = [
      {
        benchmark: 'history-scale (load)',
        what: `${count(n)} generated build records${n === FULL_RECORDS ? '' : ` (${o.quick ? '--quick: ' : ''}not the 1,000,000 of the target)`} of ${TEAM_COUNT} teams over ${DAYS} days (3–8 layers each, ${mix}; seeded) written through BuildHistory.putMany, batches of ${BATCH}, ${WRITERS} at a time, private PostgreSQL (fsync off); then VACUUM ANALYZE; vs ${count(LEGACY_RECORDS)} through StoreIndexRecords.put (s3rver), ${WRITERS * LEGACY_PUTS} puts in flight`,
        result: `${count(Math.round(rate))} records/s (${((n / rate) / 60).toFixed(1)} min), VACUUM ANALYZE ${vacuumS.toFixed(0)} s, ${(Number(size) / 2 ** 30).toFixed(2)} GiB; store index ${count(Math.round(legacyRate))} records/s`,
        target: '—',
        ratio: `${(rate / legacyRate).toFixed(1)}× the store index's rate`,
      },
    ];
    for (const line of lines) {
      checkInterrupted();
      progress(`history-scale: ${line.name}`);
      const pgT = await c.time(line.pg);
      const lT = line.legacy ? await lc.time(line.legacy) : null;
      rows.push({
        benchmark: `history-scale (${line.name})`,
        what: `${line.what}; ${REQUESTS} requests one at a time after ${WARMUP}, rotating over ${line.pg.length > 1 ? `${ROUND} teams` : 'the one query'}; in-process scheduler on loopback`,
        result: `${count(n)}: ${fmt(pgT)} (${(pgT.bytes / 1024).toFixed(1)} KiB); store index of ${count(LEGACY_RECORDS)}: ${lT ? fmt(lT) : `— (${line.legacyNote})`}`,
        target: `p99 ≤ ${TARGET_MS} ms`,
        ratio: `p99 ${(pgT.p99 / TARGET_MS).toFixed(2)}× the target${lT ? `; ${(pgT.p99 / lT.p99).toFixed(2)}× the index's p99` : ''}`,
      });
      progress(`history-scale: ${line.name}: ${rows.at(-1)!.result}`);
    }
    return rows;
  } finally {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    await Promise.allSettled([redis.close(), s3.close()]);
    await pgServer.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export const HISTORY_BENCHMARKS = [
  { name: 'history-scale', title: 'build history at scale: 1,000,000 records in PostgreSQL vs the store index with 10,000', run: historyScale },
];

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
import http from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import Fastify, { type FastifyRequest } from 'fastify';
import { fleetConfigFrom } from '@vmlb/fleet';
import type { BuildState, BuildSummary, LayerRecord } from '@vmlb/fleet';
import { SharedStore, s3ConfigFrom } from '@vmlb/layer-engine';
import { BuildHistory } from '../apps/scheduler/src/build-history.js';
import { BUILD_ID, FINAL_STATES, StoreIndexRecords, type StoredRecord } from '../apps/scheduler/src/build-records.js';
import { hitRateSeries } from '../apps/scheduler/src/cache-stats.js';
import { ObjectStore } from '../apps/scheduler/src/object-store.js';
import { startPrivatePostgres } from '../apps/scheduler/src/private-postgres.js';
import { publicRecord } from '../apps/scheduler/src/public-record.js';
import { createScheduler } from '../apps/scheduler/src/scheduler.js';
import { sha256Hex, TEAM_NAME, Teams, type Team } from '../apps/scheduler/src/teams.js';
import { HttpError, noSuchBuild, unauthorized } from '../apps/scheduler/src/http-error.js';
import { silentLogger } from '../apps/scheduler/src/logger.js';
import { startRedis } from '../test/helpers/redis-server.js';
import { startS3Server } from '../test/helpers/s3-server.js';
import { checkInterrupted, progress, TMP_ROOT, type BenchOptions, type Row } from './harness.js';

const TEAM_COUNT = 100;
const FULL_RECORDS = 1_000_000;
const QUICK_RECORDS = 100_000;
const LEGACY_RECORDS = 10_000;
const DAYS = 365;
const DAY_MS = 86_400_000;
const SEED = 0x5eed_2026;
const BATCH = 1000;
/** putMany calls in flight while loading. */
const WRITERS = 2;
/** StoreIndexRecords.put calls in flight per batch (its index writes are queued per team). */
const LEGACY_PUTS = 8;
const REQUESTS = 200;
const WARMUP = 20;
/** Requests rotate over this many teams. */
const ROUND = 20;
const TARGET_MS = 100;

// ---------------------------------------------------------------------------------------
// The generator: seeded, so two runs write the same records (times relative to the run's start).

/** mulberry32: a small, fast, seeded PRNG of floats in [0, 1). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const HEX = '0123456789abcdef';
function hex(rand: () => number, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += HEX[(rand() * 16) | 0];
  return s;
}
const pick = <T>(rand: () => number, xs: readonly T[]): T => xs[(rand() * xs.length) | 0]!;

const WORDS_A = ['edge', 'billing', 'search', 'ledger', 'auth', 'media', 'vision', 'payments', 'infra', 'storefront', 'telemetry', 'mail', 'maps', 'chat', 'catalog', 'fraud', 'identity', 'backup', 'ingest', 'render'];
const WORDS_B = ['router', 'api', 'worker', 'gateway', 'pipeline', 'service', 'frontend', 'db', 'cache', 'agent', 'scheduler', 'runner', 'proxy', 'indexer', 'builder'];
const PEOPLE = ['ana', 'bo', 'cy', 'dee', 'eli', 'fay', 'gus', 'hal', 'ivy', 'jo', 'kai', 'lu', 'max', 'nia', 'oto', 'pia', 'quin', 'rey', 'sol', 'tam', 'uma', 'vic', 'wen', 'xia', 'yul', 'zed'];
const TOPICS = ['tls', 'login', 'cache', 'retry', 'metrics', 'upgrade', 'kernel', 'logging', 'quota', 'deps', 'ipv6', 'timeouts'];
const LAYER_NAMES: Array<[string, LayerRecord['kind']]> = [
  ['base', 'base-image'],
  ['packages', 'build-layer'],
  ['users', 'modify-disk'],
  ['runtime', 'build-layer'],
  ['app', 'build-layer'],
  ['config', 'modify-disk'],
  ['tests', 'build-layer'],
  ['seal', 'build-layer'],
];
/** Of each layer, the chance that a build changes it (and so every layer after it). */
const CHANGE = [0.004, 0.02, 0.03, 0.05, 0.35, 0.2, 0.3, 0.4];
const POOLS = ['default', 'default', 'default', 'gpu', 'arm', 'secure'];

interface Project {
  name: string;
  layers: number;
  keys: string[];
  /** Whether each layer of the current keys is in the shared store. */
  cached: boolean[];
  /** Seconds each layer takes to build. */
  cost: number[];
  branches: string[];
}

interface TeamProfile {
  team: string;
  pool: string;
  projects: Project[];
  submitters: string[];
  /** How many builds this team makes relative to the others. */
  weight: number;
  workers: string[];
}

const teamName = (i: number) => `team${String(i).padStart(2, '0')}`;

function profiles(rand: () => number, teams: number): TeamProfile[] {
  const out: TeamProfile[] = [];
  for (let t = 0; t < teams; t++) {
    const pool = POOLS[t % POOLS.length]!;
    const projects: Project[] = [];
    const count = 3 + ((rand() * 6) | 0);
    const names = new Set<string>();
    while (names.size < count) names.add(`${pick(rand, WORDS_A)}-${pick(rand, WORDS_B)}`);
    for (const name of names) {
      const layers = 3 + ((rand() * 6) | 0);
      const branches = ['main', 'main', 'main', 'develop', `release/2026.${1 + ((rand() * 12) | 0)}`];
      for (let i = 0; i < 4; i++) branches.push(`${pick(rand, ['feature', 'fix', 'chore'])}/${pick(rand, TOPICS)}-${(rand() * 900 + 100) | 0}`);
      projects.push({
        name,
        layers,
        keys: Array.from({ length: layers }, () => hex(rand, 64)),
        cached: Array.from({ length: layers }, () => false),
        cost: Array.from({ length: layers }, (_, i) => (i === 0 ? 20 : 5) + rand() * (i === 0 ? 40 : 240)),
        branches,
      });
    }
    const people = Array.from({ length: 4 + ((rand() * 10) | 0) }, () => `${pick(rand, PEOPLE)}${(rand() * 90 + 10) | 0}`);
    const submitters = [`ci-${teamName(t)}@ci`, `ci-${teamName(t)}@ci`, ...people.map((p) => `${p}@${pick(rand, ['laptop', 'dev-vm', 'ws'])}`)];
    const workers = Array.from({ length: 8 }, (_, i) => `${pool}-w${String(i + 1).padStart(2, '0')}`);
    out.push({ team: teamName(t), pool, projects, submitters, weight: 0.3 + rand() * 1.7, workers });
  }
  return out;
}

/**
 * `n` records, oldest first, from `from` to `to` (ms), each of a team picked by its weight: a
 * project of the team, a branch and commit, a submitter; its layers hit while their keys are
 * cached, a changed layer (and every one after it) built; of the builds that build a layer, 8%
 * fail and 4% are cancelled at one of those layers (so about 95% of all end done).
 */
export function* generateRecords(n: number, o: { from: number; to: number; teams?: number; seed?: number }): Generator<StoredRecord> {
  const rand = prng(o.seed ?? SEED);
  const teams = profiles(rand, o.teams ?? TEAM_COUNT);
  const cumulative: number[] = [];
  let total = 0;
  for (const t of teams) cumulative.push((total += t.weight));
  const step = (o.to - o.from) / n;
  for (let i = 0; i < n; i++) {
    const created = Math.floor(o.from + i * step + rand() * step);
    const w = rand() * total;
    let lo = 0;
    let hi = cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cumulative[mid]! < w) lo = mid + 1;
      else hi = mid;
    }
    const team = teams[lo]!;
    const p = pick(rand, team.projects);
    // Which layer this build changes first (p.layers: none; every layer a hit when cached).
    let changed = p.layers;
    for (let j = 0; j < p.layers; j++) {
      if (rand() < CHANGE[j]!) {
        changed = j;
        break;
      }
    }
    for (let j = changed; j < p.layers; j++) {
      p.keys[j] = hex(rand, 64);
      p.cached[j] = false;
    }
    const roll = rand();
    const state: BuildState = roll < 0.88 ? 'done' : roll < 0.96 ? 'failed' : 'cancelled';
    const toBuild = p.cached.reduce((k, c) => (c ? k : k + 1), 0);
    // A failed or cancelled build stops at one of the layers it builds (if it builds none, it is done).
    const stopAt = state !== 'done' && toBuild > 0 ? p.layers - toBuild + ((rand() * toBuild) | 0) : -1;
    const finalState: BuildState = stopAt < 0 ? 'done' : state;
    const layers: LayerRecord[] = [];
    let t = created + 500 + rand() * 2000;
    const worker = pick(rand, team.workers);
    for (let j = 0; j < p.layers; j++) {
      const [name, kind] = LAYER_NAMES[j]!;
      const l: LayerRecord = { index: j, name: `${String(j + 1).padStart(2, '0')}_${name}`, kind, key: p.keys[j]!, status: 'hit' };
      if (p.cached[j]) {
        l.source = 'shared';
      } else if (stopAt >= 0 && j > stopAt) {
        l.status = 'cancelled';
      } else {
        const seconds = Math.round(p.cost[j]! * (0.7 + rand() * 0.6) * 10) / 10;
        l.worker = worker;
        l.startedAt = new Date(t).toISOString();
        t += seconds * 1000;
        l.finishedAt = new Date(t).toISOString();
        l.seconds = seconds;
        if (j === stopAt) {
          l.status = finalState === 'failed' ? 'failed' : 'cancelled';
          if (finalState === 'failed') {
            l.exitCode = pick(rand, [1, 1, 2, 100, 127]);
            l.logTail = `+ ./install.sh\nE: step ${j + 1} of ${l.name} failed\nexit status ${l.exitCode}\n`;
          }
        } else {
          l.status = 'done';
          l.bytes = Math.round((j === 0 ? 300 : 5) * 1048576 * (0.5 + rand()));
          if (j > 0) l.pulledBytes = Math.round(200 * 1048576 * rand());
        }
      }
      layers.push(l);
    }
    if (finalState === 'done') p.cached.fill(true);
    else for (let j = stopAt; j < p.layers; j++) p.cached[j] = false;
    const finishedAt = new Date(Math.round(t + 300 + rand() * 1500)).toISOString();
    const r: StoredRecord = {
      version: 1,
      id: `b${created.toString(36).padStart(9, '0')}${hex(rand, 10)}`,
      team: team.team,
      pool: team.pool,
      project: hex(rand, 64),
      projectName: p.name,
      gitCommit: hex(rand, 40),
      gitBranch: pick(rand, p.branches),
      submitter: pick(rand, team.submitters),
      createdAt: new Date(created).toISOString(),
      finishedAt,
      state: finalState,
      layers,
      output: 'chain',
      image: null,
      cursor: `${Math.round(t)}-0`,
    };
    if (finalState === 'failed') r.error = `layer ${layers[stopAt]!.name} failed with exit code ${layers[stopAt]!.exitCode}`;
    if (finalState === 'cancelled') r.error = `cancelled by ${team.team}`;
    yield r;
  }
}

// ---------------------------------------------------------------------------------------
// Timing requests

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

interface Get {
  path: string;
  token: string;
}

interface Timing {
  p50: number;
  p99: number;
  n: number;
  /** Mean bytes of an answer. */
  bytes: number;
}

/** An HTTP client of one keep-alive connection: GET → status and body. */
function client(base: string) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const { hostname, port } = new URL(base);
  const get = (g: Get) =>
    new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
      const req = http.request({ host: hostname, port, path: g.path, agent, headers: { authorization: `Bearer ${g.token}` } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  return {
    get,
    async json<T>(g: Get): Promise<T> {
      const r = await get(g);
      if (r.status !== 200) throw new Error(`history-scale: GET ${g.path}: ${r.status} ${r.body.toString().slice(0, 300)}`);
      return JSON.parse(r.body.toString()) as T;
    },
    /** `n` requests one after the other (after `warm` not timed), cycling through `gets`. */
    async time(gets: Get[], n = REQUESTS, warm = WARMUP): Promise<Timing> {
      const lat: number[] = [];
      let bytes = 0;
      for (let i = 0; i < warm + n; i++) {
        const g = gets[i % gets.length]!;
        const t0 = performance.now();
        const r = await get(g);
        const ms = performance.now() - t0;
        if (r.status !== 200) throw new Error(`history-scale: GET ${g.path}: ${r.status} ${r.body.toString().slice(0, 300)}`);
        if (i >= warm) {
          lat.push(ms);
          bytes += r.body.length;
        }
      }
      return { p50: percentile(lat, 50), p99: percentile(lat, 99), n, bytes: bytes / n };
    },
    close: () => agent.destroy(),
  };
}
type Client = ReturnType<typeof client>;

// ---------------------------------------------------------------------------------------
// The store index of before, served as the scheduler served it

/**
 * GET /v1/builds, GET /v1/builds/:id and GET /v1/stats/cache as scheduler.ts and
 * insight-routes.ts had them before the history (git show dcebfbf^), over StoreIndexRecords: a
 * listing is the asked teams' indexes (kept in memory once read) filtered by pool and state,
 * sorted, cut at `limit`; other parameters (q, project, branch, before…) were not there and are
 * ignored. No build is followed here, so the live overlay of then has nothing to do.
 */
async function legacyServer(teams: Teams, records: StoreIndexRecords): Promise<{ url: string; close: () => Promise<void> }> {
  const app = Fastify({ logger: false });
  app.decorateRequest('team', null);
  app.addHook('onRequest', async (req) => {
    const token = Teams.bearer(req.headers.authorization);
    const team = token ? teams.authenticate(token) : null;
    if (!team) throw unauthorized();
    req.team = team;
  });
  app.setErrorHandler(async (err: Error, _req, reply) => {
    if (err instanceof HttpError) return reply.status(err.status).send({ error: { code: err.code, message: err.message } });
    return reply.status(500).send({ error: { code: 'INTERNAL', message: err.message } });
  });
  const listedTeams = async (req: FastifyRequest, asked: string | undefined): Promise<string[]> => {
    const team = req.team as Team;
    if (asked !== undefined && asked !== team.team && !team.admin) throw new HttpError(403, 'FORBIDDEN', 'not your team');
    const recorded = team.admin ? await records.teams() : [];
    if (asked === undefined) return team.admin ? recorded : [team.team];
    if (!TEAM_NAME.test(asked) || !(teams.names.includes(asked) || recorded.includes(asked))) throw new HttpError(400, 'NO_SUCH_TEAM', `there is no team "${asked}"`);
    return [asked];
  };
  app.get('/v1/builds', async (req) => {
    const q = req.query as { state?: string; team?: string; pool?: string; limit?: string };
    const limit = q.limit === undefined ? 50 : Number(q.limit);
    let builds: BuildSummary[] = [];
    for (const t of await listedTeams(req, q.team)) builds.push(...(await records.list(t)));
    if (q.pool) builds = builds.filter((b) => (b.pool ?? 'default') === q.pool);
    if (q.state === 'active') builds = builds.filter((b) => !FINAL_STATES.has(b.state));
    else if (q.state) builds = builds.filter((b) => b.state === q.state);
    builds.sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
    return { builds: builds.slice(0, limit) };
  });
  app.get('/v1/builds/:id', async (req) => {
    const { id } = req.params as { id: string };
    if (!BUILD_ID.test(id)) throw noSuchBuild(id);
    const r = await records.get(id);
    const team = req.team as Team;
    if (!r || (r.team !== team.team && !team.admin)) throw noSuchBuild(id);
    return publicRecord(r);
  });
  app.get('/v1/stats/cache', async (req) => {
    const q = req.query as { hours?: string; bucketMinutes?: string; team?: string };
    const hours = q.hours === undefined ? 24 : Number(q.hours);
    const bucketMinutes = q.bucketMinutes === undefined ? 60 : Number(q.bucketMinutes);
    const shown = await listedTeams(req, q.team);
    const builds = (await Promise.all(shown.map((t) => records.list(t)))).flat();
    return hitRateSeries(builds, { now: Date.now(), hours, bucketSeconds: bucketMinutes * 60, teams: shown });
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const addr = app.server.address();
  return { url: `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`, close: () => app.close() };
}

// ---------------------------------------------------------------------------------------
// The benchmark

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

/**
 * The fleet's Prometheus metrics move by the right amounts: a real scheduler (in this process)
 * and real worker processes over a private redis-server and S3 test server (s3rver, or radosgw
 * with VMLB_TEST_S3=radosgw), real builds submitted
 * through the API, then /metrics of the scheduler and of each worker read and compared with
 * what the builds did (layers built, hits, bytes in the build records). Also what the alert
 * rules of deploy/ watch: the oldest queued job, no live worker, a worker whose heartbeat
 * stopped (SIGKILL), the shared store unreachable. Pools: a team of pool a builds on pool a's own
 * worker, and every series of it says pool="a" (scraped by a real Prometheus that evaluates
 * deploy/prometheus/alerts.yml: a pool with queued jobs and no worker is its pending alert); a
 * pool added by a reloaded teams file gets its series at the next scrape.
 *
 * Tests run in order: later ones build on the layers earlier ones put in the shared store.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { packProject } from './helpers/fleet-submit.js';
import { TOKENS, apiFor, startScheduler, waitFor, type RunningScheduler } from './helpers/fleet-api.js';
import { sha256Hex, Teams } from '../apps/scheduler/src/index.js';
import { startPrometheus, type PrometheusServer } from './helpers/prometheus-server.js';
import { metricValue, hasMetric, parseMetrics } from './helpers/prom-text.js';
import { freePort, type RedisServer } from './helpers/redis-server.js';
import { EXTERNAL_S3_REASON, type S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, REPO, leftovers, writeProject, type LayerDef, type Sandbox } from './helpers/vmlb.js';
import { startFleetServices, type FleetServices } from './helpers/fleet-services.js';
import { startWorkerProcess, workerLogs, type WorkerProcess } from './helpers/worker-process.js';


let services: FleetServices;
let sb: Sandbox;
let redis: RedisServer;
let s3: S3Server;
let env: Record<string, string>;
let sharedUrl: string;
let sched: RunningScheduler;
let prometheus: PrometheusServer | undefined;
/** The suite's teams (fleet-api's, all in pool default) and team pa in pool a. */
const POOL_TOKEN = 'tok-metrics-pool-a-0123456789';
const teamsJson = (extra: object[] = []) =>
  JSON.stringify({
    teams: [
      { team: 'web', tokenSha256: sha256Hex(TOKENS.web) },
      { team: 'data', tokenSha256: sha256Hex(TOKENS.data) },
      { team: 'ops', tokenSha256: sha256Hex(TOKENS.ops), admin: true },
      { team: 'pa', tokenSha256: sha256Hex(POOL_TOKEN), pool: 'a' },
      ...extra,
    ],
  });
const teams = Teams.parse(teamsJson(), 'metrics test teams');
const workers = new Map<string, WorkerProcess & { metricsPort: number }>();
const api = apiFor(() => sched.url, TOKENS.web);

const P1: Record<string, LayerDef> = {
  '01_base': BUSYBOX_BASE,
  '02_a': { kind: 'build-layer', script: 'echo layer a; echo a > /a' },
  '03_b': { kind: 'build-layer', script: 'echo layer b; echo b > /b' },
};

async function startWorker(name: string, o: { pool?: string; metricsPort?: number } = {}): Promise<WorkerProcess & { metricsPort: number }> {
  const metricsPort = o.metricsPort ?? (await freePort());
  const env: Record<string, string> = { VMLB_WORKER_METRICS_PORT: String(metricsPort), VMLB_WORKER_METRICS_HOST: '127.0.0.1', ...(o.pool ? { VMLB_WORKER_POOL: o.pool } : {}) };
  const w = Object.assign(startWorkerProcess({ name, dir: sb.dir, redisUrl: redis.url, sharedUrl, s3env: s3.env, env }), { metricsPort });
  workers.set(name, w);
  await waitFor(`worker ${name}'s /metrics`, () => fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.ok, () => false), 60_000);
  return w;
}

const schedulerMetrics = async () => (await fetch(`${sched.url}/metrics`)).text();
const workerMetrics = async (w: { metricsPort: number }) => (await fetch(`http://127.0.0.1:${w.metricsPort}/metrics`)).text();

/**
 * Submits a project folder through the API (as `vmlb submit --flatten` does: the flatten job's
 * metrics are counted here too); returns the build id.
 */
async function submit(name: string, layers: Record<string, LayerDef>, token: string): Promise<string> {
  const dir = await writeProject(path.join(sb.dir, name), layers);
  const tgz = path.join(sb.dir, `${name}-${randomBytes(3).toString('hex')}.tar.gz`);
  await packProject(dir, tgz);
  const r = await api.json('POST', '/v1/builds?flatten=1', { token, body: await readFile(tgz) });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.id as string;
}

async function finished(id: string, token: string, timeoutMs = 120_000): Promise<any> {
  return waitFor(
    `build ${id} to finish\n${workerLogs(workers.values())}`,
    async () => {
      const r = await api.json('GET', `/v1/builds/${id}`, { token });
      return ['done', 'failed', 'cancelled'].includes(r.body?.state) ? r.body : undefined;
    },
    timeoutMs,
    200,
  );
}

/**
 * Waits until a counter reaches `want`, then returns the scrape (the assertions that follow say
 * what is wrong when it does not): a worker counts a job just after its last event, and the
 * scheduler counts a finished build once its final record is stored, a moment after the API
 * shows it final.
 */
async function settles(scrape: () => Promise<string>, name: string, labels: Record<string, string>, want: number): Promise<string> {
  let text = '';
  await waitFor(
    `${name}${JSON.stringify(labels)} = ${want}`,
    async () => {
      text = await scrape();
      return metricValue(text, name, labels) >= want;
    },
    12_000,
  ).catch(() => undefined);
  return text;
}
const workerSettles = (w: { metricsPort: number }, name: string, labels: Record<string, string>, want: number) => settles(() => workerMetrics(w), name, labels, want);
const schedulerSettles = (name: string, labels: Record<string, string>, want: number) => settles(schedulerMetrics, name, labels, want);

beforeAll(async () => {
  services = await startFleetServices('metrics');
  ({ sb, redis, s3, sharedUrl, env } = services);
  sched = await startScheduler(env, { teams });
});

afterAll(async () => {
  await prometheus?.close();
  for (const w of workers.values()) {
    if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGTERM');
    await w.exited;
  }
  await sched?.close();
  const left = sb ? await leftovers(sb) : [];
  await services?.close();
  expect(left).toEqual([]);
});

describe('fleet metrics', () => {
  let first: any;

  it('a build from scratch: three misses and their build times on the worker, one done build on the scheduler', async () => {
    const a = await startWorker('a');
    const id = await submit('p1', P1, TOKENS.web);
    first = await finished(id, TOKENS.web);
    expect(first.state, first.error).toBe('done');

    const s = await schedulerSettles('vmlb_builds_total', { team: 'web', state: 'done' }, 1);
    expect(metricValue(s, 'vmlb_builds_submitted_total', { team: 'web' })).toBe(1);
    expect(metricValue(s, 'vmlb_builds_total', { team: 'web', state: 'done' })).toBe(1);
    expect(metricValue(s, 'vmlb_builds_total')).toBe(1);
    expect(metricValue(s, 'vmlb_build_duration_seconds_count', { state: 'done' })).toBe(1);
    expect(metricValue(s, 'vmlb_build_duration_seconds_sum', { state: 'done' })).toBeGreaterThan(0);
    expect(metricValue(s, 'vmlb_layer_cache_lookups_total')).toBe(0);
    expect(metricValue(s, 'vmlb_fleet_workers')).toBe(1);
    expect(metricValue(s, 'vmlb_fleet_slots')).toBe(2);
    expect(metricValue(s, 'vmlb_shared_store_up')).toBe(1);
    expect(hasMetric(s, 'process_cpu_seconds_total')).toBe(true);

    const w = await workerSettles(a, 'vmlb_flatten_duration_seconds_count', {}, 1);
    expect(metricValue(w, 'vmlb_layer_cache_lookups_total', { result: 'miss', source: 'shared', team: 'web', worker: 'w-a' })).toBe(3);
    expect(metricValue(w, 'vmlb_layer_cache_lookups_total', { result: 'hit' })).toBe(0);
    expect(metricValue(w, 'vmlb_layer_build_duration_seconds_count', { kind: 'create-disk' })).toBe(1);
    expect(metricValue(w, 'vmlb_layer_build_duration_seconds_count', { kind: 'build-layer' })).toBe(2);
    expect(metricValue(w, 'vmlb_worker_jobs_total', { queue: 'layer', outcome: 'built' })).toBe(3);
    expect(metricValue(w, 'vmlb_worker_jobs_total', { queue: 'flatten', outcome: 'built' })).toBe(1);
    expect(metricValue(w, 'vmlb_flatten_duration_seconds_count')).toBe(1);
    // Bytes pushed are exactly the layer blobs and the image the build record names.
    const layerBytes = first.layers.reduce((n: number, l: { bytes: number }) => n + l.bytes, 0);
    expect(layerBytes).toBeGreaterThan(0);
    expect(metricValue(w, 'vmlb_shared_store_pushed_bytes_total', { object: 'layer' })).toBe(layerBytes);
    expect(metricValue(w, 'vmlb_shared_store_pushed_bytes_total', { object: 'image' })).toBe(first.image.bytes);
    // The chain was built here: nothing was fetched.
    expect(metricValue(w, 'vmlb_shared_store_pulled_bytes_total')).toBe(0);
    expect(metricValue(w, 'vmlb_worker_slots')).toBe(2);
    expect(metricValue(w, 'vmlb_worker_busy_slots')).toBe(0);
    // Measured again at most every 5 s (at a heartbeat, a job's start or end): one taken
    // mid-build holds only the layers so far; wait for the one after the last.
    expect(metricValue(await workerSettles(a, 'vmlb_worker_cached_bytes', {}, layerBytes + 1), 'vmlb_worker_cached_bytes')).toBeGreaterThan(layerBytes);
    expect(hasMetric(w, 'process_resident_memory_bytes', { worker: 'w-a' })).toBe(true);
  });

  it('the same project from another team: three plan-time hits on the scheduler, nothing on the worker; the hit rate is 50 %', async () => {
    const a = workers.get('a')!;
    const id = await submit('p1-again', P1, TOKENS.data);
    const b = await finished(id, TOKENS.data);
    expect(b.state).toBe('done');
    expect(b.layers.map((l: { status: string }) => l.status)).toEqual(['hit', 'hit', 'hit']);

    const s = await schedulerMetrics();
    expect(metricValue(s, 'vmlb_layer_cache_lookups_total', { result: 'hit', source: 'shared', team: 'data' })).toBe(3);
    expect(metricValue(s, 'vmlb_layer_cache_lookups_total', { team: 'web' })).toBe(0);
    expect(metricValue(s, 'vmlb_builds_total', { team: 'data', state: 'done' })).toBe(1);
    const w = await workerMetrics(a);
    expect(metricValue(w, 'vmlb_layer_cache_lookups_total')).toBe(3);

    // The two views of the hit rate agree: the metrics (scheduler + workers) and the API's series.
    const lookups = metricValue(s, 'vmlb_layer_cache_lookups_total') + metricValue(w, 'vmlb_layer_cache_lookups_total');
    const hits = metricValue(s, 'vmlb_layer_cache_lookups_total', { result: 'hit' }) + metricValue(w, 'vmlb_layer_cache_lookups_total', { result: 'hit' });
    expect(hits / lookups).toBe(0.5);
    const stats = await api.json('GET', '/v1/stats/cache?hours=1&bucketMinutes=60', { token: TOKENS.ops });
    expect(stats.status).toBe(200);
    const sum = (series: Array<{ lookups: number; hits: number }>) => series.reduce((n, x) => ({ lookups: n.lookups + x.lookups, hits: n.hits + x.hits }), { lookups: 0, hits: 0 });
    expect(sum(stats.body.overall)).toEqual({ lookups: 6, hits: 3 });
    expect(sum(stats.body.teams.web)).toEqual({ lookups: 3, hits: 0 });
    expect(sum(stats.body.teams.data)).toEqual({ lookups: 3, hits: 3 });
    // A team sees only its own.
    const mine = await api.json('GET', '/v1/stats/cache?hours=1', { token: TOKENS.data });
    expect(Object.keys(mine.body.teams)).toEqual(['data']);
    expect(sum(mine.body.overall)).toEqual({ lookups: 3, hits: 3 });
    expect((await api.json('GET', '/v1/stats/cache?team=web', { token: TOKENS.data })).status).toBe(403);
    expect((await api.json('GET', '/v1/stats/cache?bucketMinutes=0', { token: TOKENS.data })).status).toBe(400);
  });

  it('with no worker: a queued job ages, no live worker; a new worker pulls the chain (bytes pulled = the layers)', async () => {
    const a = workers.get('a')!;
    expect((await a.stop()).exitCode).toBe(0);
    let s = await schedulerMetrics();
    expect(metricValue(s, 'vmlb_fleet_workers')).toBe(0);
    // A clean stop is not a lost heartbeat.
    expect(hasMetric(s, 'vmlb_worker_last_heartbeat_timestamp_seconds', { worker: 'w-a' })).toBe(false);

    const id = await submit('p2', { ...P1, '04_c': { kind: 'build-layer', script: 'echo layer c; echo c > /c' } }, TOKENS.web);
    await new Promise((r) => setTimeout(r, 1500));
    s = await schedulerMetrics();
    expect(metricValue(s, 'vmlb_queue_jobs', { queue: 'vmlb-layers', state: 'waiting' })).toBe(1);
    expect(metricValue(s, 'vmlb_queue_jobs', { queue: 'vmlb-flatten', state: 'waiting-children' })).toBe(1);
    expect(metricValue(s, 'vmlb_queue_oldest_job_age_seconds', { queue: 'vmlb-layers' })).toBeGreaterThanOrEqual(1.4);
    expect(metricValue(s, 'vmlb_queue_oldest_job_age_seconds', { queue: 'vmlb-flatten' })).toBe(0);
    expect(metricValue(s, 'vmlb_builds_active')).toBe(1);
    const fleet = await api.json('GET', '/v1/fleet');
    expect(fleet.body.queued).toBe(1);
    expect(fleet.body.oldestQueuedSeconds).toBeGreaterThanOrEqual(1.4);
    // Worker a stopped cleanly: listed as stopped for a while (not lost, not live); no other.
    expect(fleet.body.workers.map((w: { id: string; live: boolean; state: string }) => [w.id, w.live, w.state])).toEqual([['w-a', false, 'stopped']]);

    const b = await startWorker('b');
    const r = await finished(id, TOKENS.web);
    expect(r.state, r.error).toBe('done');
    const w = await workerSettles(b, 'vmlb_flatten_duration_seconds_count', {}, 1);
    const chainBytes = first.layers.reduce((n: number, l: { bytes: number }) => n + l.bytes, 0);
    expect(metricValue(w, 'vmlb_shared_store_pulled_bytes_total', { object: 'layer' })).toBe(chainBytes);
    expect(metricValue(w, 'vmlb_layer_cache_lookups_total', { result: 'miss', team: 'web' })).toBe(1);
    expect(metricValue(w, 'vmlb_shared_store_pushed_bytes_total', { object: 'layer' })).toBe(r.layers[3].bytes);
    s = await schedulerSettles('vmlb_builds_total', { team: 'web', state: 'done' }, 2);
    expect(metricValue(s, 'vmlb_layer_cache_lookups_total', { result: 'hit', team: 'web' })).toBe(3);
    expect(metricValue(s, 'vmlb_queue_oldest_job_age_seconds', { queue: 'vmlb-layers' })).toBe(0);
    expect(metricValue(s, 'vmlb_builds_total', { team: 'web', state: 'done' })).toBe(2);
  });

  it('a failing layer: a failed build by team, a miss and a failed job on the worker', async () => {
    const b = workers.get('b')!;
    const id = await submit('p3', { ...P1, '04_fail': { kind: 'build-layer', script: 'echo about to fail; exit 3' } }, TOKENS.web);
    const r = await finished(id, TOKENS.web);
    expect(r.state).toBe('failed');
    const s = await schedulerSettles('vmlb_builds_total', { team: 'web', state: 'failed' }, 1);
    expect(metricValue(s, 'vmlb_builds_total', { team: 'web', state: 'failed' })).toBe(1);
    expect(metricValue(s, 'vmlb_build_duration_seconds_count', { state: 'failed' })).toBe(1);
    const w = await workerSettles(b, 'vmlb_worker_jobs_total', { queue: 'layer', outcome: 'failed' }, 1);
    expect(metricValue(w, 'vmlb_worker_jobs_total', { queue: 'layer', outcome: 'failed' })).toBe(1);
    expect(metricValue(w, 'vmlb_layer_cache_lookups_total', { result: 'miss', team: 'web' })).toBe(2);
    // Its log is there for the dashboard.
    const log = await api('GET', `/v1/builds/${id}/layers/3/log`);
    expect(log.status).toBe(200);
    expect(await log.text()).toContain('about to fail');
  });

  it('pools: team pa\'s build waits in pool a\'s queue with no pool-a worker (VmlbPoolWithoutWorkers pending in a real Prometheus, for pool a only), then builds on pool a\'s worker; every series of it says pool="a"', async () => {
    const sp = new URL(sched.url);
    const poolPort = await freePort();
    prometheus = await startPrometheus({
      jobs: { 'vmlb-scheduler': [sp.host], 'vmlb-worker': [`127.0.0.1:${poolPort}`] },
      ruleFiles: [path.join(REPO, 'deploy/prometheus/alerts.yml')],
    });
    const prom = prometheus;
    const byPool = (rows: Array<{ metric: Record<string, string>; value: number }>) => Object.fromEntries(rows.map((r) => [r.metric.pool ?? '', r.value]));

    // Before pa's build: pool a is on the scrape (from the teams file) with no worker and an empty queue.
    let s = await schedulerMetrics();
    expect(metricValue(s, 'vmlb_fleet_workers', { pool: 'a' })).toBe(0);
    expect(hasMetric(s, 'vmlb_fleet_workers', { pool: 'a' })).toBe(true);
    expect(metricValue(s, 'vmlb_fleet_workers', { pool: 'default' })).toBe(1);
    expect(hasMetric(s, 'vmlb_queue_jobs', { queue: 'vmlb-layers-a', pool: 'a', kind: 'layer', state: 'waiting' })).toBe(true);
    expect(hasMetric(s, 'vmlb_queue_jobs', { queue: 'vmlb-flatten-a', pool: 'a', kind: 'flatten', state: 'waiting' })).toBe(true);
    expect(metricValue(s, 'vmlb_queue_jobs', { queue: 'vmlb-layers', pool: 'default', kind: 'layer', state: 'completed' })).toBeGreaterThan(0);
    expect(hasMetric(s, 'vmlb_builds_submitted_total', { team: 'pa', pool: 'a' })).toBe(true);
    const defaultHits = metricValue(s, 'vmlb_layer_cache_lookups_total', { pool: 'default', result: 'hit' });

    // P1 was built in pool default: pool a trusts no pool, so for it every layer is a miss, queued on its own queue.
    const id = await submit('p1-pool-a', P1, POOL_TOKEN);
    await new Promise((r) => setTimeout(r, 1500));
    s = await schedulerMetrics();
    expect(metricValue(s, 'vmlb_queue_jobs', { queue: 'vmlb-layers-a', pool: 'a', kind: 'layer', state: 'waiting' })).toBe(1);
    expect(metricValue(s, 'vmlb_queue_jobs', { queue: 'vmlb-flatten-a', pool: 'a', kind: 'flatten', state: 'waiting-children' })).toBe(1);
    expect(metricValue(s, 'vmlb_queue_oldest_job_age_seconds', { pool: 'a', kind: 'layer' })).toBeGreaterThanOrEqual(1.4);
    expect(metricValue(s, 'vmlb_queue_oldest_job_age_seconds', { pool: 'default', kind: 'layer' })).toBe(0);
    // Pool default's worker is idle: it never takes pool a's jobs.
    expect(metricValue(s, 'vmlb_fleet_busy_slots', { pool: 'default' })).toBe(0);
    expect(metricValue(s, 'vmlb_layer_cache_lookups_total', { team: 'pa' })).toBe(0);

    // Prometheus, over the real scrape, evaluates the alert rules: pool a has queued jobs and no
    // worker (pending: the rule wants 5 minutes); pool default has a worker; the fleet has one.
    await waitFor(`VmlbPoolWithoutWorkers pending for pool a\n${prom.log()}`, async () => {
      const pending = (await prom.alerts()).filter((a) => a.labels.alertname === 'VmlbPoolWithoutWorkers');
      return pending.length === 1 && pending[0]!.labels.pool === 'a' && pending[0]!.state === 'pending';
    }, 30_000, 500);
    expect((await prom.alerts()).filter((a) => a.labels.alertname === 'VmlbNoLiveWorkers')).toEqual([]);
    expect(byPool(await prom.query('sum by (pool) (vmlb_fleet_workers)'))).toEqual({ a: 0, default: 1 });
    expect(byPool(await prom.query('sum by (pool) (vmlb_queue_jobs{state=~"waiting|prioritized|delayed"})'))).toEqual({ a: 1, default: 0 });

    // Pool a's worker: it takes the jobs, the alert goes. (Stopped when the test ends, however
    // it ends: the tests after it count pool default's workers alone.)
    const pa = await startWorker('pa', { pool: 'a', metricsPort: poolPort });
    onTestFinished(async () => {
      if (workers.delete('pa')) await pa.stop();
      await prometheus?.close();
      prometheus = undefined;
    });
    const r = await finished(id, POOL_TOKEN);
    expect(r.state, r.error).toBe('done');
    expect(r.pool).toBe('a');
    for (const l of r.layers) expect(l.worker).toBe('w-pa');

    const w = await workerSettles(pa, 'vmlb_flatten_duration_seconds_count', {}, 1);
    // Every series of the pool's worker carries its pool (and its id), the process metrics too.
    const samples = parseMetrics(w);
    expect(samples.length).toBeGreaterThan(20);
    expect(samples.filter((x) => x.labels.pool !== 'a' || x.labels.worker !== 'w-pa').map((x) => x.name)).toEqual([]);
    expect(metricValue(w, 'vmlb_layer_cache_lookups_total', { result: 'miss', source: 'shared', team: 'pa', pool: 'a' })).toBe(3);
    expect(metricValue(w, 'vmlb_worker_jobs_total', { queue: 'layer', outcome: 'built', pool: 'a' })).toBe(3);
    expect(metricValue(w, 'vmlb_worker_jobs_total', { queue: 'flatten', outcome: 'built', pool: 'a' })).toBe(1);
    expect(metricValue(w, 'vmlb_worker_slots', { pool: 'a' })).toBe(2);
    expect(metricValue(w, 'vmlb_worker_busy_slots', { pool: 'a' })).toBe(0);
    expect(metricValue(w, 'vmlb_shared_store_pushed_bytes_total', { object: 'layer', pool: 'a' })).toBe(r.layers.reduce((n: number, l: { bytes: number }) => n + l.bytes, 0));
    expect(hasMetric(w, 'vmlb_worker_cached_bytes', { pool: 'a' })).toBe(true);
    // Pool default's worker did none of it.
    const def = await workerMetrics(workers.get('b')!);
    expect(metricValue(def, 'vmlb_layer_cache_lookups_total', { team: 'pa' })).toBe(0);
    expect(parseMetrics(def).filter((x) => x.labels.pool !== 'default').map((x) => x.name)).toEqual([]);

    s = await schedulerSettles('vmlb_builds_total', { team: 'pa', pool: 'a', state: 'done' }, 1);
    expect(metricValue(s, 'vmlb_builds_total', { team: 'pa', pool: 'a', state: 'done' })).toBe(1);
    expect(metricValue(s, 'vmlb_builds_total', { pool: 'a' })).toBe(1);
    expect(metricValue(s, 'vmlb_builds_submitted_total', { team: 'pa', pool: 'a' })).toBe(1);
    expect(metricValue(s, 'vmlb_build_duration_seconds_count', { state: 'done', pool: 'a' })).toBe(1);
    expect(metricValue(s, 'vmlb_builds_total', { team: 'web', pool: 'default', state: 'done' })).toBe(2);
    expect(metricValue(s, 'vmlb_fleet_workers', { pool: 'a' })).toBe(1);
    expect(metricValue(s, 'vmlb_fleet_slots', { pool: 'a' })).toBe(2);
    expect(hasMetric(s, 'vmlb_worker_last_heartbeat_timestamp_seconds', { worker: 'w-pa', pool: 'a' })).toBe(true);
    expect(hasMetric(s, 'vmlb_worker_last_heartbeat_timestamp_seconds', { worker: 'w-b', pool: 'default' })).toBe(true);
    expect(metricValue(s, 'vmlb_queue_oldest_job_age_seconds', { pool: 'a', kind: 'layer' })).toBe(0);

    // The same project again in pool a: three plan-time hits, counted for pool a.
    const again = await finished(await submit('p1-pool-a-again', P1, POOL_TOKEN), POOL_TOKEN);
    expect(again.layers.map((l: { status: string }) => l.status)).toEqual(['hit', 'hit', 'hit']);
    s = await schedulerMetrics();
    expect(metricValue(s, 'vmlb_layer_cache_lookups_total', { result: 'hit', source: 'shared', team: 'pa', pool: 'a' })).toBe(3);
    expect(metricValue(s, 'vmlb_layer_cache_lookups_total', { pool: 'default', result: 'hit' })).toBe(defaultHits);

    // Prometheus sees the same: the pool's hit ratio (the alerts' way: scheduler and workers summed by pool) is 50 %, and the alert is gone.
    await waitFor('pool a\'s lookups in Prometheus', async () => byPool(await prom.query('sum by (pool) (vmlb_layer_cache_lookups_total)')).a === 6, 30_000, 500);
    expect(byPool(await prom.query('sum by (pool) (vmlb_layer_cache_lookups_total{result="hit"}) / sum by (pool) (vmlb_layer_cache_lookups_total)')).a).toBe(0.5);
    expect(byPool(await prom.query('sum by (pool) (vmlb_worker_slots{job="vmlb-worker"})'))).toEqual({ a: 2 });
    await waitFor('VmlbPoolWithoutWorkers to clear', async () => (await prom.alerts()).every((a) => a.labels.alertname !== 'VmlbPoolWithoutWorkers'), 30_000, 500);

    workers.delete('pa');
    expect((await pa.stop()).exitCode).toBe(0);
    s = await schedulerMetrics();
    expect(metricValue(s, 'vmlb_fleet_workers', { pool: 'a' })).toBe(0);
    expect(hasMetric(s, 'vmlb_worker_last_heartbeat_timestamp_seconds', { worker: 'w-pa' })).toBe(false);
  });

  it('a pool and a team added by a reloaded teams file get their series at the next scrape', async () => {
    let s = await schedulerMetrics();
    expect(hasMetric(s, 'vmlb_queue_jobs', { pool: 'late' })).toBe(false);
    teams.replaceWith(Teams.parse(teamsJson([{ team: 'newcomer', tokenSha256: sha256Hex('tok-metrics-newcomer-0123456789'), pool: 'late' }]), 'reloaded teams'));
    try {
      s = await schedulerMetrics();
      for (const state of ['waiting', 'active', 'delayed', 'completed', 'failed']) {
        expect(metricValue(s, 'vmlb_queue_jobs', { queue: 'vmlb-layers-late', pool: 'late', kind: 'layer', state })).toBe(0);
        expect(hasMetric(s, 'vmlb_queue_jobs', { queue: 'vmlb-flatten-late', pool: 'late', kind: 'flatten', state })).toBe(true);
      }
      expect(hasMetric(s, 'vmlb_queue_oldest_job_age_seconds', { queue: 'vmlb-layers-late', pool: 'late', kind: 'layer' })).toBe(true);
      expect(hasMetric(s, 'vmlb_fleet_workers', { pool: 'late' })).toBe(true);
      expect(metricValue(s, 'vmlb_fleet_workers', { pool: 'late' })).toBe(0);
      expect(hasMetric(s, 'vmlb_builds_submitted_total', { team: 'newcomer', pool: 'late' })).toBe(true);
      expect(hasMetric(s, 'vmlb_builds_total', { team: 'newcomer', pool: 'late', state: 'failed' })).toBe(true);
      expect(hasMetric(s, 'vmlb_layer_cache_lookups_total', { team: 'newcomer', pool: 'late', result: 'hit' })).toBe(true);
    } finally {
      teams.replaceWith(Teams.parse(teamsJson(), 'metrics test teams'));
    }
  });

  it.skipIf(EXTERNAL_S3_REASON)('what the alerts watch: a SIGKILLed worker keeps its last heartbeat, an unreachable store reads 0', async () => {
    const b = workers.get('b')!;
    let s = await schedulerMetrics();
    const beat = metricValue(s, 'vmlb_worker_last_heartbeat_timestamp_seconds', { worker: 'w-b' });
    expect(Math.abs(beat - Date.now() / 1000)).toBeLessThan(30);

    b.child.kill('SIGKILL');
    await b.exited;
    await s3.stop!();
    try {
      // The registration lapses after its TTL (15 s); the last heartbeat stays.
      await waitFor('w-b to be listed as lost', async () => {
        const f = await api.json('GET', '/v1/fleet');
        // (Those stopped cleanly before are listed as stopped: not lost.)
        const notStopped = f.body.workers.filter((w: { state: string }) => w.state !== 'stopped');
        return notStopped.length === 1 && notStopped[0].id === 'w-b' && notStopped[0].live === false;
      }, 30_000, 500);
      await waitFor('vmlb_shared_store_up 0', async () => metricValue(await schedulerMetrics(), 'vmlb_shared_store_up') === 0 && hasMetric(await schedulerMetrics(), 'vmlb_shared_store_up'), 30_000, 500);
      s = await schedulerMetrics();
      expect(metricValue(s, 'vmlb_fleet_workers')).toBe(0);
      const last = metricValue(s, 'vmlb_worker_last_heartbeat_timestamp_seconds', { worker: 'w-b' });
      expect(last).toBeGreaterThanOrEqual(beat);
      expect(Date.now() / 1000 - last).toBeGreaterThan(10);
    } finally {
      await s3.restart!();
    }
    await waitFor('vmlb_shared_store_up 1', async () => metricValue(await schedulerMetrics(), 'vmlb_shared_store_up') === 1, 30_000, 500);
    // The same worker back (its start-up sweep clears what the SIGKILL left): live again.
    workers.delete('b');
    const again = await startWorker('b');
    const f = await api.json('GET', '/v1/fleet');
    expect(f.body.workers.filter((w: { state: string }) => w.state !== 'stopped').map((w: { id: string; live: boolean }) => [w.id, w.live])).toEqual([['w-b', true]]);
    expect((await again.stop()).exitCode).toBe(0);
  });

  it('Redis down: submissions and the fleet view answer 503 at once, /metrics answers without the Redis gauges and says vmlb_redis_up 0', async () => {
    await redis.stop();
    try {
      await waitFor('vmlb_redis_up 0', async () => metricValue(await schedulerMetrics(), 'vmlb_redis_up') === 0 && hasMetric(await schedulerMetrics(), 'vmlb_redis_up'), 10_000, 100);
      const t0 = Date.now();
      const dir = await writeProject(path.join(sb.dir, 'p-outage'), P1);
      const tgz = path.join(sb.dir, 'p-outage.tar.gz');
      await packProject(dir, tgz);
      const r = await api.json('POST', '/v1/builds', { body: await readFile(tgz) });
      expect(r.status).toBe(503);
      expect(r.body.error.code).toBe('REDIS_UNAVAILABLE');
      expect(r.body.error.message).toMatch(/nothing was queued/);
      expect((await api.json('GET', '/v1/fleet')).status).toBe(503);
      const s = await schedulerMetrics();
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(hasMetric(s, 'vmlb_queue_jobs')).toBe(false);
      expect(hasMetric(s, 'vmlb_queue_oldest_job_age_seconds')).toBe(false);
      expect(metricValue(s, 'vmlb_redis_up')).toBe(0);
      expect(metricValue(s, 'vmlb_builds_total', { team: 'web', state: 'done' })).toBe(2);
      // What needs no Redis still answers: the build list comes from the shared store.
      expect((await api.json('GET', '/v1/builds')).status).toBe(200);
    } finally {
      await redis.start();
    }
    await waitFor('vmlb_redis_up 1', async () => metricValue(await schedulerMetrics(), 'vmlb_redis_up') === 1, 20_000, 200);
    expect((await api.json('GET', '/v1/fleet')).status).toBe(200);
  });
});

/**
 * Pools, end to end on real processes: a scheduler with a teams file of three pools (web in a,
 * db in b, base in platform; a trusts platform for reading, b trusts nothing), one real worker
 * process per pool, a real Redis and S3 test server, and `vmlb submit` as a team runs it.
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { layerQueueOf, poolS3Config, redisKeys } from '../libs/fleet/src/index.js';
import { SharedStore, s3ConfigFrom } from '../libs/layer-engine/src/index.js';
import { sha256Hex, Teams } from '../apps/scheduler/src/index.js';
import { startFleetServices, type FleetServices } from './helpers/fleet-services.js';
import { apiFor, startScheduler, waitFor, type RunningScheduler } from './helpers/fleet-api.js';
import { startWorkerProcess, workerLogs, type WorkerProcess } from './helpers/worker-process.js';
import { BUSYBOX_BASE, sandbox, vmlb, writeProject, type LayerDef } from './helpers/vmlb.js';
import { startDevFleet } from './helpers/dev-fleet.js';

const TOKENS = { web: 'tok-pool-web-0123456789', db: 'tok-pool-db-0123456789', base: 'tok-pool-base-0123456789', ops: 'tok-pool-ops-0123456789' };
const TEAMS = {
  teams: [
    { team: 'web', tokenSha256: sha256Hex(TOKENS.web), pool: 'a' },
    { team: 'db', tokenSha256: sha256Hex(TOKENS.db), pool: 'b' },
    { team: 'base', tokenSha256: sha256Hex(TOKENS.base), pool: 'platform' },
    { team: 'ops', tokenSha256: sha256Hex(TOKENS.ops), admin: true },
  ],
  pools: { a: { reads: ['platform'] }, b: {} },
};

let services: FleetServices;
let scheduler: RunningScheduler;
let redis: Redis;
const workers = new Map<string, WorkerProcess>();
const stores = new Map<string, SharedStore>();

const app: Record<string, LayerDef> = {
  '01_base': BUSYBOX_BASE,
  '02_app': { kind: 'build-layer', script: 'echo app > /etc/app; echo app built' },
};

function submitAs(team: keyof typeof TOKENS, dir: string) {
  return vmlb(services.sb, ['submit', dir, '--plain'], { VMLB_SERVER: scheduler.url, VMLB_TOKEN: TOKENS[team] });
}

/** The pool's namespace of the shared store, read with the test's (all-powerful) keys. */
function storeOf(pool: string): SharedStore {
  let s = stores.get(pool);
  if (!s) stores.set(pool, (s = new SharedStore(poolS3Config(s3ConfigFrom(services.sharedUrl, services.env), pool))));
  return s;
}

beforeAll(async () => {
  services = await startFleetServices('pools');
  scheduler = await startScheduler(services.env, { teams: Teams.parse(JSON.stringify(TEAMS), 'pool teams') });
  redis = new Redis(services.redis.url, { maxRetriesPerRequest: null });
  for (const pool of ['a', 'b', 'platform']) {
    workers.set(
      pool,
      startWorkerProcess({ name: pool, dir: services.sb.dir, redisUrl: services.redis.url, sharedUrl: services.sharedUrl, s3env: services.s3.env, env: { VMLB_WORKER_POOL: pool } }),
    );
  }
  await waitFor('the three workers to register', async () => {
    const ids = await redis.keys(redisKeys.workerPattern);
    return ids.length === 3;
  });
}, 120_000);

afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') console.error(workerLogs(workers.values()), scheduler.log.lines.slice(-20).join('\n'));
});

afterAll(async () => {
  for (const w of workers.values()) await w.stop();
  for (const s of stores.values()) s.close();
  redis?.disconnect();
  await scheduler?.close();
  await services?.close();
});

describe('pools', () => {
  it('the base pool builds its base; pool a (trusting platform) takes it as a hit; pool b (trusting nothing) builds everything itself, on its own worker, into its own namespace', async () => {
    const baseProject = await writeProject(path.join(services.sb.dir, 'base'), { '01_base': BUSYBOX_BASE });
    const base = await submitAs('base', baseProject);
    expect(base.exitCode, base.stdout + base.stderr).toBe(0);
    const project = await writeProject(path.join(services.sb.dir, 'app'), app);

    const web = await submitAs('web', project);
    expect(web.exitCode, web.stdout + web.stderr).toBe(0);
    expect(web.stdout).toMatch(/#1 \[1\/2\] 01_base CACHED \(shared: platform, [\d.]+ [KM]iB\)/);
    expect(web.stdout).toMatch(/#2 \[2\/2\] 02_app build-layer building/);

    const db = await submitAs('db', project);
    expect(db.exitCode, db.stdout + db.stderr).toBe(0);
    expect(db.stdout).toMatch(/2 layers: 0 cached, 2 to build/);

    // Where the layers are: platform has the base; a has only its own layer; b has both.
    const list = async (pool: string) => (await storeOf(pool).listLayers()).sort();
    const [onPlatform, onA, onB] = [await list('platform'), await list('a'), await list('b')];
    expect(onPlatform).toHaveLength(1);
    expect(onA).toHaveLength(1);
    expect(onB).toHaveLength(2);
    expect(onB).toContain(onPlatform[0]);
    expect(onA).not.toContain(onPlatform[0]);
    expect(onB).toContain(onA[0]);
    // Each pool's own worker built its layers: the records say which worker, by pool.
    const builds = (await apiFor(() => scheduler.url, TOKENS.ops).json('GET', '/v1/builds?limit=10')).body.builds as Array<{ id: string; team: string; pool: string }>;
    expect(Object.fromEntries(builds.map((b) => [b.team, b.pool]))).toEqual({ base: 'platform', web: 'a', db: 'b' });
    for (const b of builds) {
      const r = (await apiFor(() => scheduler.url, TOKENS.ops).json('GET', `/v1/builds/${b.id}`)).body as { layers: Array<{ status: string; worker?: string; pool?: string }> };
      for (const l of r.layers.filter((x) => x.status === 'done')) expect(l.worker).toBe(`w-${b.pool}`);
    }
    // A second submission by web is all hits in pool a (and platform): nothing to build.
    const again = await submitAs('web', project);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/2 layers: 2 cached, 0 to build/);
  });

  it('a team sees only its own builds and its own pool\'s workers and queues; an admin sees every pool', async () => {
    const web = apiFor(() => scheduler.url, TOKENS.web);
    const db = apiFor(() => scheduler.url, TOKENS.db);
    const webBuilds = (await web.json('GET', '/v1/builds')).body.builds as Array<{ id: string; team: string }>;
    const dbBuilds = (await db.json('GET', '/v1/builds')).body.builds as Array<{ id: string; team: string }>;
    expect(webBuilds.length).toBeGreaterThan(0);
    expect(new Set(webBuilds.map((b) => b.team))).toEqual(new Set(['web']));
    expect((await web.json('GET', `/v1/builds/${dbBuilds[0]!.id}`)).status).toBe(404);
    const webFleet = (await web.json('GET', '/v1/fleet')).body as { workers: Array<{ id: string; pool: string }>; pools: Array<{ pool: string }> };
    expect(webFleet.workers.map((w) => [w.id, w.pool])).toEqual([['w-a', 'a']]);
    expect(webFleet.pools.map((p) => p.pool)).toEqual(['a']);
    const opsFleet = (await apiFor(() => scheduler.url, TOKENS.ops).json('GET', '/v1/fleet')).body as { workers: Array<{ id: string; pool: string }>; pools: Array<{ pool: string }> };
    expect(opsFleet.workers.map((w) => w.pool).sort()).toEqual(['a', 'b', 'platform']);
    expect(opsFleet.pools.map((p) => p.pool)).toEqual(['a', 'b', 'default', 'platform']);
    expect((await web.json('GET', '/v1/whoami')).body).toEqual({ team: 'web', admin: false, pool: 'a' });
  });

  it('a forged job of pool b put on pool a\'s queue is refused by pool a\'s worker, naming both pools', async () => {
    const queue = new Queue(layerQueueOf('a'), { connection: redis });
    try {
      const key = 'f'.repeat(64);
      const job = await queue.add(
        'forged',
        { buildId: 'bforged0000000', team: 'db', pool: 'b', reads: [], project: 'e'.repeat(64), nonce: 'n', index: 0, name: '01_x', key, chain: [], cacheable: true, share: true },
        { attempts: 1 },
      );
      const failed = await waitFor('the forged job to fail', async () => ((await job.getState()) === 'failed' ? (await queue.getJob(job.id!))! : undefined), 30_000);
      expect(failed.failedReason).toBe(`job ${job.id} of build bforged0000000 is of pool b; worker w-a serves pool a only: refused`);
      // It never reached pool b's namespace nor claimed anything.
      expect(await storeOf('b').getManifest(key)).toBeNull();
      expect(await redis.keys('vmlb:claim:*ffffffff*')).toEqual([]);
    } finally {
      await queue.close();
    }
  });
});

describe('gc --shared per pool', () => {
  it('collects one pool\'s namespace (s3://…/pools/b) and leaves the other pools\' layers alone', async () => {
    const before = { a: (await storeOf('a').listLayers()).length, platform: (await storeOf('platform').listLayers()).length, b: (await storeOf('b').listLayers()).length };
    expect(before.b).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 50));
    const r = await vmlb(services.sb, ['gc', '--shared', `${services.sharedUrl}/pools/b`, '--unused-for', '1ms', '--json'], services.s3.env);
    expect(r.exitCode, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { shared: { layers: unknown[] } }).shared.layers).toHaveLength(before.b);
    expect(await storeOf('b').listLayers()).toEqual([]);
    expect((await storeOf('a').listLayers()).length).toBe(before.a);
    expect((await storeOf('platform').listLayers()).length).toBe(before.platform);
  });
});

describe('npm run fleet with pools', () => {
  it('VMLB_FLEET_TEAMS makes the teams and pools, one worker per pool, and a token line per team; VMLB_FLEET_READS makes a pool trust another', async () => {
    const sb = await sandbox('pools-dev');
    const fleet = await startDevFleet({
      env: { ...services.s3.env, VMLB_SHARED: `${services.sharedUrl}-dev`, VMLB_FLEET_DIR: path.join(sb.dir, 'fleet'), VMLB_FLEET_TEAMS: 'web:a,db:b,base:platform', VMLB_FLEET_READS: 'a:platform' },
      workers: 1,
      started: 3,
    });
    try {
      expect(Object.keys(fleet.exports).sort()).toEqual(['VMLB_SERVER', 'VMLB_TOKEN', 'VMLB_TOKEN_BASE', 'VMLB_TOKEN_DB', 'VMLB_TOKEN_WEB']);
      expect(fleet.exports.VMLB_TOKEN).toBe(fleet.exports.VMLB_TOKEN_WEB);
      expect(fleet.errors).toMatch(/fleet: teams: web \(pool a\), db \(pool b\), base \(pool platform\); pools reading others: a reads platform/);
      const as = (team: 'WEB' | 'DB' | 'BASE') => ({ VMLB_SERVER: fleet.exports.VMLB_SERVER!, VMLB_TOKEN: fleet.exports[`VMLB_TOKEN_${team}`]! });
      const who = await vmlb(sb, ['builds', '--json'], as('DB'));
      expect(who.exitCode, who.stderr).toBe(0);
      const fleetView = await fetch(`${fleet.exports.VMLB_SERVER}/v1/fleet`, { headers: { authorization: `Bearer ${fleet.exports.VMLB_TOKEN_DB}` } }).then((r) => r.json() as Promise<{ workers: Array<{ pool: string }> }>);
      expect(fleetView.workers.map((w) => w.pool)).toEqual(['b']);
      const base = await writeProject(path.join(sb.dir, 'base'), { '01_base': BUSYBOX_BASE });
      expect((await vmlb(sb, ['submit', base, '--plain'], as('BASE'))).exitCode).toBe(0);
      const app = await writeProject(path.join(sb.dir, 'app'), { '01_base': BUSYBOX_BASE, '02_app': { kind: 'build-layer', script: 'echo app > /etc/app' } });
      const web = await vmlb(sb, ['submit', app, '--plain'], as('WEB'));
      expect(web.exitCode, web.stdout + web.stderr).toBe(0);
      expect(web.stdout).toMatch(/01_base CACHED \(shared: platform/);
      const db = await vmlb(sb, ['submit', app, '--plain'], as('DB'));
      expect(db.exitCode, db.stdout + db.stderr).toBe(0);
      expect(db.stdout).toMatch(/2 layers: 0 cached, 2 to build/);
    } finally {
      await fleet.stop();
      await sb.cleanup();
    }
  }, 240_000);
});

/**
 * Fleet workers end to end: a private redis-server and S3 test server (s3rver, or radosgw with
 * VMLB_TEST_S3=radosgw), real worker processes
 * (`node --import tsx apps/worker/src/main.ts`, each with its own local store and run dir, as
 * on two hosts), and builds submitted as the scheduler would (test/helpers/fleet-submit.ts).
 * Tests run in order: later ones reuse the layers earlier ones put in the shared store.
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../libs/layer-engine/src/store/local-store.js';
import { SharedStore } from '../libs/layer-engine/src/store/shared-store.js';
import type { FleetEvent } from '../libs/fleet/src/build-record.js';
import { ClaimLease, claimOwner, releaseClaim, renewClaim, takeClaim } from '../libs/fleet/src/claims.js';
import { appendEvent, readEvents } from '../libs/fleet/src/event-stream.js';
import { giveBackTeamSlot, takeTeamSlot, teamRunning } from '../libs/fleet/src/team-cap.js';
import { layerJobId, redisKeys, storePaths } from '../libs/fleet/src/names.js';
import type { WorkerRegistration } from '../libs/fleet/src/workers-registry.js';
import { submitProject, type SubmittedBuild } from './helpers/fleet-submit.js';
import { startWorkerProcess as startWorker, workerLogs as logsOf, type WorkerProcess } from './helpers/worker-process.js';
import { freePort, type RedisServer } from './helpers/redis-server.js';
import type { S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, builtNames, cachedNames, leftovers, vmlb, writeProject, type LayerDef, type Sandbox } from './helpers/vmlb.js';
import { fleetClients, startFleetServices, type FleetClients, type FleetServices } from './helpers/fleet-services.js';


let services: FleetServices;
let clients: FleetClients;
let sb: Sandbox;
let redisServer: RedisServer;
let s3: S3Server;
let redis: Redis;
let shared: SharedStore;
let sharedUrl: string;
let layerQueue: Queue;
let flattenQueue: Queue;
const workers = new Map<string, WorkerProcess>();
let metricsPort = 0;

function startWorkerProcess(name: string, extraEnv: Record<string, string> = {}): WorkerProcess {
  // Chain affinity for any chain, however small (these busybox chains are a few MiB, which a
  // worker would pull rather than wait for: VMLB_AFFINITY_SMALL_CHAIN).
  const w = startWorker({ name, dir: sb.dir, redisUrl: redisServer.url, sharedUrl, s3env: s3.env, env: { VMLB_AFFINITY_SMALL_CHAIN: '0', ...extraEnv } });
  workers.set(name, w);
  return w;
}

async function until<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 60_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${workerLogs()}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const workerLogs = () => logsOf(workers.values());

async function registration(id: string): Promise<WorkerRegistration | null> {
  const text = await redis.get(redisKeys.worker(id));
  return text ? (JSON.parse(text) as WorkerRegistration) : null;
}

/** Waits until the build's flatten job is completed or failed. */
async function finished(b: SubmittedBuild, timeoutMs = 90_000): Promise<'completed' | 'failed'> {
  return until(
    `build ${b.buildId} to finish`,
    async () => {
      const state = await (await flattenQueue.getJob(b.flattenJobId))?.getState();
      return state === 'completed' || state === 'failed' ? state : undefined;
    },
    timeoutMs,
    200,
  );
}

async function events(buildId: string): Promise<FleetEvent[]> {
  return (await readEvents(redis, buildId, '0', { count: 100_000 })).map((e) => e.event);
}

type JobEvent = Extract<FleetEvent, { type: 'job' }>;
function jobEvents(all: FleetEvent[], status?: JobEvent['status']): JobEvent[] {
  return all.filter((e): e is JobEvent => e.type === 'job' && (status === undefined || e.status === status));
}

function submit(dir: string, extra: Partial<Parameters<typeof submitProject>[1]> = {}): Promise<SubmittedBuild> {
  // A short backoff: a retried job must not make the suite wait for the production delays.
  return submitProject(dir, { redisUrl: redisServer.url, shared, layerJobOptions: { backoff: { type: 'fixed', delay: 500 } }, ...extra });
}

beforeAll(async () => {
  services = await startFleetServices('worker');
  ({ sb, redis: redisServer, s3, sharedUrl } = services);
  clients = fleetClients(services);
  ({ redis, shared, layerQueue, flattenQueue } = clients);
  metricsPort = await freePort();
  startWorkerProcess('a', { VMLB_WORKER_METRICS_PORT: String(metricsPort), VMLB_WORKER_METRICS_HOST: '127.0.0.1' });
  startWorkerProcess('b');
  await until('both workers to register', async () => (await registration('w-a')) && (await registration('w-b')));
});

afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') console.error(workerLogs());
});

afterAll(async () => {
  for (const w of workers.values()) {
    if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL');
    await w.exited;
  }
  await clients?.close();
  // Whatever a killed worker left was swept by its restart.
  await services?.close();
});

const threeLayers: Record<string, LayerDef> = {
  '01_base': BUSYBOX_BASE,
  '02_two': { kind: 'build-layer', script: 'echo two > /etc/two; cp /mnt/data.txt /etc/data.txt', files: { 'data.txt': 'data\n' } },
  '03_three': { kind: 'build-layer', script: 'cat /etc/two > /etc/three; echo three done' },
};

describe('the shared Redis pieces (libs/fleet)', () => {
  it('a claim is taken once, renewed and released only by its owner, and taken over by a later attempt of the same job', async () => {
    const key = randomBytes(32).toString('hex');
    const first = claimOwner('build1-3', 'w-x');
    expect(await takeClaim(redis, key, first)).toEqual({ ok: true });
    expect(await takeClaim(redis, key, claimOwner('build2-3', 'w-y'))).toEqual({ ok: false, holder: first });
    expect(await releaseClaim(redis, key, claimOwner('build2-3', 'w-y'))).toBe(false);
    // The same job again (its worker died): it takes the claim over, and the old owner lost it.
    const retry = claimOwner('build1-3', 'w-y');
    expect(await takeClaim(redis, key, retry)).toEqual({ ok: true });
    expect(await renewClaim(redis, key, first)).toBe(false);
    expect(await renewClaim(redis, key, retry)).toBe(true);
    expect(await releaseClaim(redis, key, retry)).toBe(true);
    expect(await redis.exists(redisKeys.claim(key))).toBe(0);
  });

  it('a held lease aborts its signal when the claim is lost', async () => {
    const key = randomBytes(32).toString('hex');
    const lease = await ClaimLease.take(redis, key, claimOwner('b-1', 'w-x'), { renewMs: 50 });
    if (!(lease instanceof ClaimLease)) throw new Error('not taken');
    await redis.set(redisKeys.claim(key), 'someone-else');
    await until('the lease to notice', async () => lease.signal.aborted, 5000, 20);
    await lease.release();
    expect(await redis.get(redisKeys.claim(key))).toBe('someone-else');
  });

  it('a team takes running slots up to its cap; a job counts once; a lapsed slot comes back', async () => {
    const team = `t-${randomBytes(3).toString('hex')}`;
    expect(await takeTeamSlot(redis, team, 'j1', 2)).toBe(true);
    expect(await takeTeamSlot(redis, team, 'j2', 2)).toBe(true);
    expect(await takeTeamSlot(redis, team, 'j3', 2)).toBe(false);
    expect(await takeTeamSlot(redis, team, 'j1', 2)).toBe(true);
    expect(await teamRunning(redis, team)).toBe(2);
    await giveBackTeamSlot(redis, team, 'j1');
    expect(await takeTeamSlot(redis, team, 'j3', 2, 100)).toBe(true);
    await new Promise((r) => setTimeout(r, 150));
    // j3's slot lapsed (a killed worker never gave it back).
    expect(await takeTeamSlot(redis, team, 'j4', 2)).toBe(true);
    expect(await teamRunning(redis, team)).toBe(2);
  });

  it("events are appended to the build's stream and read from an id on, blocking for the next", async () => {
    const id = `ev${randomBytes(3).toString('hex')}`;
    const e1 = await appendEvent(redis, id, { type: 'job', at: 1, index: 0, status: 'building', worker: 'w' });
    const reader = redis.duplicate();
    try {
      const next = readEvents(reader, id, e1, { blockMs: 5000 });
      await appendEvent(redis, id, { type: 'job', at: 2, index: 0, status: 'done', worker: 'w', seconds: 1 });
      expect((await next).map((e) => e.event)).toEqual([{ type: 'job', at: 2, index: 0, status: 'done', worker: 'w', seconds: 1 }]);
      expect((await readEvents(redis, id)).length).toBe(2);
      expect(await redis.ttl(redisKeys.events(id))).toBeGreaterThan(0);
    } finally {
      reader.disconnect();
    }
  });
});

describe('fleet workers', () => {
  it('register with host, backend, slots, busy and cached bytes, refreshed by a heartbeat', async () => {
    const a = (await registration('w-a'))!;
    expect(a).toMatchObject({ id: 'w-a', backend: 'fuse', slots: 2, busy: 0, state: 'running' });
    expect(typeof a.host).toBe('string');
    expect(typeof a.cachedBytes).toBe('number');
    expect(a.version).toMatch(/\d+\.\d+/);
    expect(Date.parse(a.startedAt)).not.toBeNaN();
    const ttl = await redis.pttl(redisKeys.worker('w-a'));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(15_000);
    const later = await until('a heartbeat', async () => {
      const r = await registration('w-a');
      return r && r.lastHeartbeat !== a.lastHeartbeat ? r : undefined;
    }, 10_000, 250);
    expect(Date.parse(later.lastHeartbeat)).toBeGreaterThan(Date.parse(a.lastHeartbeat));

    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/^vmlb_worker_slots\{worker="w-a",pool="default"\} 2$/m);
    expect(metrics).toMatch(/^vmlb_worker_busy_slots\{worker="w-a",pool="default"\} 0$/m);
  });

  let p1: string;
  let first: SubmittedBuild;
  it('build a 3-layer project: every layer lands in the shared store, with the image; a local --cache build then builds nothing', async () => {
    p1 = await writeProject(path.join(sb.dir, 'p1'), threeLayers);
    first = await submit(p1);
    expect(first.layers.map((l) => l.status)).toEqual(['queued', 'queued', 'queued']);
    expect(await finished(first)).toBe('completed');

    for (const key of first.chain) expect(await shared.getManifest(key), key).not.toBeNull();
    const all = await events(first.buildId);
    expect(jobEvents(all, 'building').map((e) => e.index)).toEqual([0, 1, 2]);
    expect(jobEvents(all, 'done').map((e) => e.index)).toEqual([0, 1, 2]);
    const log = all.flatMap((e) => (e.type === 'engine' && e.event.type === 'layer-log' ? [e.event.chunk] : [])).join('');
    expect(log).toContain('three done');
    const flatten = all.find((e): e is Extract<FleetEvent, { type: 'flatten' }> => e.type === 'flatten' && e.status === 'done');
    expect(flatten?.image).toMatchObject({ key: first.chain[2], path: storePaths.image(first.chain[2]!) });
    expect(flatten!.image!.bytes).toBeGreaterThan(0);

    const local = await vmlb(sb, ['build', p1, '--json', '--cache', sharedUrl], { ...s3.env, VMLB_STORE: path.join(sb.dir, 'store-local') });
    expect(local.exitCode, local.stderr).toBe(0);
    expect(builtNames(local)).toEqual([]);
    expect(cachedNames(local)).toEqual(['01_base', '02_two', '03_three']);
  });

  it('hits make no jobs: a build whose layers are all shared gets a flatten job alone, which reuses the image', async () => {
    const again = await submit(p1);
    expect(again.layers.map((l) => l.status)).toEqual(['hit', 'hit', 'hit']);
    expect(again.layerJobIds).toEqual([]);
    expect(await finished(again)).toBe('completed');
    for (const i of [0, 1, 2]) expect(await layerQueue.getJob(layerJobId(again.buildId, i))).toBeUndefined();
    const all = await events(again.buildId);
    expect(jobEvents(all)).toEqual([]);
    expect(all.find((e) => e.type === 'flatten' && e.status === 'done')).toMatchObject({ message: expect.stringMatching(/already/) });
  });

  it('chain affinity: a layer on a base one worker holds runs on that worker while it is free, and pulls nothing', async () => {
    // No flatten jobs: a flatten would pull the chain to whichever worker ran it.
    const layerDone = (b: SubmittedBuild) =>
      until(`build ${b.buildId}'s last layer`, async () => {
        const state = await (await layerQueue.getJob(b.layerJobIds[b.layerJobIds.length - 1]!))?.getState();
        return state === 'completed' || state === 'failed' ? state : undefined;
      }, 90_000, 100);
    const base = await writeProject(path.join(sb.dir, 'affinity-base'), { '01_base': { ...BUSYBOX_BASE, script: BUSYBOX_BASE.script + '\n# affinity' } });
    const b0 = await submit(base, { flatten: false });
    expect(await layerDone(b0)).toBe('completed');
    const holder = jobEvents(await events(b0.buildId), 'building')[0]!.worker;
    for (const n of [1, 2, 3, 4]) {
      const p = await writeProject(path.join(sb.dir, `affinity-${n}`), {
        '01_base': { ...BUSYBOX_BASE, script: BUSYBOX_BASE.script + '\n# affinity' },
        '02_top': { kind: 'build-layer', script: `echo ${n} > /etc/n` },
      });
      const b = await submit(p, { flatten: false });
      expect(b.layers.map((l) => l.status)).toEqual(['hit', 'queued']);
      expect(await layerDone(b)).toBe('completed');
      const done = jobEvents(await events(b.buildId), 'done');
      expect(done.map((e) => [e.index, e.worker, e.pulledBytes]), `build ${n}`).toEqual([[1, holder, 0]]);
    }
  });

  it('a failing script fails its build at once, not retried, with the exit code and the log tail in the events', async () => {
    const p2 = await writeProject(path.join(sb.dir, 'p2'), {
      '01_base': BUSYBOX_BASE,
      '02_fail': { kind: 'build-layer', script: 'echo about to fail\necho on stderr >&2\nexit 3' },
      '03_after': { kind: 'build-layer', script: 'true' },
    });
    const b = await submit(p2);
    expect(b.layers.map((l) => l.status)).toEqual(['hit', 'queued', 'queued']);
    expect(await finished(b, 30_000)).toBe('failed');
    const failing = (await layerQueue.getJob(layerJobId(b.buildId, 1)))!;
    expect(await failing.getState()).toBe('failed');
    expect(failing.attemptsMade).toBe(1);
    expect(failing.failedReason).toMatch(/02_fail exited with status 3/);
    expect(await (await layerQueue.getJob(layerJobId(b.buildId, 2)))!.getState()).toBe('failed');

    const failed = jobEvents(await events(b.buildId), 'failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ index: 1, exitCode: 3 });
    expect(failed[0]!.logTail).toContain('about to fail');
    expect(failed[0]!.logTail).toContain('on stderr');
    expect(await shared.getManifest(b.chain[1]!)).toBeNull();
  });

  it('three teams build one project at once: each layer is built exactly once, and all three complete', async () => {
    const p3 = await writeProject(path.join(sb.dir, 'p3'), {
      '01_base': { ...BUSYBOX_BASE, files: { marker: 'p3\n' } },
      '02_x': { kind: 'build-layer', script: 'sleep 1; echo x > /etc/x' },
      '03_y': { kind: 'build-layer', script: 'echo y > /etc/y' },
    });
    const builds = await Promise.all(['web', 'data', 'infra'].map((team) => submit(p3, { team })));
    expect(builds.map((b) => b.team)).toEqual(['web', 'data', 'infra']);
    expect(new Set(builds.map((b) => b.chain.join())).size).toBe(1);
    expect(await Promise.all(builds.map((b) => finished(b)))).toEqual(['completed', 'completed', 'completed']);

    const all = await Promise.all(builds.map((b) => events(b.buildId)));
    const buildingPerIndex = [0, 1, 2].map((i) => all.flat().filter((e) => e.type === 'job' && e.status === 'building' && e.index === i).length);
    expect(buildingPerIndex).toEqual([1, 1, 1]);
    for (const evs of all) expect(jobEvents(evs, 'done').map((e) => e.index).sort()).toEqual([0, 1, 2]);
    // One image written, two reused.
    const flattens = all.map((evs) => evs.find((e) => e.type === 'flatten' && e.status === 'done') as Extract<FleetEvent, { type: 'flatten' }>);
    expect(flattens.filter((f) => !f.message)).toHaveLength(1);
  });

  it('a job whose layer another job builds, or that is shared already, is never put back for chain affinity: it waits or ends where it lands', async () => {
    const p = await writeProject(path.join(sb.dir, 'affinity-waiters'), {
      '01_base': { ...BUSYBOX_BASE, files: { marker: 'waiters\n' } },
      '02_x': { kind: 'build-layer', script: 'sleep 1; echo x > /etc/x' },
      '03_y': { kind: 'build-layer', script: 'echo y > /etc/y' },
    });
    const builds = await Promise.all([1, 2, 3].map(() => submit(p, { flatten: false })));
    for (const b of builds) {
      await until(`build ${b.buildId}'s last layer`, async () => (await (await layerQueue.getJob(b.layerJobIds[b.layerJobIds.length - 1]!))?.getState()) === 'completed', 90_000);
    }
    const all = await Promise.all(builds.map((b) => events(b.buildId)));
    expect([0, 1, 2].map((i) => all.flat().filter((e) => e.type === 'job' && e.status === 'building' && e.index === i).length)).toEqual([1, 1, 1]);
    // Every job that built nothing was never put back once its layer was being built by another
    // (the affinity key holds the time of a job's first put-back; the claim is taken before
    // the builder's `building` event). One taken in the moment before that claim may have been.
    const buildingAt = new Map(jobEvents(all.flat(), 'building').map((e) => [e.index, e.at]));
    const notBuilding = builds.flatMap((b, n) => b.layerJobIds.map((id, i) => ({ id, i })).filter(({ i }) => !jobEvents(all[n]!, 'building').some((e) => e.index === i)));
    expect(notBuilding).toHaveLength(6);
    const putBack = [];
    for (const { id, i } of notBuilding) {
      const first = Number(await redis.get(redisKeys.affinity(id)));
      if (first && first >= buildingAt.get(i)!) putBack.push(`${id} put back ${first - buildingAt.get(i)!} ms after layer ${i} was being built`);
    }
    expect(putBack, workerLogs()).toEqual([]);
  });

  it("# nocache layers are shared under their build's keys for the build's next job, and removed once the image is written", async () => {
    const p7 = await writeProject(path.join(sb.dir, 'p7'), {
      '01_base': BUSYBOX_BASE,
      '02_fresh': { kind: 'build-layer', script: '# nocache\ndate > /etc/fresh' },
      '03_after': { kind: 'build-layer', script: 'cat /etc/fresh > /etc/after' },
    });
    const b = await submit(p7);
    expect(b.layers.map((l) => [l.status, l.cacheable])).toEqual([['hit', true], ['queued', false], ['queued', false]]);
    expect(await finished(b)).toBe('completed');
    const all = await events(b.buildId);
    expect(jobEvents(all, 'done').map((e) => e.index)).toEqual([1, 2]);
    const image = await shared.getJson<{ key: string; chain: string[] }>(storePaths.image(b.chain[2]!).replace(/qcow2$/, 'json'));
    expect(image).toMatchObject({ key: b.chain[2], chain: b.chain });
    expect(await shared.getManifest(b.chain[1]!)).toBeNull();
    expect(await shared.getManifest(b.chain[2]!)).toBeNull();
    expect(await shared.getManifest(b.chain[0]!)).not.toBeNull();
  });

  it('a cancelled build stops its running layer at once: cancelled, not retried, nothing published', async () => {
    const p8 = await writeProject(path.join(sb.dir, 'p8'), {
      '01_base': BUSYBOX_BASE,
      '02_stopped': { kind: 'build-layer', script: 'echo cancel-start\nsleep 60' },
    });
    const b = await submit(p8);
    await until('the layer to run', async () => (await events(b.buildId)).some((e) => e.type === 'engine' && e.event.type === 'layer-log' && e.event.chunk.includes('cancel-start')), 30_000);
    await redis.set(redisKeys.cancelled(b.buildId), '1');
    expect(await finished(b, 20_000)).toBe('failed');
    const job = (await layerQueue.getJob(layerJobId(b.buildId, 1)))!;
    expect(job.attemptsMade).toBe(1);
    expect(jobEvents(await events(b.buildId), 'cancelled').map((e) => e.index)).toEqual([1]);
    expect(await shared.getManifest(b.chain[1]!)).toBeNull();
  });

  it('a worker SIGKILLed mid-layer: the job runs again on the other worker, the build completes, nothing was half-published', async () => {
    const p4 = await writeProject(path.join(sb.dir, 'p4'), {
      '01_base': BUSYBOX_BASE,
      '02_slow': { kind: 'build-layer', script: 'echo slow-start\nsleep 4\necho slow > /etc/slow' },
    });
    const b = await submit(p4);
    const key = b.chain[1]!;
    const started = await until('the slow layer to start', async () => jobEvents(await events(b.buildId), 'building')[0], 30_000);
    const victim = [...workers.values()].find((w) => w.id === started.worker)!;
    await until('its script to run', async () => (await events(b.buildId)).some((e) => e.type === 'engine' && e.event.type === 'layer-log' && e.event.chunk.includes('slow-start')), 20_000);
    victim.child.kill('SIGKILL');
    expect((await victim.exited).signal).toBe('SIGKILL');
    expect(await shared.getManifest(key)).toBeNull();

    expect(await finished(b)).toBe('completed');
    const building = jobEvents(await events(b.buildId), 'building');
    expect(building.map((e) => e.worker)).toEqual([victim.id, [...workers.values()].find((w) => w !== victim)!.id]);
    // Published once, whole: a pull checks the blob's sha256 against the manifest.
    const scratch = new LocalStore(path.join(sb.dir, 'store-check'));
    const pulled = await shared.pullChain(scratch, [key]);
    expect(pulled.map((m) => m.key)).toEqual(b.chain);

    // Restarted, the killed worker sweeps what it left attached (in its run dir and store;
    // the other worker's disk daemon lives on, so the whole sandbox is checked at the end).
    const again = startWorkerProcess(victim.name);
    await until('the restarted worker to register', async () => (await registration(again.id))?.pid === again.child.pid);
    for (const dir of [`run-${victim.name}`, `store-${victim.name}`]) expect(await leftovers({ ...sb, dir: path.join(sb.dir, dir) })).toEqual([]);
  });

  it('SIGTERM while a job runs: the worker finishes it, deregisters and exits 0', async () => {
    const p5 = await writeProject(path.join(sb.dir, 'p5'), {
      '01_base': BUSYBOX_BASE,
      '02_finish': { kind: 'build-layer', script: 'echo finish-start\nsleep 2\necho finished > /etc/finished' },
    });
    const b = await submit(p5);
    const started = await until('the layer to start', async () => jobEvents(await events(b.buildId), 'building')[0], 30_000);
    const w = [...workers.values()].find((x) => x.id === started.worker)!;
    await until('its script to run', async () => (await events(b.buildId)).some((e) => e.type === 'engine' && e.event.type === 'layer-log' && e.event.chunk.includes('finish-start')), 20_000);
    w.child.kill('SIGTERM');
    expect(await w.exited).toEqual({ exitCode: 0, signal: undefined });
    expect(await registration(w.id)).toBeNull();
    const all = await events(b.buildId);
    expect(jobEvents(all, 'done').filter((e) => e.index === 1).map((e) => e.worker)).toEqual([w.id]);
    expect(await finished(b)).toBe('completed');
    startWorkerProcess(w.name);
    await until('the worker to come back', async () => registration(w.id));
  });

  it('SIGTERM past the grace period: the running job is handed back, and the other worker builds it', async () => {
    // Only a worker with a short grace period takes this build.
    const quick = workers.get('b')!;
    quick.child.kill('SIGTERM');
    await quick.exited;
    const graceful = startWorkerProcess('b', { VMLB_WORKER_GRACE: '1s' });
    await until('it to register', async () => (await registration(graceful.id))?.pid === graceful.child.pid);
    const other = workers.get('a')!;
    other.child.kill('SIGTERM');
    await other.exited;

    const p6 = await writeProject(path.join(sb.dir, 'p6'), {
      '01_base': BUSYBOX_BASE,
      '02_long': { kind: 'build-layer', script: 'echo long-start\nsleep 3\necho long > /etc/long' },
    });
    const b = await submit(p6);
    await until('the layer to run', async () => (await events(b.buildId)).some((e) => e.type === 'engine' && e.event.type === 'layer-log' && e.event.chunk.includes('long-start')), 30_000);
    graceful.child.kill('SIGTERM');
    expect(await graceful.exited).toEqual({ exitCode: 0, signal: undefined });
    expect(await registration(graceful.id)).toBeNull();
    const job = (await layerQueue.getJob(layerJobId(b.buildId, 1)))!;
    expect(await job.getState()).toBe('waiting');
    expect(job.attemptsMade).toBe(0);

    const rescuer = startWorkerProcess('a');
    expect(await finished(b)).toBe('completed');
    const building = jobEvents(await events(b.buildId), 'building');
    expect(building.map((e) => e.worker)).toEqual([graceful.id, rescuer.id]);
    expect(await shared.getManifest(b.chain[1]!)).not.toBeNull();
  });

  it('every worker stops cleanly on SIGTERM: exit 0, registration gone, nothing left attached', async () => {
    const running = [...workers.values()].filter((w) => w.child.exitCode === null && w.child.signalCode === null);
    expect(running.length).toBeGreaterThan(0);
    for (const w of running) w.child.kill('SIGTERM');
    for (const w of running) {
      expect(await w.exited, w.name).toEqual({ exitCode: 0, signal: undefined });
      expect(await registration(w.id)).toBeNull();
    }
    expect(await leftovers(sb)).toEqual([]);
    for (const name of ['a', 'b']) {
      const debris = (await readdir(path.join(sb.dir, `store-${name}`, 'layers'))).filter((f) => f.startsWith('.tmp-'));
      expect(debris, name).toEqual([]);
    }
  });
});

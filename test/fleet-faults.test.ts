/**
 * Fleet faults: what a build survives. A private redis-server run as production runs it for
 * BullMQ (append-only file, fsync on every write: without it a restart is an empty Redis and
 * every queued and running job is gone, which no worker can make up for), the S3 test server
 * (s3rver, or radosgw with VMLB_TEST_S3=radosgw),
 * two real worker processes (`node --import tsx apps/worker/src/main.ts`, each with its own
 * local store), and builds added as the scheduler adds them (test/helpers/fleet-submit.ts).
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../libs/layer-engine/src/store/local-store.js';
import { SharedStore } from '../libs/layer-engine/src/store/shared-store.js';
import type { FleetEvent } from '../libs/fleet/src/build-record.js';
import { readEvents } from '../libs/fleet/src/event-stream.js';
import { redisKeys } from '../libs/fleet/src/names.js';
import { submitProject, type SubmittedBuild } from './helpers/fleet-submit.js';
import type { RedisServer } from './helpers/redis-server.js';
import type { S3Server } from './helpers/s3-server.js';
import { WORKER_MAIN, startWorkerProcess, workerLogs as logsOf, type WorkerProcess } from './helpers/worker-process.js';
import { BUSYBOX_BASE, leftovers, writeProject, type Sandbox } from './helpers/vmlb.js';
import { fleetClients, startFleetServices, type FleetClients, type FleetServices } from './helpers/fleet-services.js';

const external = process.env.REDIS_URL ? 'REDIS_URL is set: the suite cannot restart that Redis' : !existsSync(WORKER_MAIN) ? `${WORKER_MAIN} does not exist` : null;
if (external) console.warn(`fleet-faults.test.ts skipped: ${external}`);

describe.skipIf(external !== null)('fleet faults', () => {
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
  const workers: WorkerProcess[] = [];

  function startWorker(name: string): WorkerProcess {
    const w = startWorkerProcess({ name, id: `wf-${name}`, dir: sb.dir, redisUrl: redisServer.url, sharedUrl, s3env: s3.env, shortLocks: false });
    workers.push(w);
    return w;
  }

  const workerLogs = () => logsOf(workers, 40);

  async function until<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 30_000, everyMs = 100): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn().catch(() => undefined);
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${workerLogs()}`);
      await new Promise((r) => setTimeout(r, everyMs));
    }
  }

  const events = async (buildId: string): Promise<FleetEvent[]> => (await readEvents(redis, buildId, '0', { count: 100_000 })).map((e) => e.event);
  type JobEvent = Extract<FleetEvent, { type: 'job' }>;
  const jobEvents = (all: FleetEvent[], status: JobEvent['status']) => all.filter((e): e is JobEvent => e.type === 'job' && e.status === status);
  const registered = async (id: string) => (await redis.get(redisKeys.worker(id))) !== null;

  beforeAll(async () => {
    services = await startFleetServices('faults', { appendOnly: true });
    ({ sb, redis: redisServer, s3, sharedUrl } = services);
    // Its clients reconnect by themselves while Redis is down.
    clients = fleetClients(services);
    ({ redis, shared, layerQueue, flattenQueue } = clients);
    layerQueue.on('error', () => {});
    flattenQueue.on('error', () => {});
    startWorker('a');
    startWorker('b');
    await until('both workers to register', async () => (await registered('wf-a')) && (await registered('wf-b')), 60_000);
  });

  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') console.error(workerLogs());
  });

  afterAll(async () => {
    for (const w of workers) {
      if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL');
      await w.exited;
    }
    await clients?.close();
    await services?.close();
  });

  it('Redis restarted (from its append-only file) while layer 2 builds: the build completes, every layer built once, nothing half-published', async () => {
    const project = await writeProject(path.join(sb.dir, 'slow'), {
      '01_base': BUSYBOX_BASE,
      '02_slow': { kind: 'build-layer', script: 'echo slow-start\nsleep 3\necho slow > /etc/slow\necho slow-end' },
      '03_after': { kind: 'build-layer', script: 'cat /etc/slow > /etc/after; echo after done' },
    });
    const b: SubmittedBuild = await submitProject(project, { redisUrl: redisServer.url, shared, layerJobOptions: { backoff: { type: 'fixed', delay: 500 } } });
    expect(b.layers.map((l) => l.status)).toEqual(['queued', 'queued', 'queued']);

    await until(
      'layer 2 to run its script',
      async () => (await events(b.buildId)).some((e) => e.type === 'engine' && e.event.type === 'layer-log' && e.event.chunk.includes('slow-start')),
      60_000,
    );
    const eventsBeforeStop = events(b.buildId);
    await eventsBeforeStop;
    await redisServer.stop();
    // The outage landed while layer 2 was building: it had neither finished nor published.
    expect(jobEvents(await eventsBeforeStop, 'done').map((e) => e.index)).toEqual([0]);
    expect(await shared.getManifest(b.chain[1]!)).toBeNull();
    await new Promise((r) => setTimeout(r, 2000));
    await redisServer.start();

    const state = await until(
      `build ${b.buildId} to finish`,
      async () => {
        const s = await (await flattenQueue.getJob(b.flattenJobId))?.getState();
        return s === 'completed' || s === 'failed' ? s : undefined;
      },
      45_000,
      200,
    );
    expect(state, workerLogs()).toBe('completed');

    // Every layer built exactly once, by one job each, on its first attempt.
    const all = await events(b.buildId);
    expect(jobEvents(all, 'building').map((e) => e.index)).toEqual([0, 1, 2]);
    expect(jobEvents(all, 'done').map((e) => e.index)).toEqual([0, 1, 2]);
    expect(jobEvents(all, 'failed')).toEqual([]);
    for (const id of b.layerJobIds) {
      const job = (await layerQueue.getJob(id))!;
      expect(await job.getState(), id).toBe('completed');
      expect(job.attemptsMade, id).toBe(1);
    }
    const log = all.flatMap((e) => (e.type === 'engine' && e.event.type === 'layer-log' ? [e.event.chunk] : [])).join('');
    expect(log.match(/slow-start/g)).toHaveLength(1);
    expect(log).toContain('after done');

    // The shared store holds exactly this chain, whole: a pull checks each blob's sha256
    // against its manifest; no other layer object and no stray upload is there.
    expect((await shared.listLayers()).sort()).toEqual([...b.chain].sort());
    const scratch = new LocalStore(path.join(sb.dir, 'store-check'));
    expect((await shared.pullChain(scratch, [b.chain[2]!])).map((m) => m.key)).toEqual(b.chain);
    const objects = (await shared.listRecords('images')).map((r) => r.rel).sort();
    expect(objects).toEqual([`images/${b.chain[2]}.qcow2`, `images/${b.chain[2]}.json`].sort());

    // Both workers came through the outage: still running and registered again.
    for (const w of workers) expect(w.child.exitCode, w.name).toBeNull();
    await until('both workers to heartbeat into the restarted Redis', async () => (await registered('wf-a')) && (await registered('wf-b')), 15_000);
  });

  it('a # noshare layer lives on the worker that built it: when that worker stops before the flatten, the next worker builds it again from the project', async () => {
    for (const w of workers) w.child.kill('SIGTERM');
    for (const w of workers) expect(await w.exited, w.name).toEqual({ exitCode: 0, signal: undefined });
    const c = startWorker('c');
    await until('worker c to register', () => registered('wf-c'), 60_000);
    const project = await writeProject(path.join(sb.dir, 'secret'), {
      '01_base': BUSYBOX_BASE,
      '02_secret': { kind: 'build-layer', script: '# noshare\necho secret-start\nsleep 2\necho s3cret > /etc/secret' },
    });
    const b = await submitProject(project, { redisUrl: redisServer.url, shared });
    await until(
      'the # noshare layer to run on c',
      async () => (await events(b.buildId)).some((e) => e.type === 'engine' && e.event.type === 'layer-log' && e.event.chunk.includes('secret-start')),
      60_000,
    );
    // A clean stop: c finishes the layer it runs, then takes nothing more (not the flatten).
    c.child.kill('SIGTERM');
    expect(await c.exited).toEqual({ exitCode: 0, signal: undefined });
    expect(await (await flattenQueue.getJob(b.flattenJobId))!.getState()).toBe('waiting');
    expect(await shared.getManifest(b.chain[1]!)).toBeNull();

    startWorker('d');
    const state = await until(
      `build ${b.buildId}'s flatten`,
      async () => {
        const st = await (await flattenQueue.getJob(b.flattenJobId))?.getState();
        return st === 'completed' || st === 'failed' ? st : undefined;
      },
      90_000,
      200,
    );
    const all = await events(b.buildId);
    expect(state, JSON.stringify(all.filter((e) => e.type === 'flatten'))).toBe('completed');
    const notices = all.flatMap((e) => (e.type === 'engine' && e.event.type === 'notice' ? [e.event.message] : []));
    expect(notices).toContain('02_secret is not in the shared store (# noshare): building it again on worker wf-d');
    expect(all.filter((e) => e.type === 'flatten' && e.status === 'done').map((e) => (e as { worker: string }).worker)).toEqual(['wf-d']);
    // The image is there; the # noshare layer still is not.
    expect((await shared.listRecords('images')).map((r) => r.rel)).toContain(`images/${b.chain[1]}.qcow2`);
    expect(await shared.getManifest(b.chain[1]!)).toBeNull();
  });

  it('a worker told to stop while Redis is down stops within seconds, exit 0 (its registration lapses)', async () => {
    const e = startWorker('e');
    // Started (it logs that after registering and publishing the layers it holds), not only
    // registered: until startWorker returns a stop waits for it, and with Redis down it never does.
    await until('worker e to start', async () => e.log.some((l) => l.includes('"msg":"worker started"')), 60_000);
    await redisServer.stop();
    try {
      // Its connections now wait to reconnect; BullMQ's close would wait for them for good.
      await new Promise((r) => setTimeout(r, 1500));
      e.child.kill('SIGTERM');
      // (execa SIGKILLs a child still running 5 s after a kill(): that would fail this.)
      expect(await e.exited, logsOf([e], 40)).toEqual({ exitCode: 0, signal: undefined });
      expect(e.log.join('\n')).toMatch(/"msg":"worker stopped"/);
    } finally {
      await redisServer.start();
    }
  });

  it('the workers stop cleanly afterwards: exit 0, nothing left attached, no temp blobs', async () => {
    for (const w of workers) w.child.kill('SIGTERM');
    for (const w of workers) expect(await w.exited, w.name).toEqual({ exitCode: 0, signal: undefined });
    expect(await leftovers(sb)).toEqual([]);
    for (const w of workers) {
      const dir = path.join(sb.dir, `store-${w.name}`, 'layers');
      const debris = existsSync(dir) ? (await readdir(dir)).filter((f) => f.startsWith('.tmp-')) : [];
      expect(debris, w.name).toEqual([]);
    }
  });
});

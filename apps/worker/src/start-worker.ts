import { mkdir, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import {
  ENGINE_VERSION,
  stopIdleFuseDaemon,
  LocalStore,
  cacheMountsDir,
  checkSandboxTools,
  chooseBackend,
  compressionFrom,
  defaultStoreDir,
  pidAlive,
  startupSweep,
} from '@vmlb/layer-engine';
import {
  PoolStores,
  flattenQueueOf,
  HEARTBEAT_MS,
  layerQueueOf,
  pruneProjects,
  redisConnection,
  redisKeys,
  removeRegistration,
  writeRegistration,
  type FleetConfig,
  type WorkerRegistration,
} from '@vmlb/fleet';
import { flattenProcessor } from './flatten-worker.js';
import { layerProcessor } from './layer-worker.js';
import { dropHeldKeys, publishHeldKeys } from './chain-affinity.js';
import { silentLogger, type Logger } from './logger.js';
import { WorkerMetrics } from './metrics.js';
import { RunningJobs } from './running-jobs.js';
import { workerSlots } from './slots.js';
import type { WorkerContext } from './worker-context.js';
import { DEFAULT_WORKER_SETTINGS, fleetDenyList, type WorkerSettings } from './worker-settings.js';

/** Cached projects unused this long are removed at start-up. */
const PROJECT_CACHE_AGE_MS = 7 * 24 * 3600_000;
/** The local store's usage is measured at most this often (it reads every manifest). */
const USAGE_EVERY_MS = 30_000;
/** After handing jobs back, how long close() still waits for them to let go. */
const HAND_BACK_WAIT_MS = 30_000;
/**
 * With no job running, how long close() waits for BullMQ's workers to close before it goes on
 * without them: BullMQ waits for its blocking connection's 'end', which ioredis never emits
 * for a connection that is waiting to reconnect (after a Redis outage), so a plain close can
 * hang for good. Nothing is lost by not waiting: no job is running.
 */
const IDLE_CLOSE_WAIT_MS = 2000;
/** How long close() waits for one Redis command (its registration) before going on without it. */
const CLOSE_COMMAND_WAIT_MS = 1000;

/** The promise's outcome, or 'timeout' after `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<'timeout'>((r) => (t = setTimeout(() => r('timeout'), ms)))]).finally(() => clearTimeout(t));
}

export interface StartWorkerOptions extends Partial<WorkerSettings> {
  log?: Logger;
  /** Run the engine's start-up sweep (attachments and half-built blobs of killed runs). @default true */
  sweep?: boolean;
}

export interface RunningWorker {
  readonly id: string;
  readonly slots: number;
  readonly backend: 'fuse' | 'nbd';
  /** The metrics port when they are served. */
  readonly metricsPort: number | undefined;
  /** Jobs running now. */
  busy(): number;
  /**
   * Stops taking jobs and waits for the running ones, up to `graceMs` (@default the
   * settings'); past it, or on handBack(), they are aborted and go back to the queue. Then
   * deregisters and releases everything. Safe to call twice.
   */
  close(o?: { graceMs?: number }): Promise<void>;
  /** Stops the running jobs now so they go back to the queue (a second SIGTERM). */
  handBack(): void;
}

/**
 * Starts a fleet worker in this process: the start-up sweep, one BullMQ worker per queue
 * (layers: concurrency = slots; flatten), the registration and its heartbeat.
 */
export async function startWorker(config: FleetConfig, opts: StartWorkerOptions = {}): Promise<RunningWorker> {
  const settings: WorkerSettings = {
    ...DEFAULT_WORKER_SETTINGS,
    id: config.workerId ?? `${os.hostname()}-${process.pid}`,
    ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)),
  } as WorkerSettings;
  const log = (opts.log ?? silentLogger).child({ worker: settings.id });
  const id = settings.id;

  const store = new LocalStore(config.store ?? defaultStoreDir(process.env));
  await store.init();
  if (opts.sweep !== false) {
    const swept = await startupSweep(store);
    if (swept) log.info(swept);
  }
  const fleetDir = path.join(store.root, 'fleet');
  const projectCache = path.join(fleetDir, 'projects');
  const workDir = path.join(fleetDir, 'work', String(process.pid));
  await sweepWorkDirs(path.dirname(workDir));
  await mkdir(workDir, { recursive: true });
  await pruneProjects(projectCache, PROJECT_CACHE_AGE_MS);

  // Every layer runs sandboxed: a host that cannot, cannot be a worker.
  await checkSandboxTools();
  const sandboxDeny = fleetDenyList(config, settings.sandboxDeny);
  const backend = await chooseBackend(config.backend);
  const slots = await workerSlots(backend.name, config.workerSlots);
  const redis = redisConnection(config.redis, `vmlb-worker-${id}`);
  // While Redis is down or failing over, ioredis reconnects by itself: say so once per outage
  // (without a listener ioredis prints each attempt's error as an "Unhandled error event").
  let redisDown = false;
  redis.on('error', (e: Error) => {
    if (!redisDown) log.warn('Redis connection lost; reconnecting', { error: e.message });
    redisDown = true;
  });
  redis.on('ready', () => {
    if (redisDown) log.info('Redis connection back');
    redisDown = false;
  });
  const pool = config.workerPool;
  const metrics = new WorkerMetrics(id, pool);
  const storeOpts = { ...compressionFrom({ VMLB_SHARED_COMPRESSION: settings.sharedCompression }), onEvent: (e: { type: string }) => e.type === 'retry' && metrics.storeRetries.inc() };
  const views = new Map<string, PoolStores>();
  const viewFor = (reads: readonly string[]): PoolStores => {
    const name = [...reads].sort().join(',');
    let v = views.get(name);
    if (!v) views.set(name, (v = new PoolStores(pool, config.shared, reads, storeOpts)));
    return v;
  };
  const shared = viewFor([]).own;
  metrics.slots.set(slots);
  const jobs = new RunningJobs();

  let announceNow: (o?: { keys?: boolean }) => Promise<void> = async () => {};
  let evicting: Promise<unknown> = Promise.resolve();
  let usage = { at: 0, bytes: 0 };
  const ctx: WorkerContext = {
    id,
    fleet: config,
    redis,
    pool,
    shared,
    viewFor,
    store,
    backend,
    // Each team's # cache-mount folders are its own: another team's layers never see them.
    sandboxFor: (team) => ({ deny: sandboxDeny, cacheDir: cacheMountsDir(store, team), projectBindsOnly: true }),
    projectCache,
    smallChainBytes: settings.smallChainBytes,
    layerRun: { logMax: settings.logMax, passEnv: settings.passEnv },
    workDir,
    jobs,
    metrics,
    log,
    announce: (o) => announceNow(o),
    evictSoon() {
      usage.at = 0; // a job ended: the next heartbeat measures the store again
      evicting = evicting.then(() =>
        store.evict(config.storeCapBytes, jobs.protectedKeys()).then(
          (r) => r.removed.length && log.info('evicted layers from the local store', { layers: r.removed.length, bytes: r.bytes }),
          (e: unknown) => log.warn('eviction failed', { error: (e as Error).message }),
        ),
      );
    },
  };

  const connections: Redis[] = [redis];
  const bullWorker = (queue: string, processor: ReturnType<typeof layerProcessor> | ReturnType<typeof flattenProcessor>, concurrency: number) => {
    const connection = redisConnection(config.redis, `vmlb-worker-${id}-${queue}`);
    connections.push(connection);
    const w = new Worker(queue, processor, {
      connection,
      name: id,
      concurrency,
      lockDuration: settings.lockDurationMs,
      stalledInterval: settings.stalledIntervalMs,
      maxStalledCount: settings.maxStalledCount,
    });
    w.on('error', (e) => log.warn('BullMQ worker error', { queue, error: e.message }));
    w.on('failed', (job, e) => job && log.info('job failed', { queue, job: job.id, attempt: job.attemptsMade, error: e.message.split('\n')[0] }));
    w.on('completed', (job) => log.info('job done', { queue, job: job.id }));
    return w;
  };
  // The lookup series of its pool's teams at 0 before the first job (docs/metrics.md): read
  // again at each heartbeat, for teams added by a reloaded teams file.
  const readTeams = async () => {
    const all = await redis.hgetall(redisKeys.teams);
    metrics.initTeams(Object.entries(all).filter(([, p]) => p === pool).map(([team]) => team));
  };
  await readTeams().catch((e: unknown) => log.warn('could not read the teams (vmlb:teams)', { error: (e as Error).message }));
  // Only its pool's queues: a job of another pool never reaches this worker (and is refused if forged).
  const layers = bullWorker(layerQueueOf(pool), layerProcessor(ctx), slots);
  // Flattening holds no block device; it waits on claims and streams files. As many as slots.
  const flattens = bullWorker(flattenQueueOf(pool), flattenProcessor(ctx), slots);

  const startedAt = new Date().toISOString();
  let state: WorkerRegistration['state'] = 'running';
  /** The last registration written: kept as the stopped worker's line after a clean stop. */
  let registered: WorkerRegistration | undefined;
  const register = async () => {
    if (Date.now() - usage.at > USAGE_EVERY_MS) usage = { at: Date.now(), bytes: (await store.usage().catch(() => ({ bytes: usage.bytes }))).bytes };
    metrics.cachedBytes.set(usage.bytes);
    registered = {
      id,
      host: os.hostname(),
      pid: process.pid,
      backend: backend.name,
      pool,
      slots,
      busy: jobs.busy,
      cachedBytes: usage.bytes,
      version: ENGINE_VERSION,
      startedAt,
      lastHeartbeat: new Date().toISOString(),
      state,
    };
    await writeRegistration(redis, registered);
  };
  await register();
  announceNow = async (o = {}) => {
    if (o.keys !== false) await publishHeldKeys(redis, id, store);
    await register();
  };
  await publishHeldKeys(redis, id, store).catch((e: unknown) => log.warn('could not publish the layers this worker holds', { error: (e as Error).message }));
  let beating: Promise<void> = Promise.resolve();
  const heartbeat = setInterval(() => {
    void readTeams().catch(() => undefined);
    beating = register().catch((e: unknown) => log.warn('heartbeat failed', { error: (e as Error).message }));
  }, HEARTBEAT_MS);

  const metricsPort = settings.metricsPort ? await metrics.serve(settings.metricsPort, settings.metricsHost) : undefined;
  log.info('worker started', { pool, backend: backend.name, slots, store: store.root, metricsPort });

  let closing: Promise<void> | undefined;
  const close = (o: { graceMs?: number } = {}) =>
    (closing ??= (async () => {
      state = 'stopping';
      // Redis may be down: a stop does not wait for it (commands would wait for a reconnect).
      await within(register().catch(() => undefined), CLOSE_COMMAND_WAIT_MS);
      log.info('stopping: no new jobs; waiting for the running ones', { busy: jobs.busy, graceMs: o.graceMs ?? settings.graceMs });
      const closed = Promise.all([layers.close(), flattens.close()]).then(() => 'closed' as const);
      const grace = setTimeout(() => {
        log.warn('grace period over: handing the running jobs back to the queue', { busy: jobs.busy });
        jobs.handBackAll();
      }, o.graceMs ?? settings.graceMs);
      // Handed-back jobs let go within seconds (their builds abort and release their disks);
      // one that does not is given up on: its lock lapses and another worker takes it.
      let giveUp: NodeJS.Timeout | undefined;
      const gaveUp = jobs.handedBack.then(() => new Promise<'gave-up'>((r) => (giveUp = setTimeout(() => r('gave-up'), HAND_BACK_WAIT_MS))));
      let idleCheck: NodeJS.Timeout | undefined;
      const stuck = new Promise<'stuck'>((r) => {
        let idleSince: number | undefined;
        idleCheck = setInterval(() => {
          if (jobs.busy > 0) idleSince = undefined;
          else if (Date.now() - (idleSince ??= Date.now()) >= IDLE_CLOSE_WAIT_MS) r('stuck');
        }, 100);
      });
      const outcome = await Promise.race([closed, gaveUp, stuck]);
      if (outcome === 'gave-up') {
        log.error('running jobs did not stop after they were handed back; leaving them to the stalled-job check', { jobs: jobs.list().map((j) => j.id) });
      } else if (outcome === 'stuck') {
        log.warn(`BullMQ did not close within ${IDLE_CLOSE_WAIT_MS / 1000} s with no job running (a connection waiting to reconnect to Redis?); stopping without it`);
      }
      clearTimeout(grace);
      clearTimeout(giveUp);
      clearInterval(idleCheck);
      clearInterval(heartbeat);
      // A heartbeat in flight must not write the registration again after it is removed.
      await within(beating, CLOSE_COMMAND_WAIT_MS);
      // One bounded wait for both: Redis may be down, and a stop must not add up waits.
      await within(Promise.all([removeRegistration(redis, id, registered).catch(() => undefined), dropHeldKeys(redis, id).catch(() => undefined)]), CLOSE_COMMAND_WAIT_MS);
      await evicting;
      // An idle daemon waits a moment for the next disk (fuse-daemon.ts); the process exits next.
      await stopIdleFuseDaemon();
      await metrics.close();
      for (const v of views.values()) v.close();
      // quit() waits for Redis to answer; a connection that is not up is just dropped.
      await within(Promise.all(connections.map((c) => (c.status === 'ready' ? c.quit().catch(() => c.disconnect()) : c.disconnect()))), CLOSE_COMMAND_WAIT_MS);
      await rm(workDir, { recursive: true, force: true });
      log.info('worker stopped');
    })());

  return {
    id,
    slots,
    backend: backend.name,
    metricsPort,
    busy: () => jobs.busy,
    close,
    handBack() {
      log.warn('handing the running jobs back to the queue', { busy: jobs.busy });
      jobs.handBackAll();
    },
  };
}

/** Removes the scratch folders of worker processes that are gone. */
async function sweepWorkDirs(parent: string): Promise<void> {
  for (const name of await readdir(parent).catch(() => [] as string[])) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid || pidAlive(pid)) continue;
    await rm(path.join(parent, name), { recursive: true, force: true });
  }
}


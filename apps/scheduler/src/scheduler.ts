import { FlowProducer } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SharedStore, VmlbError, compressionFrom } from '@vmlb/layer-engine';
import { DEFAULT_POOL, redisConnection, redisKeys, type FleetConfig } from '@vmlb/fleet';
import { registerDashboard } from '@vmlb/web-dashboard';
import { createApiServer } from './api-server.js';
import { buildAccess } from './build-access.js';
import { BuildFollower, type FollowerOptions } from './build-follower.js';
import { BuildHistory } from './build-history.js';
import { registerBuildRoutes } from './build-routes.js';
import { registerDownloadRoutes } from './download-routes.js';
import { ExitStack } from './exit-stack.js';
import { registerHealthRoutes } from './health-routes.js';
import { importStoreRecords } from './history-import.js';
import { registerInsightRoutes } from './insight-routes.js';
import { LeaderLease, type LeaseOptions } from './leader-lease.js';
import { jsonLogger, type Logger } from './logger.js';
import { SchedulerMetrics } from './metrics.js';
import { ObjectStore } from './object-store.js';
import { PoolRegistry } from './pool-registry.js';
import type { ArchiveLimits } from './project-archive.js';
import { grafanaTemplate, registerProjectRoutes } from './project-routes.js';
import { redisGraceMs, requireRedis } from './redis-guard.js';
import { Teams } from './teams.js';
import { withTimeout } from './with-timeout.js';
import { WorkerPresence } from './worker-presence.js';

export interface SchedulerOptions {
  config: FleetConfig;
  /** @default loaded from config.teamsFile */
  teams?: Teams;
  /** Uploads and extracted projects go here while a submission is planned. @default a new folder in the OS temp dir */
  workDir?: string;
  archiveLimits?: ArchiveLimits;
  /** How long a presigned image URL is valid. @default 3600 */
  presignSeconds?: number;
  follower?: FollowerOptions;
  lease?: LeaseOptions;
  log?: Logger;
  /** A build's link to its Grafana/Prometheus view: VMLB_GRAFANA_URL (project-routes.ts). @default none */
  grafanaUrl?: string;
}

export interface Scheduler {
  app: FastifyInstance;
  metrics: SchedulerMetrics;
  /** This scheduler's instance id (the leader lease's value). */
  id: string;
  /** Whether it leads now (follows builds and writes their records). */
  readonly leading: boolean;
  /** Listens on config.schedulerHost:schedulerPort (port 0: any free one); returns the base URL. */
  listen(): Promise<string>;
  /** Stops taking requests, ends the event streams, closes Redis and S3 connections. Safe to call twice. */
  close(): Promise<void>;
}

/** The shared store is probed at most this often for the vmlb_shared_store_up gauge. */
const STORE_PROBE_MS = 10_000;

/**
 * The scheduler: the fleet's HTTP API (fastify) over Redis (BullMQ flows, event streams) and the
 * shared store (projects, build records, images). See docs/fleet.md.
 *
 * The settings are checked before anything is opened; then every connection, pool, folder and
 * timer is pushed on one exit stack as it is made, so that a start failing at any step (the
 * history or the shared store not answering) closes what the steps before it opened, and
 * `close()` closes all of it, last opened first.
 */
export async function createScheduler(opts: SchedulerOptions): Promise<Scheduler> {
  const { config } = opts;
  const log = opts.log ?? jsonLogger(process.stderr, { app: 'scheduler' });
  const teams = opts.teams ?? (config.teamsFile ? await Teams.load(config.teamsFile) : undefined);
  if (!teams) throw new VmlbError('FLEET_CONFIG', 'VMLB_TEAMS_FILE: not set (a JSON file of teams and token hashes)');
  const databaseUrl = config.databaseUrl;
  if (!databaseUrl) throw new VmlbError('FLEET_CONFIG', 'VMLB_DATABASE_URL: not set (the PostgreSQL database of the build history: postgres://USER:PASSWORD@HOST:PORT/DATABASE)');
  if (opts.grafanaUrl) grafanaTemplate(opts.grafanaUrl); // a bad one stops the start, naming the variable
  return ExitStack.build((stack) => startScheduler(stack, opts, teams, databaseUrl, log));
}

async function startScheduler(stack: ExitStack, opts: SchedulerOptions, teams: Teams, databaseUrl: string, log: Logger): Promise<Scheduler> {
  const { config } = opts;
  const instanceId = `${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const workDir = opts.workDir ?? (await mkdtemp(path.join(os.tmpdir(), 'vmlb-scheduler-')));
  if (!opts.workDir) stack.push(() => rm(workDir, { recursive: true, force: true }));
  await mkdir(workDir, { recursive: true });

  const redis = stack.use(redisConnection(config.redis, 'vmlb-scheduler'), (c) => c.disconnect());
  const blocking = stack.use(redisConnection(config.redis, 'vmlb-scheduler-follow'), (c) => c.disconnect());
  logOutages(log, { main: redis, follow: blocking });
  // The store's root: build records and team indexes. Layers, projects and images are in each
  // pool's namespace (pools.ts), read through its view.
  // The scheduler pushes no layers; a bad VMLB_SHARED_COMPRESSION is refused here all the same.
  const shared = stack.use(new SharedStore(config.shared, compressionFrom(process.env)), (s) => s.close());
  const objects = new ObjectStore(config.shared);
  const records = stack.use(await BuildHistory.open(databaseUrl), (h) => h.close());
  // The records of a store from before PostgreSQL: copied in once (the first scheduler to start does it).
  const imported = await importStoreRecords(records, shared, objects, `s3://${config.shared.bucket}/${config.shared.prefix}`);
  if (!imported.already) log.info('imported the shared store\'s build records into the history', { records: imported.imported, skipped: imported.skipped });
  if (imported.skipped) log.warn(`${imported.skipped} object(s) under builds/ in the shared store are no build records (no team or no layers): not imported, left in place`);
  const pools = stack.use(new PoolRegistry(config.shared, teams, redis), (p) => p.close());
  const flows = stack.use(new FlowProducer({ connection: redis }), (f) => f.close());

  let follower!: BuildFollower;
  const storeProbe = probeEvery(STORE_PROBE_MS, () => withTimeout(objects.ping(), 3000));
  const metrics = new SchedulerMetrics({
    pools: () => pools.all(),
    teams: () => teams.list,
    redis,
    activeBuilds: () => follower.activeCount,
    sharedStoreUp: storeProbe,
    leading: () => lease.isLeader,
  });
  metrics.initTeams(teams.list);
  follower = new BuildFollower({ redis, blocking, records, sharedOf: (pool) => pools.view(pool ?? DEFAULT_POOL).own, queuesOf: (pool) => pools.queues(pool ?? DEFAULT_POOL), log }, {
    ...opts.follower,
    onFinished: (r) => {
      metrics.finished(r);
      log.info('build finished', { buildId: r.id, team: r.team, state: r.state, error: r.error });
      opts.follower?.onFinished?.(r);
    },
  });
  const lease = new LeaderLease(redis, instanceId, (leading) => {
    follower.setLeading(leading);
    metrics.leader.set(leading ? 1 : 0);
  }, log, opts.lease);
  stack.push(() => follower.close());
  follower.start();
  stack.push(() => lease.close());
  await lease.start();

  // Made after what its routes read, so that it closes before them: requests and event streams
  // end before the follower, the lease and the connections they use.
  const app = stack.use(createApiServer({ config, teams, metrics, log, workDir }), (a) => a.close());
  const access = buildAccess({ records, follower, teams });
  const graceMs = redisGraceMs(config.redis);
  // For the routes that need Redis (queueing, cancelling, event streams, the fleet view): a 503
  // before anything else (before an upload is read) while its connection is down.
  const needsRedis = { onRequest: async () => requireRedis(redis, graceMs) };
  // An unfinished build of a pool with no live worker says so in the answers (worker-presence.ts).
  const presence = new WorkerPresence(redis);
  registerInsightRoutes(app, { redis, pools, records, follower, objects, visibleBuild: access.visibleBuild, listedTeams: access.listedTeams, needsRedis });
  registerProjectRoutes(app, { records, visibleBuild: access.visibleBuild, listedTeams: access.listedTeams, grafanaUrl: opts.grafanaUrl });
  // The web dashboard at `/` (its files; it reads the /v1 routes with the user's token).
  await registerDashboard(app);
  registerHealthRoutes(app, { redis, objects, records, metrics, instanceId, leading: () => lease.isLeader, following: () => follower.activeCount });
  registerBuildRoutes(app, {
    redis,
    needsRedis,
    pools,
    records,
    follower,
    presence,
    objects,
    flows,
    workDir,
    archiveLimits: opts.archiveLimits,
    metrics,
    log,
    access,
    imageLocation: (p) => objects.url(p),
  });
  registerDownloadRoutes(app, { redis, redisGraceMs: graceMs, pools, records, objects, flows, access, presignSeconds: opts.presignSeconds ?? 3600 });

  // The teams and their pools, for the workers (vmlb:teams): each starts its pool's teams'
  // lookup series at 0 (docs/metrics.md). Again every 10 s: a reloaded teams file's teams.
  const publishTeams = () => {
    const m = redis.multi().del(redisKeys.teams);
    if (teams.list.length) m.hset(redisKeys.teams, Object.fromEntries(teams.list.map((t) => [t.team, t.pool])));
    return m.exec().catch(() => undefined);
  };
  void publishTeams();
  const teamsTimer = setInterval(() => redis.status === 'ready' && void publishTeams(), 10_000);
  teamsTimer.unref();
  stack.push(() => clearInterval(teamsTimer));

  return {
    app,
    metrics,
    id: instanceId,
    get leading() {
      return lease.isLeader;
    },
    async listen() {
      await app.listen({ host: config.schedulerHost, port: config.schedulerPort });
      const addr = app.server.address();
      const port = typeof addr === 'object' && addr ? addr.port : config.schedulerPort;
      const host = config.schedulerHost.includes(':') ? `[${config.schedulerHost}]` : config.schedulerHost;
      return `http://${host}:${port}`;
    },
    close: () => stack.close(),
  };
}

/** While Redis is down ioredis reconnects by itself; say so once per outage, in the log. */
function logOutages(log: Logger, connections: Record<string, Redis>): void {
  for (const [name, c] of Object.entries(connections)) {
    let down = false;
    c.on('error', (e: Error) => {
      if (!down) log.warn('Redis connection lost; reconnecting', { connection: name, error: e.message });
      down = true;
    });
    c.on('ready', () => {
      if (down) log.info('Redis connection back', { connection: name });
      down = false;
    });
  }
}

/** A probe run at most once per `ms` (scrapes in between get its last answer): true when `fn` resolved. */
function probeEvery(ms: number, fn: () => Promise<unknown>): () => Promise<boolean> {
  let last: { at: number; ok: Promise<boolean> } | undefined;
  return () => {
    if (!last || Date.now() - last.at >= ms) last = { at: Date.now(), ok: fn().then(() => true, () => false) };
    return last.ok;
  };
}

import { FlowProducer } from 'bullmq';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LocalStore, SharedStore, StoreError, VmlbError } from '@vmlb/layer-engine';
import { DEFAULT_POOL, POOL_NAME, flattenJobId, poolPath, redisConnection, redisKeys, type FleetConfig } from '@vmlb/fleet';
import { findImage } from './image-manifest.js';
import { PoolRegistry } from './pool-registry.js';
import { BuildFollower, type FollowerOptions } from './build-follower.js';
import { flattenData, flattenNode, removeBuildJobs } from './build-flow.js';
import { BUILD_ID, isFinal, summarize, type StoredRecord } from './build-records.js';
import { BuildHistory, type HistoryQuery } from './build-history.js';
import { importStoreRecords } from './history-import.js';
import { LeaderLease, type LeaseOptions } from './leader-lease.js';
import { submissionMeta } from './submission-meta.js';
import { streamBuildEvents } from './event-stream-route.js';
import { HttpError, noSuchBuild, redisUnavailable, unauthorized } from './http-error.js';
import { jsonLogger, type Logger } from './logger.js';
import { SchedulerMetrics } from './metrics.js';
import { ObjectStore } from './object-store.js';
import type { ArchiveLimits } from './project-archive.js';
import { publicRecord } from './public-record.js';
import { TEAM_NAME, Teams, type Team } from './teams.js';
import { receiveUpload, type Upload } from './upload.js';
import { submitBuild } from './submit-build.js';
import { registerInsightRoutes } from './insight-routes.js';
import { WorkerPresence } from './worker-presence.js';
import { withTimeout } from './with-timeout.js';
import { grafanaTemplate, registerProjectRoutes } from './project-routes.js';
import { registerDashboard } from '@vmlb/web-dashboard';

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

/** Kept 7 days: long after any job of the build could still run. */
const CANCEL_TTL_S = 7 * 24 * 3600;
const UPLOAD_TYPES = ['application/gzip', 'application/x-gzip', 'application/octet-stream', 'application/x-tar+gzip'];

declare module 'fastify' {
  interface FastifyRequest {
    team: Team | null;
  }
}

function isUpload(v: unknown): v is Upload {
  return !!v && typeof v === 'object' && typeof (v as Upload).discard === 'function' && typeof (v as Upload).sha256 === 'string';
}

/**
 * The scheduler: the fleet's HTTP API (fastify) over Redis (BullMQ flows, event streams) and the
 * shared store (projects, build records, images). See docs/fleet.md.
 */
export async function createScheduler(opts: SchedulerOptions): Promise<Scheduler> {
  const { config } = opts;
  const log = opts.log ?? jsonLogger(process.stderr, { app: 'scheduler' });
  const teams = opts.teams ?? (config.teamsFile ? await Teams.load(config.teamsFile) : undefined);
  if (!teams) throw new VmlbError('FLEET_CONFIG', 'VMLB_TEAMS_FILE: not set (a JSON file of teams and token hashes)');
  const workDir = opts.workDir ?? (await mkdtemp(path.join(os.tmpdir(), 'vmlb-scheduler-')));
  await mkdir(workDir, { recursive: true });
  const ownsWorkDir = !opts.workDir;
  if (!config.databaseUrl) throw new VmlbError('FLEET_CONFIG', 'VMLB_DATABASE_URL: not set (the PostgreSQL database of the build history: postgres://USER:PASSWORD@HOST:PORT/DATABASE)');
  if (opts.grafanaUrl) grafanaTemplate(opts.grafanaUrl); // a bad one stops the start, naming the variable
  const instanceId = `${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;

  const redis: Redis = redisConnection(config.redis, 'vmlb-scheduler');
  const blocking: Redis = redisConnection(config.redis, 'vmlb-scheduler-follow');
  // While Redis is down ioredis reconnects by itself; say so once per outage, in the log.
  for (const [name, c] of [['main', redis], ['follow', blocking]] as const) {
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
  // The store's root: build records and team indexes. Layers, projects and images are in each
  // pool's namespace (pools.ts), read through its view.
  const shared = new SharedStore(config.shared);
  const objects = new ObjectStore(config.shared);
  const records = await BuildHistory.open(config.databaseUrl);
  // The records of a store from before PostgreSQL: copied in once (the first scheduler to start does it).
  const imported = await importStoreRecords(records, shared, objects, `s3://${config.shared.bucket}/${config.shared.prefix}`).catch(async (e: Error) => {
    await records.close();
    throw e;
  });
  if (!imported.already) log.info('imported the shared store\'s build records into the history', { records: imported.imported, skipped: imported.skipped });
  if (imported.skipped) log.warn(`${imported.skipped} object(s) under builds/ in the shared store are no build records (no team or no layers): not imported, left in place`);
  const pools = new PoolRegistry(config.shared, teams, redis);
  const queuesOf = (pool: string | undefined) => pools.queues(pool ?? DEFAULT_POOL);
  const flows = new FlowProducer({ connection: redis });
  const scratch = new LocalStore(path.join(workDir, 'no-local-store'));
  const presignSeconds = opts.presignSeconds ?? 3600;
  const imageLocation = (p: string) => objects.url(p);

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
  const countFinished = (r: StoredRecord) => {
    const pool = r.pool ?? DEFAULT_POOL;
    metrics.builds.inc({ team: r.team, pool, state: r.state });
    const seconds = (Date.parse(r.finishedAt ?? new Date().toISOString()) - Date.parse(r.createdAt)) / 1000;
    metrics.buildSeconds.observe({ state: r.state, pool }, Math.max(0, seconds));
  };
  follower = new BuildFollower({ redis, blocking, records, sharedOf: (pool) => pools.view(pool ?? DEFAULT_POOL).own, queuesOf, log }, {
    ...opts.follower,
    onFinished: (r) => {
      countFinished(r);
      log.info('build finished', { buildId: r.id, team: r.team, state: r.state, error: r.error });
      opts.follower?.onFinished?.(r);
    },
  });
  const lease = new LeaderLease(redis, instanceId, (leading) => {
    follower.setLeading(leading);
    metrics.leader.set(leading ? 1 : 0);
  }, log, opts.lease);

  // requestTimeout: a request (an upload) must arrive whole in time, or Node answers 408.
  const app = Fastify({ logger: false, bodyLimit: config.maxUploadBytes, requestTimeout: config.uploadTimeoutMs, return503OnClosing: true, forceCloseConnections: true });
  app.decorateRequest('team', null);

  // ---- the project upload: streamed to a temporary file under the cap, hashed on the way ----
  app.addContentTypeParser(UPLOAD_TYPES, (req, payload, done) => {
    if (req.method !== 'POST' || req.routeOptions.url !== '/v1/builds') {
      payload.resume();
      done(new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'this route takes no upload'), undefined);
      return;
    }
    receiveUpload(payload, workDir, config.maxUploadBytes, req.headers['content-length'], config.uploadIdleMs).then(
      (u) => done(null, u),
      (e: Error) => done(e, undefined),
    );
  });

  // ---- every /v1 route needs a team token ----
  app.addHook('onRequest', async (req) => {
    if (!req.url.startsWith('/v1/')) return;
    const token = Teams.bearer(req.headers.authorization);
    const team = token ? teams.authenticate(token) : null;
    if (!team) throw unauthorized();
    req.team = team;
  });

  app.addHook('onResponse', async (req, reply) => {
    if (isUpload(req.body)) await req.body.discard();
    const route = req.routeOptions.url ?? 'unmatched';
    metrics.httpDuration.observe({ method: req.method, route, status: String(reply.statusCode) }, reply.elapsedTime / 1000);
  });

  app.setErrorHandler(async (err: Error & { statusCode?: number; code?: string }, req, reply) => {
    if (isUpload(req.body)) await req.body.discard();
    if (err instanceof HttpError) {
      if (err.status === 401) reply.header('www-authenticate', 'Bearer realm="vmlb"');
      if (req.routeOptions.url === '/v1/builds' && req.method === 'POST' && err.status >= 400 && err.status < 500) {
        metrics.uploadsRefused.inc({ reason: err.code });
      }
      return reply.status(err.status).send({ error: { code: err.code, message: err.message, ...err.details } });
    }
    if (err instanceof VmlbError && err.code === 'HISTORY_UNAVAILABLE') {
      log.warn('build history trouble', { url: req.url, error: err.message });
      return reply.status(503).send({ error: { code: 'HISTORY_UNAVAILABLE', message: err.message } });
    }
    if (err instanceof StoreError || (err instanceof VmlbError && err.retryable)) {
      log.warn('shared store trouble', { url: req.url, error: err.message });
      return reply.status(503).send({ error: { code: 'STORE_UNAVAILABLE', message: err.message } });
    }
    if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      return reply.status(err.statusCode).send({ error: { code: err.code ?? 'BAD_REQUEST', message: err.message } });
    }
    log.error('request failed', { method: req.method, url: req.url, error: err.stack ?? err.message });
    return reply.status(500).send({ error: { code: 'INTERNAL', message: err.message } });
  });

  app.setNotFoundHandler((req, reply) => reply.status(404).send({ error: { code: 'NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` } }));

  /**
   * For the routes that need Redis (queueing, cancelling, event streams, the fleet view): a 503
   * before anything else (before an upload is read) while its connection is down.
   */
  const redisGraceMs = config.redis.kind === 'sentinel' ? SENTINEL_RECONNECT_GRACE_MS : 0;
  const needsRedis = { onRequest: async () => requireRedis(redis, redisGraceMs) };

  // An unfinished build of a pool with no live worker says so in the answers (worker-presence.ts).
  const presence = new WorkerPresence(redis);

  /** A build the asking team may see: its own, or any for an admin; anything else is 404. */
  const visibleBuild = async (req: FastifyRequest): Promise<StoredRecord> => {
    const { id } = req.params as { id: string };
    if (!BUILD_ID.test(id)) throw noSuchBuild(id);
    const r = follower.live(id) ?? (await records.get(id));
    if (!r || (r.team !== req.team!.team && !req.team!.admin)) throw noSuchBuild(id);
    return r;
  };

  // ---- routes ----

  /**
   * The teams a listing covers: the one asked for (a team's token may ask only for its own; an
   * admin's for any team of the teams file or with builds on record, else 400), or without one
   * the asking team's, every team's with builds for an admin.
   */
  const listedTeams = async (req: FastifyRequest, asked: string | undefined, verb: string): Promise<string[]> => {
    const team = req.team!;
    if (asked !== undefined && asked !== team.team && !team.admin) {
      throw new HttpError(403, 'FORBIDDEN', `only an admin token ${verb} another team's builds (this token is team ${team.team}'s)`);
    }
    const recorded = team.admin ? await records.teams() : [];
    if (asked === undefined) return team.admin ? recorded : [team.team];
    if (!TEAM_NAME.test(asked) || !(teams.names.includes(asked) || recorded.includes(asked))) {
      throw new HttpError(400, 'NO_SUCH_TEAM', `there is no team "${asked}" (teams: ${[...new Set([...teams.names, ...recorded])].sort().join(', ')})`);
    }
    return [asked];
  };

  registerInsightRoutes(app, { redis, pools, records, follower, objects, visibleBuild, listedTeams, needsRedis });
  registerProjectRoutes(app, { records, visibleBuild, listedTeams, grafanaUrl: opts.grafanaUrl });
  // The web dashboard at `/` (its files; it reads the /v1 routes with the user's token).
  await registerDashboard(app);

  app.get('/healthz', async (_req, reply) => {
    const check = async (fn: () => Promise<unknown>) => {
      try {
        await withTimeout(fn(), 3000);
        return 'ok';
      } catch (e) {
        return (e as Error).message;
      }
    };
    const [redisState, s3State, dbState] = await Promise.all([check(() => redis.ping()), check(() => objects.ping()), check(() => records.ping())]);
    const ok = redisState === 'ok' && s3State === 'ok' && dbState === 'ok';
    return reply
      .status(ok ? 200 : 503)
      .send({ ok, redis: redisState, s3: s3State, database: dbState, scheduler: instanceId, leader: lease.isLeader, following: follower.activeCount });
  });

  app.get('/metrics', async (_req, reply) => {
    const text = await metrics.registry.metrics();
    return reply.type(metrics.registry.contentType).send(text);
  });

  app.post('/v1/builds', needsRedis, async (req, reply) => {
    const upload = req.body;
    if (!isUpload(upload)) {
      throw new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', `send the project as a .tar.gz with Content-Type ${UPLOAD_TYPES[0]}`);
    }
    const team = req.team!;
    let record: StoredRecord;
    try {
      // ?flatten=1: the build makes one flattened image besides its chain (vmlb submit --flatten).
      const flatten = ['1', 'true', 'yes'].includes(String((req.query as { flatten?: string }).flatten ?? ''));
      const meta = submissionMeta(req.headers);
      // Who submitted it: the token's name within the team, when the teams file gives one.
      if (team.tokenName !== undefined) meta.submitter = team.tokenName;
      record = await submitBuild({ view: pools.view(team.pool), objects, records, flows, scratch, workDir, archiveLimits: opts.archiveLimits }, team, upload, flatten ? 'flattened' : 'chain', meta);
    } finally {
      await upload.discard();
    }
    const hits = record.layers.filter((l) => l.status === 'hit').length;
    metrics.submitted.inc({ team: team.team, pool: team.pool });
    metrics.uploadBytes.observe(upload.bytes);
    // Misses are counted by the workers, when their jobs settle (see WorkerMetrics.lookups).
    metrics.lookups.inc({ result: 'hit', source: 'shared', team: team.team, pool: team.pool }, hits);
    if (isFinal(record)) countFinished(record);
    else follower.track(record);
    log.info('build submitted', { buildId: record.id, team: team.team, project: upload.sha256, layers: record.layers.length, hits, state: record.state });
    const self = `/v1/builds/${record.id}`;
    return reply
      .status(201)
      .header('location', self)
      .send({ ...(await presence.one(publicRecord(record))), links: { self, events: `${self}/events`, image: `${self}/image`, cancel: `${self}/cancel` } });
  });

  /**
   * Builds, newest first, from the history: `?team&pool&state` (a state or `active`), `q` (text
   * in the project name, branch, commit or submitter), `project`, `branch`, `commit` (a prefix),
   * `submitter`, `dirty` (1: only builds of a dirty work tree, 0: only clean ones), `since`/`until` (ISO times), `limit` (1–1000, default 50), and `before=ID` for
   * the page after the one that ended with build ID.
   */
  app.get('/v1/builds', async (req) => {
    const q = req.query as Record<string, string | undefined>;
    if (q.pool !== undefined && !POOL_NAME.test(q.pool)) throw new HttpError(400, 'BAD_QUERY', `pool must be a pool name: letters, digits, . _ - (not ${q.pool})`);
    if (q.state !== undefined && !['queued', 'building', 'done', 'failed', 'cancelled', 'active'].includes(q.state)) {
      throw new HttpError(400, 'BAD_QUERY', `state must be one of queued, building, done, failed, cancelled, active (not ${q.state})`);
    }
    const limit = q.limit === undefined ? 50 : Number(q.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new HttpError(400, 'BAD_QUERY', 'limit must be a whole number from 1 to 1000');
    for (const k of ['q', 'project', 'branch', 'commit', 'submitter'] as const) {
      if (q[k] !== undefined && (q[k]!.length > 200 || q[k]!.length === 0)) throw new HttpError(400, 'BAD_QUERY', `${k} must be 1 to 200 characters`);
    }
    if (q.dirty !== undefined && !['1', '0', 'true', 'false'].includes(q.dirty)) throw new HttpError(400, 'BAD_QUERY', `dirty must be 1 or 0 (not ${q.dirty})`);
    const time = (k: 'since' | 'until') => {
      if (q[k] === undefined) return undefined;
      const t = Date.parse(q[k]!);
      if (Number.isNaN(t)) throw new HttpError(400, 'BAD_QUERY', `${k} must be an ISO time, e.g. 2026-12-01T00:00:00Z (not ${q[k]})`);
      return new Date(t).toISOString();
    };
    let before: HistoryQuery['before'];
    if (q.before !== undefined) {
      const b = BUILD_ID.test(q.before) ? await records.get(q.before) : null;
      if (!b) throw new HttpError(400, 'BAD_QUERY', `before must be the id of a build of the previous page (there is no build ${q.before})`);
      before = { createdAt: b.createdAt, id: b.id };
    }
    const team = req.team!;
    const teamsToList = q.team === undefined && team.admin ? null : await listedTeams(req, q.team, 'lists');
    const builds = await records.list({
      teams: teamsToList,
      pool: q.pool,
      state: q.state as HistoryQuery['state'],
      q: q.q,
      project: q.project,
      branch: q.branch,
      commit: q.commit,
      submitter: q.submitter,
      dirty: q.dirty === undefined ? undefined : q.dirty === '1' || q.dirty === 'true',
      since: time('since'),
      until: time('until'),
      before,
      limit,
    });
    // A build followed here is fresher in memory than in the history.
    return {
      builds: await presence.annotate(
        builds.map((b) => {
          const live = follower.live(b.id);
          return live ? summarize(live) : b;
        }),
      ),
    };
  });

  app.get('/v1/builds/:id', async (req) => presence.one(publicRecord(await visibleBuild(req))));

  app.get('/v1/builds/:id/events', needsRedis, async (req, reply) => {
    const record = await visibleBuild(req);
    await streamBuildEvents(req, reply, { redis, follower, records, imageLocation }, record);
  });

  /**
   * A build's chain, for `vmlb pull`: each layer's shared manifest (from its pool's namespace, or
   * the trusted pool it was a hit in) and where its blob is (`/v1/builds/:id/layers/:index/blob`).
   */
  app.get('/v1/builds/:id/chain', async (req) => {
    const r = await visibleBuild(req);
    const view = pools.view(r.pool ?? DEFAULT_POOL);
    const layers = [];
    for (const l of r.layers) {
      const hit = l.status === 'hit' || l.status === 'done' ? await view.find(l.key) : null;
      layers.push({ index: l.index, name: l.name, key: l.key, status: l.status, pool: hit?.pool ?? null, manifest: hit?.manifest ?? null, blob: hit ? `/v1/builds/${r.id}/layers/${l.index}/blob` : null });
    }
    return { id: r.id, state: r.state, pool: r.pool ?? DEFAULT_POOL, layers };
  });

  /** One layer's blob as the shared store holds it (`?redirect=1`: a presigned URL instead). */
  app.get('/v1/builds/:id/layers/:index/blob', async (req, reply: FastifyReply) => {
    const r = await visibleBuild(req);
    const { index: raw } = req.params as { index: string };
    const l = /^\d+$/.test(raw) ? r.layers[Number(raw)] : undefined;
    if (!l) throw new HttpError(404, 'NO_SUCH_LAYER', `build ${r.id} has no layer ${raw} (it has ${r.layers.length}, numbered from 0)`);
    const hit = await pools.view(r.pool ?? DEFAULT_POOL).find(l.key);
    if (!hit) throw new HttpError(404, 'LAYER_NOT_SHARED', `layer ${l.name} of build ${r.id} is not in the shared store (${l.status === 'hit' || l.status === 'done' ? 'a # noshare layer, or collected since' : `it is ${l.status}`})`);
    // As stored: the blob, or its compressed stream (the manifest's `transfer`; the client decompresses).
    const transfer = (hit.manifest as { transfer?: { file?: string; encoding?: string } }).transfer;
    const rel = poolPath(hit.pool, `layers/${transfer?.file ?? `${l.key}.qcow2`}`);
    if (transfer?.encoding) reply.header('x-vmlb-encoding', transfer.encoding);
    if ((req.query as { redirect?: string }).redirect === '1') return reply.redirect(await objects.presignedGet(rel, presignSeconds), 302);
    const st = await objects.stat(rel);
    if (!st) throw new HttpError(410, 'LAYER_GONE', `layer ${l.name} (${l.key}) is no longer in the shared store`);
    return reply.header('content-type', 'application/octet-stream').header('content-length', String(st.size)).send(await objects.stream(rel));
  });

  app.get('/v1/builds/:id/image', async (req, reply: FastifyReply) => {
    const r = await visibleBuild(req);
    if (r.state === 'done' && !r.image) {
      // A chain build: its image is made once, when first asked for (the flatten job, once per top key).
      const top = r.layers[r.layers.length - 1]!;
      const pool = r.pool ?? DEFAULT_POOL;
      const image = await findImage(pools.view(pool).own, top.key, pool);
      if (image) {
        r.image = image;
        await records.put(r);
      } else {
        await requireRedis(redis, redisGraceMs);
        const data = flattenData({ ...r, pool, reads: pools.view(pool).trusted.map((t) => t.pool) }, r.layers.map((l) => l.key));
        const queued = await pools.queues(pool).flatten.getJob(flattenJobId(r.id));
        if (!queued || (await queued.getState()) === 'failed') {
          if (queued) await queued.remove();
          await flows.add(flattenNode(data));
        }
        return reply
          .status(202)
          .header('retry-after', '2')
          .send({ state: 'flattening', message: `build ${r.id}'s image is being flattened (once); ask again in a moment`, id: r.id });
      }
    }
    if (r.state !== 'done' || !r.image) {
      const why = isFinal(r) ? `it ended ${r.state}${r.error ? `: ${r.error}` : ''}` : `it is ${r.state}; wait for it (vmlb submit follows it, or GET /v1/builds/${r.id}/events)`;
      throw new HttpError(409, 'NO_IMAGE', `build ${r.id} has no image: ${why}`, { state: r.state });
    }
    const filename = `${r.id}.qcow2`;
    if ((req.query as { redirect?: string }).redirect === '1') {
      const url = await objects.presignedGet(r.image.path, presignSeconds, filename);
      return reply.redirect(url, 302);
    }
    const st = await objects.stat(r.image.path);
    if (!st) throw new HttpError(410, 'IMAGE_GONE', `build ${r.id}'s image ${r.image.path} is no longer in the shared store`);
    const body = await objects.stream(r.image.path);
    return reply
      .header('content-type', 'application/octet-stream')
      .header('content-length', String(st.size))
      .header('content-disposition', `attachment; filename="${filename}"`)
      .send(body);
  });

  app.post('/v1/builds/:id/cancel', needsRedis, async (req) => {
    const r = await visibleBuild(req);
    if (isFinal(r)) throw new HttpError(409, 'ALREADY_FINISHED', `build ${r.id} is already ${r.state}`, { state: r.state });
    const by = req.team!.team;
    await redis.set(redisKeys.cancelled(r.id), by, 'EX', CANCEL_TTL_S);
    // The record is marked cancelled first (synchronously, inside cancel()): a job check of the
    // follower running meanwhile would otherwise find the flatten job removed and fail the build.
    const marking = follower.cancel(r.id, by);
    const jobs = await removeBuildJobs(queuesOf(r.pool), r.id, r.layers.filter((l) => l.status !== 'hit').map((l) => l.index));
    const cancelled = await marking;
    log.info('build cancelled', { buildId: r.id, by, removed: jobs.removed, running: jobs.running });
    const current = cancelled ?? follower.live(r.id) ?? (await records.get(r.id)) ?? r;
    return { ...publicRecord(current), jobs };
  });

  let closed = false;
  follower.start();
  await lease.start();
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
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(teamsTimer);
      await app.close();
      await lease.close();
      await follower.close();
      await records.close();
      await flows.close();
      await pools.close();
      redis.disconnect();
      blocking.disconnect();
      shared.close();
      if (ownsWorkDir) await rm(workDir, { recursive: true, force: true });
    },
  };
}

/**
 * With sentinels, how long a request waits for a connection that is being made again (a failover
 * moves the primary: the sentinels name the new one within seconds) before its 503.
 */
const SENTINEL_RECONNECT_GRACE_MS = 5000;

/**
 * Throws the 503 of redisUnavailable unless the connection is ready — at once, or after waiting
 * up to graceMs for a connection that is connecting or reconnecting to become ready.
 */
export async function requireRedis(redis: Redis, graceMs = 0): Promise<void> {
  if (redis.status === 'ready') return;
  if (graceMs > 0 && (redis.status === 'connecting' || redis.status === 'reconnecting' || redis.status === 'connect')) {
    const ready = await new Promise<boolean>((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        redis.off('ready', onReady);
        resolve(ok);
      };
      const onReady = () => done(true);
      const timer = setTimeout(() => done(false), graceMs);
      redis.on('ready', onReady);
    });
    if (ready) return;
  }
  throw redisUnavailable(`connection ${redis.status}`);
}

/** A probe run at most once per `ms` (scrapes in between get its last answer): true when `fn` resolved. */
function probeEvery(ms: number, fn: () => Promise<unknown>): () => Promise<boolean> {
  let last: { at: number; ok: Promise<boolean> } | undefined;
  return () => {
    if (!last || Date.now() - last.at >= ms) last = { at: Date.now(), ok: fn().then(() => true, () => false) };
    return last.ok;
  };
}

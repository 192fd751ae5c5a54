import type { FlowProducer } from 'bullmq';
import type { FastifyInstance, RouteShorthandOptions } from 'fastify';
import type { Redis } from 'ioredis';
import { DEFAULT_POOL, POOL_NAME, redisKeys } from '@vmlb/fleet';
import type { BuildAccess } from './build-access.js';
import { removeBuildJobs } from './build-flow.js';
import type { BuildFollower } from './build-follower.js';
import type { BuildHistory, HistoryQuery } from './build-history.js';
import { BUILD_ID, isFinal, summarize, type StoredRecord } from './build-records.js';
import { streamBuildEvents } from './event-stream-route.js';
import { HttpError } from './http-error.js';
import type { Logger } from './logger.js';
import type { SchedulerMetrics } from './metrics.js';
import type { ObjectStore } from './object-store.js';
import type { PoolRegistry } from './pool-registry.js';
import type { ArchiveLimits } from './project-archive.js';
import { publicRecord } from './public-record.js';
import { submissionMeta } from './submission-meta.js';
import { submitBuild } from './submit-build.js';
import { UPLOAD_TYPES, isUpload } from './upload.js';
import type { WorkerPresence } from './worker-presence.js';

/** Kept 7 days: long after any job of the build could still run. */
const CANCEL_TTL_S = 7 * 24 * 3600;

/**
 * A build's life through the API:
 *
 *   POST /v1/builds                 a project upload, planned into a BullMQ flow (201, the record)
 *   GET  /v1/builds                 the history's lines, newest first (filters below)
 *   GET  /v1/builds/:id             one record
 *   GET  /v1/builds/:id/events      its events, as server-sent events
 *   POST /v1/builds/:id/cancel      marks it cancelled and removes its jobs that have not started
 *
 * (A build's chain, layers and image: download-routes.ts.)
 */
export function registerBuildRoutes(
  app: FastifyInstance,
  deps: {
    redis: Redis;
    /** Route options that answer 503 at once while Redis is down. */
    needsRedis: RouteShorthandOptions;
    pools: PoolRegistry;
    records: BuildHistory;
    follower: BuildFollower;
    presence: WorkerPresence;
    objects: ObjectStore;
    flows: FlowProducer;
    /** Where uploads are extracted while a submission is planned. */
    workDir: string;
    archiveLimits?: ArchiveLimits;
    metrics: SchedulerMetrics;
    log: Logger;
    access: BuildAccess;
    imageLocation: (rel: string) => string;
  },
): void {
  const { redis, needsRedis, pools, records, follower, presence, objects, flows, workDir, metrics, log, access } = deps;

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
      record = await submitBuild({ view: pools.view(team.pool), objects, records, flows, workDir, archiveLimits: deps.archiveLimits }, team, upload, flatten ? 'flattened' : 'chain', meta);
    } finally {
      await upload.discard();
    }
    const hits = record.layers.filter((l) => l.status === 'hit').length;
    metrics.submitted.inc({ team: team.team, pool: team.pool });
    metrics.uploadBytes.observe(upload.bytes);
    // Misses are counted by the workers, when their jobs settle (see WorkerMetrics.lookups).
    metrics.lookups.inc({ result: 'hit', source: 'shared', team: team.team, pool: team.pool }, hits);
    if (isFinal(record)) metrics.finished(record);
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
    const teamsToList = q.team === undefined && team.admin ? null : await access.listedTeams(req, q.team, 'lists');
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

  app.get('/v1/builds/:id', async (req) => presence.one(publicRecord(await access.visibleBuild(req))));

  app.get('/v1/builds/:id/events', needsRedis, async (req, reply) => {
    const record = await access.visibleBuild(req);
    await streamBuildEvents(req, reply, { redis, follower, records, imageLocation: deps.imageLocation }, record);
  });

  app.post('/v1/builds/:id/cancel', needsRedis, async (req) => {
    const r = await access.visibleBuild(req);
    if (isFinal(r)) throw new HttpError(409, 'ALREADY_FINISHED', `build ${r.id} is already ${r.state}`, { state: r.state });
    const by = req.team!.team;
    await redis.set(redisKeys.cancelled(r.id), by, 'EX', CANCEL_TTL_S);
    // The record is marked cancelled first (synchronously, inside cancel()): a job check of the
    // follower running meanwhile would otherwise find the flatten job removed and fail the build.
    const marking = follower.cancel(r.id, by);
    const jobs = await removeBuildJobs(pools.queues(r.pool ?? DEFAULT_POOL), r.id, r.layers.filter((l) => l.status !== 'hit').map((l) => l.index));
    const cancelled = await marking;
    log.info('build cancelled', { buildId: r.id, by, removed: jobs.removed, running: jobs.running });
    const current = cancelled ?? follower.live(r.id) ?? (await records.get(r.id)) ?? r;
    return { ...publicRecord(current), jobs };
  });
}

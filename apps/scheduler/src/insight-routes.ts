import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { DEFAULT_POOL, listKnownWorkers, listStoppedWorkers, poolPath, redisKeys, storePaths, type FleetView, type WhoAmI } from '@vmlb/fleet';
import type { PoolRegistry } from './pool-registry.js';
import type { StoredRecord } from './build-records.js';
import type { BuildHistory } from './build-history.js';
import type { BuildFollower } from './build-follower.js';
import { parseEntry } from './build-follower.js';
import { HttpError } from './http-error.js';
import { JOB_STATES, QUEUED_STATES, oldestQueuedAge } from './metrics.js';
import type { ObjectStore } from './object-store.js';

/**
 * The read-only routes the web dashboard (apps/web-dashboard) is made of, beside the build
 * routes of build-routes.ts and download-routes.ts:
 *
 *   GET /v1/whoami                         { team, admin, pool }
 *   GET /v1/fleet                          workers (live, recently lost, and stopped cleanly
 *                                          within the hour: state `stopped`), queue depths: of
 *                                          the asking team's pool (an admin's: every pool)
 *   GET /v1/stats/cache?hours&bucketMinutes&team
 *                                          layer cache hit rate and build durations over time,
 *                                          overall and per team (from the history)
 *   GET /v1/builds/:id/layers/:index/log   one layer's log, text/plain (at most VMLB_LOG_MAX: its tail)
 *
 * The fleet view shows a team its own pool's workers and queues (an admin every pool); hit
 * rates and logs follow the build visibility rules: a team sees its own, an admin all.
 */
export function registerInsightRoutes(
  app: FastifyInstance,
  deps: {
    redis: Redis;
    pools: PoolRegistry;
    records: BuildHistory;
    follower: BuildFollower;
    objects: ObjectStore;
    visibleBuild: (req: FastifyRequest) => Promise<StoredRecord>;
    /** The teams a listing covers (see build-access.ts). */
    listedTeams: (req: FastifyRequest, asked: string | undefined, verb: string) => Promise<string[]>;
    /** Route options that answer 503 at once while Redis is down. */
    needsRedis: { onRequest: () => Promise<void> };
  },
): void {
  const { redis, pools, records, objects } = deps;

  app.get('/v1/whoami', async (req): Promise<WhoAmI> => ({ team: req.team!.team, admin: req.team!.admin, pool: req.team!.pool }));

  app.get('/v1/fleet', deps.needsRedis, async (req): Promise<FleetView> => {
    const team = req.team!;
    const shown = team.admin ? pools.all() : [{ pool: team.pool, queues: pools.queues(team.pool) }];
    const [known, stopped, perPool] = await Promise.all([
      listKnownWorkers(redis),
      // Those that stopped cleanly lately: listed as stopped (not dead), rather than vanishing.
      listStoppedWorkers(redis),
      Promise.all(
        shown.map(async ({ pool, queues }) => {
          const [layers, flatten, oldestLayers, oldestFlatten] = await Promise.all([
            queues.layers.getJobCounts(...JOB_STATES),
            queues.flatten.getJobCounts(...JOB_STATES),
            oldestQueuedAge(queues.layers),
            oldestQueuedAge(queues.flatten),
          ]);
          const queued = QUEUED_STATES.reduce((n, s) => n + (layers[s] ?? 0) + (flatten[s] ?? 0), 0);
          const ages = [oldestLayers, oldestFlatten].filter((a): a is number => a !== null);
          return { pool, layers, flatten, queued, oldestQueuedSeconds: ages.length ? Math.max(...ages) : null };
        }),
      ),
    ]);
    const now = Date.now();
    const workers = [...known, ...stopped.filter((w) => !known.some((k) => k.id === w.id))].sort((a, b) => a.id.localeCompare(b.id));
    const sum = (pick: (p: (typeof perPool)[number]) => Record<string, number>) => {
      const out: Record<string, number> = {};
      for (const p of perPool) for (const [k, v] of Object.entries(pick(p))) out[k] = (out[k] ?? 0) + v;
      return out;
    };
    const ages = perPool.map((p) => p.oldestQueuedSeconds).filter((a): a is number => a !== null);
    const visible = new Set(shown.map((p) => p.pool));
    return {
      workers: workers
        .filter((w) => visible.has(w.pool ?? DEFAULT_POOL))
        .map((w) => ({ ...w, pool: w.pool ?? DEFAULT_POOL, heartbeatAgeSeconds: Math.max(0, (now - Date.parse(w.lastHeartbeat)) / 1000) })),
      queues: { layers: sum((p) => p.layers), flatten: sum((p) => p.flatten) },
      pools: perPool,
      queued: perPool.reduce((n, p) => n + p.queued, 0),
      oldestQueuedSeconds: ages.length ? Math.max(...ages) : null,
    };
  });

  app.get('/v1/stats/cache', async (req) => {
    const q = req.query as { hours?: string; bucketMinutes?: string; team?: string };
    const hours = q.hours === undefined ? 24 : Number(q.hours);
    const bucketMinutes = q.bucketMinutes === undefined ? 60 : Number(q.bucketMinutes);
    if (!(hours > 0 && hours <= 24 * 90)) throw new HttpError(400, 'BAD_QUERY', `hours must be a number above 0 and at most 2160 (not ${q.hours})`);
    if (!(Number.isInteger(bucketMinutes) && bucketMinutes >= 1 && bucketMinutes <= 24 * 60)) {
      throw new HttpError(400, 'BAD_QUERY', `bucketMinutes must be a whole number from 1 to 1440 (not ${q.bucketMinutes})`);
    }
    if ((hours * 60) / bucketMinutes > 2000) throw new HttpError(400, 'BAD_QUERY', `hours/bucketMinutes gives more than 2000 buckets: use larger buckets`);
    const teams = await deps.listedTeams(req, q.team, 'sees');
    const now = Date.now();
    const everyTeam = q.team === undefined && req.team!.admin;
    return records.series({ teams: everyTeam ? null : teams, teamsShown: teams, from: now - hours * 3600_000, to: now, bucketSeconds: bucketMinutes * 60 });
  });

  app.get('/v1/builds/:id/layers/:index/log', async (req, reply) => {
    const record = await deps.visibleBuild(req);
    const { index: raw } = req.params as { index: string };
    const index = Number(raw);
    const layer = /^\d+$/.test(raw) ? record.layers[index] : undefined;
    if (!layer) throw new HttpError(404, 'NO_SUCH_LAYER', `build ${record.id} has no layer ${raw} (it has ${record.layers.length}, numbered from 0)`);
    reply.type('text/plain; charset=utf-8').header('cache-control', 'no-cache');
    // A finished layer's whole log is in the shared store (a hit's is the one of the build that made it).
    if (layer.status === 'hit' || layer.status === 'done') {
      const rel = poolPath(layer.pool ?? record.pool ?? DEFAULT_POOL, `layers/${layer.key}.log`);
      if (await objects.stat(rel)) return reply.send(await objects.stream(rel));
    }
    // A failed script's log, uploaded by its worker.
    if (layer.status === 'failed') {
      const rel = poolPath(record.pool ?? DEFAULT_POOL, storePaths.failedLog(record.id, index));
      if (await objects.stat(rel)) return reply.send(await objects.stream(rel));
    }
    // Running, failed, or kept on a worker (# noshare): what the workers streamed, while Redis has it.
    const chunks = redis.status === 'ready' ? await streamedLog(redis, record.id, index) : null;
    if (chunks !== null) return reply.send(chunks);
    if (layer.logTail) return reply.send(layer.logTail);
    throw new HttpError(404, 'NO_LOG', `layer ${layer.name} of build ${record.id} has no log (yet)`);
  });
}

/** The layer-log chunks of one layer in a build's event stream, or null when there are none. */
async function streamedLog(redis: Redis, buildId: string, index: number): Promise<string | null> {
  const entries = await redis.xrange(redisKeys.events(buildId), '-', '+');
  let text = '';
  let any = false;
  for (const [id, fields] of entries) {
    const e = parseEntry(id, fields)?.event;
    if (e?.type === 'engine' && e.index === index && e.event.type === 'layer-log') {
      text += e.event.chunk;
      any = true;
    }
  }
  return any ? text : null;
}

import type { FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import type { BuildHistory } from './build-history.js';
import type { SchedulerMetrics } from './metrics.js';
import type { ObjectStore } from './object-store.js';
import { withTimeout } from './with-timeout.js';

/**
 * The routes for whoever runs the scheduler, without a token:
 *
 *   GET /healthz   200 when Redis, the shared store and the history all answer (within 3 s
 *                  each), else 503; either way what each said, and whether this one leads
 *   GET /metrics   the Prometheus text (docs/metrics.md)
 */
export function registerHealthRoutes(
  app: FastifyInstance,
  deps: { redis: Redis; objects: ObjectStore; records: BuildHistory; metrics: SchedulerMetrics; instanceId: string; leading: () => boolean; following: () => number },
): void {
  const { redis, objects, records, metrics } = deps;

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
      .send({ ok, redis: redisState, s3: s3State, database: dbState, scheduler: deps.instanceId, leader: deps.leading(), following: deps.following() });
  });

  app.get('/metrics', async (_req, reply) => {
    const text = await metrics.registry.metrics();
    return reply.type(metrics.registry.contentType).send(text);
  });
}

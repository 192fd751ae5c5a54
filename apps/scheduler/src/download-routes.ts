import type { FlowProducer } from 'bullmq';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Redis } from 'ioredis';
import { DEFAULT_POOL, flattenJobId, poolPath } from '@vmlb/fleet';
import type { BuildChain, BuildChainLayer } from '@vmlb/fleet';
import type { BuildAccess } from './build-access.js';
import { flattenData, flattenNode } from './build-flow.js';
import type { BuildHistory } from './build-history.js';
import { isFinal } from './build-records.js';
import { HttpError } from './http-error.js';
import { findImage } from './image-manifest.js';
import type { ObjectStore } from './object-store.js';
import type { PoolRegistry } from './pool-registry.js';
import { requireRedis } from './redis-guard.js';

/**
 * What a build made, for `vmlb pull` and downloads:
 *
 *   GET /v1/builds/:id/chain                 each layer's shared manifest and where its blob is
 *   GET /v1/builds/:id/layers/:index/blob    one layer's blob as the shared store holds it
 *   GET /v1/builds/:id/image                 the flattened image (a chain build's is made once,
 *                                            when first asked for: 202 until it is)
 *
 * `?redirect=1` on a blob or the image: a presigned URL of the shared store instead of the bytes.
 */
export function registerDownloadRoutes(
  app: FastifyInstance,
  deps: {
    redis: Redis;
    /** How long a request waits for Redis (redis-guard.ts). */
    redisGraceMs: number;
    pools: PoolRegistry;
    records: BuildHistory;
    objects: ObjectStore;
    flows: FlowProducer;
    access: BuildAccess;
    /** How long a presigned URL is valid. */
    presignSeconds: number;
  },
): void {
  const { redis, pools, records, objects, flows, access, presignSeconds } = deps;

  /**
   * A build's chain, for `vmlb pull`: each layer's shared manifest (from its pool's namespace, or
   * the trusted pool it was a hit in) and where its blob is (`/v1/builds/:id/layers/:index/blob`).
   */
  app.get('/v1/builds/:id/chain', async (req) => {
    const r = await access.visibleBuild(req);
    const view = pools.view(r.pool ?? DEFAULT_POOL);
    const layers: BuildChainLayer[] = [];
    for (const l of r.layers) {
      const hit = l.status === 'hit' || l.status === 'done' ? await view.find(l.key) : null;
      layers.push({ index: l.index, name: l.name, key: l.key, status: l.status, pool: hit?.pool ?? null, manifest: hit?.manifest ?? null, blob: hit ? `/v1/builds/${r.id}/layers/${l.index}/blob` : null });
    }
    return { id: r.id, state: r.state, pool: r.pool ?? DEFAULT_POOL, layers } satisfies BuildChain;
  });

  /** One layer's blob as the shared store holds it (`?redirect=1`: a presigned URL instead). */
  app.get('/v1/builds/:id/layers/:index/blob', async (req, reply: FastifyReply) => {
    const r = await access.visibleBuild(req);
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
    const r = await access.visibleBuild(req);
    if (r.state === 'done' && !r.image) {
      // A chain build: its image is made once, when first asked for (the flatten job, once per top key).
      const top = r.layers[r.layers.length - 1]!;
      const pool = r.pool ?? DEFAULT_POOL;
      const image = await findImage(pools.view(pool).own, top.key, pool);
      if (image) {
        r.image = image;
        await records.put(r);
      } else {
        await requireRedis(redis, deps.redisGraceMs);
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
}

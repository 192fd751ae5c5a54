import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { UnrecoverableError, WaitingError, type Job } from 'bullmq';
import { VmlbError, convert, sha256File, type LayerManifest } from '@vmlb/layer-engine';
import { ClaimLease, FlattenJobData, claimOwner, poolClaimKey, poolPath, publishReady, redisKeys, storePaths, waitUntilReady } from '@vmlb/fleet';
import { errorMessage, isUnrecoverable, parseJobData } from './job-errors.js';
import { JobEvents } from './job-events.js';
import type { WorkerContext } from './worker-context.js';
import { checkChain, ensureChain, openProject, refuseOtherPool, takeChainLayer } from './layer-chain.js';

/**
 * What sits beside `images/<top>.qcow2`, written after it: an image exists only when this
 * does (as with layers), so a reader never takes half an upload for an image.
 */
export interface ImageManifest {
  version: 1;
  key: string;
  chain: string[];
  bytes: number;
  sha256: string;
  builtAt: string;
  worker: string;
}

export function imageManifestPath(topKey: string): string {
  return storePaths.image(topKey).replace(/\.qcow2$/, '.json');
}

export type FlattenJobResult = { image: { key: string; path: string; bytes: number }; reused: boolean };

/**
 * The flatten job (docs/fleet.md, step 6): one standalone qcow2 per top key, shared by every
 * build that ends there. An image already in the shared store is reused; two builds that end
 * on the same key at once write it once (the claim on `image:<top>`). Once written, the
 * chain's uncacheable layers (`# nocache` and after: this build's alone) leave the shared store.
 */
export function flattenProcessor(ctx: WorkerContext) {
  return async (job: Job, token: string | undefined, signal?: AbortSignal): Promise<FlattenJobResult> => {
    const data = parseJobData(FlattenJobData, job, 'flatten');
    refuseOtherPool(ctx, data, job);
    const jobId = job.id ?? `${data.buildId}:flatten`;
    const log = ctx.log.child({ job: jobId });
    const events = new JobEvents(ctx.redis, data.buildId, -1, ctx.id, log);
    const running = ctx.jobs.add(jobId, 'flatten');
    for (const k of data.chain) running.keys.add(k);
    ctx.metrics.busy.set(ctx.jobs.busy);
    const unfollow = running.stop.follow(signal, 'bullmq', 'BullMQ cancelled the job');
    const count = (outcome: string) => ctx.metrics.jobs.inc({ queue: 'flatten', outcome });
    try {
      if (await ctx.redis.exists(redisKeys.cancelled(data.buildId))) throw new UnrecoverableError(`build ${data.buildId} was cancelled`);
      const started = performance.now();
      const r = await flatten(ctx, data, jobId, running.stop.signal, events);
      count(r.reused ? 'reused' : 'built');
      if (!r.reused) ctx.metrics.flattenSeconds.observe((performance.now() - started) / 1000);
      return r;
    } catch (e) {
      const msg = errorMessage(e);
      if (running.stop.cause === 'shutdown') {
        await events.flatten('failed', { message: `handed back to the queue: worker ${ctx.id} is stopping` });
        await job.moveToWait(token);
        count('handed-back');
        throw new WaitingError();
      }
      const last = e instanceof UnrecoverableError || isUnrecoverable(e) || job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
      await events.flatten('failed', { message: last ? msg : `attempt ${job.attemptsMade + 1} failed; it will be retried: ${msg}` });
      count(last ? 'failed' : 'retried');
      if (last && !(e instanceof UnrecoverableError)) throw new UnrecoverableError(msg);
      throw e;
    } finally {
      unfollow();
      ctx.jobs.remove(jobId);
      ctx.metrics.busy.set(ctx.jobs.busy);
      await events.close();
      ctx.evictSoon();
    }
  };
}

async function flatten(ctx: WorkerContext, data: FlattenJobData, jobId: string, signal: AbortSignal, events: JobEvents): Promise<FlattenJobResult> {
  const top = data.chain[data.chain.length - 1]!;
  // The image is written in this pool's namespace; the record names it relative to the store's prefix.
  const image = storePaths.image(top);
  const recordPath = poolPath(ctx.pool, image);
  const claimKey = poolClaimKey(ctx.pool, `image:${top}`);
  const existing = async () => ctx.shared.getJson<ImageManifest>(imageManifestPath(top), { signal });
  const reuse = async (m: ImageManifest) => {
    const img = { key: top, path: recordPath, bytes: m.bytes };
    await events.flatten('done', { image: img, message: 'the image of this chain is in the shared store already' });
    return { image: img, reused: true };
  };

  let lease: ClaimLease | undefined;
  for (;;) {
    const m = await existing();
    if (m) return reuse(m);
    const got = await ClaimLease.take(ctx.redis, claimKey, claimOwner(jobId, ctx.id));
    if (got instanceof ClaimLease) {
      lease = got;
      break;
    }
    await waitUntilReady(ctx.redis, claimKey, async () => (await existing()) !== null, { signal });
  }
  try {
    const m = await existing();
    if (m) return reuse(m);
    await events.flatten('building');
    await makeChainLocal(ctx, data, signal, events);
    const tmpDir = await mkdtemp(path.join(ctx.workDir, 'flatten-'));
    try {
      const file = path.join(tmpDir, `${top}.qcow2`);
      await convert(ctx.store.blobPath(top), file, { signal });
      const [bytes, sha256] = await Promise.all([ctx.shared.putFile(image, file, { signal }), sha256File(file)]);
      ctx.metrics.pushedBytes.inc({ object: 'image' }, bytes);
      const manifest: ImageManifest = { version: 1, key: top, chain: data.chain, bytes, sha256, builtAt: new Date().toISOString(), worker: ctx.id };
      await ctx.shared.putJson(imageManifestPath(top), manifest, { signal });
      await lease.release();
      await publishReady(ctx.redis, claimKey);
      await dropUncacheable(ctx, data.chain);
      const img = { key: top, path: recordPath, bytes };
      await events.flatten('done', { image: img });
      return { image: img, reused: false };
    } finally {
      await rm(tmpDir, { recursive: true, force: true });
    }
  } finally {
    await lease.release().catch(() => undefined);
  }
}

/**
 * Makes the chain local, each layer as a layer job's parents are (takeChainLayer: the shared
 * copy is the truth). A `# noshare` layer (or one built on it) is not in the shared store: it
 * lives on the worker that built it, and when this is another worker it is built here again
 * from the project (same key, same inputs), its parents pulled.
 */
async function makeChainLocal(ctx: WorkerContext, data: FlattenJobData, signal: AbortSignal, events: JobEvents): Promise<void> {
  const view = ctx.viewFor(data.reads);
  let parent: LayerManifest | null = null;
  let missing: string | undefined;
  for (const key of data.chain) {
    const taken = await takeChainLayer(ctx, view, key, parent, signal, events);
    if (!taken) {
      missing = key;
      break;
    }
    parent = taken.manifest;
  }
  if (missing === undefined) return;
  if (!data.project || data.nonce === undefined) {
    const reads = view.trusted.length ? ` (nor the pools it reads: ${view.trusted.map((t) => t.pool).join(', ')})` : '';
    throw new VmlbError(
      'LAYER_UNAVAILABLE',
      `layer ${missing} is in neither the local store nor the shared store ${view.own.url}${reads}; a # noshare layer lives only on the worker that built it, and this flatten job (from a scheduler that does not say its project) ran elsewhere`,
    );
  }
  const opened = await openProject(ctx, { project: data.project, nonce: data.nonce }, signal);
  try {
    checkChain('flatten', opened.keyed.map((k) => k.key), data.chain);
    await ensureChain(ctx, data, opened.keyed, opened.keyed.length, signal, events, null);
  } finally {
    await opened.close();
  }
}

/** The chain's uncacheable layers are this build's alone: once its image exists, nobody needs them. */
async function dropUncacheable(ctx: WorkerContext, chain: string[]): Promise<void> {
  for (const key of chain) {
    try {
      const m = await ctx.shared.getManifest(key);
      if (m && !m.cacheable) await ctx.shared.remove(key);
    } catch (e) {
      ctx.log.warn('could not remove an uncacheable layer from the shared store (vmlb gc will)', { key, error: errorMessage(e) });
    }
  }
}

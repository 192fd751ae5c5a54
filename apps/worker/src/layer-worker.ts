import { DelayedError, UnrecoverableError, WaitingError, type Job } from 'bullmq';
import { LayerFailedError, VmlbError } from '@vmlb/layer-engine';
import {
  ClaimLease,
  LayerJobData,
  claimHolder,
  claimJob,
  claimOwner,
  giveBackTeamSlot,
  poolClaimKey,
  publishReady,
  redisKeys,
  renewTeamSlot,
  storePaths,
  takeTeamSlot,
  waitForLayer,
} from '@vmlb/fleet';
import { errorMessage, isUnrecoverable, parseJobData } from './job-errors.js';
import { JobEvents } from './job-events.js';
import type { RunningJob } from './running-jobs.js';
import type { WorkerContext } from './worker-context.js';
import { buildOne, checkChain, ensureChain, openProject, refuseOtherPool, retryStep, trustedLocal } from './layer-chain.js';
import { AFFINITY_RETRY_MS, betterHolder, mayWaitForHolder, missingChainIsSmall, waitFor } from './chain-affinity.js';

/** How often a running job looks for its build's cancellation. */
export const CANCEL_POLL_MS = 1000;
/** A job over its team's cap comes back this much later. */
export const TEAM_CAP_DELAY_MS = 2000;
const TEAM_RENEW_EVERY = 10;

export type LayerJobResult =
  /** Built here and pushed (or kept local: see `shared`); `localHit`: not built, this worker's store had it (a `# noshare` layer). */
  | { key: string; outcome: 'built'; worker: string; seconds: number; bytes: number; shared: boolean; localHit: boolean }
  /** In the shared store already, or built meanwhile by another build's job. */
  | { key: string; outcome: 'shared-hit' | 'waited'; worker: string };

/**
 * The layer job (docs/fleet.md, steps 4–5): team cap → already shared? → claim the key (or
 * wait for whoever holds it) → fetch and extract the project → check the key → make the
 * parent chain local → build → push → release the claim → tell the waiters.
 *
 * How each failure ends the job:
 * - the script fails (LayerFailedError) or the project is wrong: UnrecoverableError, after a
 *   `failed` event with the exit code and log tail; the flow fails its parents at once;
 * - anything else (S3, Redis, a host problem): rethrown, so BullMQ retries it with the job's
 *   backoff (LAYER_JOB_OPTIONS), on this worker or another; a `queued` event says so;
 * - the build is cancelled (`vmlb:cancelled:<id>`, looked at every second): the build is
 *   aborted, a `cancelled` event, UnrecoverableError;
 * - the worker is stopping past its grace period: the build is aborted and the job goes back
 *   to the queue as it was (no attempt used).
 *
 * `# nocache` layers (and those built on one) are pushed too: their keys hold the build's nonce,
 * so they are never anyone's hit, and the build's next job can run on any worker; the flatten
 * job removes them once the image is written. `# noshare` layers are never pushed: a worker
 * that needs one as a parent and lacks it builds it again from the project (same key).
 */
export function layerProcessor(ctx: WorkerContext) {
  return async (job: Job, token: string | undefined, signal?: AbortSignal): Promise<LayerJobResult> => {
    const data = parseJobData(LayerJobData, job, 'layer');
    refuseOtherPool(ctx, data, job);
    // A team this worker has not heard of yet (added since its last read of vmlb:teams): its series at 0 now.
    ctx.metrics.initTeams([data.team]);
    const jobId = job.id ?? `${data.buildId}:${data.index}`;
    const log = ctx.log.child({ job: jobId, layer: data.name });
    const events = new JobEvents(ctx.redis, data.buildId, data.index, ctx.id, log);

    if (await ctx.redis.exists(redisKeys.cancelled(data.buildId))) {
      await events.job('cancelled', { message: 'the build was cancelled' });
      await events.close();
      ctx.metrics.jobs.inc({ queue: 'layer', outcome: 'cancelled' });
      throw new UnrecoverableError(`build ${data.buildId} was cancelled`);
    }
    // Chain affinity: a free worker of the pool that holds more of the parent chain takes it.
    // A job that will not build (its layer is shared already, or another job builds it now)
    // needs no chain: it is not put back, whoever took it ends it at once or waits. Nor is one
    // that lacks only a little of its chain (VMLB_AFFINITY_SMALL_CHAIN): it pulls that at once.
    const holder = data.chain.length ? await betterHolder(ctx.redis, { workerId: ctx.id, pool: ctx.pool, store: ctx.store, chain: data.chain, jobId }) : null;
    if (
      holder &&
      !(await needsNoChain(ctx, data, jobId)) &&
      !(await missingChainIsSmall(holder.missing, ctx.smallChainBytes, (k) => ctx.viewFor(data.reads).getManifest(k))) &&
      (await mayWaitForHolder(ctx.redis, jobId))
    ) {
      log.info('put back for a worker that holds more of its chain', { holder: holder.id, held: holder.held, mine: holder.mine, of: data.chain.length });
      await waitFor(ctx.redis, holder.id, jobId);
      await job.moveToDelayed(Date.now() + AFFINITY_RETRY_MS, token);
      ctx.metrics.jobs.inc({ queue: 'layer', outcome: 'delayed' });
      throw new DelayedError();
    }
    if (!(await takeTeamSlot(ctx.redis, data.team, jobId, ctx.fleet.teamMaxRunning))) {
      // Over the team's cap: back to delayed for a while, no attempt used.
      await job.moveToDelayed(Date.now() + TEAM_CAP_DELAY_MS, token);
      ctx.metrics.jobs.inc({ queue: 'layer', outcome: 'delayed' });
      throw new DelayedError();
    }

    const running = ctx.jobs.add(jobId, 'layer');
    ctx.metrics.busy.set(ctx.jobs.busy);
    // Busy at once, not at the next heartbeat: chain affinity puts jobs back only for a free holder.
    await ctx.announce({ keys: false }).catch(() => undefined);
    const unfollow = running.stop.follow(signal, 'bullmq', 'BullMQ cancelled the job');
    let ticks = 0;
    const watch = setInterval(() => {
      ticks++;
      void ctx.redis.exists(redisKeys.cancelled(data.buildId)).then(
        (n) => n && running.stop.stop('cancelled', `build ${data.buildId} was cancelled`),
        () => undefined,
      );
      if (ticks % TEAM_RENEW_EVERY === 0) void renewTeamSlot(ctx.redis, data.team, jobId).catch(() => undefined);
    }, CANCEL_POLL_MS);
    try {
      const result = await runLayerJob(ctx, data, jobId, running, events);
      ctx.metrics.jobs.inc({ queue: 'layer', outcome: result.outcome });
      ctx.metrics.lookups.inc({ ...lookupOf(result, data), team: data.team, pool: ctx.pool });
      return result;
    } catch (e) {
      throw await settleFailure(ctx, job, token, data, running, events, e);
    } finally {
      clearInterval(watch);
      unfollow();
      ctx.jobs.remove(jobId);
      ctx.metrics.busy.set(ctx.jobs.busy);
      await giveBackTeamSlot(ctx.redis, data.team, jobId).catch(() => undefined);
      await events.close();
      // Before BullMQ queues the next layer: say what this worker holds now, and that it is free.
      await ctx.announce().catch(() => undefined);
      ctx.evictSoon();
    }
  };
}

/** Whether the job's layer is in the shared store already or claimed by another job (so the job builds nothing). */
async function needsNoChain(ctx: WorkerContext, data: LayerJobData, jobId: string): Promise<boolean> {
  if (!data.share) return false;
  const holder = await claimHolder(ctx.redis, poolClaimKey(ctx.pool, data.key));
  if (holder !== null && claimJob(holder) !== jobId) return true;
  return (await ctx.viewFor(data.reads).getManifest(data.key).catch(() => null)) !== null;
}

/** How a finished job's layer counts as a cache lookup (see WorkerMetrics.lookups). */
function lookupOf(r: LayerJobResult, data: LayerJobData): { result: 'hit' | 'miss'; source: 'local' | 'shared' } {
  if (r.outcome !== 'built') return { result: 'hit', source: 'shared' };
  if (r.localHit) return { result: 'hit', source: 'local' };
  return { result: 'miss', source: data.share ? 'shared' : 'local' };
}

/** Says how the job ended in the build's events and turns the error into what BullMQ should do. */
async function settleFailure(ctx: WorkerContext, job: Job, token: string | undefined, data: LayerJobData, running: RunningJob, events: JobEvents, e: unknown): Promise<Error> {
  const msg = errorMessage(e);
  const count = (outcome: string) => {
    ctx.metrics.jobs.inc({ queue: 'layer', outcome });
    // A layer that failed for good was a miss (it had to be built); a retried one is counted when it ends.
    if (outcome === 'failed') ctx.metrics.lookups.inc({ result: 'miss', source: data.share ? 'shared' : 'local', team: data.team, pool: ctx.pool });
  };
  switch (running.stop.cause) {
    case 'shutdown':
      await events.job('queued', { message: `handed back to the queue: worker ${ctx.id} is stopping` });
      await job.moveToWait(token);
      count('handed-back');
      return new WaitingError();
    case 'cancelled':
      await events.job('cancelled', { message: 'the build was cancelled' });
      count('cancelled');
      return new UnrecoverableError(`build ${data.buildId} was cancelled`);
    default:
      break;
  }
  if (e instanceof LayerFailedError) {
    await uploadFailedLog(ctx, data, e);
    await events.job('failed', { exitCode: e.exitCode, logTail: e.logTail, message: msg });
    count('failed');
    return new UnrecoverableError(msg);
  }
  if (isUnrecoverable(e)) {
    await events.job('failed', { message: msg });
    count('failed');
    return new UnrecoverableError(msg);
  }
  const attempts = job.opts.attempts ?? 1;
  const last = job.attemptsMade + 1 >= attempts;
  const why = running.stop.cause === 'claim-lost' ? `lost the claim on its layer: ${msg}` : msg;
  await events.job(last ? 'failed' : 'queued', {
    message: last ? why : `attempt ${job.attemptsMade + 1} of ${attempts} failed; it will be retried: ${why}`,
  });
  count(last ? 'failed' : 'retried');
  ctx.log.warn(last ? 'layer job failed' : 'layer job will be retried', { job: job.id, error: why });
  return e instanceof Error ? e : new Error(msg);
}

/**
 * A failed script's log (kept on this worker as `<key>.failed.log`, at most VMLB_LOG_MAX) goes to
 * the shared store beside the build's record, so that "full log in the store" holds for the
 * fleet too (GET /v1/builds/:id/layers/:index/log serves it). A failing upload is logged only.
 */
async function uploadFailedLog(ctx: WorkerContext, data: LayerJobData, e: LayerFailedError): Promise<void> {
  if (!e.logPath) return;
  try {
    await ctx.shared.putFile(storePaths.failedLog(data.buildId, data.index), e.logPath);
  } catch (err) {
    ctx.log.warn('could not upload the failed layer\'s log', { buildId: data.buildId, layer: data.name, error: (err as Error).message });
  }
}

async function runLayerJob(ctx: WorkerContext, data: LayerJobData, jobId: string, running: RunningJob, events: JobEvents): Promise<LayerJobResult> {
  const { redis } = ctx;
  // Already there means in this pool's namespace or a pool it reads: either is a hit for it.
  const shared = ctx.viewFor(data.reads);
  const claimKey = poolClaimKey(ctx.pool, data.key);
  const signal = running.stop.signal;
  running.keys.add(data.key);
  for (const k of data.chain) running.keys.add(k);

  // Already in the shared store, or built meanwhile by another build's job: nothing to do.
  // A # noshare layer never gets there, and is not coordinated: each worker builds its own.
  let lease: ClaimLease | undefined;
  let waited = false;
  while (data.share) {
    if (await shared.getManifest(data.key, { signal })) {
      await events.job('done', { message: waited ? 'built by another build' : 'already in the shared store' });
      return { key: data.key, outcome: waited ? 'waited' : 'shared-hit', worker: ctx.id };
    }
    const got = await ClaimLease.take(redis, claimKey, claimOwner(jobId, ctx.id));
    if (got instanceof ClaimLease) {
      lease = got;
      break;
    }
    if (!waited) await events.job('waiting', { message: `another job (${got.holder.split('|').slice(0, 2).join(' on ')}) is building this layer` });
    waited = true;
    await waitForLayer(shared, redis, data.key, signal, { claimKey });
  }
  const unfollow = running.stop.follow(lease?.signal, 'claim-lost', `the claim on layer ${data.key} was lost`);
  try {
    // Published between our look and our claim: its holder has released it already.
    if (lease && (await shared.getManifest(data.key, { signal }))) {
      await events.job('done', { message: waited ? 'built by another build' : 'already in the shared store' });
      return { key: data.key, outcome: waited ? 'waited' : 'shared-hit', worker: ctx.id };
    }
    const built = await buildAndPush(ctx, data, running, events, lease);
    if (lease) {
      // Waiters look at the claim before the manifest: release after the push, then wake them.
      await lease.release();
      await publishReady(redis, claimKey);
    }
    // Found in this worker's own store (a # noshare layer it built before): a hit, said so in the record.
    await events.job('done', { seconds: built.seconds, bytes: built.bytes, pulledBytes: built.pulledBytes, ...(built.localHit ? { source: 'local' as const } : {}), ...(built.shared ? {} : { message: built.note }) });
    return { key: data.key, outcome: 'built', worker: ctx.id, seconds: built.seconds, bytes: built.bytes, shared: built.shared, localHit: built.localHit };
  } finally {
    unfollow();
    await lease?.release().catch(() => undefined);
  }
}

async function buildAndPush(
  ctx: WorkerContext,
  data: LayerJobData,
  running: RunningJob,
  events: JobEvents,
  lease: ClaimLease | undefined,
): Promise<{ seconds: number; pulledBytes: number; bytes: number; shared: boolean; localHit: boolean; note?: string }> {
  const signal = running.stop.signal;
  const started = performance.now();
  await events.job('building');
  const opened = await openProject(ctx, data, signal);
  try {
    const keyed = opened.keyed;
    const k = keyed[data.index];
    if (!k || k.key !== data.key) {
      throw new VmlbError(
        'KEY_MISMATCH',
        `layer ${data.index} (${data.name}) of project ${data.project}: the job says key ${data.key}, this worker computes ${k ? `${k.key} for ${k.spec.name}` : 'no such layer'} (different engine recipe versions in the fleet?)`,
      );
    }
    checkChain(`layer ${data.name}`, keyed.slice(0, data.index).map((l) => l.key), data.chain);

    const pulled = { bytes: 0 };
    const parent = await ensureChain(ctx, data, keyed, data.index, signal, events, { index: data.index, name: k.spec.name }, pulled);
    let manifest = await trustedLocal(ctx, k.key, events);
    const localHit = manifest !== null;
    if (!manifest) {
      manifest = await buildOne(ctx, data.team, k, data.index, parent, signal, events);
      ctx.metrics.layerSeconds.observe({ kind: k.spec.kind }, (performance.now() - started) / 1000);
    }
    const seconds = Math.round(performance.now() - started) / 1000;
    if (!manifest.share) return { seconds, pulledBytes: pulled.bytes, bytes: manifest.blob.size, shared: false, localHit, note: 'kept on this worker: the layer is # noshare' };

    // Someone else builds this key now (our claim lapsed): let the retry find theirs.
    if (lease && !(await lease.stillOurs())) throw new VmlbError('CLAIM_LOST', `the claim on layer ${k.key} lapsed before it was uploaded`, { retryable: true });
    events.engine({ type: 'layer-step', at: Date.now(), index: data.index, name: k.spec.name, step: 'uploading to the shared store' });
    // Into this pool's namespace; its parent may be in a pool it reads (a platform base).
    const view = ctx.viewFor(data.reads);
    const r = await ctx.shared.push(ctx.store, k.key, {
      signal,
      uncacheable: !manifest.cacheable,
      onRetry: retryStep(events, data.index, k.spec.name),
      findParent: (key) => view.getManifest(key, { signal }),
    });
    if (r.pushed) {
      ctx.metrics.pushedBytes.inc({ object: 'layer' }, r.bytes);
      return { seconds, pulledBytes: pulled.bytes, bytes: r.bytes, shared: true, localHit };
    }
    if (r.reason === 'exists') {
      // Another copy made it first (a lapsed claim): it is the one every worker will use.
      if (r.manifest.blob.sha256 !== manifest.blob.sha256) {
        await ctx.store.remove([k.key]);
        await ctx.shared.pull(ctx.store, k.key, { signal });
      }
      return { seconds, pulledBytes: pulled.bytes, bytes: r.manifest.blob.size, shared: true, localHit };
    }
    // parent-not-shared: built on a # noshare layer; parent-differs cannot happen after ensureChain.
    return { seconds, pulledBytes: pulled.bytes, bytes: manifest.blob.size, shared: false, localHit, note: `kept on this worker: ${r.reason === 'parent-not-shared' ? 'it is built on a # noshare layer' : 'the shared store holds another copy of its parent'}` };
  } finally {
    await opened.close();
  }
}


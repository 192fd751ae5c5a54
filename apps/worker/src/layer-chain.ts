import { rm } from 'node:fs/promises';
import {
  LayerFailedError,
  ProjectError,
  VmlbError,
  buildLayerReporting,
  chooseLayerSource,
  computeKeys,
  hostPathProblems,
  loadProject,
  takeSharedCopy,
  type KeyedLayer,
  type LayerManifest,
  type RetryInfo,
} from '@vmlb/layer-engine';
import { UnrecoverableError } from 'bullmq';
import { extractProject, fetchProject, type PoolStores } from '@vmlb/fleet';
import { STREAM_OUTPUT_LIMITS, type JobEvents } from './job-events.js';
import type { WorkerContext } from './worker-context.js';

/**
 * What a job needs of its project on a worker: the project fetched (through the worker's
 * project cache) and extracted, its layers keyed with the build's nonce, and a parent chain
 * made local — pulled from the shared store, or built here again when it is a `# noshare`
 * layer that lives only on the worker that built it. Used by layer jobs (the chain below their
 * layer) and by flatten jobs (the whole chain, when part of it was never shared).
 */

export interface OpenedProject {
  keyed: KeyedLayer[];
  /** Removes the extracted copy. */
  close(): Promise<void>;
}

/**
 * Fetches, extracts and keys a build's project; close() it when done. A project that names a
 * host path is refused here too (the scheduler refuses it at submission): a job is not trusted
 * to have come from the scheduler.
 */
export async function openProject(ctx: WorkerContext, p: { project: string; nonce: string }, signal: AbortSignal): Promise<OpenedProject> {
  const tarball = await fetchProject(ctx.shared, ctx.projectCache, p.project, { signal });
  const dir = await extractProject(tarball, ctx.workDir, { signal });
  const close = () => rm(dir, { recursive: true, force: true });
  try {
    const project = await loadProject(dir);
    const hostPaths = hostPathProblems(project);
    if (hostPaths.length > 0) throw new ProjectError(`project ${p.project}`, hostPaths);
    return { keyed: computeKeys(project, { nonce: p.nonce }), close };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Throws KEY_MISMATCH unless the worker computes the keys the job was planned with. */
export function checkChain(what: string, computed: string[], planned: string[]): void {
  if (computed.join() !== planned.join()) {
    throw new VmlbError('KEY_MISMATCH', `${what}: the job's chain is not the one this worker computes (${planned.join(', ')} vs ${computed.join(', ')}; different engine recipe versions in the fleet?)`);
  }
}

/** The layer whose job this is, for the progress steps it shows; null for a flatten job (notices only). */
export type StepsFor = { index: number; name: string } | null;

/**
 * Makes layers 0..count-1 local, parent first, and returns the last one's manifest. Each layer's
 * copy is the one the engine's chooseLayerSource picks, as `vmlb build` does: the shared store's
 * (a layer is only usable on the exact parent bytes it was written over), replacing a local copy
 * with other bytes; else this worker's; else, a layer the shared store lacks and this worker has
 * not (# noshare, or built on one), built here from the project.
 */
export async function ensureChain(
  ctx: WorkerContext,
  job: { team: string; reads: readonly string[] },
  keyed: KeyedLayer[],
  count: number,
  signal: AbortSignal,
  events: JobEvents,
  steps: StepsFor,
  /** Counts the bytes of the blobs this worker had to pull for the chain. */
  pulled: { bytes: number } = { bytes: 0 },
): Promise<LayerManifest | null> {
  const { team } = job;
  const view = ctx.viewFor(job.reads);
  let parent: LayerManifest | null = null;
  for (const [j, k] of keyed.slice(0, count).entries()) {
    const fetching = steps && { ...steps, onPull: (pool: string) => events.engine({ type: 'layer-step', at: Date.now(), index: steps.index, name: steps.name, step: `fetching ${k.spec.name} from the shared store${pool !== ctx.pool ? ` (pool ${pool})` : ''}` }) };
    const taken = await takeChainLayer(ctx, view, k.key, parent, signal, events, fetching ?? undefined);
    if (taken) {
      pulled.bytes += taken.pulledBytes;
      parent = taken.manifest;
    } else {
      events.engine({ type: 'notice', at: Date.now(), message: `${k.spec.name} is not in the shared store (# noshare): building it again on worker ${ctx.id}` });
      parent = await buildOne(ctx, team, k, j, parent, signal, events, { quiet: true });
    }
  }
  await ctx.store.touch(keyed.slice(0, count).map((k) => k.key));
  return parent;
}

/**
 * One layer of a chain made local as the engine's chooseLayerSource says, on `parent`: this
 * worker's copy, or the shared store's pulled (replacing a local copy with other bytes; its
 * bytes counted in `pulledBytes`); null when neither is usable (the caller builds it, or says
 * it cannot). `steps`: the job's layer, whose progress steps say the pull.
 */
export async function takeChainLayer(
  ctx: WorkerContext,
  view: PoolStores,
  key: string,
  parent: LayerManifest | null,
  signal: AbortSignal,
  events: JobEvents,
  steps?: { index: number; name: string; onPull: (pool: string) => void },
): Promise<{ manifest: LayerManifest; pulledBytes: number } | null> {
  // This pool's copy, else a trusted pool's (read only): the one the build's keys were planned on.
  const hit = await view.find(key, { signal });
  const source = chooseLayerSource(await trustedLocal(ctx, key, events), hit?.manifest, parent);
  if (source.from === 'build') return null;
  if (source.from === 'local') return { manifest: source.manifest, pulledBytes: 0 };
  steps?.onPull(hit!.pool);
  const manifest = await takeSharedCopy(ctx.store, hit!.store, key, source.replacesLocal, { signal, ...(steps ? { onRetry: retryStep(events, steps.index, steps.name) } : {}) });
  ctx.metrics.pulledBytes.inc({ object: 'layer' }, manifest.blob.size);
  return { manifest, pulledBytes: manifest.blob.size };
}

/**
 * A job of another pool: refused for good (a worker takes only its pool's queues, so only a
 * forged or misrouted job gets here), naming both pools.
 */
export function refuseOtherPool(ctx: WorkerContext, data: { pool: string; buildId: string }, job: { id?: string }): void {
  if (data.pool === ctx.pool) return;
  throw new UnrecoverableError(`job ${job.id ?? '?'} of build ${data.buildId} is of pool ${data.pool}; worker ${ctx.id} serves pool ${ctx.pool} only: refused`);
}

/**
 * This worker's copy of a layer when its blob passes the store's check (its seal; see
 * LocalStore.checkBlob), else null: a corrupt copy is removed (with what was built on it) and
 * said, and the layer is fetched or built again.
 */
export function trustedLocal(ctx: WorkerContext, key: string, events: JobEvents): Promise<LayerManifest | null> {
  return ctx.store.trustedManifest(key, 'seal', (c) =>
    events.engine({ type: 'notice', at: Date.now(), message: `worker ${ctx.id}: its copy of layer ${c.name} (${c.key.slice(0, 12)}) is corrupt: ${c.reason}; removed it and ${c.removed.length - 1} built on it` }),
  );
}

/**
 * The engine's buildLayer with its events, sandboxed as the team's layers are on this worker;
 * only a script's failure is a layer-failed (others are retried).
 */
export function buildOne(
  ctx: WorkerContext,
  team: string,
  k: KeyedLayer,
  index: number,
  parent: LayerManifest | null,
  signal: AbortSignal,
  events: JobEvents,
  o: { quiet?: boolean } = {},
): Promise<LayerManifest> {
  return buildLayerReporting({
    store: ctx.store,
    backend: ctx.backend,
    sandbox: ctx.sandboxFor(team),
    index,
    layer: k,
    parent,
    signal,
    emit: o.quiet ? () => {} : (e) => events.engine(e),
    isFailure: (e) => e instanceof LayerFailedError,
    outputLimits: STREAM_OUTPUT_LIMITS,
    ...ctx.layerRun,
  });
}

export function retryStep(events: JobEvents, index: number, name: string): (r: RetryInfo) => void {
  return (r) =>
    events.engine({ type: 'layer-step', at: Date.now(), index, name, step: `${r.what}: retry ${r.attempt}/${r.tries - 1} in ${(r.delayMs / 1000).toFixed(1)}s (${r.error})` });
}

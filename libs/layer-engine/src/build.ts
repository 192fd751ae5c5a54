import { randomUUID } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { AbortedError, VmlbError } from './errors.js';
import type { BuildEvent, BuildEventSink, PlannedLayer } from './events.js';
import { describeSweep, sweep } from './attach-state.js';
import { chooseBackend } from './backends.js';
import { FuseDaemon } from './fuse-daemon.js';
import { computeKeys, type KeyedLayer } from './cache-key.js';
import { diffInputs } from './input-diff.js';
import { buildLayer } from './layer-builder.js';
import { loadProject, OUTPUT_DIR } from './layer-project.js';
import { LocalStore, type LayerManifest } from './local-store.js';
import { convert, createOverlay, isPristineOverlayOn } from './qemu-img.js';
import type { ImageProject } from './types.js';

/** The local store's size cap when none is given: 20 GiB. */
export const DEFAULT_STORE_CAP = 20 * 1024 ** 3;

export interface BuildOptions {
  projectDir: string;
  /** @default new LocalStore() (VMLB_STORE or ~/.cache/vmlb) */
  store?: LocalStore;
  /** @default 'auto' (nbd where /dev/nbd0 exists, else fuse) */
  backend?: 'auto' | 'fuse' | 'nbd';
  /** @default <projectDir>/build/image.qcow2 */
  output?: string;
  /** Write one standalone qcow2 instead of a thin overlay on the chain. */
  flatten?: boolean;
  /** qcow2 compatibility of the output; '0.10' implies flatten (the chain's blobs are 1.1). */
  compat?: '0.10' | '1.1';
  /** Stop after this layer (its folder name). */
  last?: string;
  /** @default DEFAULT_STORE_CAP */
  storeCapBytes?: number;
  signal?: AbortSignal;
  onEvent?: BuildEventSink;
}

export interface BuildResult {
  image: string;
  chain: string[];
  layers: PlannedLayer[];
  built: number;
  cached: number;
  seconds: number;
}

export interface Plan {
  project: ImageProject;
  keyed: KeyedLayer[];
  layers: PlannedLayer[];
  manifests: Map<string, LayerManifest>;
}

/** Releases what a killed earlier run left attached, and its half-built blobs. */
export async function startupSweep(store: LocalStore): Promise<string | null> {
  const report = await sweep();
  const tmp = await store.sweepTemp();
  const parts = [describeSweep(report), tmp ? `removed ${tmp} half-built blob${tmp === 1 ? '' : 's'}` : null].filter(Boolean);
  return parts.length ? `cleaned up after an interrupted run: ${parts.join('; ')}` : null;
}

/** Reads the project, computes every key and says, for each layer, hit or miss and why. */
export async function planBuild(opts: { projectDir: string; store: LocalStore; last?: string; nonce?: string }): Promise<Plan> {
  const project = await loadProject(opts.projectDir);
  if (opts.last !== undefined) {
    const i = project.layers.findIndex((l) => l.name === opts.last);
    if (i < 0) {
      throw new VmlbError('NO_SUCH_LAYER', `--last ${opts.last}: the project has no such layer; its layers are ${project.layers.map((l) => l.name).join(', ')}`);
    }
    project.layers = project.layers.slice(0, i + 1);
  }
  const keyed = computeKeys(project, { nonce: opts.nonce ?? randomUUID() });
  const manifests = new Map<string, LayerManifest>();
  const layers: PlannedLayer[] = await Promise.all(
    keyed.map(async (k, index) => {
      const m = k.cacheable ? await opts.store.getManifest(k.key) : null;
      if (m) manifests.set(k.key, m);
      const base = { index, name: k.spec.name, kind: k.spec.kind, key: k.key, cacheable: k.cacheable };
      if (m) return { ...base, status: 'hit' as const, source: 'local' as const };
      const previous = await opts.store.lastInputs(project.dir, k.spec.name);
      return { ...base, status: 'miss' as const, changes: diffInputs(previous, k.inputs, { uncacheable: !k.cacheable }) };
    }),
  );
  // A hit after a miss cannot happen (keys chain), except for an identical parent key: then
  // the store has the layer and it really is a hit.
  return { project, keyed, layers, manifests };
}

/**
 * `vmlb build`: plan, take the hits, build the misses in order, write the output. Stages are
 * named after what they do; a failure leaves every layer published before it in the store.
 */
export async function build(opts: BuildOptions): Promise<BuildResult> {
  const started = performance.now();
  const emit = (e: BuildEvent) => opts.onEvent?.(e);
  const store = opts.store ?? new LocalStore();
  const flatten = opts.flatten || opts.compat === '0.10';
  try {
    await store.init();
    const swept = await startupSweep(store);
    if (swept) emit({ type: 'notice', at: Date.now(), message: swept });

    const plan = await planBuild({ projectDir: opts.projectDir, store, last: opts.last });
    const output = path.resolve(opts.output ?? path.join(plan.project.dir, OUTPUT_DIR, 'image.qcow2'));
    emit({ type: 'plan', at: Date.now(), project: plan.project.dir, layers: plan.layers, total: plan.layers.length });

    const chain = await takeHitsAndBuildMissing(plan, store, opts, emit);

    const outStarted = performance.now();
    const top = chain[chain.length - 1]!;
    const bytes = await writeOutput(store, top, output, { flatten, compat: opts.compat, signal: opts.signal, emit });
    await retireOldChain(store, output, flatten ? [] : chain);
    emit({ type: 'output', at: Date.now(), path: output, flattened: flatten, seconds: (performance.now() - outStarted) / 1000, bytes });

    await store.evict(opts.storeCapBytes ?? DEFAULT_STORE_CAP, chain);
    const built = plan.layers.filter((l) => l.status === 'miss').length;
    const seconds = (performance.now() - started) / 1000;
    emit({ type: 'done', at: Date.now(), built, cached: plan.layers.length - built, seconds, image: output });
    return { image: output, chain, layers: plan.layers, built, cached: plan.layers.length - built, seconds };
  } catch (e) {
    const err = opts.signal?.aborted && !(e instanceof AbortedError) ? new AbortedError() : e;
    const code = err instanceof VmlbError ? err.code : 'INTERNAL';
    emit({ type: 'failed', at: Date.now(), message: (err as Error).message, code, seconds: (performance.now() - started) / 1000 });
    throw err;
  } finally {
    // The disks of this build are all released; the daemon that served them goes too.
    await FuseDaemon.shutdown();
  }
}

async function takeHitsAndBuildMissing(plan: Plan, store: LocalStore, opts: BuildOptions, emit: (e: BuildEvent) => void): Promise<string[]> {
  const chain: string[] = [];
  let parent: LayerManifest | null = null;
  let backend: Awaited<ReturnType<typeof chooseBackend>> | undefined;
  for (const [i, k] of plan.keyed.entries()) {
    if (opts.signal?.aborted) throw new AbortedError();
    let manifest = plan.manifests.get(k.key);
    if (manifest) {
      emit({ type: 'layer-cached', at: Date.now(), index: i, name: k.spec.name, key: k.key, source: 'local', bytes: manifest.blob.size });
    } else {
      backend ??= await chooseBackend(opts.backend ?? 'auto');
      const layerStarted = performance.now();
      emit({ type: 'layer-start', at: Date.now(), index: i, name: k.spec.name, kind: k.spec.kind, key: k.key });
      try {
        manifest = await buildLayer({
          store,
          backend,
          spec: k.spec,
          key: k.key,
          inputs: k.inputs,
          cacheable: k.cacheable,
          parent,
          signal: opts.signal,
          onOutput: (chunk) => emit({ type: 'layer-log', at: Date.now(), index: i, name: k.spec.name, chunk }),
          onStep: (step) => emit({ type: 'layer-step', at: Date.now(), index: i, name: k.spec.name, step }),
        });
      } catch (e) {
        const err = e as Error & { exitCode?: number; timedOut?: boolean; logPath?: string; logTail?: string };
        emit({
          type: 'layer-failed',
          at: Date.now(),
          index: i,
          name: k.spec.name,
          key: k.key,
          seconds: (performance.now() - layerStarted) / 1000,
          message: err.message,
          exitCode: err.exitCode,
          timedOut: err.timedOut ?? false,
          logPath: err.logPath ?? '',
          logTail: err.logTail ?? '',
        });
        throw e;
      }
      emit({ type: 'layer-done', at: Date.now(), index: i, name: k.spec.name, key: k.key, seconds: (performance.now() - layerStarted) / 1000, bytes: manifest.blob.size });
    }
    await store.recordInputs(plan.project.dir, k.spec.name, k.key, k.inputs);
    chain.push(k.key);
    parent = manifest;
  }
  await store.touch(chain);
  return chain;
}

/**
 * The output: a thin overlay on the chain's top (milliseconds; backing by absolute path so
 * it works from anywhere, and writes to it never reach a cached layer), or a flattened copy.
 * Written to a temporary name and renamed, so a failure never leaves half an image.
 */
async function writeOutput(
  store: LocalStore,
  top: string,
  output: string,
  o: { flatten: boolean; compat?: '0.10' | '1.1'; signal?: AbortSignal; emit: (e: BuildEvent) => void },
): Promise<number> {
  await mkdir(path.dirname(output), { recursive: true });
  const tmp = `${output}.tmp-${process.pid}`;
  try {
    if (o.flatten) {
      await convert(store.blobPath(top), tmp, { compat: o.compat, signal: o.signal });
    } else if (await isPristineOverlayOn(output, store.blobPath(top))) {
      // Already what this build would write (a no-op rebuild): keep it, saving a qemu-img.
      return (await stat(output)).size;
    } else {
      await createOverlay(tmp, store.blobPath(top), { signal: o.signal });
    }
    await rename(tmp, output);
  } finally {
    await rm(tmp, { force: true });
  }
  return (await stat(output)).size;
}

/**
 * Pins the output's chain so eviction keeps it, and drops the uncacheable layers (`# nocache`
 * and after) of the chain the output referenced before: no other build can ever use them.
 */
async function retireOldChain(store: LocalStore, output: string, chain: string[]): Promise<void> {
  const old = await store.readPin(output);
  if (chain.length) await store.pin(output, chain);
  else await store.unpin(output);
  if (!old) return;
  const now = new Set(chain);
  const stale: string[] = [];
  for (const k of old.chain) {
    if (now.has(k)) continue;
    const m = await store.getManifest(k);
    if (m && !m.cacheable) stale.push(k);
  }
  if (stale.length) await store.remove(stale);
}

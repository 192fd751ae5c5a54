import path from 'node:path';
import { AbortedError, VmlbError } from '../errors.js';
import type { BuildEvent, BuildEventSink, PlannedLayer } from './events.js';
import { chooseBackend } from '../disk/backends.js';
import { writeOutput, retireOldChain } from './build-output.js';
import { planBuild, type Plan } from './build-plan.js';
import { FuseDaemon } from '../disk/fuse-daemon.js';
import type { KeyedLayer } from '../project/cache-key.js';
import type { LayerSandbox } from './layer-build-context.js';
import { claimLayer } from './layer-claim.js';
import { legacyNeedsNbd } from './legacy-modify-disk.js';
import type { LayerManifest } from '../store/layer-manifest.js';
import { buildLayerReporting, layerSandbox } from './layer-reporting.js';
import { OUTPUT_DIR } from '../project/layer-project.js';
import type { LocalStore } from '../store/local-store.js';
import type { SandboxOptions } from './sandbox.js';
import { pullSharedHit, pushLayer, recordSharedUse, sharedUse, type SharedUse } from './shared-use.js';
import type { SharedStore } from '../store/shared-store.js';
import { startupSweep } from './startup-sweep.js';

/** The local store's size cap when none is given: 20 GiB. */
export const DEFAULT_STORE_CAP = 20 * 1024 ** 3;

export interface BuildOptions {
  projectDir: string;
  /** The local store (the apps' default: `new LocalStore(defaultStoreDir(process.env))`). */
  store: LocalStore;
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
  /**
   * A shared store (`--cache s3://…`): a layer missing locally is pulled from it; a layer built
   * here, or found here and missing there, is pushed to it unless it is `# noshare` or
   * `# nocache` (or built on one). It never fails the build: when it does not answer, or a
   * push fails, the build goes on with the local store and says so in a notice.
   */
  shared?: SharedStore;
  /** How layer scripts are confined. @default sandboxed, with the host's and link-local addresses denied */
  sandbox?: SandboxOptions;
  /** See LayerBuildContext.logMax. @default LOG_MAX_DEFAULT (the CLI passes VMLB_LOG_MAX) */
  logMax?: number;
  /** See LayerBuildContext.passEnv. @default {} (the CLI passes the host's proxy settings: proxyEnv) */
  passEnv?: Record<string, string>;
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

type Emit = (e: BuildEvent) => void;

/**
 * `vmlb build`: plan, take the hits, build the misses in order, write the output. Stages are
 * named after what they do; a failure leaves every layer published before it in the store.
 */
export async function build(opts: BuildOptions): Promise<BuildResult> {
  const started = performance.now();
  const emit: Emit = (e) => opts.onEvent?.(e);
  const { store } = opts;
  const flatten = opts.flatten || opts.compat === '0.10';
  let releaseActive: (() => Promise<void>) | undefined;
  try {
    await store.init();
    const swept = await startupSweep(store);
    if (swept) emit({ type: 'notice', at: Date.now(), message: swept });

    const planned = await planAndMarkActive(opts, flatten, emit);
    const plan = planned.plan;
    releaseActive = planned.releaseActive;

    const chain = await takeHitsAndBuildMissing(plan, opts, emit);

    const outStarted = performance.now();
    const output = path.resolve(opts.output ?? path.join(plan.project.dir, OUTPUT_DIR, 'image.qcow2'));
    const bytes = await writeOutput(store, chain[chain.length - 1]!, output, { flatten, compat: opts.compat, signal: opts.signal, emit });
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
    await releaseActive?.();
  }
}

/**
 * Plans the build and marks its chain active, so that gc and eviction leave it alone from
 * then on; says what planning found (repairs, the shared store's state, the sandbox) and the plan.
 */
async function planAndMarkActive(opts: BuildOptions, flatten: boolean, emit: Emit): Promise<{ plan: Plan; releaseActive: () => Promise<void> }> {
  const { store } = opts;
  // A flatten makes a standalone image of the chain's bytes: every local hit is hashed whole first.
  const planOpts = { projectDir: opts.projectDir, store, shared: opts.shared, last: opts.last, verify: flatten ? ('full' as const) : ('seal' as const) };
  let plan = await planBuild(planOpts);
  for (const p of plan.problems) emit({ type: 'notice', at: Date.now(), message: p });
  const releaseActive = await store.markActive(plan.keyed.map((k) => k.key), `vmlb build ${plan.project.dir}`);
  try {
    // A gc that removed a hit between planning and this record is caught by planning again.
    if (await hitsVanished(store, plan)) plan = await planBuild(planOpts);
    if (opts.shared && !plan.sharedProblem) await recordSharedUse(opts.shared, plan, emit);
  } catch (e) {
    await releaseActive();
    throw e;
  }
  if (plan.sharedProblem) emit({ type: 'notice', at: Date.now(), message: plan.sharedProblem });
  if (opts.sandbox?.enabled === false) {
    emit({ type: 'notice', at: Date.now(), message: 'sandbox off (--no-sandbox, VMLB_SANDBOX=0): layer scripts run unconfined, as root of this host' });
  }
  emit({ type: 'plan', at: Date.now(), project: plan.project.dir, layers: plan.layers, total: plan.layers.length });
  return { plan, releaseActive };
}

/** Whether a local hit of the plan is gone (a gc ran between planning and marking the build active). */
async function hitsVanished(store: LocalStore, plan: Plan): Promise<boolean> {
  for (const l of plan.layers) if (l.status === 'hit' && l.source === 'local' && !(await store.getManifest(l.key))) return true;
  return false;
}

/** What building a chain's misses needs, made on the first miss (an all-hits build needs none of it). */
interface Builder {
  backend?: Awaited<ReturnType<typeof chooseBackend>>;
  sandbox?: LayerSandbox | null;
}

/** Each layer in order: its hit taken (pulled when shared), or built; pushed when shared. Returns the chain's keys. */
async function takeHitsAndBuildMissing(plan: Plan, opts: BuildOptions, emit: Emit): Promise<string[]> {
  const shared = sharedUse(opts.shared, plan);
  const chain: string[] = [];
  let parent: LayerManifest | null = null;
  const builder: Builder = {};
  // A modify-disk of the original's contract runs on nbd only: say so before anything builds.
  const legacy = plan.keyed.find((k, i) => k.spec.hints.legacyArgs && plan.layers[i]!.status !== 'hit');
  if (legacy) {
    builder.backend = await chooseBackend(opts.backend ?? 'auto');
    if (builder.backend.name !== 'nbd') throw legacyNeedsNbd(legacy.spec.name, builder.backend.name);
  }
  for (const [i, k] of plan.keyed.entries()) {
    if (opts.signal?.aborted) throw new AbortedError();
    const manifest = await takeLayer(plan, i, k, parent, shared, builder, opts, emit);
    if (shared && plan.layers[i]!.source !== 'shared') await pushLayer(shared, opts.store, plan.layers[i]!, manifest, opts.signal, emit);
    await opts.store.recordInputs(plan.project.dir, k.spec.name, k.key, k.inputs);
    chain.push(k.key);
    parent = manifest;
  }
  await opts.store.touch(chain);
  return chain;
}

/** One layer of the chain: the planned hit (a shared one pulled), else the layer another build just made, else built here. */
async function takeLayer(
  plan: Plan,
  i: number,
  k: KeyedLayer,
  parent: LayerManifest | null,
  shared: SharedUse | undefined,
  builder: Builder,
  opts: BuildOptions,
  emit: Emit,
): Promise<LayerManifest> {
  const { store } = opts;
  const planned = plan.layers[i]!;
  let manifest = plan.manifests.get(k.key);
  if (manifest && planned.source === 'shared') {
    const replacesLocal = plan.replacesLocal.has(k.key);
    manifest = await pullSharedHit(shared!, store, { index: i, name: k.spec.name, key: k.key }, manifest, { parent, replacesLocal, signal: opts.signal, emit });
    // Not usable after all: built here like any miss, and counted as one.
    if (!manifest) plan.layers[i] = { ...planned, status: 'miss', source: undefined };
  }
  if (manifest) {
    emit({ type: 'layer-cached', at: Date.now(), index: i, name: k.spec.name, key: k.key, source: planned.source ?? 'local', bytes: manifest.blob.size });
    return manifest;
  }
  // Another build of this store may be building the same key right now: wait for it and
  // take its layer, as workers do with their claims (a # nocache key is this build's own).
  const release = k.cacheable ? await claimLayer(store, { name: k.spec.name, key: k.key }, opts.signal, emit) : async () => {};
  try {
    const theirs = k.cacheable ? await store.getManifest(k.key) : null;
    if (theirs) {
      plan.layers[i] = { ...planned, status: 'hit', source: 'local' };
      emit({ type: 'layer-cached', at: Date.now(), index: i, name: k.spec.name, key: k.key, source: 'local', bytes: theirs.blob.size });
      return theirs;
    }
    builder.backend ??= await chooseBackend(opts.backend ?? 'auto');
    builder.sandbox ??= await layerSandbox(opts.sandbox, store);
    return await buildLayerReporting({
      store,
      backend: builder.backend,
      sandbox: builder.sandbox ?? undefined,
      index: i,
      layer: k,
      parent,
      signal: opts.signal,
      emit,
      keepFailed: true,
      logMax: opts.logMax,
      passEnv: opts.passEnv,
    });
  } finally {
    await release();
  }
}

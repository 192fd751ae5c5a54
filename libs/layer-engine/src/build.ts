import { randomUUID } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { AbortedError, VmlbError } from './errors.js';
import type { BuildEvent, BuildEventSink, PlannedLayer } from './events.js';
import { describeSweep, readLockOwner, sweep, tryLock, unlock } from './attach-state.js';
import { chooseBackend } from './backends.js';
import { FuseDaemon } from './fuse-daemon.js';
import { computeKeys, type KeyedLayer } from './cache-key.js';
import { diffInputs } from './input-diff.js';
import { buildLayer, legacyNeedsNbd, type LayerSandbox } from './layer-builder.js';
import { removeShellOrphans } from './layer-shell.js';
import { cacheMountsDir, checkSandboxTools, type SandboxOptions } from './sandbox.js';
import { loadProject, OUTPUT_DIR } from './layer-project.js';
import { LocalStore, type LayerManifest } from './local-store.js';
import { convert, createOverlay, isPristineOverlayOn } from './qemu-img.js';
import { SharedBlobMismatchError, type RetryInfo, type SharedStore } from './shared-store.js';
import { writeUseRecord } from './shared-gc.js';
import { formatBytes } from './sizes.js';
import { freeBytes, isNoSpace } from './store-space.js';
import type { ImageProject } from './types.js';
import type { OutputLimits } from './output-limits.js';

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
  /**
   * A shared store (`--cache s3://…`): a layer missing locally is pulled from it; a layer built
   * here, or found here and missing there, is pushed to it unless it is `# noshare` or
   * `# nocache` (or built on one). It never fails the build: when it does not answer, or a
   * push fails, the build goes on with the local store and says so in a notice.
   */
  shared?: SharedStore;
  /** How layer scripts are confined. @default sandboxed, with the host's and link-local addresses denied */
  sandbox?: SandboxOptions;
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
  /** The shared store's manifests of this build's keys, when a shared store was given and answered. */
  shared?: Map<string, LayerManifest>;
  /** Why the shared store is left out of this build (it failed to answer while planning). */
  sharedProblem?: string;
  /** What planning found wrong in the local store and repaired (corrupt layers removed). */
  problems: string[];
}

/** Releases what a killed earlier run left attached, and its half-built blobs. */
export async function startupSweep(store: LocalStore): Promise<string | null> {
  const report = await sweep();
  const tmp = await store.sweepTemp();
  const orphans = await store.sweepOrphans();
  const sessions = await removeShellOrphans();
  const parts = [
    describeSweep(report),
    tmp ? `removed ${tmp} half-built blob${tmp === 1 ? '' : 's'}` : null,
    sessions ? `removed ${sessions} vmlb shell session folder${sessions === 1 ? '' : 's'}` : null,
    orphans.files ? `removed ${orphans.files} file${orphans.files === 1 ? '' : 's'} no layer owns (${formatBytes(orphans.bytes)})` : null,
  ].filter(Boolean);
  return parts.length ? `cleaned up after an interrupted run: ${parts.join('; ')}` : null;
}

/**
 * Reads the project, computes every key and says, for each layer, hit or miss and why. With a
 * shared store, a layer missing locally but there (on the parent this build will have) is a hit
 * with source 'shared'.
 */
/** Where planning looks a layer up besides the local store: a SharedStore, or a fleet pool's view of several. */
export interface SharedLookup {
  getManifest(key: string): Promise<LayerManifest | null>;
}

export async function planBuild(opts: {
  projectDir: string;
  store: LocalStore;
  shared?: SharedLookup;
  last?: string;
  nonce?: string;
  /**
   * How a local hit's blob is checked (LocalStore.checkBlob): its seal (constant cost, the
   * default) or its whole bytes (a flatten). A corrupt layer is removed with what was built
   * on it, said in `problems`, and planned as a miss.
   */
  verify?: 'seal' | 'full';
}): Promise<Plan> {
  const project = await loadProject(opts.projectDir);
  if (opts.last !== undefined) {
    const i = project.layers.findIndex((l) => l.name === opts.last);
    if (i < 0) {
      throw new VmlbError('NO_SUCH_LAYER', `--last ${opts.last}: the project has no such layer; its layers are ${project.layers.map((l) => l.name).join(', ')}`);
    }
    project.layers = project.layers.slice(0, i + 1);
  }
  const keyed = computeKeys(project, { nonce: opts.nonce ?? randomUUID() });
  const corrupt: string[] = [];
  const gone = new Set<string>();
  const [local, shared] = await Promise.all([
    lookUp(keyed, (key) =>
      opts.store.trustedManifest(key, opts.verify ?? 'seal', (c) => {
        for (const k of c.removed) gone.add(k);
        const more = c.removed.length - 1;
        corrupt.push(`layer ${c.name} (${c.key.slice(0, 12)}) is corrupt in the local store: ${c.reason}; removed it${more > 0 ? ` and the ${more} layer${more === 1 ? '' : 's'} built on it` : ''}, building it again`);
      }),
    ),
    opts.shared ? lookUpShared(opts.shared, keyed) : undefined,
  ]);
  // Layers built on a corrupt one went with it, even when their own check had passed.
  for (const k of gone) local.delete(k);
  const manifests = new Map<string, LayerManifest>();
  const sources: Array<'local' | 'shared' | undefined> = keyed.map((k, index) => {
    const parent = index === 0 ? null : manifests.get(keyed[index - 1]!.key);
    const fromShared = usableSharedLayer(shared?.found?.get(k.key), parent);
    const m = local.get(k.key) ?? fromShared;
    if (m) manifests.set(k.key, m);
    return local.has(k.key) ? 'local' : fromShared ? 'shared' : undefined;
  });
  const layers: PlannedLayer[] = await Promise.all(
    keyed.map(async (k, index) => {
      const base = { index, name: k.spec.name, kind: k.spec.kind, key: k.key, cacheable: k.cacheable };
      const source = sources[index];
      if (source) return { ...base, status: 'hit' as const, source };
      const previous = await opts.store.lastInputs(project.dir, k.spec.name);
      return { ...base, status: 'miss' as const, changes: diffInputs(previous, k.inputs, { uncacheable: !k.cacheable }) };
    }),
  );
  // A local hit after a miss cannot happen (keys chain), except for an identical parent key:
  // then the store has the layer and it really is a hit.
  return { project, keyed, layers, manifests, shared: shared?.found, sharedProblem: shared?.problem, problems: corrupt };
}

/** The manifests of the cacheable keys that `get` finds. */
async function lookUp(keyed: KeyedLayer[], get: (key: string) => Promise<LayerManifest | null>): Promise<Map<string, LayerManifest>> {
  const found = await Promise.all(keyed.filter((k) => k.cacheable).map(async (k) => [k.key, await get(k.key)] as const));
  return new Map(found.filter((e): e is readonly [string, LayerManifest] => e[1] !== null));
}

/** The shared store's manifests, or why it cannot be used: an outage must not fail a local build. */
async function lookUpShared(shared: SharedLookup, keyed: KeyedLayer[]): Promise<{ found?: Map<string, LayerManifest>; problem?: string }> {
  try {
    return { found: await lookUp(keyed, (key) => shared.getManifest(key)) };
  } catch (e) {
    return { problem: `the shared store is unavailable; building with the local store only: ${(e as Error).message}` };
  }
}

/**
 * A shared layer can be used only on its parent as this build will have it (`undefined`: the
 * parent is a miss and will be rebuilt), and only when that parent has the very bytes the
 * layer's overlay was written on.
 */
function usableSharedLayer(m: LayerManifest | undefined, parent: LayerManifest | null | undefined): LayerManifest | undefined {
  if (!m || parent === undefined) return undefined;
  if (parent && m.parentSha256 && m.parentSha256 !== parent.blob.sha256) return undefined;
  return m;
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
  let releaseActive: (() => Promise<void>) | undefined;
  try {
    await store.init();
    const swept = await startupSweep(store);
    if (swept) emit({ type: 'notice', at: Date.now(), message: swept });

    // A flatten makes a standalone image of the chain's bytes: every local hit is hashed whole first.
    const verify = flatten ? 'full' : 'seal';
    let plan = await planBuild({ projectDir: opts.projectDir, store, shared: opts.shared, last: opts.last, verify });
    for (const p of plan.problems) emit({ type: 'notice', at: Date.now(), message: p });
    // From here on gc and eviction leave this build's chain alone. A gc that removed a hit
    // between planning and this record is caught by planning again.
    releaseActive = await store.markActive(plan.keyed.map((k) => k.key), `vmlb build ${plan.project.dir}`);
    if (await hitsVanished(store, plan)) plan = await planBuild({ projectDir: opts.projectDir, store, shared: opts.shared, last: opts.last, verify });
    if (opts.shared && !plan.sharedProblem) await recordSharedUse(opts.shared, plan, emit);
    const output = path.resolve(opts.output ?? path.join(plan.project.dir, OUTPUT_DIR, 'image.qcow2'));
    if (plan.sharedProblem) emit({ type: 'notice', at: Date.now(), message: plan.sharedProblem });
    if (opts.sandbox?.enabled === false) {
      emit({ type: 'notice', at: Date.now(), message: 'sandbox off (--no-sandbox, VMLB_SANDBOX=0): layer scripts run unconfined, as root of this host' });
    }
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
    await releaseActive?.();
  }
}

/** Whether a local hit of the plan is gone (a gc ran between planning and marking the build active). */
async function hitsVanished(store: LocalStore, plan: Plan): Promise<boolean> {
  for (const l of plan.layers) if (l.status === 'hit' && l.source === 'local' && !(await store.getManifest(l.key))) return true;
  return false;
}

/**
 * Tells the shared store that this build uses its chain (`uses/…`, see shared-gc.ts): what
 * `vmlb gc --shared` keeps. Best effort: a failure is a notice.
 */
async function recordSharedUse(shared: SharedStore, plan: Plan, emit: (e: BuildEvent) => void): Promise<void> {
  try {
    await writeUseRecord(shared, plan.keyed.filter((k) => k.cacheable).map((k) => k.key), { project: plan.project.dir });
  } catch (e) {
    emit({ type: 'notice', at: Date.now(), message: `could not record this build's use of the shared store (gc --shared may prune its layers): ${(e as Error).message}` });
  }
}

async function takeHitsAndBuildMissing(plan: Plan, store: LocalStore, opts: BuildOptions, emit: (e: BuildEvent) => void): Promise<string[]> {
  const shared: SharedUse | undefined = opts.shared && plan.shared ? { store: opts.shared, found: plan.shared, corrupt: new Set(), down: false } : undefined;
  const chain: string[] = [];
  let parent: LayerManifest | null = null;
  let backend: Awaited<ReturnType<typeof chooseBackend>> | undefined;
  let sandbox: LayerSandbox | null | undefined;
  // A modify-disk of the original's contract runs on nbd only: say so before anything builds.
  const legacy = plan.keyed.find((k, i) => k.spec.hints.legacyArgs && plan.layers[i]!.status !== 'hit');
  if (legacy) {
    backend = await chooseBackend(opts.backend ?? 'auto');
    if (backend.name !== 'nbd') throw legacyNeedsNbd(legacy.spec.name, backend.name);
  }
  for (const [i, k] of plan.keyed.entries()) {
    if (opts.signal?.aborted) throw new AbortedError();
    const planned = plan.layers[i]!;
    let manifest = plan.manifests.get(k.key);
    if (manifest && planned.source === 'shared') {
      manifest = await pullSharedHit(shared!, store, { index: i, name: k.spec.name, key: k.key }, manifest, parent, opts.signal, emit);
      // Not usable after all: built here like any miss, and counted as one.
      if (!manifest) plan.layers[i] = { ...planned, status: 'miss', source: undefined };
    }
    if (manifest) {
      emit({ type: 'layer-cached', at: Date.now(), index: i, name: k.spec.name, key: k.key, source: planned.source ?? 'local', bytes: manifest.blob.size });
    } else {
      // Another build of this store may be building the same key right now: wait for it and
      // take its layer, as workers do with their claims (a # nocache key is this build's own).
      const release = k.cacheable ? await claimLayer(store, { name: k.spec.name, key: k.key }, opts.signal, emit) : async () => {};
      try {
        manifest = k.cacheable ? ((await store.getManifest(k.key)) ?? undefined) : undefined;
        if (manifest) {
          plan.layers[i] = { ...planned, status: 'hit', source: 'local' };
          emit({ type: 'layer-cached', at: Date.now(), index: i, name: k.spec.name, key: k.key, source: 'local', bytes: manifest.blob.size });
        } else {
          backend ??= await chooseBackend(opts.backend ?? 'auto');
          sandbox ??= await layerSandbox(opts.sandbox, store);
          manifest = await buildLayerReporting({ store, backend, sandbox: sandbox ?? undefined, index: i, layer: k, parent, signal: opts.signal, emit, keepFailed: true });
        }
      } finally {
        await release();
      }
    }
    if (shared && plan.layers[i]!.source !== 'shared') await pushLayer(shared, store, plan.layers[i]!, manifest, opts.signal, emit);
    await store.recordInputs(plan.project.dir, k.spec.name, k.key, k.inputs);
    chain.push(k.key);
    parent = manifest;
  }
  await store.touch(chain);
  return chain;
}

/** How often a build waiting for another build's claim on a layer looks again. */
const CLAIM_POLL_MS = 200;

/**
 * Takes this store's claim on a layer key (`claims/<key>.lock`, naming this process; a dead
 * holder's claim is taken over), waiting while another build holds it, and says so once.
 * Returns the release.
 */
async function claimLayer(store: LocalStore, l: { name: string; key: string }, signal: AbortSignal | undefined, emit: (e: BuildEvent) => void): Promise<() => Promise<void>> {
  const file = path.join(store.root, 'claims', `${l.key}.lock`);
  let said = false;
  while (!(await tryLock(file))) {
    if (signal?.aborted) throw new AbortedError();
    if (!said) {
      const holder = await readLockOwner(file);
      emit({ type: 'notice', at: Date.now(), message: `${l.name}: another build${holder ? ` (pid ${holder.pid})` : ''} is building this layer; waiting to take it from the store` });
      said = true;
    }
    await new Promise((r) => setTimeout(r, CLAIM_POLL_MS));
  }
  return () => unlock(file);
}

/**
 * The sandbox as a build's layers get it (null: off), once the host is known to have what it
 * needs (checked before the first layer is built, so that an all-hits build needs none of it).
 */
export async function layerSandbox(o: SandboxOptions | undefined, store: LocalStore): Promise<LayerSandbox | null> {
  if (o?.enabled === false) return null;
  await checkSandboxTools();
  return { deny: o?.deny ?? [], cacheDir: cacheMountsDir(store) };
}

/**
 * The engine's buildLayer with the build's events around it: layer-start, the script's
 * output and steps, then layer-done or layer-failed. Used by `vmlb build` and by the fleet
 * worker, which reports as layer-failed only what will not be retried (`isFailure`).
 */
export async function buildLayerReporting(o: {
  store: LocalStore;
  backend: Awaited<ReturnType<typeof chooseBackend>>;
  /** See layerSandbox(); unset: unsandboxed. */
  sandbox?: LayerSandbox;
  index: number;
  layer: KeyedLayer;
  parent: LayerManifest | null;
  signal: AbortSignal | undefined;
  emit: (e: BuildEvent) => void;
  /** Which errors are reported as layer-failed. @default every error */
  isFailure?: (e: unknown) => boolean;
  /** What of the script's output goes out as layer-log events. @default ENGINE_OUTPUT_LIMITS */
  outputLimits?: OutputLimits;
  /** See LayerBuildContext.keepFailed (a local build's). */
  keepFailed?: boolean;
}): Promise<LayerManifest> {
  const { index, layer: k, emit } = o;
  const name = k.spec.name;
  const started = performance.now();
  const seconds = () => (performance.now() - started) / 1000;
  emit({ type: 'layer-start', at: Date.now(), index, name, kind: k.spec.kind, key: k.key });
  let manifest: LayerManifest;
  try {
    manifest = await buildLayer({
      store: o.store,
      backend: o.backend,
      spec: k.spec,
      key: k.key,
      inputs: k.inputs,
      cacheable: k.cacheable,
      parent: o.parent,
      sandbox: o.sandbox,
      signal: o.signal,
      outputLimits: o.outputLimits,
      keepFailed: o.keepFailed,
      onOutput: (chunk) => emit({ type: 'layer-log', at: Date.now(), index, name, chunk }),
      onStep: (step) => emit({ type: 'layer-step', at: Date.now(), index, name, step }),
    });
  } catch (e) {
    if (o.isFailure?.(e) ?? true) {
      const err = e as Error & { exitCode?: number; timedOut?: boolean; logPath?: string; logTail?: string; keptOverlay?: string };
      emit({
        type: 'layer-failed',
        at: Date.now(),
        index,
        name,
        key: k.key,
        seconds: seconds(),
        message: err.message,
        exitCode: err.exitCode,
        timedOut: err.timedOut ?? false,
        logPath: err.logPath ?? '',
        logTail: err.logTail ?? '',
        ...(err.keptOverlay ? { overlay: err.keptOverlay } : {}),
      });
    }
    throw e;
  }
  emit({ type: 'layer-done', at: Date.now(), index, name, key: k.key, seconds: seconds(), bytes: manifest.blob.size });
  return manifest;
}

// ---- the shared store in a local build ----

interface SharedUse {
  store: SharedStore;
  /** Its manifests of this build's keys (found while planning, then what this build pushed). */
  found: Map<string, LayerManifest>;
  /** Keys whose shared copy failed its sha256 twice: rebuilt here and pushed over it. */
  corrupt: Set<string>;
  /** It stopped answering during the build: left alone from then on (said once). */
  down: boolean;
}

type LayerRef = { index: number; name: string; key: string };

function stepper(layer: LayerRef, emit: (e: BuildEvent) => void, what: string) {
  const step = (text: string) => emit({ type: 'layer-step', at: Date.now(), ...layer, step: text });
  return { step, onRetry: (r: RetryInfo) => step(`${what} (retry ${r.attempt}/${r.tries - 1} in ${(r.delayMs / 1000).toFixed(1)}s: ${r.error})`) };
}

/**
 * Pulls a shared hit into the local store. Returns undefined when it cannot be used (the
 * caller builds it instead): built on another parent than the one this build has, a store
 * that stopped answering, or a blob that fails its sha256 twice — a corrupt shared layer is a
 * miss, rebuilt here and pushed over the bad copy.
 */
async function pullSharedHit(
  shared: SharedUse,
  store: LocalStore,
  layer: LayerRef,
  m: LayerManifest,
  parent: LayerManifest | null,
  signal: AbortSignal | undefined,
  emit: (e: BuildEvent) => void,
): Promise<LayerManifest | undefined> {
  const notice = (why: string) => emit({ type: 'notice', at: Date.now(), message: `${layer.name}: ${why}; building it here` });
  if (parent && m.parentSha256 && m.parentSha256 !== parent.blob.sha256) {
    notice(`the shared copy was built on another build of ${parent.name} than this one`);
    return undefined;
  }
  if (shared.down) return undefined;
  const { step, onRetry } = stepper(layer, emit, 'fetching from the shared store');
  step('fetching from the shared store');
  for (let attempt = 1; ; attempt++) {
    try {
      return await shared.store.pull(store, layer.key, { signal, onRetry });
    } catch (e) {
      if (signal?.aborted) throw new AbortedError();
      if (e instanceof SharedBlobMismatchError && attempt === 1) {
        step('fetching from the shared store again: the copy received did not match its sha256');
        continue;
      }
      if (e instanceof SharedBlobMismatchError) shared.corrupt.add(layer.key);
      else if ((e as { retryable?: boolean }).retryable) shared.down = true;
      notice(`could not use the shared copy: ${(e as Error).message}`);
      return undefined;
    }
  }
}

/**
 * Pushes a layer that this build made or found locally to the shared store, unless it is not
 * to be shared or the store has it. The layer is in the local store already: a failure is a
 * notice, not a failed build.
 */
async function pushLayer(
  shared: SharedUse,
  store: LocalStore,
  planned: PlannedLayer,
  m: LayerManifest,
  signal: AbortSignal | undefined,
  emit: (e: BuildEvent) => void,
): Promise<void> {
  if (shared.down || !m.cacheable || !m.share) return;
  const builtHere = planned.status === 'miss';
  if (!builtHere && shared.found.has(m.key)) return;
  const layer = { index: planned.index, name: planned.name, key: m.key };
  const notice = (message: string) => emit({ type: 'notice', at: Date.now(), message });
  const { step, onRetry } = stepper(layer, emit, 'uploading to the shared store');
  step('uploading to the shared store');
  try {
    const r = await shared.store.push(store, m.key, { replace: shared.corrupt.has(m.key), signal, onRetry });
    if (r.pushed || r.reason === 'exists') shared.found.set(m.key, r.manifest);
    // Said for a layer built now; for an older local layer it would be said on every build.
    else if (r.reason === 'parent-differs' && builtHere) notice(`${m.name} was not uploaded: the shared store holds another build of its parent`);
  } catch (e) {
    if (signal?.aborted) throw new AbortedError();
    if ((e as { retryable?: boolean }).retryable) shared.down = true;
    notice(`${m.name} was not uploaded to the shared store (it is in the local store): ${(e as Error).message}`);
  }
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
  } catch (e) {
    if (!isNoSpace(e)) throw e;
    await rm(tmp, { force: true });
    const free = await freeBytes(path.dirname(output)).catch(() => Number.NaN);
    throw new VmlbError('NO_SPACE', `writing the output ${output}: no space left on its filesystem (${formatBytes(free)} free${o.flatten ? '; a flattened image can need up to its disk size' : ''}); the layers are built and cached`);
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

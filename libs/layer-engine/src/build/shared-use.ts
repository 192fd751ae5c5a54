import { AbortedError } from '../errors.js';
import type { BuildEvent, PlannedLayer } from './events.js';
import type { Plan } from './build-plan.js';
import type { LayerManifest } from '../store/layer-manifest.js';
import { chooseLayerSource, takeSharedCopy } from './layer-source.js';
import type { LocalStore } from '../store/local-store.js';
import type { RetryInfo } from '../store/s3-retry.js';
import { SharedBlobMismatchError } from '../store/shared-blob-errors.js';
import { writeUseRecord } from '../store/shared-gc.js';
import type { SharedStore } from '../store/shared-store.js';

/**
 * The shared store in a local build (`vmlb build --cache`): its hits pulled, what the build
 * made or found pushed, its use recorded. It never fails the build: a store that stops
 * answering is left alone from then on, and each failure is a notice.
 */

export interface SharedUse {
  store: SharedStore;
  /** Its manifests of this build's keys (found while planning, then what this build pushed). */
  found: Map<string, LayerManifest>;
  /** Keys whose shared copy failed its sha256 twice: rebuilt here and pushed over it. */
  corrupt: Set<string>;
  /** It stopped answering during the build: left alone from then on (said once). */
  down: boolean;
}

export type LayerRef = { index: number; name: string; key: string };

/** The shared store as a build uses it, once planning found it answering (else undefined). */
export function sharedUse(store: SharedStore | undefined, plan: Plan): SharedUse | undefined {
  return store && plan.shared ? { store, found: plan.shared, corrupt: new Set(), down: false } : undefined;
}

/**
 * Tells the shared store that this build uses its chain (`uses/…`, see shared-gc.ts): what
 * `vmlb gc --shared` keeps. Best effort: a failure is a notice.
 */
export async function recordSharedUse(shared: SharedStore, plan: Plan, emit: (e: BuildEvent) => void): Promise<void> {
  try {
    await writeUseRecord(shared, plan.keyed.filter((k) => k.cacheable).map((k) => k.key), { project: plan.project.dir });
  } catch (e) {
    emit({ type: 'notice', at: Date.now(), message: `could not record this build's use of the shared store (gc --shared may prune its layers): ${(e as Error).message}` });
  }
}

/** A layer's progress steps, and its retries said as steps. */
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
export async function pullSharedHit(
  shared: SharedUse,
  store: LocalStore,
  layer: LayerRef,
  m: LayerManifest,
  o: { parent: LayerManifest | null; replacesLocal: boolean; signal: AbortSignal | undefined; emit: (e: BuildEvent) => void },
): Promise<LayerManifest | undefined> {
  const { parent, signal, emit } = o;
  const notice = (why: string) => emit({ type: 'notice', at: Date.now(), message: `${layer.name}: ${why}; building it here` });
  // The parent this build has now may not be the planned one (its pull failed: built here).
  if (parent && chooseLayerSource(null, m, parent).from !== 'shared') {
    notice(`the shared copy was built on another build of ${parent.name} than this one`);
    return undefined;
  }
  if (shared.down) return undefined;
  const { step, onRetry } = stepper(layer, emit, 'fetching from the shared store');
  step('fetching from the shared store');
  for (let attempt = 1; ; attempt++) {
    try {
      return await takeSharedCopy(store, shared.store, layer.key, o.replacesLocal, { signal, onRetry });
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
export async function pushLayer(
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

import { randomUUID } from 'node:crypto';
import { VmlbError } from '../errors.js';
import type { PlannedLayer } from './events.js';
import { computeKeys, type KeyedLayer } from '../project/cache-key.js';
import { diffInputs } from '../project/input-diff.js';
import type { LayerManifest } from '../store/layer-manifest.js';
import { loadProject } from '../project/layer-project.js';
import { chooseLayerSource } from './layer-source.js';
import type { LocalStore } from '../store/local-store.js';
import type { ImageProject } from '../types.js';

export interface Plan {
  project: ImageProject;
  keyed: KeyedLayer[];
  layers: PlannedLayer[];
  manifests: Map<string, LayerManifest>;
  /** The shared store's manifests of this build's keys, when a shared store was given and answered. */
  shared?: Map<string, LayerManifest>;
  /** Keys whose local copy has other bytes than the shared one it takes instead (see chooseLayerSource). */
  replacesLocal: Set<string>;
  /** Why the shared store is left out of this build (it failed to answer while planning). */
  sharedProblem?: string;
  /** What planning found wrong in the local store and repaired (corrupt layers removed). */
  problems: string[];
}

/** Where planning looks a layer up besides the local store: a SharedStore, or a fleet pool's view of several. */
export interface SharedLookup {
  getManifest(key: string): Promise<LayerManifest | null>;
}

/** What planning reads of a local store: its trusted copies and the inputs of the last builds. */
export type PlanningStore = Pick<LocalStore, 'trustedManifest' | 'lastInputs'>;

export interface PlanOptions {
  projectDir: string;
  /** The local store; none for a planner that keeps no layers (the fleet's scheduler): every miss is then a first build. */
  store?: PlanningStore;
  shared?: SharedLookup;
  last?: string;
  /** Makes the keys of `# nocache` layers this build's own. @default a random UUID */
  nonce?: string;
  /**
   * How a local hit's blob is checked (LocalStore.checkBlob): its seal (constant cost, the
   * default) or its whole bytes (a flatten). A corrupt layer is removed with what was built
   * on it, said in `problems`, and planned as a miss.
   */
  verify?: 'seal' | 'full';
}

/**
 * Reads the project, computes every key and says, for each layer, hit or miss and why. With a
 * shared store, a layer missing locally but there (on the parent this build will have) is a hit
 * with source 'shared' (chooseLayerSource says which copy a layer takes).
 */
export async function planBuild(opts: PlanOptions): Promise<Plan> {
  const project = await loadProject(opts.projectDir);
  if (opts.last !== undefined) project.layers = layersUpTo(project, opts.last);
  const keyed = computeKeys(project, { nonce: opts.nonce ?? randomUUID() });
  const corrupt: string[] = [];
  const gone = new Set<string>();
  const store = opts.store;
  const [local, shared] = await Promise.all([
    store
      ? lookUp(keyed, (key) =>
          store.trustedManifest(key, opts.verify ?? 'seal', (c) => {
            for (const k of c.removed) gone.add(k);
            const more = c.removed.length - 1;
            corrupt.push(`layer ${c.name} (${c.key.slice(0, 12)}) is corrupt in the local store: ${c.reason}; removed it${more > 0 ? ` and the ${more} layer${more === 1 ? '' : 's'} built on it` : ''}, building it again`);
          }),
        )
      : new Map<string, LayerManifest>(),
    opts.shared ? lookUpShared(opts.shared, keyed) : undefined,
  ]);
  // Layers built on a corrupt one went with it, even when their own check had passed.
  for (const k of gone) local.delete(k);
  const manifests = new Map<string, LayerManifest>();
  const replacesLocal = new Set<string>();
  const sources: Array<'local' | 'shared' | undefined> = keyed.map((k, index) => {
    const parent = index === 0 ? null : manifests.get(keyed[index - 1]!.key);
    // A replaced local copy goes with every layer built on it: the later ones' local copies.
    const s = chooseLayerSource(replacesLocal.size ? null : local.get(k.key), shared?.found?.get(k.key), parent);
    if (s.from === 'build') return undefined;
    manifests.set(k.key, s.manifest);
    if (s.from === 'shared' && s.replacesLocal) replacesLocal.add(k.key);
    return s.from;
  });
  const layers: PlannedLayer[] = await Promise.all(
    keyed.map(async (k, index) => {
      const base = { index, name: k.spec.name, kind: k.spec.kind, key: k.key, cacheable: k.cacheable };
      const source = sources[index];
      if (source) return { ...base, status: 'hit' as const, source };
      const previous = await store?.lastInputs(project.dir, k.spec.name);
      return { ...base, status: 'miss' as const, changes: diffInputs(previous, k.inputs, { uncacheable: !k.cacheable }) };
    }),
  );
  // A local hit after a miss cannot happen (keys chain), except for an identical parent key:
  // then the store has the layer and it really is a hit.
  return { project, keyed, layers, manifests, shared: shared?.found, replacesLocal, sharedProblem: shared?.problem, problems: corrupt };
}

/** The project's layers up to `last` (`--last`), or NO_SUCH_LAYER naming the layers it has. */
function layersUpTo(project: ImageProject, last: string): ImageProject['layers'] {
  const i = project.layers.findIndex((l) => l.name === last);
  if (i < 0) {
    throw new VmlbError('NO_SUCH_LAYER', `--last ${last}: the project has no such layer; its layers are ${project.layers.map((l) => l.name).join(', ')}`);
  }
  return project.layers.slice(0, i + 1);
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

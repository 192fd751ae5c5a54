import { existsSync } from 'node:fs';
import path from 'node:path';
import { LAYER_DIR_PATTERN, listFailedLayers, loadProject, resolveImage, type FailedLayer, type LayerSpec, type LocalStore, type ShellState } from '@vmlb/layer-engine';
import { UsageError } from './command-exit.js';
import { resolveImageArg } from './image-arg.js';

/** What `vmlb shell` and `vmlb run` open: a layer's state, the state before it, or a failed layer's kept overlay. */

export interface Resolved {
  state: ShellState;
  /** Keys gc must leave alone meanwhile (the state's chain). */
  keys: string[];
  /** What /mnt is, for the banner. */
  mnt: string;
}

export const short = (key: string) => key.slice(0, 12);

/** The project's layers, or none when the folder is no (valid) project and none is needed. */
async function projectLayers(projectDir: string, required: boolean): Promise<LayerSpec[]> {
  try {
    return (await loadProject(projectDir)).layers;
  } catch (e) {
    if (required) throw e;
    return [];
  }
}

/**
 * The state a session opens: LAYER (a layer name, a key, an image file; default: the
 * project's last layer), the state before LAYER ran (`before`), or a failed layer's overlay.
 */
export async function resolveState(o: { ref?: string; before?: string; failed?: boolean; projectDir: string; projectGiven: boolean; store: LocalStore }): Promise<Resolved> {
  const { store, projectDir } = o;
  if (o.failed) return resolveFailed(o.ref, projectDir, o.projectGiven, store);
  if (o.before !== undefined) {
    const layers = await projectLayers(projectDir, LAYER_DIR_PATTERN.test(o.before));
    const at = layers.findIndex((l) => l.name === o.before);
    const spec = layers[at];
    let parentKey: string | undefined;
    const built = LAYER_DIR_PATTERN.test(o.before) || !spec ? await resolveImage(o.before, { projectDir, store }).catch(() => null) : null;
    if (built?.manifest) {
      if (!built.manifest.parent) throw new UsageError(`--before ${o.before}: ${built.manifest.name} is the first layer: there is no state before it`);
      parentKey = built.manifest.parent;
    } else if (spec) {
      // Never built (or its last build failed): the state it would be built on, the previous layer's last build.
      if (at === 0) throw new UsageError(`--before ${o.before}: it is the project's first layer: there is no state before it`);
      const prev = layers[at - 1]!;
      parentKey = await store.lastBuiltKey(projectDir, prev.name);
      if (!parentKey) throw new UsageError(`--before ${o.before}: the layer before it, ${prev.name}, has not been built in this store (${store.root}); build the project first (vmlb build --last ${prev.name})`);
    } else {
      throw new UsageError(`--before ${o.before}: not a layer of the project ${projectDir} nor a layer in the store ${store.root}`);
    }
    const parent = await store.getManifest(parentKey);
    if (!parent) throw new UsageError(`--before ${o.before}: its parent layer ${short(parentKey)} is no longer in the store (evicted); build the project again`);
    const mine = spec ?? layers.find((l) => l.name === built?.manifest?.name);
    return {
      state: { image: store.blobPath(parent.key), label: `${parent.name} (${short(parent.key)}), before ${o.before}`, key: parent.key, root: parent.root, partitions: parent.partitions, spec: mine },
      keys: [parent.key],
      mnt: mine ? `${mine.name}'s folder` : 'an empty folder',
    };
  }
  const layers = await projectLayers(projectDir, o.ref === undefined);
  const ref = o.ref ?? layers.at(-1)?.name;
  if (!ref) throw new UsageError(`the project ${projectDir} has no layers; name a layer, a key or an image file`);
  const img = await resolveImageArg(ref, { projectDir, store });
  const m = img.manifest;
  const spec = m ? layers.find((l) => l.name === m.name) : undefined;
  return {
    state: { image: img.file, label: img.label, key: m?.key, root: m?.root, partitions: m?.partitions, spec },
    keys: m ? [m.key] : [],
    mnt: spec ? `${spec.name}'s folder` : 'an empty folder',
  };
}

async function resolveFailed(name: string | undefined, projectDir: string, projectGiven: boolean, store: LocalStore): Promise<Resolved> {
  const all = await listFailedLayers(store);
  const named = name === undefined ? all : all.filter((f) => f.name === name || f.key.startsWith(name));
  const mine = named.filter((f) => f.project === projectDir);
  // In a project: its failures; elsewhere (no -C, no project here): the newest of any project.
  const pick: FailedLayer | undefined = mine[0] ?? (projectGiven || existsSync(path.join(projectDir, named[0]?.name ?? '\0')) ? undefined : named[0]);
  if (!pick) {
    throw new UsageError(
      `no failed layer${name ? ` ${name}` : ''} of ${projectDir} is kept in the store ${store.root}: vmlb build keeps a failed layer's overlay until the layer is built again (or vmlb sweep --failed)`,
    );
  }
  const layers = await projectLayers(pick.project, false);
  const spec = layers.find((l) => l.name === pick.name);
  const parent = pick.parent ? await store.getManifest(pick.parent) : null;
  if (pick.parent && !parent) throw new UsageError(`${pick.name}: the failed overlay's parent layer ${short(pick.parent)} is no longer in the store (evicted); build the project again`);
  // A build-layer leaves the partition table as it was: its parent's says where the root is.
  const fromParent = pick.kind === 'build-layer' && parent ? { root: parent.root, partitions: parent.partitions } : {};
  return {
    state: { image: pick.overlay, label: `${pick.name} (failed, ${short(pick.key)})`, key: pick.key, spec, ...fromParent },
    keys: parent ? [parent.key] : [],
    mnt: spec ? `${spec.name}'s folder (the failing script's)` : 'an empty folder',
  };
}

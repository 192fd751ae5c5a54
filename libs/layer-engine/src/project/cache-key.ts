import { createHash, randomUUID } from 'node:crypto';
import type { ImageProject, LayerFile, LayerInputs, LayerSpec } from '../types.js';

/**
 * The version of what the engine does to a layer (how it attaches the disk, what it mounts in
 * the chroot, how it grows a disk, how it writes the overlay). It is part of every key: bump it
 * whenever such a change could make the same inputs produce a different layer, so that no
 * layer built the old way is taken from a cache.
 */
export const RECIPE_VERSION = 1;

/** Separates layer keys from any other sha256 the engine computes over similar text. */
const KEY_DOMAIN = 'vmlb-layer-key v1';

/** The inputs of one layer's key. `nonce` is set only for `# nocache` layers. */
export function layerInputs(spec: LayerSpec, parentKey: string | null, nonce?: string): LayerInputs {
  const inputs: LayerInputs = {
    recipe: RECIPE_VERSION,
    kind: spec.kind,
    parent: parentKey,
    files: spec.files.map((f) => ({ path: f.path, type: f.type, executable: f.executable, digest: f.digest })),
  };
  if (nonce !== undefined) inputs.nonce = nonce;
  return inputs;
}

/**
 * A layer's key: sha256 (hex) over a canonical text of its inputs, with a fixed field order and
 * the files in path order, so the same inputs give the same key on any host. Only what is in
 * LayerInputs counts: never a timestamp, an absolute path or a host name.
 */
export function layerKey(inputs: LayerInputs): string {
  const files = [...inputs.files]
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
    .map((f: LayerFile) => [f.path, f.type, f.executable, f.digest]);
  const canonical = JSON.stringify([inputs.recipe, inputs.kind, inputs.parent, files, inputs.nonce ?? null]);
  return createHash('sha256').update(`${KEY_DOMAIN}\n${canonical}`).digest('hex');
}

export interface KeyedLayer {
  spec: LayerSpec;
  inputs: LayerInputs;
  key: string;
  /** False for a `# nocache` layer and every layer after it: never taken from or put into a cache. */
  cacheable: boolean;
}

export interface ComputeKeysOptions {
  /**
   * Given to every `# nocache` layer's inputs so that its key is new on each build (and, through
   * the parent key, its descendants' keys too). Pass the build's id to make a plan reproducible.
   * @default a random UUID
   */
  nonce?: string;
}

/** Every layer's inputs and key, in order, each chained to its parent's key. */
export function computeKeys(project: ImageProject, opts: ComputeKeysOptions = {}): KeyedLayer[] {
  let nonce = opts.nonce;
  let parent: string | null = null;
  let cacheable = true;
  return project.layers.map((spec) => {
    if (spec.hints.nocache) {
      cacheable = false;
      nonce ??= randomUUID();
    }
    const inputs = layerInputs(spec, parent, spec.hints.nocache ? nonce : undefined);
    const key = layerKey(inputs);
    parent = key;
    return { spec, inputs, key, cacheable };
  });
}

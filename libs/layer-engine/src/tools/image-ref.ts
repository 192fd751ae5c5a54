import { stat } from 'node:fs/promises';
import path from 'node:path';
import { VmlbError } from '../errors.js';
import { LAYER_DIR_PATTERN, OUTPUT_DIR } from '../project/layer-project.js';
import type { LayerManifest } from '../store/layer-manifest.js';
import type { LocalStore } from '../store/local-store.js';

/**
 * What `vmlb diff`, `vmlb test-boot` and `vmlb rollup` are pointed at: a layer of a project by
 * its folder name (resolved through that project's last build, like `explain`), a layer key
 * (64 hex digits, or a unique prefix of at least 8 as `explain` prints them) in the local
 * store, or an image file.
 */
export interface ResolvedImage {
  /** What the user wrote. */
  ref: string;
  /** The qcow2 (or raw) file to read. */
  file: string;
  how: 'layer' | 'key' | 'file';
  /** For a layer or a key: its manifest. */
  manifest?: LayerManifest;
  /** Short words for messages, e.g. `03_users (5c1e2f…)`. */
  label: string;
}

const KEY_PREFIX = /^[0-9a-f]{8,64}$/;

export class ImageRefError extends VmlbError {
  constructor(message: string) {
    super('IMAGE_NOT_FOUND', message);
  }
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    (s) => s.isFile(),
    () => false,
  );
}

/** The default image of a project: what `vmlb build` wrote. */
export function defaultImage(projectDir: string): string {
  return path.join(path.resolve(projectDir), OUTPUT_DIR, 'image.qcow2');
}

export async function resolveImage(ref: string | undefined, o: { projectDir: string; store: LocalStore }): Promise<ResolvedImage> {
  if (ref === undefined) {
    const file = defaultImage(o.projectDir);
    if (!(await exists(file))) {
      throw new ImageRefError(`no image given and ${file} does not exist: build the project first (vmlb build) or name an image file, a layer or a key`);
    }
    return { ref: file, file, how: 'file', label: path.relative(process.cwd(), file) || file };
  }
  // A file that exists wins: a project folder could hold a file named like a key.
  if (ref.includes('/') || (await exists(ref))) {
    if (!(await exists(ref))) throw new ImageRefError(`${ref}: no such image file`);
    return { ref, file: path.resolve(ref), how: 'file', label: ref };
  }
  if (LAYER_DIR_PATTERN.test(ref)) {
    const key = await o.store.lastBuiltKey(o.projectDir, ref);
    if (!key) {
      throw new ImageRefError(
        `${ref}: this store (${o.store.root}) has no build of layer ${ref} of the project ${path.resolve(o.projectDir)}; build it first (vmlb build), or give -C PROJECT / --store`,
      );
    }
    const manifest = await o.store.getManifest(key);
    if (!manifest) {
      throw new ImageRefError(`${ref}: its last build (${key.slice(0, 12)}) is no longer in the store (evicted); build the project again`);
    }
    return { ref, file: o.store.blobPath(key), how: 'layer', manifest, label: `${ref} (${key.slice(0, 12)})` };
  }
  if (KEY_PREFIX.test(ref)) {
    const keys = await o.store.keysStartingWith(ref);
    if (keys.length > 1) throw new ImageRefError(`${ref}: ${keys.length} layers in the store start with it; give more of the key`);
    const key = keys[0];
    const manifest = key ? await o.store.getManifest(key) : null;
    if (!key || !manifest) throw new ImageRefError(`${ref}: no layer with that key in the store ${o.store.root}`);
    return { ref, file: o.store.blobPath(key), how: 'key', manifest, label: `${manifest.name} (${key.slice(0, 12)})` };
  }
  throw new ImageRefError(`${ref}: not an image file, a layer name (NN_name) or a layer key`);
}

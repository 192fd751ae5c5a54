import { StoreError } from '../errors.js';
import { KEY_PATTERN, type LayerManifest } from './layer-manifest.js';

/**
 * A layer's manifest in the shared store: the local one (blob: the uncompressed qcow2, its
 * sha256 and size, what a pull verifies) and, when the blob is stored compressed, `transfer`.
 */
export interface SharedLayerManifest extends LayerManifest {
  /** The stored object when it is not the blob as it is (`layers/<key>.qcow2`). */
  transfer?: SharedBlobTransfer;
}

export interface SharedBlobTransfer {
  /** Beside the manifest: `<key>.qcow2.zst`. */
  file: string;
  encoding: 'zstd';
  /** The object's size (the compressed stream's). */
  size: number;
}

/**
 * The shared manifest read from `object` as a manifest of layer `key`, or a StoreError naming
 * the object: malformed, of another layer, or stored in a way this vmlb cannot read.
 */
export function checkManifest(value: unknown, key: string, object: string): SharedLayerManifest {
  const m = value as Partial<SharedLayerManifest> | null;
  const ok =
    !!m &&
    m.key === key &&
    (m.parent === null || (typeof m.parent === 'string' && KEY_PATTERN.test(m.parent))) &&
    typeof m.blob?.sha256 === 'string' &&
    KEY_PATTERN.test(m.blob.sha256) &&
    typeof m.blob.size === 'number' &&
    (m.parentSha256 === undefined || KEY_PATTERN.test(m.parentSha256));
  if (!ok) throw new StoreError(`the shared manifest ${object} is malformed (not a manifest of layer ${key})`);
  const t = m.transfer as Partial<SharedBlobTransfer> | undefined;
  if (t !== undefined) {
    if (t?.encoding !== 'zstd') {
      throw new StoreError(`the shared manifest ${object} says its blob is stored as "${String(t?.encoding)}", which this vmlb cannot read: upgrade vmlb`);
    }
    if (t.file !== `${key}.qcow2.zst` || typeof t.size !== 'number') throw new StoreError(`the shared manifest ${object} is malformed (its transfer names another object than ${key}.qcow2.zst)`);
  }
  return m as SharedLayerManifest;
}

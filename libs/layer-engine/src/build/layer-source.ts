import type { LayerManifest } from '../store/layer-manifest.js';
import type { LocalStore } from '../store/local-store.js';
import type { CallOptions } from '../store/s3-retry.js';
import type { SharedStore } from '../store/shared-store.js';

/**
 * Which copy of a layer a chain takes: this host's, the shared store's, or none (it is built).
 * `replacesLocal`: this host has a copy with other bytes, which the shared one replaces.
 */
export type LayerSource =
  | { from: 'local'; manifest: LayerManifest }
  | { from: 'shared'; manifest: LayerManifest; replacesLocal: boolean }
  | { from: 'build' };

/**
 * The one rule by which `vmlb build` (planBuild) and a fleet worker (its parent chain) choose
 * a layer's copy. `parent` is the parent as the chain will have it: null for the first layer,
 * undefined when it is to be built (then no shared copy is usable: its overlay was written on
 * other bytes).
 *
 * A shared copy is usable only on the very parent bytes its overlay was written over
 * (`parentSha256`). When it is usable it is the truth: a local copy with the same bytes is
 * taken as it is, one with other bytes (the same key built on two hosts: ext4 timestamps,
 * UUIDs differ) is replaced by it — the safer choice, since what is built on the local copy
 * could never be shared (its push finds the shared parent's bytes differ) and the fleet's
 * workers all build on the shared bytes. Without a usable shared copy, a local one is taken,
 * else the layer is built.
 *
 * A replaced copy goes with every layer built on it (takeSharedCopy): a caller planning a
 * chain treats the local copies of the layers after it as gone.
 */
export function chooseLayerSource(
  local: LayerManifest | null | undefined,
  shared: LayerManifest | null | undefined,
  parent: LayerManifest | null | undefined,
): LayerSource {
  const usable = !!shared && parent !== undefined && !(parent && shared.parentSha256 && shared.parentSha256 !== parent.blob.sha256);
  if (usable && !(local && local.blob.sha256 === shared.blob.sha256)) return { from: 'shared', manifest: shared, replacesLocal: !!local };
  return local ? { from: 'local', manifest: local } : { from: 'build' };
}

/**
 * Pulls the shared copy chooseLayerSource chose into the local store, first removing a local
 * copy it replaces (with every layer built on it: their overlays were written on its bytes).
 */
export async function takeSharedCopy(local: LocalStore, from: SharedStore, key: string, replacesLocal: boolean, o: CallOptions = {}): Promise<LayerManifest> {
  if (replacesLocal) await local.remove([key]);
  return from.pull(local, key, o);
}

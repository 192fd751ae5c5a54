import type { SharedStore } from '@vmlb/layer-engine';
import { storePaths } from '@vmlb/fleet';

/**
 * An image exists when its manifest, `images/<top>.json`, does: the flatten worker writes it
 * after the image itself (apps/worker/src/flatten-worker.ts), as layers have theirs.
 */
export function imageManifestPath(topKey: string): string {
  return storePaths.image(topKey).replace(/\.qcow2$/, '.json');
}

/** The image of the chain ending at `topKey`, or null when the shared store has none yet. */
export async function findImage(shared: SharedStore, topKey: string): Promise<{ key: string; path: string; bytes: number } | null> {
  const m = await shared.getJson<{ bytes?: number }>(imageManifestPath(topKey));
  if (!m || typeof m.bytes !== 'number') return null;
  return { key: topKey, path: storePaths.image(topKey), bytes: m.bytes };
}

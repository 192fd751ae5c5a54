import type { SharedStore } from '@vmlb/layer-engine';
import { DEFAULT_POOL, poolPath, storePaths } from '@vmlb/fleet';

/**
 * An image exists when its manifest, `images/<top>.json`, does: the flatten worker writes it
 * after the image itself (apps/worker/src/flatten-worker.ts), as layers have theirs.
 */
export function imageManifestPath(topKey: string): string {
  return storePaths.image(topKey).replace(/\.qcow2$/, '.json');
}

/**
 * The image of the chain ending at `topKey` in a pool's namespace (`shared`, that pool's own
 * store), or null when it has none yet. Its path is relative to the shared store's prefix.
 */
export async function findImage(shared: SharedStore, topKey: string, pool: string = DEFAULT_POOL): Promise<{ key: string; path: string; bytes: number } | null> {
  const m = await shared.getJson<{ bytes?: number }>(imageManifestPath(topKey));
  if (!m || typeof m.bytes !== 'number') return null;
  return { key: topKey, path: poolPath(pool, storePaths.image(topKey)), bytes: m.bytes };
}

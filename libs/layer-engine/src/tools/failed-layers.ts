import { readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { LocalStore } from '../store/local-store.js';
import type { LayerKind } from '../types.js';

/**
 * A failed layer's half-built overlay, kept by a local build so that `vmlb shell --failed`
 * can open it: `layers/<key>.failed.qcow2` (backing file `<parentkey>.qcow2` by relative
 * path, as the blob it would have become) beside its log `<key>.failed.log`, and this record
 * `layers/<key>.failed.json`. The names are no layer's (store.orphans() leaves them alone);
 * the next build of that layer, or `vmlb sweep --failed`, removes them. Fleet workers keep
 * none.
 */
export interface FailedLayer {
  key: string;
  name: string;
  kind: LayerKind;
  /** The project folder and the layer's own folder, as they were built. */
  project: string;
  layerDir: string;
  parent: string | null;
  /** The overlay file and the full log. */
  overlay: string;
  log: string;
  exitCode?: number;
  timedOut: boolean;
  failedAt: string;
}

const RECORD_RE = /^([0-9a-f]{64})\.failed\.json$/;

export function failedOverlayPath(store: LocalStore, key: string): string {
  return path.join(store.layersDir, `${key}.failed.qcow2`);
}

function recordPath(store: LocalStore, key: string): string {
  return path.join(store.layersDir, `${key}.failed.json`);
}

/** Keeps `tmpBlob` (a failed layer's overlay) under the store and records it; returns the record. */
export async function keepFailedOverlay(store: LocalStore, tmpBlob: string, f: Omit<FailedLayer, 'overlay' | 'failedAt'>): Promise<FailedLayer> {
  const overlay = failedOverlayPath(store, f.key);
  await rename(tmpBlob, overlay);
  const record: FailedLayer = { ...f, overlay, failedAt: new Date().toISOString() };
  const file = recordPath(store, f.key);
  await writeFile(`${file}.tmp`, JSON.stringify(record, null, 2) + '\n');
  await rename(`${file}.tmp`, file);
  return record;
}

/** Every failed overlay the store keeps (whose file is still there), newest first. */
export async function listFailedLayers(store: LocalStore): Promise<FailedLayer[]> {
  const out: FailedLayer[] = [];
  for (const n of await readdir(store.layersDir).catch(() => [] as string[])) {
    if (!RECORD_RE.test(n)) continue;
    try {
      const r = JSON.parse(await readFile(path.join(store.layersDir, n), 'utf8')) as FailedLayer;
      if (await stat(r.overlay).then((s) => s.isFile(), () => false)) out.push(r);
    } catch {
      /* half written or removed meanwhile */
    }
  }
  return out.sort((a, b) => b.failedAt.localeCompare(a.failedAt));
}

/** Removes one failed overlay and its record (its log stays: see failedLogPath). */
export async function removeFailedLayer(store: LocalStore, key: string): Promise<void> {
  await rm(failedOverlayPath(store, key), { force: true });
  await rm(recordPath(store, key), { force: true });
}

/** Drops the overlays kept for earlier failures of this layer (same folder): a new build of it starts. */
export async function dropFailedOf(store: LocalStore, layerDir: string): Promise<void> {
  for (const f of await listFailedLayers(store)) if (f.layerDir === layerDir) await removeFailedLayer(store, f.key);
  // A record whose overlay went (removed by hand) goes too.
  for (const n of await readdir(store.layersDir).catch(() => [] as string[])) {
    const m = RECORD_RE.exec(n);
    if (m && !(await stat(failedOverlayPath(store, m[1]!)).then(() => true, () => false))) await rm(path.join(store.layersDir, n), { force: true });
  }
}

/** `vmlb sweep --failed`: every kept failed overlay; returns them with their sizes. */
export async function sweepFailedLayers(store: LocalStore): Promise<Array<FailedLayer & { bytes: number }>> {
  const gone: Array<FailedLayer & { bytes: number }> = [];
  for (const f of await listFailedLayers(store)) {
    const bytes = await stat(f.overlay).then((s) => s.blocks * 512, () => 0);
    await removeFailedLayer(store, f.key);
    gone.push({ ...f, bytes });
  }
  return gone;
}

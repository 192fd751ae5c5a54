/**
 * Pruning the shared store (`vmlb gc --shared s3://…`): layers no recent build used go.
 *
 * "Used" is recorded by the builds themselves: a build that takes a shared store writes one
 * small record when it starts, `uses/<YYYY-MM-DD>/<time>-<host>-<pid>-<rand>.json`, naming
 * every key of its chain (hits and the layers it is about to build). A layer is kept when a
 * record written within the window names it, when its manifest was written within the window
 * (a layer pushed recently, by a builder that writes no record), or when a kept layer is built
 * on it (a chain is kept whole). Everything else is pruned, layers built on others first,
 * each manifest before its blob, so a reader never sees half a layer. Records older than the
 * window go too: they can keep nothing any more.
 *
 * Incomplete multipart uploads under PREFIX started longer ago than `uploadsOlderThanMs`
 * (default a day) are aborted too: a push killed mid-upload leaves one holding its parts,
 * invisible to listings. A push that fails or is interrupted aborts its own; the day spares
 * uploads still in progress. (A bucket lifecycle rule, AbortIncompleteMultipartUpload after
 * 1 day, does the same on the server: deploy/README.md.)
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { LayerManifest } from './layer-manifest.js';
import type { IncompleteUpload } from './s3-bucket.js';
import type { SharedStore } from './shared-store.js';

/** How old an incomplete multipart upload must be for gc to abort it. */
export const DEFAULT_UPLOADS_OLDER_THAN_MS = 86_400_000;

export const USES_DIR = 'uses';

export interface UseRecord {
  version: 1;
  at: string;
  host: string;
  pid: number;
  project?: string;
  keys: string[];
}

/** Records that a build uses these layer keys (its whole chain). */
export async function writeUseRecord(shared: SharedStore, keys: string[], o: { project?: string; now?: Date } = {}): Promise<string> {
  const now = o.now ?? new Date();
  const iso = now.toISOString();
  const rel = `${USES_DIR}/${iso.slice(0, 10)}/${iso.replace(/[:.]/g, '')}-${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}.json`;
  const record: UseRecord = { version: 1, at: iso, host: os.hostname(), pid: process.pid, project: o.project, keys };
  await shared.putJson(rel, record);
  return rel;
}

export interface SharedPruneCandidate {
  key: string;
  name: string;
  kind: LayerManifest['kind'];
  bytes: number;
  /** When its manifest was written. */
  uploadedAt: string;
}

export interface SharedPrunePlan {
  layers: SharedPruneCandidate[];
  bytes: number;
  /** Use records older than the window. */
  staleRecords: string[];
  /** Incomplete multipart uploads started before `uploadsCutoff` (object names relative to PREFIX). */
  incompleteUploads: IncompleteUpload[];
  uploadsCutoff: string;
  /** Layers in the store, and how many are kept. */
  total: number;
  kept: number;
  /** Distinct keys named by the use records within the window. */
  recentlyUsed: number;
  cutoff: string;
}

async function mapLimit<T, R>(items: T[], n: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

/** The keys named by the use records written since `cutoff` (and the older records). */
async function readUses(shared: SharedStore, cutoff: number): Promise<{ used: Set<string>; stale: string[] }> {
  const records = await shared.listRecords(`${USES_DIR}/`);
  const used = new Set<string>();
  const stale: string[] = [];
  const recent = records.filter((r) => {
    if (r.lastModified.getTime() >= cutoff) return true;
    stale.push(r.rel);
    return false;
  });
  const bodies = await mapLimit(recent, 8, (r) => shared.getJson<UseRecord>(r.rel).catch(() => null));
  for (const b of bodies) for (const k of b?.keys ?? []) used.add(k);
  return { used, stale };
}

export async function planSharedPrune(shared: SharedStore, o: { unusedForMs: number; uploadsOlderThanMs?: number; now?: number }): Promise<SharedPrunePlan> {
  const now = o.now ?? Date.now();
  const cutoff = now - o.unusedForMs;
  const uploadsCutoff = now - (o.uploadsOlderThanMs ?? DEFAULT_UPLOADS_OLDER_THAN_MS);
  const [{ used, stale }, listed, uploads] = await Promise.all([readUses(shared, cutoff), shared.listManifests(), shared.listIncompleteUploads()]);
  const manifests = await mapLimit(listed, 8, async (l) => ({ ...l, manifest: await shared.getManifest(l.key).catch(() => null) }));
  const byKey = new Map(manifests.filter((m) => m.manifest).map((m) => [m.key, m]));
  const keep = new Set<string>();
  const keepChain = (k: string) => {
    for (let cur: string | null | undefined = k; cur && !keep.has(cur); cur = byKey.get(cur)?.manifest?.parent) keep.add(cur);
  };
  for (const m of manifests) if (used.has(m.key) || m.lastModified.getTime() >= cutoff) keepChain(m.key);
  const depth = (k: string) => {
    let d = 0;
    for (let m = byKey.get(k)?.manifest; m?.parent; m = byKey.get(m.parent)?.manifest) d++;
    return d;
  };
  const layers = manifests
    .filter((m) => !keep.has(m.key))
    .map((m) => ({
      key: m.key,
      name: m.manifest?.name ?? '(unreadable manifest)',
      kind: m.manifest?.kind ?? 'build-layer',
      // What it holds in the shared store: a compressed blob's object size.
      bytes: m.manifest?.transfer?.size ?? m.manifest?.blob.size ?? 0,
      uploadedAt: m.lastModified.toISOString(),
    }))
    .sort((a, b) => depth(b.key) - depth(a.key) || a.key.localeCompare(b.key));
  return {
    layers,
    bytes: layers.reduce((s, l) => s + l.bytes, 0),
    staleRecords: stale.sort(),
    incompleteUploads: uploads.filter((u) => Date.parse(u.initiated) <= uploadsCutoff),
    uploadsCutoff: new Date(uploadsCutoff).toISOString(),
    total: manifests.length,
    kept: manifests.length - layers.length,
    recentlyUsed: used.size,
    cutoff: new Date(cutoff).toISOString(),
  };
}

/**
 * Removes what a plan lists, except layers that a build started since the plan now uses
 * (the use records are read again right before).
 */
export async function pruneShared(shared: SharedStore, plan: SharedPrunePlan): Promise<{ removed: string[]; bytes: number; records: number; uploads: number }> {
  const { used } = await readUses(shared, Date.parse(plan.cutoff));
  const removed: string[] = [];
  let bytes = 0;
  for (const l of plan.layers) {
    if (used.has(l.key)) continue;
    await shared.remove(l.key);
    removed.push(l.key);
    bytes += l.bytes;
  }
  for (const r of plan.staleRecords) await shared.removeRecord(r);
  for (const u of plan.incompleteUploads) await shared.abortIncompleteUpload(u);
  return { removed, bytes, records: plan.staleRecords.length, uploads: plan.incompleteUploads.length };
}

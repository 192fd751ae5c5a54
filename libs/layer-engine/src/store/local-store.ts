import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readdir, readFile, rename, rm, stat, unlink, utimes } from 'node:fs/promises';
import path from 'node:path';
import { tryLock, unlock } from '../disk/lock-files.js';
import { activeKeys, markActive } from './active-builds.js';
import { writeJsonAtomic } from './atomic-json.js';
import { readSeal, sealHolds, takeSeal, type BlobCheck } from './blob-seal.js';
import { StoreError } from '../errors.js';
import { sha256File } from './file-digest.js';
import { KEY_PATTERN, MANIFEST_VERSION, type LayerManifest } from './layer-manifest.js';
import { planRemovalOf, removalWanted, withAncestors, withDescendants, type RemovalPlan, type StoreEntry } from './removal-plan.js';
import { findOrphans, publishLockPath, sweepTemp } from './store-debris.js';
import { lastBuiltKey, lastInputs, recordInputs } from './store-history.js';
import { pinnedKeys, readPin, removePin, writePin, type StorePin } from './store-pins.js';
import type { LayerInputs } from '../types.js';

/**
 * The local store: one folder, the same layout as the shared store (DESIGN.md):
 *
 *   layers/<key>.qcow2   the overlay, its backing file named `<parentkey>.qcow2` (relative)
 *   layers/<key>.json    the manifest; a layer exists only when this exists
 *   layers/<key>.log     the full log of the script that built it
 *   seals/<key>.json     the blob's seal: its size, inode, times and a sampled hash, taken
 *                        when the blob was last checked whole (see checkBlob)
 *   history/<project>/<layer name>.json   the inputs of the last build of that layer name,
 *                        so `explain` can say what changed (project = hash of its path)
 *   pins/<id>.json       outputs (build/image.qcow2) whose chain must not be evicted
 *   active/<pid>-<rand>.json   the keys of a build in progress (its owner's pid and start
 *                        time): gc and eviction never remove them while it runs
 *
 * A blob being built sits in layers/ as `.tmp-<key>.<pid>.<rand>.qcow2` (it must be beside
 * its parent for the relative backing path) and is published by link(2), which never
 * replaces a layer another build published first. Hits are served in place: nothing is copied.
 *
 * Trusting a hit: a blob is hashed whole when it enters the store (built here, or pulled and
 * checked against the shared manifest) and fsynced before its manifest exists, then sealed.
 * Each hit checks the seal (a stat and 64 KiB + 64 × 4 KiB read: the same cost for 10 MiB as
 * for 10 GiB); a seal that does not match (the file was written, replaced, copied elsewhere)
 * costs a full hash, which either reseals it or finds it corrupt. A flatten checks every
 * blob of its chain whole; a push hashes what it uploads; `vmlb verify` checks the store. A
 * corrupt layer is removed with every layer built on it, and built again: never an image.
 */

/** Flushes a file's data to the disk. */
async function fsyncFile(file: string): Promise<void> {
  const fd = await open(file, 'r+');
  try {
    await fd.sync();
  } finally {
    await fd.close();
  }
}

export class LocalStore {
  readonly root: string;
  readonly layersDir: string;
  private ready: Promise<void> | undefined;

  /** `root`: the store's folder (the apps' default: defaultStoreDir). */
  constructor(root: string) {
    this.root = path.resolve(root);
    this.layersDir = path.join(this.root, 'layers');
  }

  /** Creates the folders once. */
  init(): Promise<void> {
    this.ready ??= (async () => {
      for (const d of ['layers', 'seals', 'history', 'pins', 'active', 'claims']) await mkdir(path.join(this.root, d), { recursive: true });
    })().catch((e) => {
      throw new StoreError(`cannot create the store at ${this.root}: ${(e as Error).message}`, { cause: e });
    });
    return this.ready;
  }

  blobPath(key: string): string {
    return path.join(this.layersDir, `${key}.qcow2`);
  }
  manifestPath(key: string): string {
    return path.join(this.layersDir, `${key}.json`);
  }
  logPath(key: string): string {
    return path.join(this.layersDir, `${key}.log`);
  }
  private sealPath(key: string): string {
    return path.join(this.root, 'seals', `${key}.json`);
  }

  /** Seals a blob whose bytes were just checked whole against `m` (see checkBlob). */
  async seal(key: string, m: Pick<LayerManifest, 'blob'>): Promise<void> {
    const seal = await takeSeal(this.blobPath(key), m.blob.sha256);
    await mkdir(path.dirname(this.sealPath(key)), { recursive: true });
    await writeJsonAtomic(this.sealPath(key), seal);
  }

  /**
   * Whether a layer's blob is still the bytes its manifest names. 'seal': the seal taken when
   * it was last checked whole still matches (constant cost), else a full hash; 'full': a full
   * hash. A full hash that matches reseals the blob.
   */
  async checkBlob(m: LayerManifest, mode: 'seal' | 'full' = 'seal'): Promise<BlobCheck> {
    const file = this.blobPath(m.key);
    let st;
    try {
      st = await stat(file);
    } catch (e) {
      return { ok: false, reason: `its blob ${file} is missing (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})` };
    }
    if (st.size !== m.blob.size) return { ok: false, reason: `its blob is ${st.size} bytes, its manifest says ${m.blob.size}` };
    if (mode === 'seal' && (await sealHolds(await readSeal(this.sealPath(m.key)), file, st, m.blob.sha256))) return { ok: true, how: 'seal' };
    const sha256 = await sha256File(file);
    if (sha256 !== m.blob.sha256) return { ok: false, reason: `its blob's sha256 is ${sha256}, its manifest says ${m.blob.sha256}` };
    await this.seal(m.key, m);
    return { ok: true, how: 'full' };
  }

  /**
   * The manifest of a layer whose blob passes checkBlob, or null: no such layer, or a corrupt
   * one, which is removed with every layer built on it (they are rebuilt like any miss) and
   * reported through `onCorrupt`. An unreadable manifest counts as corrupt.
   */
  async trustedManifest(key: string, mode: 'seal' | 'full', onCorrupt: (c: { key: string; name: string; reason: string; removed: string[] }) => void): Promise<LayerManifest | null> {
    let m: LayerManifest | null;
    try {
      m = await this.getManifest(key);
    } catch (e) {
      const removed = await this.remove([key]);
      onCorrupt({ key, name: key.slice(0, 12), reason: (e as Error).message, removed });
      return null;
    }
    if (!m) return null;
    const r = await this.checkBlob(m, mode);
    if (r.ok) return m;
    const removed = await this.remove([key]);
    onCorrupt({ key, name: m.name, reason: r.reason, removed });
    return null;
  }

  /**
   * Checks every layer's blob whole (`vmlb verify`); a corrupt one is removed with the layers
   * built on it unless `dryRun`.
   */
  async verifyAll(o: { dryRun?: boolean } = {}): Promise<{ checked: number; bytes: number; corrupt: Array<{ key: string; name: string; reason: string; removed: string[] }> }> {
    const all = await this.list();
    const corrupt: Array<{ key: string; name: string; reason: string; removed: string[] }> = [];
    let bytes = 0;
    const gone = new Set<string>();
    for (const { manifest: m } of all) {
      if (gone.has(m.key)) continue;
      const r = await this.checkBlob(m, 'full');
      bytes += m.blob.size;
      if (r.ok) continue;
      const removed = o.dryRun ? [] : await this.remove([m.key], all);
      for (const k of removed) gone.add(k);
      corrupt.push({ key: m.key, name: m.name, reason: r.reason, removed });
    }
    return { checked: all.length, bytes, corrupt };
  }

  /** Every file of a layer, manifest first: from that moment the layer no longer exists for any reader. */
  private async removeFiles(key: string): Promise<void> {
    await rm(this.manifestPath(key), { force: true });
    await rm(this.blobPath(key), { force: true });
    await rm(this.logPath(key), { force: true });
    await rm(this.sealPath(key), { force: true });
  }

  async getManifest(key: string): Promise<LayerManifest | null> {
    try {
      return JSON.parse(await readFile(this.manifestPath(key), 'utf8')) as LayerManifest;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new StoreError(`the manifest of layer ${key} is unreadable: ${(e as Error).message}`, { cause: e });
    }
  }

  /** A fresh temporary blob path for building `key` beside its parent. */
  tempBlobPath(key: string): string {
    return path.join(this.layersDir, `.tmp-${key}.${process.pid}.${randomBytes(4).toString('hex')}.qcow2`);
  }

  /**
   * Publish a built layer: the blob is linked to its final name (never replacing one that
   * another build published first: then ours is dropped and theirs is returned), the log
   * moved beside it, and the manifest written last.
   */
  async publish(tmpBlob: string, manifest: Omit<LayerManifest, 'blob' | 'log' | 'version'>, tmpLog?: string): Promise<LayerManifest> {
    const { key } = manifest;
    const [sha256, st] = await Promise.all([sha256File(tmpBlob), stat(tmpBlob)]);
    const full: LayerManifest = {
      version: MANIFEST_VERSION,
      ...manifest,
      blob: { file: `${key}.qcow2`, sha256, size: st.size },
      log: `${key}.log`,
    };
    return this.publishComplete(tmpBlob, full, tmpLog);
  }

  /**
   * Publish a blob whose manifest is already complete and whose sha256 the caller has
   * verified against it (a layer pulled from the shared store), under the same rules.
   */
  async publishComplete(tmpBlob: string, full: LayerManifest, tmpLog?: string): Promise<LayerManifest> {
    const { key } = full;
    // On disk before it has a name: a crash after the manifest is written cannot leave a
    // published layer with blocks that never reached the disk.
    await fsyncFile(tmpBlob);
    // While the blob has its name and no manifest yet, the publish lock says it is not debris (orphans()).
    const lock = publishLockPath(this.root, key);
    while (!(await tryLock(lock))) await new Promise((r) => setTimeout(r, 20));
    try {
      return await this.publishLocked(tmpBlob, full, tmpLog);
    } finally {
      await unlock(lock);
    }
  }

  private async publishLocked(tmpBlob: string, full: LayerManifest, tmpLog?: string): Promise<LayerManifest> {
    const { key } = full;
    try {
      await link(tmpBlob, this.blobPath(key));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const existing = await this.getManifest(key);
      if (existing) {
        await unlink(tmpBlob);
        if (tmpLog) await rm(tmpLog, { force: true });
        return existing;
      }
      // A blob without a manifest is debris of a crashed publish: ours replaces it.
      await rename(tmpBlob, this.blobPath(key));
    }
    try {
      await rm(tmpBlob, { force: true });
      if (tmpLog) await rename(tmpLog, this.logPath(key));
      await this.seal(key, full);
      await writeJsonAtomic(this.manifestPath(key), full);
    } catch (e) {
      // Half a publish (the filesystem filled up writing the manifest) leaves no blob behind.
      await this.removeFiles(key);
      throw e;
    }
    return full;
  }

  /** Marks a chain as used now (LRU): its manifests' mtimes. */
  async touch(keys: string[]): Promise<void> {
    const now = new Date();
    await Promise.all(keys.map((k) => utimes(this.manifestPath(k), now, now).catch(() => undefined)));
  }

  // ---- history, pins, builds in progress (see store-history.ts, store-pins.ts, active-builds.ts) ----

  lastInputs(projectDir: string, layerName: string): Promise<LayerInputs | undefined> {
    return lastInputs(this.root, projectDir, layerName);
  }

  /** The key of the last build of a layer name in a project (what `diff 03_users …` names), if any. */
  lastBuiltKey(projectDir: string, layerName: string): Promise<string | undefined> {
    return lastBuiltKey(this.root, projectDir, layerName);
  }

  recordInputs(projectDir: string, layerName: string, key: string, inputs: LayerInputs): Promise<void> {
    return recordInputs(this.root, projectDir, layerName, key, inputs);
  }

  /** The keys of the layers in the store that start with `prefix` (a key as `explain` shows it). */
  async keysStartingWith(prefix: string): Promise<string[]> {
    const names = await readdir(this.layersDir).catch(() => [] as string[]);
    return names.filter((n) => n.endsWith('.json') && n.startsWith(prefix) && KEY_PATTERN.test(n.slice(0, -5))).map((n) => n.slice(0, -5));
  }

  readPin(output: string): Promise<StorePin | undefined> {
    return readPin(this.root, output);
  }

  pin(output: string, chain: string[]): Promise<void> {
    return writePin(this.root, output, chain);
  }

  unpin(output: string): Promise<void> {
    return removePin(this.root, output);
  }

  /** Chains that outputs still on disk reference; pins whose output is gone are dropped. */
  pinnedKeys(): Promise<Set<string>> {
    return pinnedKeys(this.root);
  }

  /** See markActive in active-builds.ts: gc and eviction keep `keys` until the release is called. */
  async markActive(keys: string[], what: string): Promise<() => Promise<void>> {
    await this.init();
    return markActive(this.root, keys, what);
  }

  /** The keys of the builds in progress (records of processes that are gone are removed). */
  activeKeys(): Promise<Set<string>> {
    return activeKeys(this.root);
  }

  // ---- listing, removal, eviction, sweeping ----

  async list(): Promise<StoreEntry[]> {
    const out: StoreEntry[] = [];
    const names = await readdir(this.layersDir).catch(() => [] as string[]);
    await Promise.all(
      names.map(async (n) => {
        if (!n.endsWith('.json')) return;
        const key = n.slice(0, -5);
        if (!KEY_PATTERN.test(key)) return;
        try {
          const [m, st] = await Promise.all([this.getManifest(key), stat(this.manifestPath(key))]);
          if (!m) return;
          const logBytes = await stat(this.logPath(key)).then((s) => s.size, () => 0);
          out.push({ manifest: m, lastUsed: st.mtimeMs, bytes: m.blob.size + logBytes });
        } catch {
          /* a layer removed while listing */
        }
      }),
    );
    return out;
  }

  /** Removes layers and every layer built on them; returns the keys removed. */
  async remove(keys: Iterable<string>, all?: Array<{ manifest: LayerManifest }>): Promise<string[]> {
    const doomed = withDescendants(keys, all ?? (await this.list()));
    for (const k of doomed) await this.removeFiles(k);
    return [...doomed];
  }

  /**
   * What gc (or eviction) would remove (see planRemovalOf): never `protect`, a chain an output
   * on disk uses (pins), or a chain of a build in progress.
   */
  async planRemoval(o: { capBytes?: number; olderThanMs?: number; protect?: Iterable<string>; now?: number }): Promise<RemovalPlan> {
    const all = await this.list();
    // Pins and builds in progress are read (and stale ones dropped) only when something may go.
    const wanted = removalWanted(all.reduce((s, l) => s + l.bytes, 0), o);
    const keep = wanted ? [...(await this.pinnedKeys()), ...(await this.activeKeys()), ...(o.protect ?? [])] : [];
    return planRemovalOf(all, keep, o);
  }

  /**
   * Removes the layers of a plan, except any that a build started since needs (the builds in
   * progress are read again before each removal). Returns the keys removed and their bytes.
   */
  async removePlanned(plan: RemovalPlan): Promise<{ removed: string[]; bytes: number }> {
    if (plan.layers.length === 0) return { removed: [], bytes: 0 };
    const all = await this.list();
    const byKey = new Map(all.map((l) => [l.manifest.key, l]));
    const removed: string[] = [];
    let bytes = 0;
    for (const l of plan.layers) {
      // Read again before each removal: a build that starts now and finds this layer a hit has
      // recorded it by then, or plans again when it finds it gone (build.ts).
      if (withAncestors(await this.activeKeys(), byKey).has(l.key)) continue;
      await this.removeFiles(l.key);
      removed.push(l.key);
      bytes += l.bytes;
    }
    return { removed, bytes };
  }

  /**
   * Evicts least-recently-used layers until the store holds at most `capBytes`. Never
   * evicts `protect` (the chain being built or output), chains pinned by outputs on disk, nor
   * the chains of builds in progress. Uncacheable layers (`# nocache` and after) no output
   * references go first.
   */
  async evict(capBytes: number, protect: Iterable<string> = []): Promise<{ removed: string[]; bytes: number }> {
    return this.removePlanned(await this.planRemoval({ capBytes, protect }));
  }


  /** Removes temporary blobs whose building process is gone (a killed run's debris). */
  sweepTemp(): Promise<number> {
    return sweepTemp(this.layersDir);
  }

  /** Files no layer owns (see findOrphans in store-debris.ts). */
  orphans(): Promise<Array<{ file: string; bytes: number }>> {
    return findOrphans(this.root, this.layersDir);
  }

  /** Removes the store's orphans (see orphans()); returns how many files and bytes. */
  async sweepOrphans(): Promise<{ files: number; bytes: number }> {
    const found = await this.orphans();
    for (const o of found) await rm(o.file, { force: true });
    return { files: found.length, bytes: found.reduce((s, o) => s + o.bytes, 0) };
  }

  async usage(): Promise<{ layers: number; bytes: number }> {
    const all = await this.list();
    return { layers: all.length, bytes: all.reduce((s, l) => s + l.bytes, 0) };
  }
}

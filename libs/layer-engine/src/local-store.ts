import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { processIdentity, isRunning, readLockOwner, tryLock, unlock, type ProcessIdentity } from './attach-state.js';
import { StoreError } from './errors.js';
import type { LayerInputs, LayerKind, Partition, PartitionTable } from './types.js';

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

export const MANIFEST_VERSION = 1;

export interface LayerManifest {
  version: number;
  key: string;
  parent: string | null;
  /** The layer folder's name when it was built (informational: keys are what matter). */
  name: string;
  kind: LayerKind;
  /** false for `# nocache` layers and their descendants: never served as a hit. */
  cacheable: boolean;
  /** false for `# noshare` layers: never uploaded to a shared store. */
  share: boolean;
  blob: { file: string; sha256: string; size: number };
  virtualSize: number;
  /** The disk's partition table after this layer, and the root filesystem's partition. */
  partitions: PartitionTable;
  root: Pick<Partition, 'number' | 'start' | 'size'>;
  inputs: LayerInputs;
  builtBy: { host: string; user: string; tool: string; backend: string };
  builtAt: string;
  seconds: number;
  log: string;
  /**
   * The blob sha256 of the parent this layer was built on. Set by the shared store when it
   * uploads a layer: a qcow2 overlay is only valid on the exact parent bytes it was written
   * over, and two hosts building the same parent key get different bytes (ext4 timestamps,
   * UUIDs), so a shared layer is used only on top of that parent.
   */
  parentSha256?: string;
}

/** A layer that gc or eviction would remove, and why. */
export interface RemovalCandidate {
  key: string;
  name: string;
  kind: LayerKind;
  cacheable: boolean;
  /** Blob and log. */
  bytes: number;
  lastUsed: number;
  reason: 'age' | 'size';
}

export interface RemovalPlan {
  /** Descendants before their ancestors, the order they are removed in. */
  layers: RemovalCandidate[];
  bytes: number;
  /** The store before: layers and bytes. */
  before: { layers: number; bytes: number };
  /** Layers kept because an output on disk or a build in progress needs them. */
  protectedLayers: number;
}

interface ActiveRecord {
  owner: ProcessIdentity;
  what: string;
  keys: string[];
  at: string;
}

export interface StorePin {
  output: string;
  chain: string[];
  at: string;
}

/** The default store: $VMLB_STORE, else $XDG_CACHE_HOME/vmlb, else ~/.cache/vmlb. */
export function defaultStoreDir(): string {
  if (process.env.VMLB_STORE) return path.resolve(process.env.VMLB_STORE);
  const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(cache, 'vmlb');
}

const KEY_RE = /^[0-9a-f]{64}$/;
const TMP_RE = /^\.tmp-([0-9a-f]{64})\.(\d+)\.([0-9a-f]+)\.qcow2(\.raw)?$/;
/** A manifest or seal being written (writeJsonAtomic) by process $2. */
const JSON_TMP_RE = /^(.+)\.json\.(\d+)\.[0-9a-f]+\.tmp$/;

/** What checkBlob found. */
export type BlobCheck =
  | { ok: true; how: 'seal' | 'full' }
  | { ok: false; reason: string };

interface Seal {
  sha256: string;
  size: number;
  dev: number;
  ino: number;
  mtimeMs: number;
  ctimeMs: number;
  /** sha256 of the blob's first 64 KiB and 64 pages spread over it (sampleHash). */
  sample: string;
  at: string;
}

const SAMPLE_HEAD = 64 << 10;
const SAMPLE_PAGES = 64;
const SAMPLE_PAGE = 4096;

/** A hash of a fixed few parts of a file: its head (a qcow2's header and tables) and 64 pages spread evenly over it. */
async function sampleHash(file: string, size: number): Promise<string> {
  const h = createHash('sha256');
  const fd = await open(file, 'r');
  try {
    const head = Buffer.alloc(Math.min(SAMPLE_HEAD, size));
    await fd.read(head, 0, head.length, 0);
    h.update(head);
    if (size > SAMPLE_HEAD) {
      const page = Buffer.alloc(SAMPLE_PAGE);
      const span = Math.max(0, size - SAMPLE_PAGE);
      for (let i = 0; i < SAMPLE_PAGES; i++) {
        const at = Math.floor((span * i) / (SAMPLE_PAGES - 1) / SAMPLE_PAGE) * SAMPLE_PAGE;
        const { bytesRead } = await fd.read(page, 0, SAMPLE_PAGE, at);
        h.update(page.subarray(0, bytesRead));
      }
    }
  } finally {
    await fd.close();
  }
  return h.digest('hex');
}

/** Flushes a file's data to the disk. */
async function fsyncFile(file: string): Promise<void> {
  const fd = await open(file, 'r+');
  try {
    await fd.sync();
  } finally {
    await fd.close();
  }
}

function sha(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, JSON.stringify(value, null, 2) + '\n');
  await rename(tmp, file);
}

/** Whether a process with this pid exists (a pid alone; see attach-state.ts for pid + start time). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class LocalStore {
  readonly root: string;
  readonly layersDir: string;
  private ready: Promise<void> | undefined;

  constructor(root: string = defaultStoreDir()) {
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
    const file = this.blobPath(key);
    const st = await stat(file, { bigint: false });
    const seal: Seal = { sha256: m.blob.sha256, size: st.size, dev: st.dev, ino: st.ino, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, sample: await sampleHash(file, st.size), at: new Date().toISOString() };
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
    if (mode === 'seal') {
      const seal = await readFile(this.sealPath(m.key), 'utf8').then((t) => JSON.parse(t) as Seal, () => null);
      if (
        seal &&
        seal.sha256 === m.blob.sha256 &&
        seal.size === st.size &&
        seal.dev === st.dev &&
        seal.ino === st.ino &&
        seal.mtimeMs === st.mtimeMs &&
        seal.ctimeMs === st.ctimeMs &&
        seal.sample === (await sampleHash(file, st.size))
      ) {
        return { ok: true, how: 'seal' };
      }
    }
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
    const lock = this.publishLockPath(key);
    while (!(await tryLock(lock))) await new Promise((r) => setTimeout(r, 20));
    try {
      return await this.publishLocked(tmpBlob, full, tmpLog);
    } finally {
      await unlock(lock);
    }
  }

  private publishLockPath(key: string): string {
    return path.join(this.root, 'claims', `${key}.publish`);
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

  // ---- history: the inputs of the last build of each layer name, per project ----

  private historyFile(projectDir: string, layerName: string): string {
    return path.join(this.root, 'history', sha(path.resolve(projectDir)).slice(0, 16), `${layerName}.json`);
  }

  async lastInputs(projectDir: string, layerName: string): Promise<LayerInputs | undefined> {
    try {
      const j = JSON.parse(await readFile(this.historyFile(projectDir, layerName), 'utf8')) as { inputs: LayerInputs };
      return j.inputs;
    } catch {
      return undefined;
    }
  }

  /** The key of the last build of a layer name in a project (what `diff 03_users …` names), if any. */
  async lastBuiltKey(projectDir: string, layerName: string): Promise<string | undefined> {
    try {
      const j = JSON.parse(await readFile(this.historyFile(projectDir, layerName), 'utf8')) as { key?: string };
      return typeof j.key === 'string' && KEY_RE.test(j.key) ? j.key : undefined;
    } catch {
      return undefined;
    }
  }

  /** The keys of the layers in the store that start with `prefix` (a key as `explain` shows it). */
  async keysStartingWith(prefix: string): Promise<string[]> {
    const names = await readdir(this.layersDir).catch(() => [] as string[]);
    return names.filter((n) => n.endsWith('.json') && n.startsWith(prefix) && KEY_RE.test(n.slice(0, -5))).map((n) => n.slice(0, -5));
  }

  async recordInputs(projectDir: string, layerName: string, key: string, inputs: LayerInputs): Promise<void> {
    const file = this.historyFile(projectDir, layerName);
    await mkdir(path.dirname(file), { recursive: true });
    await writeJsonAtomic(file, { project: path.resolve(projectDir), layer: layerName, key, inputs, at: new Date().toISOString() });
  }

  // ---- pins: outputs that reference a chain ----

  private pinFile(output: string): string {
    return path.join(this.root, 'pins', `${sha(path.resolve(output)).slice(0, 24)}.json`);
  }

  async readPin(output: string): Promise<StorePin | undefined> {
    try {
      return JSON.parse(await readFile(this.pinFile(output), 'utf8')) as StorePin;
    } catch {
      return undefined;
    }
  }

  async pin(output: string, chain: string[]): Promise<void> {
    await writeJsonAtomic(this.pinFile(output), { output: path.resolve(output), chain, at: new Date().toISOString() } satisfies StorePin);
  }

  async unpin(output: string): Promise<void> {
    await rm(this.pinFile(output), { force: true });
  }

  /** Chains that outputs still on disk reference; pins whose output is gone are dropped. */
  async pinnedKeys(): Promise<Set<string>> {
    const keep = new Set<string>();
    const dir = path.join(this.root, 'pins');
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      if (!f.endsWith('.json')) continue;
      try {
        const p = JSON.parse(await readFile(path.join(dir, f), 'utf8')) as StorePin;
        await stat(p.output);
        for (const k of p.chain) keep.add(k);
      } catch {
        await rm(path.join(dir, f), { force: true });
      }
    }
    return keep;
  }

  // ---- listing, eviction, sweeping ----

  async list(): Promise<Array<{ manifest: LayerManifest; lastUsed: number; bytes: number }>> {
    const out: Array<{ manifest: LayerManifest; lastUsed: number; bytes: number }> = [];
    const names = await readdir(this.layersDir).catch(() => [] as string[]);
    await Promise.all(
      names.map(async (n) => {
        if (!n.endsWith('.json')) return;
        const key = n.slice(0, -5);
        if (!KEY_RE.test(key)) return;
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

  /** The given layers and every layer built on them (they cannot be used without them). */
  private withDescendants(keys: Iterable<string>, all: Array<{ manifest: LayerManifest }>): Set<string> {
    const children = new Map<string, string[]>();
    for (const { manifest: m } of all) {
      if (m.parent) children.set(m.parent, [...(children.get(m.parent) ?? []), m.key]);
    }
    const out = new Set<string>();
    const visit = (k: string) => {
      if (out.has(k)) return;
      out.add(k);
      for (const c of children.get(k) ?? []) visit(c);
    };
    for (const k of keys) visit(k);
    return out;
  }

  /** Removes layers and every layer built on them; returns the keys removed. */
  async remove(keys: Iterable<string>, all?: Array<{ manifest: LayerManifest }>): Promise<string[]> {
    const doomed = this.withDescendants(keys, all ?? (await this.list()));
    for (const k of doomed) await this.removeFiles(k);
    return [...doomed];
  }

  // ---- builds in progress ----

  /**
   * Records that a build in progress uses `keys` (its whole chain): until the returned
   * release is called, or its process is gone, gc and eviction keep them and their ancestors.
   */
  async markActive(keys: string[], what: string): Promise<() => Promise<void>> {
    await this.init();
    const owner = await processIdentity(process.pid);
    if (!owner) throw new StoreError(`cannot read this process's identity (/proc/${process.pid}/stat)`);
    const file = path.join(this.root, 'active', `${process.pid}-${randomBytes(4).toString('hex')}.json`);
    await writeJsonAtomic(file, { owner, what, keys, at: new Date().toISOString() } satisfies ActiveRecord);
    return () => rm(file, { force: true });
  }

  /** The keys of the builds in progress (records of processes that are gone are removed). */
  async activeKeys(): Promise<Set<string>> {
    const keys = new Set<string>();
    const dir = path.join(this.root, 'active');
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      if (!f.endsWith('.json')) continue;
      const file = path.join(dir, f);
      try {
        const r = JSON.parse(await readFile(file, 'utf8')) as ActiveRecord;
        if (await isRunning(r.owner)) for (const k of r.keys) keys.add(k);
        else await rm(file, { force: true });
      } catch {
        /* being written or removed right now */
      }
    }
    return keys;
  }

  // ---- eviction and gc ----

  /** `keys` and every ancestor of them in the store. */
  private withAncestors(keys: Iterable<string>, byKey: Map<string, { manifest: LayerManifest }>): Set<string> {
    const out = new Set<string>();
    for (const k of keys) {
      for (let cur: string | null | undefined = k; cur && !out.has(cur); cur = byKey.get(cur)?.manifest.parent) out.add(cur);
    }
    return out;
  }

  /**
   * What gc (or eviction) would remove: layers last used before `olderThanMs` ago, then
   * least-recently-used layers until the store holds at most `capBytes` (uncacheable layers
   * first; on a tie, deeper layers first). A layer goes with every layer built on it; never
   * `protect`, a chain an output on disk uses (pins), or a chain of a build in progress.
   */
  async planRemoval(o: { capBytes?: number; olderThanMs?: number; protect?: Iterable<string>; now?: number }): Promise<RemovalPlan> {
    const all = await this.list();
    const totalBefore = all.reduce((s, l) => s + l.bytes, 0);
    const plan: RemovalPlan = { layers: [], bytes: 0, before: { layers: all.length, bytes: totalBefore }, protectedLayers: 0 };
    const overCap = o.capBytes !== undefined && totalBefore > o.capBytes;
    if (!overCap && o.olderThanMs === undefined) return plan;
    const byKey = new Map(all.map((l) => [l.manifest.key, l]));
    const keep = this.withAncestors([...(await this.pinnedKeys()), ...(await this.activeKeys()), ...(o.protect ?? [])], byKey);
    plan.protectedLayers = all.filter((l) => keep.has(l.manifest.key)).length;
    const depth = (k: string): number => {
      let d = 0;
      for (let m = byKey.get(k)?.manifest; m?.parent; m = byKey.get(m.parent)?.manifest) d++;
      return d;
    };
    const doomed = new Map<string, RemovalCandidate>();
    let total = totalBefore;
    const take = (k: string, reason: RemovalCandidate['reason']): boolean => {
      // A layer under a kept one stays (a kept layer's chain is kept whole).
      const group = this.withDescendants([k], all);
      if ([...group].some((g) => keep.has(g))) return false;
      for (const g of group) {
        const l = byKey.get(g);
        if (!l || doomed.has(g)) continue;
        doomed.set(g, { key: g, name: l.manifest.name, kind: l.manifest.kind, cacheable: l.manifest.cacheable, bytes: l.bytes, lastUsed: l.lastUsed, reason });
        total -= l.bytes;
      }
      return true;
    };
    if (o.olderThanMs !== undefined) {
      const cutoff = (o.now ?? Date.now()) - o.olderThanMs;
      for (const l of all) if (l.lastUsed < cutoff && !doomed.has(l.manifest.key)) take(l.manifest.key, 'age');
    }
    if (o.capBytes !== undefined && total > o.capBytes) {
      // A chain is touched as a whole when used, so a parent is never older than its
      // children; on a tie, deeper layers go first.
      const candidates = all
        .filter((l) => !keep.has(l.manifest.key))
        .sort((a, b) => Number(a.manifest.cacheable) - Number(b.manifest.cacheable) || a.lastUsed - b.lastUsed || depth(b.manifest.key) - depth(a.manifest.key));
      for (const c of candidates) {
        if (total <= o.capBytes) break;
        if (!doomed.has(c.manifest.key)) take(c.manifest.key, 'size');
      }
    }
    plan.layers = [...doomed.values()].sort((a, b) => depth(b.key) - depth(a.key) || a.key.localeCompare(b.key));
    plan.bytes = plan.layers.reduce((s, l) => s + l.bytes, 0);
    return plan;
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
      if (this.withAncestors(await this.activeKeys(), byKey).has(l.key)) continue;
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
  async sweepTemp(): Promise<number> {
    let n = 0;
    for (const f of await readdir(this.layersDir).catch(() => [] as string[])) {
      const m = TMP_RE.exec(f);
      if (m && !pidAlive(Number(m[2]))) {
        await rm(path.join(this.layersDir, f), { force: true });
        await rm(path.join(this.layersDir, f.replace(/\.qcow2$/, '.log')), { force: true });
        n++;
      }
    }
    return n;
  }

  /**
   * Debris no layer owns: a blob or log without a manifest (a publish that crashed or ran out
   * of space between its steps), a seal without a manifest, a manifest half written by a
   * process that is gone. A blob without a manifest counts only when no process is
   * publishing it (its publish lock) and no local build in progress names its key.
   */
  async orphans(): Promise<Array<{ file: string; bytes: number }>> {
    const out: Array<{ file: string; bytes: number }> = [];
    const names = await readdir(this.layersDir).catch(() => [] as string[]);
    const have = new Set(names.filter((n) => n.endsWith('.json') && KEY_RE.test(n.slice(0, -5))).map((n) => n.slice(0, -5)));
    const active = await this.activeKeys();
    const add = async (file: string) => {
      const st = await stat(file).catch(() => null);
      if (st) out.push({ file, bytes: st.size });
    };
    const publishing = async (key: string) => {
      const owner = await readLockOwner(this.publishLockPath(key));
      return owner !== null && (await isRunning(owner));
    };
    // A layer's files (layers/: blob, log; seals/: its seal) and the temp manifests beside them.
    const seals = path.join(this.root, 'seals');
    const dirs: Array<[string, string[], RegExp]> = [
      [this.layersDir, names, /^([0-9a-f]{64})\.(qcow2|log)$/],
      [seals, await readdir(seals).catch(() => [] as string[]), /^([0-9a-f]{64})\.json$/],
    ];
    for (const [dir, files, owned] of dirs) {
      for (const n of files) {
        const m = owned.exec(n);
        if (m && !have.has(m[1]!) && !active.has(m[1]!) && !(await publishing(m[1]!))) await add(path.join(dir, n));
        const t = JSON_TMP_RE.exec(n);
        if (t && !pidAlive(Number(t[2]))) await add(path.join(dir, n));
      }
    }
    return out;
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

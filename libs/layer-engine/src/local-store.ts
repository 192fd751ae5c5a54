import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { link, mkdir, readdir, readFile, rename, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { processIdentity, isRunning, type ProcessIdentity } from './attach-state.js';
import { StoreError } from './errors.js';
import type { LayerInputs, LayerKind, Partition, PartitionTable } from './types.js';

/**
 * The local store: one folder, the same layout as the shared store (DESIGN.md):
 *
 *   layers/<key>.qcow2   the overlay, its backing file named `<parentkey>.qcow2` (relative)
 *   layers/<key>.json    the manifest; a layer exists only when this exists
 *   layers/<key>.log     the full log of the script that built it
 *   history/<project>/<layer name>.json   the inputs of the last build of that layer name,
 *                        so `explain` can say what changed (project = hash of its path)
 *   pins/<id>.json       outputs (build/image.qcow2) whose chain must not be evicted
 *   active/<pid>-<rand>.json   the keys of a build in progress (its owner's pid and start
 *                        time): gc and eviction never remove them while it runs
 *
 * A blob being built sits in layers/ as `.tmp-<key>.<pid>.<rand>.qcow2` (it must be beside
 * its parent for the relative backing path) and is published by link(2), which never
 * replaces a layer another build published first. Hits are served in place: nothing is copied.
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
const TMP_RE = /^\.tmp-([0-9a-f]{64})\.(\d+)\.([0-9a-f]+)\.qcow2$/;

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
      for (const d of ['layers', 'history', 'pins', 'active', 'claims']) await mkdir(path.join(this.root, d), { recursive: true });
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
    await rm(tmpBlob, { force: true });
    if (tmpLog) await rename(tmpLog, this.logPath(key));
    await writeJsonAtomic(this.manifestPath(key), full);
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
    // Manifest first: from that moment the layer no longer exists for any reader.
    for (const k of doomed) {
      await rm(this.manifestPath(k), { force: true });
      await rm(this.blobPath(k), { force: true });
      await rm(this.logPath(k), { force: true });
    }
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
      // Manifest first: from that moment the layer no longer exists for any reader.
      await rm(this.manifestPath(l.key), { force: true });
      await rm(this.blobPath(l.key), { force: true });
      await rm(this.logPath(l.key), { force: true });
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

  async usage(): Promise<{ layers: number; bytes: number }> {
    const all = await this.list();
    return { layers: all.length, bytes: all.reduce((s, l) => s + l.bytes, 0) };
  }
}

/**
 * The comparison behind `vmlb diff` (the original tool's compare-layers): two file trees,
 * walked without following links, compared by type, permission bits, owner, symlink target,
 * device numbers and content. Content is hashed only when the sizes match and the two files
 * are not plainly the same inode (same inode number, size, mtime and ctime — what an
 * unchanged file looks like in two layers of one chain; `checksum` hashes those too).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';
import type { PathFilter } from './path-filter.js';

export type EntryType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';

export interface TreeEntry {
  type: EntryType;
  /** Permission bits (with setuid/setgid/sticky). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  target?: string;
  rdev?: number;
  ino: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

export type ChangeKind = 'added' | 'removed' | 'modified';
export type Aspect = 'type' | 'content' | 'mode' | 'owner' | 'target' | 'device';

export interface EntrySummary {
  type: EntryType;
  mode: string;
  uid: number;
  gid: number;
  size: number;
  target?: string;
}

export interface TreeChange {
  path: string;
  change: ChangeKind;
  /** What differs (modified only). */
  aspects: Aspect[];
  before?: EntrySummary;
  after?: EntrySummary;
}

function typeOf(st: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isFIFO(): boolean }): EntryType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

/** Runs async jobs with at most `n` at once. */
function limiter(n: number) {
  let active = 0;
  const queue: Array<() => void> = [];
  return async <T>(fn: () => Promise<T>): Promise<T> => {
    if (active >= n) await new Promise<void>((r) => queue.push(r));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      queue.shift()?.();
    }
  };
}

/** Every entry under `root`, by its path inside the tree (`/`, `/etc`, `/etc/hostname`, …). */
export async function walkTree(root: string, filter?: PathFilter): Promise<Map<string, TreeEntry>> {
  const out = new Map<string, TreeEntry>();
  const limit = limiter(32);
  const visit = async (rel: string): Promise<void> => {
    const abs = rel === '/' ? root : path.join(root, rel);
    const st = await limit(() => lstat(abs, { bigint: true }));
    const type = typeOf(st);
    const e: TreeEntry = {
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: Number(st.size),
      ino: st.ino,
      mtimeNs: st.mtimeNs,
      ctimeNs: st.ctimeNs,
    };
    if (type === 'symlink') e.target = await limit(() => readlink(abs));
    if (type === 'char' || type === 'block') e.rdev = Number(st.rdev);
    out.set(rel, e);
    if (type !== 'dir' || (rel !== '/' && filter && !filter.descend(rel))) return;
    const names = await limit(() => readdir(abs));
    await Promise.all(names.map((n) => visit(rel === '/' ? `/${n}` : `${rel}/${n}`)));
  };
  await visit('/');
  return out;
}

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

export function summarize(e: TreeEntry): EntrySummary {
  const s: EntrySummary = { type: e.type, mode: e.mode.toString(8).padStart(3, '0'), uid: e.uid, gid: e.gid, size: e.size };
  if (e.target !== undefined) s.target = e.target;
  return s;
}

/**
 * What changed from tree A to tree B, sorted by path. `rootA`/`rootB` are where the trees
 * can be read (for content hashes).
 */
export async function compareTrees(
  a: Map<string, TreeEntry>,
  b: Map<string, TreeEntry>,
  o: { rootA: string; rootB: string; filter?: PathFilter; checksum?: boolean },
): Promise<TreeChange[]> {
  const keep = (p: string) => !o.filter || o.filter.keep(p);
  const changes: TreeChange[] = [];
  const limit = limiter(4);
  const pending: Promise<void>[] = [];
  for (const [p, ea] of a) {
    if (!keep(p)) continue;
    const eb = b.get(p);
    if (!eb) {
      changes.push({ path: p, change: 'removed', aspects: [], before: summarize(ea) });
      continue;
    }
    const aspects: Aspect[] = [];
    if (ea.type !== eb.type) aspects.push('type');
    else {
      if (ea.type === 'symlink' && ea.target !== eb.target) aspects.push('target');
      if ((ea.type === 'char' || ea.type === 'block') && ea.rdev !== eb.rdev) aspects.push('device');
    }
    if (ea.type === eb.type && ea.type !== 'symlink' && ea.mode !== eb.mode) aspects.push('mode');
    if (ea.uid !== eb.uid || ea.gid !== eb.gid) aspects.push('owner');
    const change: TreeChange = { path: p, change: 'modified', aspects, before: summarize(ea), after: summarize(eb) };
    if (ea.type === 'file' && eb.type === 'file') {
      if (ea.size !== eb.size) aspects.push('content');
      else if (ea.size > 0 && (o.checksum || ea.ino !== eb.ino || ea.mtimeNs !== eb.mtimeNs || ea.ctimeNs !== eb.ctimeNs)) {
        pending.push(
          limit(async () => {
            const [ha, hb] = await Promise.all([sha256(path.join(o.rootA, p)), sha256(path.join(o.rootB, p))]);
            if (ha !== hb) aspects.push('content');
          }),
        );
      }
    }
    changes.push(change);
  }
  await Promise.all(pending);
  for (const [p, eb] of b) {
    if (keep(p) && !a.has(p)) changes.push({ path: p, change: 'added', aspects: [], after: summarize(eb) });
  }
  const order: Aspect[] = ['type', 'content', 'mode', 'owner', 'target', 'device'];
  return changes
    .filter((c) => c.change !== 'modified' || c.aspects.length > 0)
    .map((c) => ({ ...c, aspects: [...c.aspects].sort((x, y) => order.indexOf(x) - order.indexOf(y)) }))
    .sort((x, y) => (x.path < y.path ? -1 : x.path > y.path ? 1 : 0));
}

/** One line of the text output: `A /path`, `D /path`, `M /path (content, mode 644→755, owner 0:0→1000:1000)`. */
export function formatChange(c: TreeChange): string {
  if (c.change === 'added') return `A ${c.path}`;
  if (c.change === 'removed') return `D ${c.path}`;
  const a = c.before!;
  const b = c.after!;
  const words = c.aspects.map((x) => {
    switch (x) {
      case 'type':
        return `type ${a.type}→${b.type}`;
      case 'content':
        return 'content';
      case 'mode':
        return `mode ${a.mode}→${b.mode}`;
      case 'owner':
        return `owner ${a.uid}:${a.gid}→${b.uid}:${b.gid}`;
      case 'target':
        return `target ${a.target}→${b.target}`;
      case 'device':
        return 'device numbers';
    }
  });
  return `M ${c.path} (${words.join(', ')})`;
}

/**
 * Room on the store's filesystem for a layer: checked before a layer is built, and what a
 * layer that ran out of it (or whose writes failed for another reason) is told.
 *
 * A layer is a qcow2 overlay: it can hold at most every cluster of its disk, so the disk's
 * virtual size (plus the overlay's tables) bounds what building it can write to the store. A
 * layer whose bound does not fit in the free space is refused before it runs, once the store
 * has evicted what no build in progress needs (least recently used first, as the store cap
 * does). That bound is generous on purpose: a layer that writes less on a big disk is refused
 * all the same, because a layer that fills the filesystem midway loses writes the script
 * never sees (the kernel's filesystem on the disk carries on) and wastes the whole run.
 */
import { statfs } from 'node:fs/promises';
import { ExecError, LayerFailedError, VmlbError } from '../errors.js';
import type { LocalStore } from './local-store.js';
import { formatBytes } from '../sizes.js';

/** Bytes free on the filesystem of `dir` (statfs's bavail, df's Avail: root's reserve beyond it is left alone). */
export async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/** The most a layer on a disk of `virtualSize` bytes can write: every cluster, and its tables. */
export function layerWriteBound(virtualSize: number): number {
  // qcow2: an 8-byte L2 entry and a 2-byte refcount per 64 KiB cluster, plus headers; and the
  // log and manifest beside it.
  return virtualSize + Math.ceil(virtualSize / 4096) + (4 << 20);
}

/**
 * Makes sure `need` bytes are free on the store's filesystem: evicts least-recently-used
 * layers no build in progress uses when that is enough, else refuses, naming the layer, the
 * filesystem, what is free and what is needed. Returns a line saying what was evicted, if any.
 */
export async function ensureRoom(store: LocalStore, layer: string, need: number, what: string): Promise<string | null> {
  const free = await freeBytes(store.layersDir);
  if (free >= need) return null;
  const usage = await store.usage();
  const deficit = need - free;
  let evicted: string | null = null;
  if (usage.bytes > 0) {
    const r = await store.evict(Math.max(0, usage.bytes - deficit));
    if (r.removed.length > 0) evicted = `made room on the store's filesystem: evicted ${r.removed.length} unused layer${r.removed.length === 1 ? '' : 's'} (${formatBytes(r.bytes)})`;
  }
  const after = await freeBytes(store.layersDir);
  if (after >= need) return evicted;
  throw new VmlbError(
    'NO_SPACE',
    `${layer}: no space left on the store's filesystem (${store.root}): ${formatBytes(after)} free, and ${what} can write up to ${formatBytes(need)}; nothing was built (free some room: vmlb gc --keep-size SIZE, or a store elsewhere: VMLB_STORE)`,
  );
}

/**
 * The error for a layer whose writes did not all reach its blob: "no space left" when the
 * store's filesystem is (nearly) full, which is what a full disk looks like from here, else a
 * write failure. Either way nothing was published.
 */
export async function lostWritesError(store: LocalStore, layer: string, detail: string, need: number): Promise<VmlbError> {
  const free = await freeBytes(store.layersDir).catch(() => Number.NaN);
  if (free < Math.max(need / 100, 16 << 20)) {
    return new VmlbError(
      'NO_SPACE',
      `${layer}: no space left on the store's filesystem (${store.root}, ${formatBytes(free)} free): the layer's disk lost writes (${detail}); a layer on this disk can write up to ${formatBytes(need)}; nothing was published`,
    );
  }
  return new VmlbError('DISK_WRITE_FAILED', `${layer}: writes to the layer's disk failed (${detail}); nothing was published`);
}

/**
 * Whether an error is the engine's own write failing for want of space: a system call's ENOSPC,
 * or a tool the engine ran (qemu-img, mke2fs) saying so. A layer script's failure is its own,
 * even when it ran out of room on its disk.
 */
export function isNoSpace(e: unknown): boolean {
  if ((e as NodeJS.ErrnoException | undefined)?.code === 'ENOSPC') return true;
  // The engine's own wrapping of a failed write (the layer's log: LOG_WRITE) keeps its cause.
  if (e instanceof VmlbError && !(e instanceof LayerFailedError) && e.cause !== undefined && isNoSpace(e.cause)) return true;
  return e instanceof ExecError && /No space left on device|ENOSPC/.test(e.message);
}

import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { runDir } from '../disk/run-dirs.js';
import { pidAlive } from '../store/pid-alive.js';
import { chooseBackend, type BackendPreference } from '../disk/backends.js';
import type { AttachedDisk } from '../disk/disk-backend.js';
import { createOverlay, imageInfo } from '../host/qemu-img.js';
import { rootPartition } from '../host/partition-table.js';
import { releaseOnFailure } from '../disk/release-on-failure.js';
import type { PartitionTable } from '../types.js';

/** An image attached for reading through a throw-away overlay: the image itself never changes. */
export interface ReadOnlyImage {
  disk: AttachedDisk;
  table: PartitionTable;
  root: { number: number; start: number; size: number };
}

/**
 * Attaches `image` (qcow2 or raw) for reading: a fresh overlay on it (backing by absolute
 * path) is what gets attached, so whatever a mount or a tool writes — a journal replay, an
 * atime — lands in the overlay and is thrown away. `fn` gets the disk, its partition table
 * and its root partition; everything is released (and the overlay removed) when it returns
 * or throws. The fuse daemon the attach may have started is the caller's to shut down.
 */
export async function withReadOnlyImage<T>(
  image: string,
  o: { purpose: string; backend?: BackendPreference; signal?: AbortSignal },
  fn: (img: ReadOnlyImage) => Promise<T>,
): Promise<T> {
  const dir = path.join(runDir(), 'inspect');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await removeOrphans(dir);
  const overlay = path.join(dir, `${process.pid}-${randomBytes(6).toString('hex')}.qcow2`);
  try {
    const info = await imageInfo(image, { signal: o.signal });
    await createOverlay(overlay, path.resolve(image), { signal: o.signal, backingFormat: info.format });
    const backend = await chooseBackend(o.backend ?? 'auto');
    const disk = await backend.attach(overlay, { purpose: o.purpose, signal: o.signal });
    let result: T;
    try {
      const table = await disk.partitionTable();
      result = await fn({ disk, table, root: rootPartition(table, disk.size) });
    } catch (e) {
      throw await releaseOnFailure(e, () => disk.release());
    }
    await disk.release();
    return result;
  } finally {
    await rm(overlay, { force: true });
  }
}

/** Overlays and mount points (`<pid>-…`, `diff-<pid>-…`) of processes that are gone (killed). */
async function removeOrphans(dir: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const pid = Number(/^(?:diff-)?(\d+)-/.exec(name)?.[1]);
    if (pid && !pidAlive(pid)) await rm(path.join(dir, name), { recursive: true, force: true }).catch(() => undefined);
  }
}

import { readFile, readdir, stat } from 'node:fs/promises';
import type { BackendName } from '@vmlb/layer-engine';

/** Slots with the fuse backend, which needs no device of its own per disk. */
export const FUSE_SLOTS = 4;

/**
 * How many layer jobs a worker runs at once: VMLB_WORKER_SLOTS when given; with nbd the free
 * nbd devices (each running layer holds one); with fuse FUSE_SLOTS.
 */
export async function workerSlots(backend: BackendName, configured?: number): Promise<number> {
  if (configured !== undefined) return configured;
  if (backend === 'nbd') return Math.max(1, await freeNbdDevices());
  return FUSE_SLOTS;
}

/** nbd devices that nobody serves (no pid) and that hold no size from an earlier connection. */
export async function freeNbdDevices(): Promise<number> {
  const names = (await readdir('/sys/block').catch(() => [] as string[])).filter((n) => /^nbd\d+$/.test(n));
  let free = 0;
  for (const n of names) {
    const served = await stat(`/sys/block/${n}/pid`).then(() => true, () => false);
    const size = (await readFile(`/sys/block/${n}/size`, 'utf8').catch(() => '')).trim();
    if (!served && size === '0') free++;
  }
  return free;
}

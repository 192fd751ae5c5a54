import { access } from 'node:fs/promises';

/** Whether `path` exists, for probes of the host (/dev/fuse, /sys/block/nbd0/pid) and of files the engine made. */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

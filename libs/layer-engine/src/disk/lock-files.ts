/**
 * Lock files: the nbd backend's reservation of /dev/nbdN between choosing it and connecting
 * it, and the local store's locks. Node has no flock(): a lock file names its holder (pid and
 * start time, see process-identity.ts) and appears atomically with its content, and a dead
 * holder's lock is taken over.
 */
import { randomBytes } from 'node:crypto';
import { link, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { isRunning, selfIdentity, type ProcessIdentity } from '../host/process-identity.js';

/**
 * Take a lock file: written aside, then link()ed, which never overwrites; a dead holder's lock
 * is taken over. For an nbd device the kernel refuses a second connection to a busy device
 * anyway: the lock only keeps two engines from racing for the same free one.
 */
export async function tryLock(path: string): Promise<boolean> {
  const me = await selfIdentity();
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  await writeFile(tmp, JSON.stringify(me), { mode: 0o600 });
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await link(tmp, path);
        return true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      if (!(await removeStaleLock(path))) return false;
    }
    return false;
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Release a lock this process holds (and only then). */
export async function unlock(path: string): Promise<void> {
  const holder = await readLockOwner(path);
  const me = await selfIdentity();
  if (holder && holder.pid === me.pid && holder.startTime === me.startTime) await rm(path, { force: true });
}

/**
 * Remove a lock whose holder is dead, with no window in which a fresh lock could be lost:
 * move it aside (atomic), look at what was moved, and put a live one back with link().
 * True when the lock is gone.
 */
export async function removeStaleLock(path: string): Promise<boolean> {
  const holder = await readLockOwner(path);
  if (holder && (await isRunning(holder))) return false;
  const aside = `${path}.stale-${process.pid}-${randomBytes(3).toString('hex')}`;
  try {
    await rename(path, aside);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw e;
  }
  const moved = await readLockOwner(aside);
  if (moved && (await isRunning(moved))) {
    await link(aside, path).catch(() => {});
    await rm(aside, { force: true });
    return false;
  }
  await rm(aside, { force: true });
  return true;
}

/** The identity written into a lock file, or null when it is missing or unreadable. */
export async function readLockOwner(path: string): Promise<ProcessIdentity | null> {
  try {
    const v = JSON.parse(await readFile(path, 'utf8')) as Partial<ProcessIdentity>;
    return typeof v.pid === 'number' && typeof v.startTime === 'string' ? { pid: v.pid, startTime: v.startTime } : null;
  } catch {
    return null;
  }
}

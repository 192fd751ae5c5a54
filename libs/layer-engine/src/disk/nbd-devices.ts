/**
 * The host's nbd devices, as sysfs shows them, and reserving a free one: the nbd backend
 * (attach-nbd.ts) connects the device it reserves itself, a modify-disk of the original tool's
 * contract gets one unconnected (reserveNbdDevice), and the sweep asks which process serves one.
 */
import { mkdir, readFile, readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AttachRecord, newAttachId } from './attach-record.js';
import { AbortedError, VmlbError } from '../errors.js';
import { exec } from '../host/exec.js';
import { tryLock, unlock } from './lock-files.js';
import { pathExists } from '../host/path-exists.js';
import { nbdLockDir } from './run-dirs.js';

export const POLL_MS = 2;
/** After `qemu-nbd --disconnect`, how long the serving qemu-nbd may take to exit. */
export const STOP_GRACE_MS = 3000;

export const NO_MODULE = 'no /dev/nbd0: load the nbd kernel module (modprobe nbd max_part=16)';

export async function readSys(path: string): Promise<string | null> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch {
    return null;
  }
}

/** The nbd devices of the host, by number. */
async function nbdNumbers(): Promise<number[]> {
  const names = await readdir('/sys/block').catch(() => [] as string[]);
  return names
    .map((n) => /^nbd(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}

/** Not served by anyone (no pid) and no size left from an earlier connection. */
export async function isFree(name: string): Promise<boolean> {
  return !(await pathExists(`/sys/block/${name}/pid`)) && (await readSys(`/sys/block/${name}/size`)) === '0';
}

/**
 * Whether /sys/block/nbdN/pid names `pid`. The kernel shows the task that runs the
 * NBD_DO_IT ioctl, which for qemu-nbd is a thread: accept a thread of `pid` too.
 */
export async function nbdServedBy(device: string, pid: number): Promise<boolean> {
  let text: string;
  try {
    text = await readFile(`/sys/block/${basename(device)}/pid`, 'utf8');
  } catch {
    return false;
  }
  const served = Number(text.trim());
  if (served === pid) return true;
  try {
    await readFile(`/proc/${pid}/task/${served}/stat`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Takes the lock of a free nbd device (recorded in `record` first, so that the sweep removes
 * a lock whose owner died) and hands it to `use`, which returns false when the device turned
 * out to be taken (its lock is then dropped and the next device tried). Returns the device's
 * name and lock, or why there is none.
 */
export async function lockFreeDevice(
  record: AttachRecord,
  checkAbort: () => void,
  use: (name: string, lockPath: string) => Promise<boolean> = async () => true,
): Promise<{ name: string; lockPath: string } | string> {
  const numbers = await nbdNumbers();
  if (numbers.length === 0) return NO_MODULE;
  for (const n of numbers) {
    checkAbort();
    const name = `nbd${n}`;
    if (!(await isFree(name))) continue;
    const lockPath = join(nbdLockDir(), `${name}.lock`);
    // Recorded before it exists; the sweep removes it only if it names this process.
    await record.add({ kind: 'lock', path: lockPath });
    if (!(await tryLock(lockPath))) continue;
    if ((await isFree(name)) && (await use(name, lockPath))) return { name, lockPath };
    await unlock(lockPath);
  }
  return `every nbd device (${numbers.length}) is in use`;
}

/** A free nbd device reserved (locked) for a run that connects it itself; see reserveNbdDevice. */
export interface NbdReservation {
  device: string;
  /** Disconnects the device if something still serves it, drops the lock and the record. */
  release(): Promise<void>;
}

/**
 * Reserves a free /dev/nbdN, unconnected, for a modify-disk of the original tool's contract
 * (`# args source target device`), which connects it itself (through the sandbox's qemu-nbd,
 * see bin/sandbox/qemu-nbd). The lock keeps other attachments off it until release, which
 * disconnects whatever still serves it (the run's own qemu-nbd: nobody else can have
 * connected a device whose lock this holds).
 */
export async function reserveNbdDevice(purpose: string, signal?: AbortSignal): Promise<NbdReservation> {
  const checkAbort = () => {
    if (signal?.aborted) throw new AbortedError(`reserving an nbd device for ${purpose} was interrupted`);
  };
  checkAbort();
  await mkdir(nbdLockDir(), { recursive: true, mode: 0o700 });
  const record = await AttachRecord.create({ id: newAttachId('nbd'), backend: 'nbd', image: '', purpose, items: [] });
  const drop = async (lockPath?: string) => {
    if (lockPath) await unlock(lockPath);
    await record.remove();
  };
  let found: Awaited<ReturnType<typeof lockFreeDevice>>;
  try {
    found = await lockFreeDevice(record, checkAbort);
  } catch (e) {
    await drop();
    throw e;
  }
  if (typeof found === 'string') {
    await drop();
    throw new VmlbError('DISK_ATTACH_FAILED', `reserving an nbd device for ${purpose}: ${found}`);
  }
  const { name, lockPath } = found;
  const device = `/dev/${name}`;
  let released: Promise<void> | undefined;
  return {
    device,
    release: () =>
      (released ??= (async () => {
        if (await pathExists(`/sys/block/${name}/pid`)) {
          await exec(['qemu-nbd', '--disconnect', device], { reject: false });
          const deadline = performance.now() + STOP_GRACE_MS;
          while ((await pathExists(`/sys/block/${name}/pid`)) && performance.now() < deadline) await sleep(POLL_MS * 5);
        }
        await drop(lockPath);
      })()),
  };
}


/**
 * The start-up sweep: releases what a SIGKILLed run left attached, from its records
 * (attach-record.ts) and from what sits in the engine's own folders. It only touches what a
 * record names (or what sits in the engine's fuse dir), and verifies each item before releasing
 * it: worker hosts and laptops run other things that use loop devices and FUSE too.
 */
import { readFile, readdir, rename, rm, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { AttachRecordData } from './attach-record.js';
import { debug } from '../debug.js';
import { exec } from '../host/exec.js';
import { readLockOwner, removeStaleLock } from './lock-files.js';
import { detachLoops, isBackedBy, isFuse, isFuseMount, listLoops, listMounts, loopsOn, loopLogFor, unmountFuse, type LoopDevice } from './loops-and-mounts.js';
import { nbdServedBy } from './nbd-devices.js';
import { isRunning, processArgv, processIdentity, terminateProcess, type ProcessIdentity } from '../host/process-identity.js';
import { attachStateDir, fuseDir, nbdLockDir } from './run-dirs.js';

export interface SweepReport {
  /** Records of dead owners that were handled (and deleted unless something failed). */
  records: number;
  /** The dead owners (killed runs) those records belonged to. */
  owners: number;
  loops: number;
  mounts: number;
  daemons: number;
  nbdDevices: number;
  files: number;
  /** What could not be released; those records are kept for the next sweep. */
  errors: string[];
}

/** A one-line summary of a sweep for the CLI, or null when it found nothing. */
export function describeSweep(r: SweepReport): string | null {
  const parts: string[] = [];
  const n = (count: number, one: string, many = `${one}s`) => {
    if (count > 0) parts.push(`${count} ${count === 1 ? one : many}`);
  };
  n(r.loops, 'loop device');
  n(r.mounts, 'FUSE mount');
  n(r.daemons, 'qemu-storage-daemon');
  n(r.nbdDevices, 'nbd device');
  n(r.files, 'leftover file');
  if (parts.length === 0 && r.records === 0 && r.errors.length === 0) return null;
  const what = parts.length > 0 ? parts.join(', ') : 'nothing';
  const runs = r.owners || r.records;
  const from = runs > 0 ? ` left by ${runs} killed run${runs === 1 ? '' : 's'}` : '';
  const failed = r.errors.length > 0 ? `; could not release: ${r.errors.join('; ')}` : '';
  return `released ${what}${from}${failed}`;
}

const RECORD = /^(.+)\.json$/;
const CLAIM = /^(.+)\.json\.sweep-(\d+)$/;
const TEMP = /\.tmp-(\d+)-[0-9a-f]+$/;

/**
 * Release what dead owners left: for every record whose owner is gone (or whose pid now
 * belongs to another process), its items in reverse order, each verified first; then stale
 * FUSE mounts, loop devices, daemons and files in the engine's fuse dir that no record names.
 * Records of live owners (this process's included) are left alone. Never throws for a
 * release that fails: it is reported in `errors` and its record kept for the next sweep.
 */
export async function sweep(): Promise<SweepReport> {
  const owners = new Set<string>();
  const report: SweepReport = { records: 0, owners: 0, loops: 0, mounts: 0, daemons: 0, nbdDevices: 0, files: 0, errors: [] };
  const dir = attachStateDir();
  for (const name of await listDir(dir)) {
    const path = join(dir, name);
    const temp = TEMP.exec(name);
    if (temp) {
      if (!(await processIdentity(Number(temp[1])))) await rm(path, { force: true });
      continue;
    }
    const claim = CLAIM.exec(name);
    const record = claim ? null : RECORD.exec(name);
    if (!claim && !record) continue;
    // A sweep killed half-way left its claim: take it over.
    if (claim && (Number(claim[2]) === process.pid || (await processIdentity(Number(claim[2]))))) continue;
    const id = (claim ?? record)![1]!;
    let data: AttachRecordData;
    try {
      data = JSON.parse(await readFile(path, 'utf8')) as AttachRecordData;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') report.errors.push(`unreadable state record ${path}: ${(e as Error).message}`);
      continue;
    }
    if (await isRunning(data.owner)) continue;
    // Claim it by renaming: of two sweeps starting at once, only one gets it.
    const claimed = join(dir, `${id}.json.sweep-${process.pid}`);
    try {
      await rename(path, claimed);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    report.records++;
    const owner = `${data.owner.pid}:${data.owner.startTime}`;
    if (!owners.has(owner)) {
      owners.add(owner);
      report.owners++;
    }
    const failures = await releaseRecord(data, report);
    if (failures.length === 0) {
      await rm(claimed, { force: true });
    } else {
      report.errors.push(...failures.map((f) => `${data.id} (${data.purpose}, owner pid ${data.owner.pid}): ${f}`));
      await rename(claimed, join(dir, `${id}.json`)).catch(() => {});
    }
  }
  await sweepFuseDir(report);
  await sweepNbdLocks(report);
  const line = describeSweep(report);
  if (line) debug(`sweep: ${line}`);
  return report;
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

/**
 * The files a record's attachment created in the engine's fuse dir: every loop on one of them
 * is the attachment's. Paths elsewhere are never taken as the engine's, whatever a (corrupt)
 * record says.
 */
function ownedPaths(data: AttachRecordData): Set<string> {
  const paths = new Set<string>();
  for (const item of data.items) {
    if (item.kind === 'file' || item.kind === 'fuse-mount') paths.add(item.path);
    if (item.kind === 'daemon') paths.add(item.exportFile);
  }
  return new Set([...paths].filter(inFuseDir));
}

function inFuseDir(path: string): boolean {
  return dirname(path) === fuseDir();
}

/** The engine's own dirs for files it creates: export files, pid files, loop logs. */
function inEngineDir(path: string): boolean {
  return inFuseDir(path) || dirname(path) === nbdLockDir();
}

async function releaseRecord(data: AttachRecordData, report: SweepReport): Promise<string[]> {
  const failures: string[] = [];
  const attempt = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (e) {
      failures.push(`${what}: ${(e as Error).message}`);
    }
  };
  // Loops come first: a loop over a FUSE file keeps the mount busy. Any loop on one of the
  // record's own export files is its, and so are those in its loop log (vmlb-partition's,
  // which the record does not name).
  const owned = ownedPaths(data);
  await attempt('detach loop devices', async () => {
    const names = new Set<string>();
    for (const p of owned) if (p.endsWith('.raw')) for (const n of await loopsOn(p, loopLogFor(p))) names.add(n);
    for (const l of await listLoops()) {
      if (data.items.some((i) => i.kind === 'loop' && i.device === l.name && isBackedBy(l, i.backingFile))) names.add(l.name);
    }
    // The helper's loops over an nbd device: all of them while the recorded qemu-nbd still
    // serves it, else only those whose back-file says they were made through this record's
    // (now gone) mount namespace, since the device may be someone else's by now.
    const log = data.items.find((i) => i.kind === 'file' && i.path.endsWith('.loops'));
    for (const item of data.items) {
      if (item.kind !== 'nbd' || !log || log.kind !== 'file') continue;
      const served = (await nbdServedBy(item.device, item.pid)) && (await isRunning({ pid: item.pid, startTime: item.startTime }));
      for (const n of await loopsOn(item.device, log.path, { onlyUnreachable: !served })) names.add(n);
    }
    await detachLoops([...names]);
    report.loops += names.size;
  });
  for (const item of [...data.items].reverse()) {
    switch (item.kind) {
      case 'loop':
        break; // handled above, verified by its back-file
      case 'fuse-mount':
        await attempt(`unmount ${item.path}`, async () => {
          if (inFuseDir(item.path) && (await isFuseMount(item.path))) {
            await unmountFuse(item.path);
            report.mounts++;
          }
        });
        break;
      case 'daemon':
        await attempt(`stop qemu-storage-daemon ${item.pid}`, async () => {
          const id = { pid: item.pid, startTime: item.startTime };
          if (!(await isRunning(id))) return;
          const argv = await processArgv(item.pid);
          if (!argv || storageDaemonExport(argv) !== item.exportFile) return;
          await terminateProcess(id);
          report.daemons++;
        });
        break;
      case 'nbd':
        await attempt(`disconnect ${item.device}`, async () => {
          if (!(await nbdServedBy(item.device, item.pid))) return;
          if (!(await isRunning({ pid: item.pid, startTime: item.startTime }))) return;
          await exec(['qemu-nbd', '--disconnect', item.device]);
          report.nbdDevices++;
        });
        break;
      case 'lock':
        await attempt(`remove ${item.path}`, async () => {
          const holder = await readLockOwner(item.path);
          if (holder && holder.pid === data.owner.pid && holder.startTime === data.owner.startTime && (await removeStaleLock(item.path))) {
            report.files++;
          }
        });
        break;
      case 'file':
        await attempt(`remove ${item.path}`, async () => {
          if (!inEngineDir(item.path)) return;
          // The daemon may have mounted it before its mount was recorded.
          if (await isFuseMount(item.path)) {
            await unmountFuse(item.path);
            report.mounts++;
          }
          if (await removeIfPresent(item.path)) report.files++;
        });
        break;
    }
  }
  return failures;
}

async function removeIfPresent(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/**
 * What sits in the engine's own fuse dir without a record: loops on its files, daemons
 * exporting them, FUSE mounts on them (a daemon killed before its record said so), and the
 * files. Observed first, then checked against the records, which each attachment writes
 * before it creates its files: a missing record then means nobody owns them.
 */
async function sweepFuseDir(report: SweepReport): Promise<void> {
  const dir = fuseDir();
  const backing = (l: LoopDevice) => l.backFile.replace(/ \(deleted\)$/, '');
  const idOf = (p: string) => basename(p).replace(/\.[^.]*$/, '');
  const names = await listDir(dir);
  const [loops, mounts] = await Promise.all([listLoops(), listMounts()]);
  const ownedMounts = mounts.filter((m) => isFuse(m) && inFuseDir(m.mountPoint));
  if (names.length === 0 && ownedMounts.length === 0 && !loops.some((l) => inFuseDir(backing(l)))) return;
  // A live daemon needs its export file: with the dir empty there is none to look for.
  const daemons = names.length > 0 ? (await storageDaemons()).filter((d) => inFuseDir(d.exportFile)) : [];

  const recorded = new Set(
    (await listDir(attachStateDir())).flatMap((n) => {
      const m = CLAIM.exec(n) ?? RECORD.exec(n);
      return m ? [m[1]!] : [];
    }),
  );
  const orphan = (p: string) => !recorded.has(idOf(p));
  const attempt = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (e) {
      report.errors.push(`${what}: ${(e as Error).message}`);
    }
  };
  await attempt('detach loop devices', async () => {
    // Listed again right before detaching: a device number can be reused meanwhile.
    const stale = new Set((await listLoops()).filter((l) => inFuseDir(backing(l)) && orphan(backing(l))).map((l) => l.name));
    for (const name of names.filter((n) => n.endsWith('.loops') && orphan(join(dir, n)))) {
      const exportFile = join(dir, name.replace(/\.loops$/, '.raw'));
      for (const l of await loopsOn(exportFile, join(dir, name))) stale.add(l);
    }
    await detachLoops([...stale]);
    report.loops += stale.size;
  });
  for (const m of ownedMounts.filter((m) => orphan(m.mountPoint))) {
    await attempt(`unmount ${m.mountPoint}`, async () => {
      if (!(await isFuseMount(m.mountPoint))) return;
      await unmountFuse(m.mountPoint);
      report.mounts++;
    });
  }
  for (const d of daemons.filter((d) => orphan(d.exportFile))) {
    await attempt(`stop qemu-storage-daemon ${d.pid}`, async () => {
      if (!(await isRunning(d))) return;
      await terminateProcess(d);
      report.daemons++;
    });
  }
  for (const name of names.filter((n) => orphan(join(dir, n)))) {
    const path = join(dir, name);
    await attempt(`remove ${path}`, async () => {
      // The daemon just stopped may have unmounted it itself; a stale mount was handled above.
      if (await isFuseMount(path)) await unmountFuse(path);
      if (await removeIfPresent(path)) report.files++;
    });
  }
}

/** nbd lock files whose holder is dead and that no record named (killed before recording them). */
async function sweepNbdLocks(report: SweepReport): Promise<void> {
  const dir = nbdLockDir();
  for (const name of await listDir(dir)) {
    const path = join(dir, name);
    try {
      if (/^nbd\d+\.lock$/.test(name)) {
        const holder = await readLockOwner(path);
        if (!(holder && (await isRunning(holder))) && (await removeStaleLock(path))) report.files++;
      } else if (/^nbd-(\d+)-[0-9a-f]+\.loops$/.test(name)) {
        // The loop log of an nbd attachment whose owner is gone (its record, if any, is gone too).
        const owner = Number(/^nbd-(\d+)-/.exec(name)![1]);
        if (!(await processIdentity(owner)) && (await removeIfPresent(path))) report.files++;
      } else if (TEMP.test(name) || /\.stale-\d+-[0-9a-f]+$/.test(name)) {
        const pid = Number(/-(\d+)-[0-9a-f]+$/.exec(name)![1]);
        if (!(await processIdentity(pid)) && (await removeIfPresent(path))) report.files++;
      }
    } catch (e) {
      report.errors.push(`remove ${path}: ${(e as Error).message}`);
    }
  }
}

/** Running qemu-storage-daemon processes with a FUSE export. */
async function storageDaemons(): Promise<(ProcessIdentity & { exportFile: string })[]> {
  const found: (ProcessIdentity & { exportFile: string })[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const argv = await processArgv(pid);
    const exportFile = argv && storageDaemonExport(argv);
    if (!exportFile) continue;
    const id = await processIdentity(pid);
    if (id) found.push({ ...id, exportFile });
  }
  return found;
}

/** The `mountpoint=` of a qemu-storage-daemon argv, or null when it is not one. */
function storageDaemonExport(argv: string[]): string | null {
  if (!argv[0] || basename(argv[0]) !== 'qemu-storage-daemon') return null;
  for (const arg of argv) {
    const m = /(?:^|,)mountpoint=((?:[^,]|,,)*)/.exec(arg);
    if (m && /(?:^|,)type=fuse(?:,|$)/.test(arg)) return m[1]!.replaceAll(',,', ',');
    // The engine's shared daemon (fuse-daemon.ts) is named by its QMP socket instead.
    const q = /^socket,id=qmp,path=((?:[^,]|,,)*)/.exec(arg);
    if (q) return q[1]!.replaceAll(',,', ',');
  }
  return null;
}

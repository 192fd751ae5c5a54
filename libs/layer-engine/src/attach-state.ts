/**
 * State records of attached disks, so that a start-up sweep can release what a SIGKILLed run
 * left behind, and the host probes (processes, loop devices, mounts) that the sweep and the
 * backends share.
 *
 * One JSON record per attachment in `runDir()/attach/<id>.json`, rewritten atomically each
 * time something is acquired. The sweep only touches what a record names (or what sits in the
 * engine's own fuse dir), and verifies each item before releasing it: worker hosts and laptops
 * run other things that use loop devices and FUSE too.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, link, mkdir, readFile, readdir, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BackendName } from './disk-backend.js';
import { HOST_PATH, exec } from './exec.js';
import { debug } from './debug.js';
import { VmlbError, tail } from './errors.js';

// ---------------------------------------------------------------------------------------------
// Where state lives

/** The engine's run-time state dir: `$VMLB_RUN_DIR`, else `/run/vmlb`. Read on each call. */
export function runDir(): string {
  return process.env.VMLB_RUN_DIR || '/run/vmlb';
}
export function attachStateDir(): string {
  return join(runDir(), 'attach');
}
/** Where the fuse backend puts its export files (and their daemons' pid files). */
export function fuseDir(): string {
  return join(runDir(), 'fuse');
}
/** Lock files that reserve /dev/nbdN between choosing it and connecting it. */
export function nbdLockDir(): string {
  return join(runDir(), 'nbd');
}

// ---------------------------------------------------------------------------------------------
// Processes

/** A process as the kernel knows it: a pid alone can be reused, pid + start time cannot. */
export interface ProcessIdentity {
  pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot), as text. */
  startTime: string;
}

interface ProcStat {
  state: string;
  startTime: string;
}

async function readProcStat(pid: number): Promise<ProcStat | null> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) is in parentheses and may contain spaces and parentheses.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  const startTime = fields[22 - 3];
  return state && startTime ? { state, startTime } : null;
}

/** The identity of a running process, or null when it is gone (or a zombie). */
export async function processIdentity(pid: number): Promise<ProcessIdentity | null> {
  const st = await readProcStat(pid);
  return st && st.state !== 'Z' && st.state !== 'X' ? { pid, startTime: st.startTime } : null;
}

/** Whether that very process (not a later one that reuses its pid) still runs. */
export async function isRunning(id: ProcessIdentity): Promise<boolean> {
  const now = await processIdentity(id.pid);
  return now !== null && now.startTime === id.startTime;
}

let self: Promise<ProcessIdentity> | undefined;
/** This process's identity, the owner of the records it writes. */
export function selfIdentity(): Promise<ProcessIdentity> {
  self ??= processIdentity(process.pid).then((id) => {
    if (!id) throw new Error(`cannot read /proc/${process.pid}/stat`);
    return id;
  });
  return self;
}

async function processArgv(pid: number): Promise<string[] | null> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return raw ? raw.replace(/\0$/, '').split('\0') : null;
  } catch {
    return null;
  }
}

/**
 * SIGTERM a process that is not our child (so we cannot await it), wait until it is gone or a
 * zombie waiting for init, SIGKILL after `graceMs`.
 */
export async function terminateProcess(id: ProcessIdentity, graceMs = 3000): Promise<void> {
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(id.pid, sig);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  };
  if (!(await isRunning(id))) return;
  signal('SIGTERM');
  const deadline = performance.now() + graceMs;
  while (await isRunning(id)) {
    if (performance.now() > deadline) {
      signal('SIGKILL');
      break;
    }
    await sleep(5);
  }
}

/** A value for a QEMU `key=value,...` option string: commas are doubled. */
export function qemuOptValue(s: string): string {
  return s.replaceAll(',', ',,');
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

/** Whether an executable `name` is on the engine's PATH (for unavailableReason()). */
export async function commandOnPath(name: string): Promise<boolean> {
  for (const dir of HOST_PATH.split(':')) {
    try {
      await access(join(dir, name), constants.X_OK);
      return true;
    } catch {
      // not in this dir
    }
  }
  return false;
}

export async function pathExists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Loop devices and mounts

export interface LoopDevice {
  name: string;
  /** The back-file as the kernel names it; ` (deleted)` is appended once the file is unlinked. */
  backFile: string;
  offset: number;
  sizeLimit: number;
}

/**
 * Every bound loop device of the host with its back-file string. Read from sysfs, where
 * `losetup --json --list` reads it too (a subprocess costs ~12 ms from Node here, sysfs well
 * under 1 ms); neither ever stats the back-file, which may sit on a stale FUSE mount.
 */
export async function listLoops(): Promise<LoopDevice[]> {
  let names: string[];
  try {
    names = (await readdir('/sys/block')).filter((n) => /^loop\d+$/.test(n));
  } catch {
    return listLoopsWithLosetup();
  }
  const read = (n: string, f: string) => readFile(`/sys/block/${n}/loop/${f}`, 'utf8').then((t) => t.replace(/\n$/, ''));
  const loops = await Promise.all(
    names.map(async (n) => {
      try {
        const [backFile, offset, sizeLimit] = await Promise.all([read(n, 'backing_file'), read(n, 'offset'), read(n, 'sizelimit')]);
        return { name: `/dev/${n}`, backFile, offset: Number(offset), sizeLimit: Number(sizeLimit) };
      } catch {
        return null; // not bound (no loop/ dir), or detached meanwhile
      }
    }),
  );
  return loops.filter((l): l is LoopDevice => l !== null);
}

async function listLoopsWithLosetup(): Promise<LoopDevice[]> {
  const r = await exec(['losetup', '--json', '--list']);
  if (!r.stdout.trim()) return [];
  const parsed = JSON.parse(r.stdout) as {
    loopdevices?: { name: string; 'back-file'?: string | null; offset?: number | string; sizelimit?: number | string }[];
  };
  return (parsed.loopdevices ?? []).map((l) => ({
    name: l.name,
    backFile: l['back-file'] ?? '',
    offset: Number(l.offset ?? 0),
    sizeLimit: Number(l.sizelimit ?? 0),
  }));
}

export function isBackedBy(loop: LoopDevice, file: string): boolean {
  return loop.backFile === file || loop.backFile === `${file} (deleted)`;
}

/** Detach loop devices with one losetup call. */
export async function detachLoops(devices: string[]): Promise<void> {
  if (devices.length > 0) await exec(['losetup', '--detach', ...devices]);
}

/**
 * The loop devices on `backing` (a fuse export file, an nbd device): those whose back-file is
 * its path (unless `onlyUnreachable`: when `backing` may now be someone else's), and those
 * the vmlb-partition helper wrote into `loopLog`. The helper runs inside
 * a layer script's private mount namespace; once that namespace is gone the kernel names such
 * a loop's back-file relative to its now unreachable mount ("/" for a FUSE export, which is
 * its mount's root; "/nbd0" for /dev/nbd0). So a logged loop counts when its back-file is the
 * path or such a tail of it, and its offset and size limit are the logged ones.
 */
export async function loopsOn(backing: string, loopLog: string | undefined, opts: { onlyUnreachable?: boolean } = {}): Promise<string[]> {
  const loops = await listLoops();
  const found = new Set(opts.onlyUnreachable ? [] : loops.filter((l) => isBackedBy(l, backing)).map((l) => l.name));
  const unreachable = (l: LoopDevice) => l.backFile === '/' || (l.backFile !== backing && l.backFile.startsWith('/') && backing.endsWith(l.backFile));
  const sameFile = (l: LoopDevice) => (!opts.onlyUnreachable && isBackedBy(l, backing)) || unreachable(l);
  for (const logged of loopLog ? await readLoopLog(loopLog) : []) {
    const l = loops.find((x) => x.name === logged.device);
    if (l && sameFile(l) && l.offset === logged.offset && l.sizeLimit === logged.sizeLimit) found.add(l.name);
  }
  return [...found];
}

/** Lines "DEVICE OFFSET SIZELIMIT" that vmlb-partition appends to $VMLB_DISK_LOOP_LOG. */
async function readLoopLog(path: string): Promise<{ device: string; offset: number; sizeLimit: number }[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return [];
  }
  return text.split('\n').flatMap((line) => {
    const m = /^(\/dev\/loop\d+) (\d+) (\d+)$/.exec(line.trim());
    return m ? [{ device: m[1]!, offset: Number(m[2]), sizeLimit: Number(m[3]) }] : [];
  });
}

/** The loop log beside a fuse export file or nbd lock (`<id>.raw` → `<id>.loops`). */
export function loopLogFor(file: string): string {
  return file.replace(/\.[^./]*$/, '') + '.loops';
}

export interface MountEntry {
  mountPoint: string;
  fsType: string;
}

/** The mounts of this process's namespace, from /proc/self/mountinfo (octal escapes decoded). */
export async function listMounts(): Promise<MountEntry[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const mounts: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    const mountPoint = fields[4];
    const fsType = sep >= 0 ? fields[sep + 1] : undefined;
    if (mountPoint && fsType) mounts.push({ mountPoint: unescapeMountinfo(mountPoint), fsType });
  }
  return mounts;
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function isFuse(m: MountEntry): boolean {
  return m.fsType === 'fuse' || m.fsType.startsWith('fuse.');
}

/** Whether `path` is a FUSE mount point now. Never stats `path` (a stale FUSE mount hangs or fails). */
export async function isFuseMount(path: string): Promise<boolean> {
  return (await listMounts()).some((m) => m.mountPoint === path && isFuse(m));
}

/**
 * Unmount a FUSE export file. A loop device that udev's blkid still holds open detaches only
 * when it is closed, and keeps the file busy until then: retry for a moment, then unmount
 * lazily so nothing stays in the mount table, and report the busy unmount.
 */
export async function unmountFuse(path: string, busyRetryMs = 1000): Promise<void> {
  const deadline = performance.now() + busyRetryMs;
  for (;;) {
    const r = await exec(['umount', path], { reject: false });
    if (r.exitCode === 0 || !(await isFuseMount(path))) return;
    if (performance.now() > deadline) {
      await exec(['umount', '--lazy', path], { reject: false });
      throw new VmlbError('UNMOUNT_BUSY', `umount ${path} kept failing, so it was unmounted lazily: ${tail(r.stderr, 3).trim()}`);
    }
    await sleep(10);
  }
}

// ---------------------------------------------------------------------------------------------
// nbd device locks

/**
 * Take the lock file that reserves an nbd device between choosing it and connecting it. Node
 * has no flock(): the file names its holder and appears atomically with its content (written
 * aside, then link()ed, which never overwrites); a dead holder's lock is taken over. The
 * kernel refuses a second connection to a busy device anyway: the lock only keeps two
 * engines from racing for the same free one.
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

/** The identity written into an nbd lock file, or null when it is missing or unreadable. */
export async function readLockOwner(path: string): Promise<ProcessIdentity | null> {
  try {
    const v = JSON.parse(await readFile(path, 'utf8')) as Partial<ProcessIdentity>;
    return typeof v.pid === 'number' && typeof v.startTime === 'string' ? { pid: v.pid, startTime: v.startTime } : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Records

/** One thing an attachment acquired, in the order it was acquired. */
export type AttachItem =
  /** A file the engine created (a fuse export file, a daemon's pid file). */
  | { kind: 'file'; path: string }
  /** A lock file reserving an nbd device; it holds its owner's identity. */
  | { kind: 'lock'; path: string }
  /** qemu-storage-daemon exporting `exportFile` over FUSE. */
  | { kind: 'daemon'; pid: number; startTime: string; exportFile: string }
  /** The FUSE mount the daemon put on its export file. */
  | { kind: 'fuse-mount'; path: string }
  | { kind: 'loop'; device: string; backingFile: string }
  /** qemu-nbd serving `device`. */
  | { kind: 'nbd'; device: string; pid: number; startTime: string };

export interface AttachRecordData {
  version: 1;
  id: string;
  owner: ProcessIdentity;
  backend: BackendName;
  image: string;
  purpose: string;
  createdAt: string;
  items: AttachItem[];
}

/** A fresh attachment id, also used to name its files: `<backend>-<pid>-<random>`. */
export function newAttachId(backend: BackendName): string {
  return `${backend}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  await writeFile(tmp, text, { mode: 0o600 });
  await rename(tmp, path);
}

/**
 * The live state record of one attachment. `add()` is awaited right after each acquisition,
 * so a SIGKILL at any point leaves at most the last acquisition unrecorded (the sweep also
 * catches those: loops on a recorded export file, anything in the engine's fuse dir).
 */
export class AttachRecord {
  readonly path: string;
  private readonly data: AttachRecordData;
  /** Writes are chained so that two concurrent add() calls never reorder their renames. */
  private writing: Promise<void> = Promise.resolve();
  private removed = false;

  private constructor(data: AttachRecordData) {
    this.data = data;
    this.path = join(attachStateDir(), `${data.id}.json`);
  }

  /** `items`: what is about to be acquired with a name known in advance (files the attachment will create). */
  static async create(args: { id: string; backend: BackendName; image: string; purpose: string; items?: AttachItem[] }): Promise<AttachRecord> {
    await mkdir(attachStateDir(), { recursive: true, mode: 0o700 });
    const record = new AttachRecord({
      version: 1,
      id: args.id,
      owner: await selfIdentity(),
      backend: args.backend,
      image: args.image,
      purpose: args.purpose,
      createdAt: new Date().toISOString(),
      items: [...(args.items ?? [])],
    });
    await record.write();
    return record;
  }

  get items(): readonly AttachItem[] {
    return this.data.items;
  }

  async add(item: AttachItem): Promise<void> {
    this.data.items.push(item);
    await this.write();
  }

  /** Delete the record: everything it names has been released. */
  async remove(): Promise<void> {
    this.removed = true;
    await this.writing.catch(() => {});
    await rm(this.path, { force: true });
  }

  private write(): Promise<void> {
    if (this.removed) return Promise.resolve();
    const text = JSON.stringify(this.data, null, 1) + '\n';
    const next = this.writing.catch(() => {}).then(() => (this.removed ? undefined : writeAtomic(this.path, text)));
    this.writing = next;
    return next;
  }
}

// ---------------------------------------------------------------------------------------------
// The sweep

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

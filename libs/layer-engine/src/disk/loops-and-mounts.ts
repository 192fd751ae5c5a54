/**
 * The host's loop devices and mounts, as the fuse and nbd backends and the sweep see them:
 * read from sysfs and /proc/self/mountinfo, never by stat()ing a path, which hangs or fails on
 * a stale FUSE mount. Worker hosts and laptops run other things that use loop devices and FUSE
 * too, so everything here matches a loop or mount by what backs it, never by its number alone.
 */
import { readFile, readdir } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmlbError, tail } from '../errors.js';
import { exec } from '../host/exec.js';

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
 * path or such a tail of it, and its offset and size limit are the logged ones. `loops` is
 * the host's loop devices when the caller has them already (listLoops; unit tests give theirs).
 */
export async function loopsOn(backing: string, loopLog: string | undefined, opts: { onlyUnreachable?: boolean; loops?: LoopDevice[] } = {}): Promise<string[]> {
  const loops = opts.loops ?? (await listLoops());
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

/**
 * Disk backends against real images: a qcow2 base with a GPT and an ext4 root partition at
 * 1 MiB, and an overlay on it. The fuse backend runs here; the nbd one needs the nbd module
 * and is skipped (saying why) where it is not loaded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fuseBackend } from '../libs/layer-engine/src/disk/attach-fuse.js';
import { FuseDaemon } from '../libs/layer-engine/src/disk/fuse-daemon.js';
import { nbdBackend } from '../libs/layer-engine/src/disk/attach-nbd.js';
import { isFuse, listLoops, listMounts } from '../libs/layer-engine/src/disk/loops-and-mounts.js';
import { attachStateDir, fuseDir } from '../libs/layer-engine/src/disk/run-dirs.js';
import { describeSweep, sweep, type SweepReport } from '../libs/layer-engine/src/disk/sweep.js';
import { chooseBackend } from '../libs/layer-engine/src/disk/backends.js';
import type { AttachedDisk, DiskBackend } from '../libs/layer-engine/src/disk/disk-backend.js';
import { HostError } from '../libs/layer-engine/src/errors.js';
import { exec } from '../libs/layer-engine/src/host/exec.js';
import { readPartitionTable, rootPartition } from '../libs/layer-engine/src/host/partition-table.js';

const MiB = 1024 * 1024;
const REPO = fileURLToPath(new URL('..', import.meta.url));
const HELPER = join(REPO, 'libs/layer-engine/bin/vmlb-partition');
const FIXTURE = join(REPO, 'test/fixtures/attach-and-hold.ts');

let tmp: string;
let base: string;
let overlay: string;
let root: { number: number; start: number; size: number };
/** Disks and mounts a test made; afterEach releases whatever a failing test left. */
const disks: AttachedDisk[] = [];
const mounts: string[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'vmlb-attach-'));
  // The engine's state (records, export files) goes here, not to a real /run/vmlb.
  process.env.VMLB_RUN_DIR = join(tmp, 'run');
  const raw = join(tmp, 'base.raw');
  await writeFile(raw, '');
  await truncate(raw, 64 * MiB);
  await exec(['sfdisk', '--quiet', '--no-reread', raw], { input: 'label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n' });
  root = rootPartition(await readPartitionTable(raw), 64 * MiB);
  expect(root).toMatchObject({ number: 1, start: MiB });
  const content = join(tmp, 'rootfs');
  await mkdir(content);
  await writeFile(join(content, 'from-base.txt'), 'base\n');
  await exec(['mke2fs', '-q', '-t', 'ext4', '-F', '-d', content, '-E', `offset=${root.start}`, raw, `${root.size / 1024}k`]);
  base = join(tmp, 'base.qcow2');
  overlay = join(tmp, 'overlay.qcow2');
  await exec(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, base]);
  await exec(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', overlay]);
});

afterEach(async () => {
  for (const m of mounts.splice(0)) await exec(['umount', m], { reject: false });
  for (const d of disks.splice(0)) await d.release().catch((e: unknown) => console.error(`cleanup: ${(e as Error).message}`));
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

afterAll(async () => {
  if (!tmp) return;
  // Whatever is still attached from this file's temp dir, forcibly: loops, mounts, daemons.
  const loops = (await listLoops()).filter((l) => l.backFile.startsWith(tmp));
  if (loops.length) await exec(['losetup', '--detach', ...loops.map((l) => l.name)], { reject: false });
  for (const m of (await listMounts()).filter((m) => m.mountPoint.startsWith(tmp)).reverse()) {
    await exec(['umount', '--lazy', m.mountPoint], { reject: false });
  }
  for (const pid of await processesMentioning(tmp)) process.kill(pid, 'SIGKILL');
  await rm(tmp, { recursive: true, force: true });
});

async function attach(backend: DiskBackend, image: string): Promise<AttachedDisk> {
  const disk = await backend.attach(image, { purpose: 'attach.test' });
  disks.push(disk);
  return disk;
}

async function mount(device: string, opts: string[] = []): Promise<string> {
  const dir = await mkdtemp(join(tmp, 'mnt-'));
  await exec(['mount', ...opts, device, dir]);
  mounts.push(dir);
  return dir;
}

async function unmount(dir: string): Promise<void> {
  await exec(['umount', dir]);
  mounts.splice(mounts.indexOf(dir), 1);
}

/** Processes (other than this one) whose command line mentions `text`. */
async function processesMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(text)) pids.push(Number(entry));
  }
  return pids;
}

/** What still references this file's temp dir: loop devices, FUSE mounts, qemu-storage-daemons. */
async function leftovers(): Promise<{ loops: string[]; fuseMounts: string[]; daemons: number[]; records: string[]; exportFiles: string[] }> {
  // The process's shared qemu-storage-daemon outlives a release by design (the next attach
  // reuses it); what must be gone is everything once the engine is done with it.
  await FuseDaemon.shutdown();
  const daemons: number[] = [];
  for (const pid of await processesMentioning(tmp)) {
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmd.startsWith('qemu-storage-daemon') || cmd.includes('\0qemu-storage-daemon\0')) daemons.push(pid);
  }
  return {
    loops: (await listLoops()).filter((l) => l.backFile.startsWith(tmp)).map((l) => `${l.name} (${l.backFile})`),
    fuseMounts: (await listMounts()).filter((m) => isFuse(m) && m.mountPoint.startsWith(tmp)).map((m) => m.mountPoint),
    daemons,
    records: await readdir(attachStateDir()).catch(() => []),
    exportFiles: await readdir(fuseDir()).catch(() => []),
  };
}

const NOTHING_LEFT = { loops: [], fuseMounts: [], daemons: [], records: [], exportFiles: [] };

async function blockSize(device: string): Promise<number> {
  return Number((await exec(['blockdev', '--getsize64', device])).stdout.trim());
}

describe('fuse backend', () => {
  it('is available here', async () => {
    expect(await fuseBackend.unavailableReason()).toBeNull();
  });

  it('writes through the overlay: attach, mount, write, release; the overlay has the file, the base not', async () => {
    const disk = await attach(fuseBackend, overlay);
    expect(disk.backend).toBe('fuse');
    expect(disk.size).toBe(64 * MiB);
    const table = await disk.partitionTable();
    expect(table.label).toBe('gpt');
    expect(rootPartition(table, disk.size)).toEqual(root);
    const dir = await mount(await disk.rangeDevice(root));
    expect(await readFile(join(dir, 'from-base.txt'), 'utf8')).toBe('base\n');
    await writeFile(join(dir, 'from-layer.txt'), 'layer\n');
    await unmount(dir);
    await disk.release();
    expect(await leftovers()).toEqual(NOTHING_LEFT);

    const again = await attach(fuseBackend, overlay);
    const dir2 = await mount(await again.rangeDevice(root), ['-o', 'ro']);
    expect(await readFile(join(dir2, 'from-layer.txt'), 'utf8')).toBe('layer\n');
    await unmount(dir2);
    await again.release();

    const baseDisk = await attach(fuseBackend, base);
    const dir3 = await mount(await baseDisk.rangeDevice(root), ['-o', 'ro,noload']);
    expect(await readFile(join(dir3, 'from-base.txt'), 'utf8')).toBe('base\n');
    await expect(readFile(join(dir3, 'from-layer.txt'))).rejects.toMatchObject({ code: 'ENOENT' });
    await unmount(dir3);
    await baseDisk.release();
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });

  it('gives one loop device per range and a whole-disk device', async () => {
    const disk = await attach(fuseBackend, overlay);
    const a = await disk.rangeDevice(root);
    expect(await disk.rangeDevice({ ...root })).toBe(a);
    expect(await blockSize(a)).toBe(root.size);
    const whole = await disk.wholeDevice();
    expect(whole).not.toBe(a);
    expect(await blockSize(whole)).toBe(disk.size);
    await expect(disk.rangeDevice({ number: 9, start: disk.size - MiB, size: 2 * MiB })).rejects.toThrow(/not inside/);
    await disk.release();
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });

  it('vmlb-partition N prints a device of the partition, which release detaches', async () => {
    const disk = await attach(fuseBackend, overlay);
    const r = await exec([HELPER, '1'], { env: disk.helperEnv });
    const device = r.stdout.trim();
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    expect(await blockSize(device)).toBe(root.size);
    const missing = await exec([HELPER, '7'], { env: disk.helperEnv, reject: false });
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toMatch(/no partition 7/);
    const noEnv = await exec([HELPER, '1'], { reject: false });
    expect(noEnv.exitCode).toBe(1);
    expect(noEnv.stderr).toMatch(/VMLB_DISK_BACKEND is not set/);
    await disk.release();
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });

  it('release detaches what vmlb-partition made inside a layer script\'s mount namespace', async () => {
    const disk = await attach(fuseBackend, overlay);
    // A modify-disk script runs in a private mount namespace; once it is gone the kernel
    // can no longer name the loop's back-file by its path.
    const r = await exec(['unshare', '--mount', '--propagation', 'private', '--', HELPER, '1'], { env: disk.helperEnv });
    const device = r.stdout.trim();
    expect((await listLoops()).find((l) => l.name === device)).toMatchObject({ backFile: '/', offset: root.start, sizeLimit: root.size });
    await disk.release();
    expect((await listLoops()).some((l) => l.name === device && l.offset === root.start && l.sizeLimit === root.size)).toBe(false);
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });

  it('release is idempotent, and the disk is unusable after it', async () => {
    const disk = await attach(fuseBackend, overlay);
    await disk.rangeDevice(root);
    await Promise.all([disk.release(), disk.release()]);
    await disk.release();
    await disk[Symbol.asyncDispose]();
    await expect(disk.rangeDevice(root)).rejects.toThrow(/already released/);
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });

  it('a failed attach says why and leaves nothing behind', async () => {
    const missing = join(tmp, 'no-such.qcow2');
    await expect(fuseBackend.attach(missing, { purpose: 'attach.test' })).rejects.toThrow(/attaching .*no-such\.qcow2.*qemu-storage-daemon: blockdev-add: .*no-such\.qcow2/);
    const notQcow2 = join(tmp, 'base.raw');
    await expect(fuseBackend.attach(notQcow2, { purpose: 'attach.test' })).rejects.toMatchObject({ code: 'DISK_ATTACH_FAILED' });
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });

  it('an aborted attach releases what it had', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(fuseBackend.attach(overlay, { purpose: 'attach.test', signal: ac.signal })).rejects.toMatchObject({ code: 'ABORTED' });
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });

  // Timing belongs to `npm run bench`; here only that repeated cycles leave nothing behind.
  it('attaches and releases repeatedly, leaving nothing behind', async () => {
    for (let i = 0; i < 5; i++) {
      const disk = await attach(fuseBackend, overlay);
      await disk.rangeDevice(root);
      await disk.release();
    }
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });
});

describe('start-up sweep', () => {
  /** Starts the fixture, which attaches `image` and prints one JSON line once ready. */
  async function startHolder(image: string): Promise<{ child: ChildProcess; info: { rangeDevice: string; helperDevice: string; exportFile: string } }> {
    const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, image], {
      cwd: REPO,
      env: { ...process.env, VMLB_RUN_DIR: process.env.VMLB_RUN_DIR },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let out = '';
    let err = '';
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0]!);
      });
      child.on('exit', (code, sig) => reject(new Error(`fixture exited (${sig ?? code}) before READY:\n${err}`)));
    });
    return { child, info: JSON.parse(line) };
  }

  it('releases what a SIGKILLed owner left, and only that', async () => {
    const { child, info } = await startHolder(overlay);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;

    // The daemon died with its parent (pdeathsig) and left a stale mount, the loops stayed
    // (the helper's shows "/" as its back-file: its mount namespace is gone).
    const debris = await leftovers();
    expect(debris.loops.map((l) => l.split(' ')[0])).toEqual([info.rangeDevice]);
    expect((await listLoops()).find((l) => l.name === info.helperDevice)).toMatchObject({ backFile: '/', offset: root.start, sizeLimit: root.size });
    expect(debris.fuseMounts).toEqual([info.exportFile]);
    // The disk's record and the record of the process's shared qemu-storage-daemon.
    expect(debris.records).toHaveLength(2);

    const report = await sweep();
    expect(report).toMatchObject<Partial<SweepReport>>({ records: 2, owners: 1, loops: 2, mounts: 1, errors: [] });
    expect(describeSweep(report)).toMatch(/^released 2 loop devices, 1 FUSE mount, \d+ leftover files? left by 1 killed run$/);
    expect(await leftovers()).toEqual(NOTHING_LEFT);
    expect((await listLoops()).some((l) => l.name === info.helperDevice && l.offset === root.start && l.sizeLimit === root.size)).toBe(false);
    // Nothing left to do the second time.
    expect(await sweep()).toEqual({ records: 0, owners: 0, loops: 0, mounts: 0, daemons: 0, nbdDevices: 0, files: 0, errors: [] });
  });

  it('leaves alone the records of a live owner', async () => {
    const disk = await attach(fuseBackend, overlay);
    const device = await disk.rangeDevice(root);
    const report = await sweep();
    expect(report.records + report.loops + report.mounts + report.daemons + report.files).toBe(0);
    expect(await blockSize(device)).toBe(root.size);
    await disk.release();
  });

  it('never touches a loop device, process or mount it did not record', async () => {
    const foreignFile = join(tmp, 'foreign.img');
    await writeFile(foreignFile, '');
    await truncate(foreignFile, 4 * MiB);
    const foreignLoop = (await exec(['losetup', '--find', '--show', foreignFile])).stdout.trim();
    const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
    children.push(sleeper);
    try {
      // A dead owner's record whose items now name other things: the loop device backs
      // another file, the pid is a different program, the path is no mount.
      const dead = spawn('true');
      await new Promise((resolve) => dead.once('exit', resolve));
      const sleeperStat = await readFile(`/proc/${sleeper.pid}/stat`, 'utf8');
      const sleeperStart = sleeperStat.slice(sleeperStat.lastIndexOf(')') + 2).split(' ')[19]!;
      await mkdir(attachStateDir(), { recursive: true });
      const stalePath = join(fuseDir(), 'fuse-1-deadbeef.raw');
      await writeFile(
        join(attachStateDir(), 'fuse-1-deadbeef.json'),
        JSON.stringify({
          version: 1,
          id: 'fuse-1-deadbeef',
          owner: { pid: dead.pid, startTime: '1' },
          backend: 'fuse',
          image: overlay,
          purpose: 'forged',
          createdAt: new Date().toISOString(),
          items: [
            { kind: 'file', path: stalePath },
            { kind: 'daemon', pid: sleeper.pid, startTime: sleeperStart, exportFile: stalePath },
            { kind: 'fuse-mount', path: foreignFile },
            { kind: 'loop', device: foreignLoop, backingFile: stalePath },
          ],
        }),
      );
      const report = await sweep();
      expect(report).toMatchObject({ records: 1, loops: 0, mounts: 0, daemons: 0, errors: [] });
      expect((await listLoops()).find((l) => l.name === foreignLoop)?.backFile).toBe(foreignFile);
      expect(sleeper.exitCode).toBeNull();
      // The forged record is gone; this live process's own records (its shared daemon) stay.
      const records = await readdir(attachStateDir());
      expect(records).not.toContain('fuse-1-deadbeef.json');
      expect(records.every((r) => r.startsWith(`qsd-${process.pid}-`))).toBe(true);
    } finally {
      await exec(['losetup', '--detach', foreignLoop], { reject: false });
    }
  });
});

describe('start-up sweep of the fuse dir', () => {
  /** A qemu-storage-daemon exporting the overlay into the engine's fuse dir with no record, as a killed engine can leave it. */
  async function unrecordedDaemon(id: string): Promise<{ daemon: ChildProcess; exportFile: string }> {
    await mkdir(fuseDir(), { recursive: true });
    const exportFile = join(fuseDir(), `${id}.raw`);
    await writeFile(exportFile, '');
    const daemon = spawn(
      'qemu-storage-daemon',
      ['--blockdev', `driver=qcow2,node-name=disk,file.driver=file,file.filename=${overlay}`, '--export', `type=fuse,id=exp,node-name=disk,mountpoint=${exportFile},writable=on`, '--pidfile', join(fuseDir(), `${id}.pid`)],
      { stdio: 'ignore' },
    );
    children.push(daemon);
    for (let i = 0; i < 5000 && !(await readdir(fuseDir())).includes(`${id}.pid`); i++) await new Promise((r) => setTimeout(r, 2));
    expect((await leftovers()).fuseMounts).toEqual([exportFile]);
    return { daemon, exportFile };
  }

  it('unmounts a stale export that no record names (its daemon was killed)', async () => {
    const { daemon, exportFile } = await unrecordedDaemon('fuse-2-0badf00d');
    const loop = (await exec(['losetup', '--find', '--show', exportFile])).stdout.trim();
    const exited = new Promise((resolve) => daemon.once('exit', resolve));
    daemon.kill('SIGKILL');
    await exited;
    expect((await leftovers()).fuseMounts).toEqual([exportFile]);

    // The files: the export file and the killed daemon's pid file.
    expect(await sweep()).toEqual({ records: 0, owners: 0, loops: 1, mounts: 1, daemons: 0, nbdDevices: 0, files: 2, errors: [] });
    expect((await listLoops()).some((l) => l.name === loop && l.backFile.startsWith(tmp))).toBe(false);
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });

  it('stops a live daemon that no record names', async () => {
    const { daemon } = await unrecordedDaemon('fuse-3-0ddba11');
    const exited = new Promise((resolve) => daemon.once('exit', resolve));
    const report = await sweep();
    expect(report).toMatchObject({ records: 0, loops: 0, mounts: 1, daemons: 1, errors: [] });
    await exited;
    expect(await leftovers()).toEqual(NOTHING_LEFT);
  });
});

describe('chooseBackend', () => {
  it('auto picks nbd where the module is loaded, else fuse', async () => {
    const expected = (await nbdBackend.unavailableReason()) === null ? 'nbd' : 'fuse';
    expect((await chooseBackend('auto')).name).toBe(expected);
    expect((await chooseBackend('fuse')).name).toBe('fuse');
  });

  it('a forced backend that is unusable says why', async () => {
    const reason = await nbdBackend.unavailableReason();
    if (reason === null) return;
    const e = await chooseBackend('nbd').catch((err: unknown) => err);
    expect(e).toBeInstanceOf(HostError);
    expect((e as Error).message).toContain(reason);
  });
});

const nbdReason = await nbdBackend.unavailableReason();
if (nbdReason) console.warn(`skipping the nbd backend tests: ${nbdReason}`);

describe.skipIf(nbdReason !== null)(`nbd backend${nbdReason ? ` (skipped: ${nbdReason})` : ''}`, () => {
  it('writes through the overlay: attach, mount, write, release; reattach reads it', async () => {
    const disk = await attach(nbdBackend, overlay);
    expect(disk.backend).toBe('nbd');
    expect(disk.size).toBe(64 * MiB);
    const device = await disk.wholeDevice();
    expect(device).toMatch(/^\/dev\/nbd\d+$/);
    const part = await disk.rangeDevice(rootPartition(await disk.partitionTable(), disk.size));
    expect(await blockSize(part)).toBe(root.size);
    const dir = await mount(part);
    await writeFile(join(dir, 'from-nbd.txt'), 'nbd\n');
    await unmount(dir);
    await disk.release();
    await disk.release();
    await expect(readFile(`/sys/block/${device.slice(5)}/pid`)).rejects.toMatchObject({ code: 'ENOENT' });

    const again = await attach(nbdBackend, overlay);
    const dir2 = await mount(await again.rangeDevice(root), ['-o', 'ro']);
    expect(await readFile(join(dir2, 'from-nbd.txt'), 'utf8')).toBe('nbd\n');
    await unmount(dir2);
    await again.release();
    expect(await readdir(attachStateDir()).catch(() => [])).toEqual([]);
  });

  it('vmlb-partition N prints the partition device', async () => {
    const disk = await attach(nbdBackend, overlay);
    const r = await exec([HELPER, '1'], { env: disk.helperEnv });
    expect(await blockSize(r.stdout.trim())).toBe(root.size);
    await disk.release();
    expect((await listLoops()).filter((l) => l.backFile === disk.helperEnv.VMLB_DISK_DEVICE)).toEqual([]);
  });
});

/**
 * The nbd backend: `qemu-nbd --connect /dev/nbdN` serves the qcow2 image as a kernel block
 * device, with partition nodes /dev/nbdNpM when the module has max_part > 0. What production
 * worker hosts with the nbd module use.
 */
import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ResultPromise } from 'execa';
import {
  AttachRecord,
  commandOnPath,
  detachLoops,
  loopsOn,
  nbdLockDir,
  nbdServedBy,
  newAttachId,
  pathExists,
  processIdentity,
  tryLock,
  unlock,
} from './attach-state.js';
import type { AttachedDisk, AttachOptions, DiskBackend } from './disk-backend.js';
import { AbortedError, VmlbError, tail } from './errors.js';
import { exec, spawnChild } from './exec.js';
import { readPartitionTable } from './partition-table.js';
import type { PartitionTable } from './types.js';

/** How long qemu-nbd may take to connect the device. */
const READY_TIMEOUT_MS = 10_000;
const POLL_MS = 2;
/** How long a partition node may take to appear after the kernel re-read the table. */
const PARTITION_NODE_TIMEOUT_MS = 2000;
/** After `qemu-nbd --disconnect`, how long the serving qemu-nbd may take to exit. */
const STOP_GRACE_MS = 3000;

const NO_MODULE = 'no /dev/nbd0: load the nbd kernel module (modprobe nbd max_part=16)';

export const nbdBackend: DiskBackend = {
  name: 'nbd',
  async unavailableReason() {
    if (!(await pathExists('/dev/nbd0')) || !(await pathExists('/sys/module/nbd'))) return NO_MODULE;
    if (process.getuid?.() !== 0) return 'the nbd backend needs root (it connects /dev/nbdN)';
    for (const [cmd, pkg] of [
      ['qemu-nbd', 'qemu-utils'],
      ['setpriv', 'util-linux'],
      ['blockdev', 'util-linux'],
    ] as const) {
      if (!(await commandOnPath(cmd))) return `${cmd} is not installed (Debian package ${pkg})`;
    }
    return null;
  },
  attach: (image, opts) => NbdDisk.attach(image, opts),
};

function attachError(image: string, message: string): VmlbError {
  return new VmlbError('DISK_ATTACH_FAILED', `attaching ${image} (nbd): ${message}`);
}

async function readSys(path: string): Promise<string | null> {
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
async function isFree(name: string): Promise<boolean> {
  return !(await pathExists(`/sys/block/${name}/pid`)) && (await readSys(`/sys/block/${name}/size`)) === '0';
}

/**
 * Takes the lock of a free nbd device (recorded in `record` first, so that the sweep removes
 * a lock whose owner died) and hands it to `use`, which returns false when the device turned
 * out to be taken (its lock is then dropped and the next device tried). Returns the device's
 * name and lock, or why there is none.
 */
async function lockFreeDevice(
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

class NbdDisk implements AttachedDisk {
  readonly backend = 'nbd' as const;
  readonly image: string;
  private readonly purpose: string;
  private readonly id = newAttachId('nbd');
  /** Where vmlb-partition logs the loop devices it makes when it cannot give /dev/nbdNpM. */
  private readonly loopLog = join(nbdLockDir(), `${this.id}.loops`);
  private device = '';
  private name = '';
  private lockPath: string | undefined;
  private diskSize = 0;
  private attached = false;
  private record: AttachRecord | undefined;
  private server: ResultPromise | undefined;
  private serverDone: Promise<unknown> | undefined;
  private serverExited = false;
  private serverStderr = '';
  private readonly ranges = new Map<string, Promise<string>>();
  private readonly pending = new Set<Promise<unknown>>();
  private releasing: Promise<void> | undefined;
  private released = false;

  private constructor(image: string, purpose: string) {
    this.image = image;
    this.purpose = purpose;
  }

  get size(): number {
    return this.diskSize;
  }

  get helperEnv(): Record<string, string> {
    return { VMLB_DISK_BACKEND: 'nbd', VMLB_DISK_DEVICE: this.device, VMLB_DISK_LOOP_LOG: this.loopLog };
  }

  static async attach(image: string, opts: AttachOptions): Promise<AttachedDisk> {
    const disk = new NbdDisk(resolve(image), opts.purpose);
    try {
      await disk.acquire(opts.signal);
    } catch (e) {
      await disk.release().catch((releaseError: unknown) => {
        if (e instanceof Error) e.message += `\n(and releasing what was attached failed too: ${(releaseError as Error).message})`;
      });
      throw e;
    }
    return disk;
  }

  private async acquire(signal: AbortSignal | undefined): Promise<void> {
    const checkAbort = () => {
      if (signal?.aborted) throw new AbortedError(`attaching ${this.image} was interrupted`);
    };
    checkAbort();
    await mkdir(nbdLockDir(), { recursive: true, mode: 0o700 });
    this.record = await AttachRecord.create({
      id: this.id,
      backend: 'nbd',
      image: this.image,
      purpose: this.purpose,
      items: [{ kind: 'file', path: this.loopLog }],
    });
    const found = await lockFreeDevice(this.record, checkAbort, async (name, lockPath) => {
      this.lockPath = lockPath;
      if (await this.connect(name, checkAbort)) return true;
      this.lockPath = undefined;
      return false;
    });
    if (typeof found === 'string') throw attachError(this.image, found);
  }

  /** Connect `name`; false when another program took the device first. */
  private async connect(name: string, checkAbort: () => void): Promise<boolean> {
    const device = `/dev/${name}`;
    // --verbose keeps qemu-nbd in the foreground, a child we await; setpriv's parent-death
    // signal stops it (and so disconnects the device) if the engine is SIGKILLed.
    const child = spawnChild(
      ['setpriv', '--pdeathsig', 'KILL', '--', 'qemu-nbd', '--verbose', `--connect=${device}`, '--format=qcow2', '--cache=writeback', '--discard=unmap', this.image],
      { stdout: 'ignore', stderr: 'pipe' },
    );
    this.server = child;
    this.serverStderr = '';
    this.serverExited = false;
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      this.serverStderr = (this.serverStderr + chunk).slice(-8192);
    });
    const done = child.then(
      (r) => r,
      (e: unknown) => e,
    );
    this.serverDone = done;
    void done.then(() => {
      if (this.serverDone === done) this.serverExited = true;
    });
    const id = child.pid === undefined ? null : await processIdentity(child.pid);
    if (!id) {
      await done;
      throw attachError(this.image, `qemu-nbd exited before ${device} was connected${this.stderrTail()}`);
    }
    await this.record!.add({ kind: 'nbd', device, pid: id.pid, startTime: id.startTime });
    this.device = device;
    this.name = name;

    const deadline = performance.now() + READY_TIMEOUT_MS;
    // Connected means served by our qemu-nbd *and* sized: the kernel shows the pid before it
    // sets the capacity (nbd_start_device), and a size read in between is 0.
    const ready = async () => (await nbdServedBy(device, id.pid)) && Number(await readSys(`/sys/block/${name}/size`)) > 0;
    while (!(await ready())) {
      if (this.serverExited) {
        await done;
        this.server = undefined;
        // Someone else connected it between our check and qemu-nbd's: try the next one.
        if (!(await isFree(name)) && !(await nbdServedBy(device, id.pid))) {
          this.device = '';
          this.name = '';
          return false;
        }
        throw attachError(this.image, `qemu-nbd exited before ${device} was connected${this.stderrTail()}`);
      }
      checkAbort();
      if (performance.now() > deadline) {
        throw attachError(this.image, `qemu-nbd did not connect ${device} within ${READY_TIMEOUT_MS / 1000} s${this.stderrTail()}`);
      }
      await sleep(POLL_MS);
    }
    this.diskSize = Number(await readSys(`/sys/block/${name}/size`)) * 512;
    this.attached = true;
    await this.settlePartitions();
    return true;
  }

  /**
   * The kernel reads a newly connected nbd device's partition table only when someone opens it
   * next (udev does, soon after): until then there is no /dev/nbdNpM, and tools that go by the
   * name (growpart: /dev/nbd0p1 exists, so partition 1 is called that) and the sandbox, which
   * gives a script the nodes there are when it starts, would see none. Have it read the table
   * now and wait for the nodes; a table it cannot read leaves rangeDevice its loop devices.
   */
  private async settlePartitions(): Promise<void> {
    const maxPart = Number((await readSys('/sys/module/nbd/parameters/max_part')) ?? '0');
    if (maxPart === 0) return;
    const table = await readPartitionTable(this.device).catch(() => null);
    const want = (table?.partitions ?? []).map((p) => p.number).filter((n) => n <= maxPart);
    if (want.length === 0) return;
    const present = async () => (await Promise.all(want.map((n) => pathExists(`/dev/${this.name}p${n}`)))).every(Boolean);
    // BLKRRPART is refused while a partition is open (udev probing it): then someone has read the table already.
    if (!(await present())) await exec(['blockdev', '--rereadpt', this.device], { reject: false });
    const deadline = performance.now() + PARTITION_NODE_TIMEOUT_MS;
    while (!(await present()) && performance.now() < deadline) await sleep(POLL_MS * 5);
  }

  private stderrTail(): string {
    const t = tail(this.serverStderr, 10).trim();
    return t ? `:\n${t}` : '';
  }

  private checkUsable(): void {
    if (this.released || this.releasing) throw new VmlbError('DISK_RELEASED', `${this.image} (nbd) was already released`);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.pending.add(p);
    void p.then(
      () => this.pending.delete(p),
      () => this.pending.delete(p),
    );
    return p;
  }

  async wholeDevice(): Promise<string> {
    this.checkUsable();
    return this.device;
  }

  async partitionTable(): Promise<PartitionTable> {
    this.checkUsable();
    return readPartitionTable(this.device);
  }

  async mountSource(part: { number: number; start: number; size: number }): Promise<{ source: string; options: string }> {
    return { source: await this.rangeDevice(part), options: 'defaults' };
  }

  async rangeDevice(part: { number: number; start: number; size: number }): Promise<string> {
    this.checkUsable();
    const { start, size } = part;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(size) || start < 0 || size <= 0 || start + size > this.diskSize) {
      throw new VmlbError('BAD_RANGE', `partition ${part.number} (bytes ${start}+${size}) is not inside ${this.image} (${this.diskSize} bytes)`);
    }
    if (start === 0 && size === this.diskSize) return this.device;
    const key = `${part.number}:${start}+${size}`;
    let device = this.ranges.get(key);
    if (!device) {
      device = this.track(this.partitionDevice(part));
      this.ranges.set(key, device);
      device.catch(() => this.ranges.delete(key));
    }
    return device;
  }

  /** /dev/nbdNpM when the kernel's view of partition M is this range, else a loop device over it. */
  private async partitionDevice(part: { number: number; start: number; size: number }): Promise<string> {
    const maxPart = Number((await readSys('/sys/module/nbd/parameters/max_part')) ?? '0');
    if (maxPart > 0 && part.number > 0 && part.start % 512 === 0 && part.size % 512 === 0) {
      const node = `${this.name}p${part.number}`;
      const matches = async () =>
        (await readSys(`/sys/block/${this.name}/${node}/start`)) === String(part.start / 512) &&
        (await readSys(`/sys/block/${this.name}/${node}/size`)) === String(part.size / 512);
      let ok = await matches();
      if (!ok) {
        // The table was just written (or changed by growpart): have the kernel read it again.
        // It refuses while a partition is in use; the loop device below serves then.
        const r = await exec(['blockdev', '--rereadpt', this.device], { reject: false });
        ok = r.exitCode === 0 && (await matches());
      }
      if (ok) {
        const path = `/dev/${node}`;
        const deadline = performance.now() + PARTITION_NODE_TIMEOUT_MS;
        while (!(await pathExists(path))) {
          if (performance.now() > deadline) throw new VmlbError('DISK_ATTACH_FAILED', `${path} did not appear after the partition table was read`);
          await sleep(POLL_MS);
        }
        return path;
      }
    }
    const r = await exec(['losetup', '--find', '--show', '--offset', String(part.start), '--sizelimit', String(part.size), this.device]);
    const loop = r.stdout.trim();
    await this.record!.add({ kind: 'loop', device: loop, backingFile: this.device });
    return loop;
  }

  release(): Promise<void> {
    if (this.released) return Promise.resolve();
    this.releasing ??= this.doRelease().then(
      () => {
        this.released = true;
      },
      (e: unknown) => {
        this.releasing = undefined;
        throw e;
      },
    );
    return this.releasing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }

  private async doRelease(): Promise<void> {
    await Promise.allSettled([...this.pending]);
    const errors: unknown[] = [];
    const step = async (fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (e) {
        errors.push(e);
      }
    };
    // Loops over the device: ours (a module without partition nodes) and vmlb-partition's.
    // While this process serves the device, nobody else's loop can sit on it.
    await step(async () => {
      if (!this.device) return;
      await detachLoops(await loopsOn(this.device, this.loopLog));
    });
    this.ranges.clear();
    if (this.server) {
      await step(async () => {
        await exec(['sync']);
      });
      await step(() => this.disconnect());
    }
    await step(() => rm(this.loopLog, { force: true }));
    if (this.lockPath) {
      const lockPath = this.lockPath;
      await step(async () => {
        await unlock(lockPath);
        this.lockPath = undefined;
      });
    }
    if (errors.length > 0) {
      const messages = errors.map((e) => (e instanceof Error ? e.message : String(e)));
      throw new VmlbError('DISK_RELEASE_FAILED', `releasing ${this.image} (nbd, ${this.device || 'no device'}) failed:\n  ${messages.join('\n  ')}`, {
        cause: new AggregateError(errors),
      });
    }
    await this.record?.remove();
  }

  private async disconnect(): Promise<void> {
    const child = this.server;
    const done = this.serverDone;
    if (!child || !done) return;
    const diedWhileAttached = this.serverExited && this.attached;
    if (!this.serverExited) {
      if (child.pid !== undefined && (await nbdServedBy(this.device, child.pid))) {
        await exec(['qemu-nbd', '--disconnect', this.device]);
      } else {
        child.kill('SIGTERM');
      }
      const timer = new AbortController();
      const stopped = await Promise.race([done.then(() => true), sleep(STOP_GRACE_MS, false, { signal: timer.signal }).catch(() => false)]);
      timer.abort();
      if (!stopped) {
        child.kill('SIGTERM');
        const killTimer = new AbortController();
        const termed = await Promise.race([done.then(() => true), sleep(STOP_GRACE_MS, false, { signal: killTimer.signal }).catch(() => false)]);
        killTimer.abort();
        if (!termed) child.kill('SIGKILL');
        await done;
      }
    }
    this.server = undefined;
    if (diedWhileAttached) {
      const r = (await done) as { exitCode?: number; signal?: string };
      throw new VmlbError(
        'DISK_DAEMON_DIED',
        `qemu-nbd for ${this.image} exited while ${this.device} was attached (${r.signal ?? `status ${r.exitCode}`})${this.stderrTail()}`,
      );
    }
  }
}

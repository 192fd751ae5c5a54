/**
 * The fuse backend: qemu-storage-daemon exports the qcow2 image as a raw file over FUSE, and
 * loop devices over that file (with a partition's offset and size) give block devices. Needs
 * no kernel module beyond fuse and loop. One daemon serves every disk of the engine process
 * (fuse-daemon.ts); each attach adds an export to it and each release removes it.
 */
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  AttachRecord,
  commandOnPath,
  detachLoops,
  fuseDir,
  isFuseMount,
  loopLogFor,
  loopsOn,
  newAttachId,
  pathExists,
  unmountFuse,
} from './attach-state.js';
import { FuseDaemon } from './fuse-daemon.js';
import type { AttachedDisk, AttachOptions, DiskBackend } from './disk-backend.js';
import { AbortedError, VmlbError, tail } from './errors.js';
import { exec } from './exec.js';
import { readPartitionTable } from './partition-table.js';
import type { PartitionTable } from './types.js';

/** How long a loop device still held open may take to detach (udev probes new ones). */
const LOOP_BUSY_WAIT_MS = 1000;

export const fuseBackend: DiskBackend = {
  name: 'fuse',
  async unavailableReason() {
    if (process.getuid?.() !== 0) return 'the fuse backend needs root (FUSE export with allow_other, loop devices)';
    if (!(await pathExists('/dev/fuse'))) return 'no /dev/fuse: load the fuse kernel module (modprobe fuse)';
    if (!(await pathExists('/dev/loop-control'))) return 'no /dev/loop-control: load the loop kernel module (modprobe loop)';
    for (const [cmd, pkg] of [
      ['qemu-storage-daemon', 'qemu-system-common'],
      ['setpriv', 'util-linux'],
      ['losetup', 'mount'],
    ] as const) {
      if (!(await commandOnPath(cmd))) return `${cmd} is not installed (Debian package ${pkg})`;
    }
    return null;
  },
  attach: (image, opts) => FuseDisk.attach(image, opts),
};

/** A sub-step's failure while attaching, named for the image. */
function attachError(image: string, message: string): VmlbError {
  return new VmlbError('DISK_ATTACH_FAILED', `attaching ${image} (fuse): ${message}`);
}

class FuseDisk implements AttachedDisk {
  readonly backend = 'fuse' as const;
  readonly image: string;
  readonly helperEnv: Record<string, string>;
  private readonly id: string;
  private readonly exportFile: string;
  /** Where vmlb-partition logs the loop devices it makes (see loopsOn). */
  private readonly loopLog: string;
  private readonly purpose: string;
  private diskSize = 0;
  /** Set once attach() has succeeded. */
  private attached = false;
  private record: AttachRecord | undefined;
  private daemon: FuseDaemon | undefined;
  /** The daemon's name for this disk's blockdev and export. */
  private exportName: string | undefined;
  private whole: Promise<string> | undefined;
  private readonly ranges = new Map<string, Promise<string>>();
  /** Loop devices being created: release waits for them, so none is made behind its back. */
  private readonly pending = new Set<Promise<unknown>>();
  private releasing: Promise<void> | undefined;
  private released = false;
  private failedWrites = 0;

  private constructor(image: string, purpose: string) {
    this.image = image;
    this.purpose = purpose;
    this.id = newAttachId('fuse');
    this.exportFile = join(fuseDir(), `${this.id}.raw`);
    this.loopLog = loopLogFor(this.exportFile);
    this.helperEnv = { VMLB_DISK_BACKEND: 'fuse', VMLB_DISK_FILE: this.exportFile, VMLB_DISK_LOOP_LOG: this.loopLog };
  }

  get size(): number {
    return this.diskSize;
  }

  static async attach(image: string, opts: AttachOptions): Promise<AttachedDisk> {
    const disk = new FuseDisk(resolve(image), opts.purpose);
    try {
      await disk.acquire(opts.signal);
    } catch (e) {
      // Undo what was acquired; the attach failure is the error worth reporting.
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
    await mkdir(fuseDir(), { recursive: true, mode: 0o700 });
    // Recorded before they exist: the sweep removes them only if they are there.
    this.record = await AttachRecord.create({
      id: this.id,
      backend: 'fuse',
      image: this.image,
      purpose: this.purpose,
      items: [
        { kind: 'file', path: this.exportFile },
        { kind: 'file', path: this.loopLog },
      ],
    });
    // FUSE mounts over a regular file: the export is the file itself.
    await writeFile(this.exportFile, '', { flag: 'wx', mode: 0o600 });
    this.daemon = await FuseDaemon.shared();
    checkAbort();
    try {
      this.exportName = await this.daemon.addExport(this.image, this.exportFile);
    } catch (e) {
      throw attachError(this.image, `${(e as Error).message}${await this.stderrTail()}`);
    }
    await this.record.add({ kind: 'fuse-mount', path: this.exportFile });
    this.diskSize = (await stat(this.exportFile)).size;
    this.attached = true;
  }

  private async stderrTail(): Promise<string> {
    const t = (await this.daemon?.stderrTail()) ?? '';
    return t ? `:\n${t}` : '';
  }

  private checkUsable(): void {
    if (this.released || this.releasing) throw new VmlbError('DISK_RELEASED', `${this.image} (fuse) was already released`);
  }

  /** Run a loop-device acquisition so that release() waits for it. */
  private track<T>(p: Promise<T>): Promise<T> {
    this.pending.add(p);
    void p.then(
      () => this.pending.delete(p),
      () => this.pending.delete(p),
    );
    return p;
  }

  private async newLoop(extra: string[]): Promise<string> {
    const r = await exec(['losetup', '--find', '--show', ...extra, this.exportFile]);
    const device = r.stdout.trim();
    await this.record!.add({ kind: 'loop', device, backingFile: this.exportFile });
    return device;
  }

  async wholeDevice(): Promise<string> {
    this.checkUsable();
    this.whole ??= this.track(this.newLoop([]));
    return this.whole;
  }

  async partitionTable(): Promise<PartitionTable> {
    this.checkUsable();
    return readPartitionTable(this.exportFile);
  }

  async mountSource(part: { number: number; start: number; size: number }): Promise<{ source: string; options: string }> {
    if (!this.attached || this.released) throw new VmlbError('DISK_RELEASED', `${this.image} is not attached`);
    if (part.start === 0 && part.size === this.diskSize) return { source: this.exportFile, options: 'loop' };
    return { source: this.exportFile, options: `loop,offset=${part.start},sizelimit=${part.size}` };
  }

  async rangeDevice(part: { number: number; start: number; size: number }): Promise<string> {
    this.checkUsable();
    const { start, size } = part;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(size) || start < 0 || size <= 0 || start + size > this.diskSize) {
      throw new VmlbError('BAD_RANGE', `partition ${part.number} (bytes ${start}+${size}) is not inside ${this.image} (${this.diskSize} bytes)`);
    }
    const key = `${start}+${size}`;
    let device = this.ranges.get(key);
    if (!device) {
      device = this.track(this.newLoop(['--offset', String(start), '--sizelimit', String(size)]));
      this.ranges.set(key, device);
      // A failed attempt is not cached: the next call tries again.
      device.catch(() => this.ranges.delete(key));
    }
    return device;
  }

  release(): Promise<void> {
    if (this.released) return Promise.resolve();
    this.releasing ??= this.doRelease().then(
      () => {
        this.released = true;
      },
      (e: unknown) => {
        this.releasing = undefined; // a later call tries the remaining steps again
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
    // Every loop on the export file, ours and the vmlb-partition helper's, goes first.
    await step(() => this.detachLoops());
    this.whole = undefined;
    this.ranges.clear();
    // Removing the export unmounts it (the daemon does, without a umount process) and
    // closing its blockdev flushes the image. A daemon that died leaves a stale mount: that
    // one is unmounted after it.
    await step(() => this.removeExport());
    await step(async () => {
      if (await isFuseMount(this.exportFile)) await unmountFuse(this.exportFile);
    });
    await step(async () => {
      await rm(this.loopLog, { force: true });
      await rm(this.exportFile, { force: true });
    });
    if (errors.length > 0) {
      // The record stays: once this process is gone, the start-up sweep retries.
      const messages = errors.map((e) => (e instanceof Error ? e.message : String(e)));
      throw new VmlbError('DISK_RELEASE_FAILED', `releasing ${this.image} (fuse, ${this.exportFile}) failed:\n  ${messages.join('\n  ')}`, {
        cause: new AggregateError(errors),
      });
    }
    await this.record?.remove();
  }

  /**
   * Detach every loop device on the export file. A loop that something still holds open
   * (udev's blkid for a moment, or a mount someone forgot) is only marked to detach on its
   * last close: wait a moment for it, then report it.
   */
  private async detachLoops(): Promise<void> {
    const mine = () => loopsOn(this.exportFile, this.loopLog);
    await detachLoops(await mine());
    const deadline = performance.now() + LOOP_BUSY_WAIT_MS;
    for (let left = await mine(); left.length > 0; left = await mine()) {
      if (performance.now() > deadline) {
        throw new VmlbError('LOOP_BUSY', `loop device${left.length > 1 ? 's' : ''} ${left.join(', ')} on ${this.exportFile} still in use (mounted?) and not detached`);
      }
      await sleep(5);
    }
  }

  private async removeExport(): Promise<void> {
    const { daemon, exportName } = this;
    if (!daemon || !exportName) return;
    this.exportName = undefined;
    if (!daemon.isAlive && this.attached) {
      // Writes after it died failed: the image may lack them.
      throw new VmlbError('DISK_DAEMON_DIED', `qemu-storage-daemon exited while ${this.image} was attached${await this.stderrTail()}`);
    }
    this.failedWrites += await daemon.removeExport(exportName);
  }

  lostWrites(): number {
    return this.failedWrites;
  }
}

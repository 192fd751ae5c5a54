/**
 * The fuse backend: qemu-storage-daemon exports the qcow2 image as a raw file over FUSE, and
 * loop devices over that file (with a partition's offset and size) give block devices. Needs
 * no kernel module beyond fuse and loop. One daemon serves every disk of the engine process
 * (fuse-daemon.ts); each attach adds an export to it and each release removes it.
 */
import { rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AttachedDiskBase, type ByteRange } from './attached-disk-base.js';
import { FuseDaemon } from './fuse-daemon.js';
import type { AttachedDisk, AttachOptions, DiskBackend } from './disk-backend.js';
import { VmlbError } from '../errors.js';
import { exec, missingCommand } from '../host/exec.js';
import { detachLoops, isFuseMount, loopLogFor, loopsOn, unmountFuse } from './loops-and-mounts.js';
import { readPartitionTable } from '../host/partition-table.js';
import { pathExists } from '../host/path-exists.js';
import { fuseDir } from './run-dirs.js';
import type { PartitionTable } from '../types.js';

/** How long a loop device still held open may take to detach (udev probes new ones). */
const LOOP_BUSY_WAIT_MS = 1000;

export const fuseBackend: DiskBackend = {
  name: 'fuse',
  async unavailableReason() {
    if (process.getuid?.() !== 0) return 'the fuse backend needs root (FUSE export with allow_other, loop devices)';
    if (!(await pathExists('/dev/fuse'))) return 'no /dev/fuse: load the fuse kernel module (modprobe fuse)';
    if (!(await pathExists('/dev/loop-control'))) return 'no /dev/loop-control: load the loop kernel module (modprobe loop)';
    return missingCommand([['qemu-storage-daemon', 'qemu-system-common'], ['setpriv', 'util-linux'], ['losetup', 'mount']]);
  },
  attach: (image, opts) => FuseDisk.attach(image, opts),
};

class FuseDisk extends AttachedDiskBase {
  readonly helperEnv: Record<string, string>;
  private readonly exportFile: string;
  /** Where vmlb-partition logs the loop devices it makes (see loopsOn). */
  private readonly loopLog: string;
  private daemon: FuseDaemon | undefined;
  /** The daemon's name for this disk's blockdev and export. */
  private exportName: string | undefined;
  private whole: Promise<string> | undefined;
  private failedWrites = 0;

  private constructor(image: string, opts: AttachOptions) {
    super('fuse', image, opts);
    this.exportFile = join(fuseDir(), `${this.id}.raw`);
    this.loopLog = loopLogFor(this.exportFile);
    this.helperEnv = { VMLB_DISK_BACKEND: 'fuse', VMLB_DISK_FILE: this.exportFile, VMLB_DISK_LOOP_LOG: this.loopLog };
  }

  static attach(image: string, opts: AttachOptions): Promise<AttachedDisk> {
    return AttachedDiskBase.attachDisk(new FuseDisk(resolve(image), opts), opts.signal);
  }

  protected async acquire(checkAbort: () => void): Promise<void> {
    const record = await this.createRecord(fuseDir(), [
      { kind: 'file', path: this.exportFile },
      { kind: 'file', path: this.loopLog },
    ]);
    this.onRelease(async () => {
      await rm(this.loopLog, { force: true });
      await rm(this.exportFile, { force: true });
    });
    // FUSE mounts over a regular file: the export is the file itself.
    await writeFile(this.exportFile, '', { flag: 'wx', mode: 0o600 });
    // A daemon that died leaves a stale mount on it, which no export removal takes away.
    this.onRelease(async () => {
      if (await isFuseMount(this.exportFile)) await unmountFuse(this.exportFile);
    });
    const lease = await FuseDaemon.acquire();
    this.daemon = lease.daemon;
    this.onRelease(lease.release);
    checkAbort();
    try {
      this.exportName = await this.daemon.addExport(this.image, this.exportFile);
    } catch (e) {
      throw this.attachError(`${(e as Error).message}${await this.stderrTail()}`);
    }
    // Removing the export unmounts it (the daemon does, without a umount process) and
    // closing its blockdev flushes the image.
    this.onRelease(() => this.removeExport());
    // Every loop on the export file, ours and the vmlb-partition helper's, goes first.
    this.onRelease(async () => {
      try {
        await this.detachLoops();
      } finally {
        this.whole = undefined;
        this.forgetRanges();
      }
    });
    await record.add({ kind: 'fuse-mount', path: this.exportFile });
    this.diskSize = (await stat(this.exportFile)).size;
    this.attached = true;
  }

  protected describe(): string {
    return `fuse, ${this.exportFile}`;
  }

  private async stderrTail(): Promise<string> {
    const t = (await this.daemon?.stderrTail()) ?? '';
    return t ? `:\n${t}` : '';
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

  async mountSource(part: ByteRange): Promise<{ source: string; options: string }> {
    if (!this.attached || this.isReleased) throw new VmlbError('DISK_RELEASED', `${this.image} is not attached`);
    if (part.start === 0 && part.size === this.diskSize) return { source: this.exportFile, options: 'loop' };
    return { source: this.exportFile, options: `loop,offset=${part.start},sizelimit=${part.size}` };
  }

  async rangeDevice(part: ByteRange): Promise<string> {
    this.checkUsable();
    this.checkRange(part);
    const { start, size } = part;
    return this.rangeOnce(`${start}+${size}`, () => this.newLoop(['--offset', String(start), '--sizelimit', String(size)]));
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

/**
 * The nbd backend: `qemu-nbd --connect /dev/nbdN` serves the qcow2 image as a kernel block
 * device, with partition nodes /dev/nbdNpM when the module has max_part > 0. What production
 * worker hosts with the nbd module use.
 */
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ResultPromise } from 'execa';
import { AttachedDiskBase, type ByteRange } from './attached-disk-base.js';
import type { AttachedDisk, AttachOptions, DiskBackend } from './disk-backend.js';
import { VmlbError, tail } from '../errors.js';
import { exec, missingCommand, settled, spawnChild, stopChild } from '../host/exec.js';
import { unlock } from './lock-files.js';
import { detachLoops, loopsOn } from './loops-and-mounts.js';
import { NO_MODULE, POLL_MS, STOP_GRACE_MS, isFree, lockFreeDevice, nbdServedBy, readSys } from './nbd-devices.js';
import { readPartitionTable } from '../host/partition-table.js';
import { pathExists } from '../host/path-exists.js';
import { processIdentity } from '../host/process-identity.js';
import { nbdLockDir } from './run-dirs.js';
import type { PartitionTable } from '../types.js';

/** How long qemu-nbd may take to connect the device. */
const READY_TIMEOUT_MS = 10_000;
/** How long a partition node may take to appear after the kernel re-read the table. */
const PARTITION_NODE_TIMEOUT_MS = 2000;

export const nbdBackend: DiskBackend = {
  name: 'nbd',
  async unavailableReason() {
    if (!(await pathExists('/dev/nbd0')) || !(await pathExists('/sys/module/nbd'))) return NO_MODULE;
    if (process.getuid?.() !== 0) return 'the nbd backend needs root (it connects /dev/nbdN)';
    return missingCommand([['qemu-nbd', 'qemu-utils'], ['setpriv', 'util-linux'], ['blockdev', 'util-linux']]);
  },
  attach: (image, opts) => NbdDisk.attach(image, opts),
};

class NbdDisk extends AttachedDiskBase {
  /** Where vmlb-partition logs the loop devices it makes when it cannot give /dev/nbdNpM. */
  private readonly loopLog = join(nbdLockDir(), `${this.id}.loops`);
  private device = '';
  private name = '';
  private lockPath: string | undefined;
  private server: ResultPromise | undefined;
  private serverDone: Promise<unknown> | undefined;
  private serverExited = false;
  private serverStderr = '';

  private constructor(image: string, opts: AttachOptions) {
    super('nbd', image, opts);
  }

  get helperEnv(): Record<string, string> {
    return { VMLB_DISK_BACKEND: 'nbd', VMLB_DISK_DEVICE: this.device, VMLB_DISK_LOOP_LOG: this.loopLog };
  }

  static attach(image: string, opts: AttachOptions): Promise<AttachedDisk> {
    return AttachedDiskBase.attachDisk(new NbdDisk(resolve(image), opts), opts.signal);
  }

  protected async acquire(checkAbort: () => void): Promise<void> {
    const record = await this.createRecord(nbdLockDir(), [{ kind: 'file', path: this.loopLog }]);
    // All pushed before the first device is tried, since connect() may try several: each
    // release checks what is held now. The lock goes last, so that no other attachment takes
    // the device while anything of this one is left on it.
    this.onRelease(async () => {
      const lockPath = this.lockPath;
      if (!lockPath) return;
      await unlock(lockPath);
      this.lockPath = undefined;
    });
    this.onRelease(() => rm(this.loopLog, { force: true }));
    this.onRelease(() => this.disconnect());
    this.onRelease(async () => {
      if (this.server) await exec(['sync']);
    });
    // Loops over the device: ours (a module without partition nodes) and vmlb-partition's.
    // While this process serves the device, nobody else's loop can sit on it.
    this.onRelease(async () => {
      try {
        if (this.device) await detachLoops(await loopsOn(this.device, this.loopLog));
      } finally {
        this.forgetRanges();
      }
    });
    const found = await lockFreeDevice(record, checkAbort, async (name, lockPath) => {
      this.lockPath = lockPath;
      if (await this.connect(name, checkAbort)) return true;
      this.lockPath = undefined;
      return false;
    });
    if (typeof found === 'string') throw this.attachError(found);
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
    const done = settled(child);
    this.serverDone = done;
    void done.then(() => {
      if (this.serverDone === done) this.serverExited = true;
    });
    const id = child.pid === undefined ? null : await processIdentity(child.pid);
    if (!id) {
      await done;
      throw this.attachError(`qemu-nbd exited before ${device} was connected${this.stderrTail()}`);
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
        throw this.attachError(`qemu-nbd exited before ${device} was connected${this.stderrTail()}`);
      }
      checkAbort();
      if (performance.now() > deadline) {
        throw this.attachError(`qemu-nbd did not connect ${device} within ${READY_TIMEOUT_MS / 1000} s${this.stderrTail()}`);
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

  protected describe(): string {
    return `nbd, ${this.device || 'no device'}`;
  }

  async wholeDevice(): Promise<string> {
    this.checkUsable();
    return this.device;
  }

  async partitionTable(): Promise<PartitionTable> {
    this.checkUsable();
    return readPartitionTable(this.device);
  }

  async mountSource(part: ByteRange): Promise<{ source: string; options: string }> {
    return { source: await this.rangeDevice(part), options: 'defaults' };
  }

  async rangeDevice(part: ByteRange): Promise<string> {
    this.checkUsable();
    this.checkRange(part);
    const { start, size } = part;
    if (start === 0 && size === this.diskSize) return this.device;
    return this.rangeOnce(`${part.number}:${start}+${size}`, () => this.partitionDevice(part));
  }

  /** /dev/nbdNpM when the kernel's view of partition M is this range, else a loop device over it. */
  private async partitionDevice(part: ByteRange): Promise<string> {
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

  private async disconnect(): Promise<void> {
    const child = this.server;
    const done = this.serverDone;
    if (!child || !done) return;
    const diedWhileAttached = this.serverExited && this.attached;
    if (!this.serverExited) {
      // Disconnecting ends the serving qemu-nbd; one that does not serve the device (yet) is
      // told with SIGTERM. Then SIGTERM again, then SIGKILL, STOP_GRACE_MS apart.
      const disconnect = async () => {
        if (child.pid !== undefined && (await nbdServedBy(this.device, child.pid))) await exec(['qemu-nbd', '--disconnect', this.device]);
        else child.kill('SIGTERM');
      };
      await stopChild(child, { exited: done, ask: [disconnect, 'SIGTERM'], graceMs: STOP_GRACE_MS });
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

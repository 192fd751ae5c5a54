/**
 * One qemu-storage-daemon per engine process, driven over QMP: each attached disk is a
 * blockdev plus a FUSE export added to it (and removed again) in a few milliseconds, instead
 * of a daemon started and stopped per layer (tens of milliseconds each on a small host).
 *
 * The daemon is a child the engine awaits (never --daemonize: this host's init reaps those
 * slowly), started through setpriv with a parent-death signal so that it dies with the
 * engine even on SIGKILL, and recorded in the attach state so the start-up sweep can stop one
 * whose owner is gone. It never keeps the engine's process alive: its process and socket are
 * unref'd while no command is in flight.
 *
 * Its lifetime is its disks': each attach takes a lease (FuseDaemon.acquire), and once the
 * last lease is given back the daemon stops by itself, IDLE_STOP_MS later or when the process
 * is about to exit, whichever comes first. The delay spares a build a daemon restart per layer
 * (about 25 ms each here: the next layer attaches right after the previous one is released).
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ResultPromise } from 'execa';
import { AttachRecord } from './attach-record.js';
import { VmlbError, tail } from '../errors.js';
import { settled, spawnChild, stopChild } from '../host/exec.js';
import { debug } from '../debug.js';
import { pathExists } from '../host/path-exists.js';
import { processIdentity } from '../host/process-identity.js';
import { qemuOptValue } from '../host/qemu-img.js';
import { fuseDir } from './run-dirs.js';

const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 3000;
/** How long an idle daemon (no disk attached through it) waits for the next attach before it stops. */
const IDLE_STOP_MS = 1000;
/** How long a FUSE export may take to go away after block-export-del (it waits for its users). */
const EXPORT_DELETE_TIMEOUT_MS = 10_000;

interface QmpReply {
  return?: unknown;
  error?: { class: string; desc: string };
  id?: number;
  event?: string;
  data?: Record<string, unknown>;
}

/** A disk's hold on the daemon; `release` (safe to call twice) gives it back. */
export interface FuseDaemonLease {
  daemon: FuseDaemon;
  release: () => Promise<void>;
}

export class FuseDaemon {
  private static current: Promise<FuseDaemon> | undefined;
  /** The started daemon `current` resolved to, for the synchronous stop at exit. */
  private static started: FuseDaemon | undefined;
  /** Leases not given back yet. */
  private static holders = 0;
  private static idleTimer: NodeJS.Timeout | undefined;
  private static exitHooked = false;

  readonly id: string;
  readonly socketPath: string;
  private readonly pidFile: string;
  private readonly logFile: string;
  private child: ResultPromise | undefined;
  private exited = false;
  private done: Promise<unknown> | undefined;
  private record: AttachRecord | undefined;
  private socket: net.Socket | undefined;
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: QmpReply) => void; reject: (e: Error) => void }>();
  private readonly eventWaiters = new Set<(e: QmpReply) => void>();
  private inflight = 0;
  private counter = 0;

  private constructor() {
    this.id = `qsd-${process.pid}-${randomBytes(4).toString('hex')}`;
    this.socketPath = join(fuseDir(), `${this.id}.sock`);
    this.pidFile = join(fuseDir(), `${this.id}.pid`);
    this.logFile = join(fuseDir(), `${this.id}.log`);
  }

  /**
   * A lease on the process's daemon, started on first use (and again if it died or stopped
   * idle). The daemon runs until every lease is given back.
   */
  static async acquire(): Promise<FuseDaemonLease> {
    FuseDaemon.holders++;
    clearTimeout(FuseDaemon.idleTimer);
    FuseDaemon.idleTimer = undefined;
    let given = false;
    const giveBack = async () => {
      if (given) return;
      given = true;
      if (--FuseDaemon.holders === 0) FuseDaemon.stopWhenIdle();
    };
    try {
      return { daemon: await FuseDaemon.shared(), release: giveBack };
    } catch (e) {
      await giveBack();
      throw e;
    }
  }

  /** The last lease is back: stop after IDLE_STOP_MS unless another disk comes, and before the process exits. */
  private static stopWhenIdle(): void {
    FuseDaemon.idleTimer = setTimeout(() => void FuseDaemon.shutdown().catch((e: unknown) => debug(`stopping the idle qemu-storage-daemon: ${(e as Error).message}`)), IDLE_STOP_MS);
    // The timer never keeps the process alive: an exiting process stops the daemon itself.
    FuseDaemon.idleTimer.unref();
    if (FuseDaemon.exitHooked) return;
    FuseDaemon.exitHooked = true;
    // A process that ends by running out of work stops it as any other stop would (and only
    // then exits: the stop is work)...
    process.on('beforeExit', () => {
      if (FuseDaemon.holders === 0 && FuseDaemon.current) void FuseDaemon.shutdown().catch(() => {});
    });
    // ...one that calls process.exit() cannot wait: an idle daemon has nothing to flush, so
    // it is killed and its files removed at once, as the sweep would otherwise do next time.
    process.on('exit', () => {
      if (FuseDaemon.holders === 0) FuseDaemon.started?.killNow();
    });
  }

  private static shared(): Promise<FuseDaemon> {
    const existing = FuseDaemon.current;
    if (existing) {
      return existing.then((d) => {
        if (!d.exited) return d;
        FuseDaemon.current = undefined;
        return FuseDaemon.shared();
      });
    }
    const started = (async () => {
      const d = new FuseDaemon();
      try {
        await d.start();
      } catch (e) {
        await d.stop().catch(() => {});
        throw e;
      }
      FuseDaemon.started = d;
      return d;
    })();
    FuseDaemon.current = started;
    started.catch(() => {
      if (FuseDaemon.current === started) FuseDaemon.current = undefined;
    });
    return started;
  }

  /**
   * Stops the process's daemon now if no disk holds it (a no-op when none runs, or while a
   * disk is attached: its release stops it). For a caller that must know it is gone, such as
   * a test checking what the engine left behind.
   */
  static async shutdown(): Promise<void> {
    if (FuseDaemon.holders > 0) return;
    clearTimeout(FuseDaemon.idleTimer);
    FuseDaemon.idleTimer = undefined;
    const current = FuseDaemon.current;
    FuseDaemon.current = undefined;
    const d = await current?.catch(() => undefined);
    try {
      await d?.stop();
    } finally {
      if (FuseDaemon.started === d) FuseDaemon.started = undefined;
    }
  }

  get isAlive(): boolean {
    return !this.exited;
  }

  stderrTail(): Promise<string> {
    return (async () => {
      try {
        const fh = await open(this.logFile, 'r');
        try {
          return tail((await fh.readFile('utf8')).trim(), 10);
        } finally {
          await fh.close();
        }
      } catch {
        return '';
      }
    })();
  }

  private async start(): Promise<void> {
    await mkdir(fuseDir(), { recursive: true, mode: 0o700 });
    this.record = await AttachRecord.create({
      id: this.id,
      backend: 'fuse',
      image: '(shared qemu-storage-daemon)',
      purpose: 'FUSE exports of this engine process',
      items: [
        { kind: 'file', path: this.socketPath },
        { kind: 'file', path: this.pidFile },
        { kind: 'file', path: this.logFile },
      ],
    });
    const chardev = `socket,id=qmp,path=${qemuOptValue(this.socketPath)},server=on,wait=off`;
    const child = spawnChild(
      ['setpriv', '--pdeathsig', 'KILL', '--', 'qemu-storage-daemon', '--chardev', chardev, '--monitor', 'chardev=qmp', '--pidfile', this.pidFile],
      // Its stderr goes to a file, not a pipe, which would keep this process alive.
      { stdout: 'ignore', stderr: { file: this.logFile } },
    );
    this.child = child;
    this.done = settled(child);
    void this.done.then(() => {
      this.exited = true;
      for (const p of this.pending.values()) p.reject(new VmlbError('DISK_DAEMON_DIED', 'qemu-storage-daemon exited'));
      this.pending.clear();
    });
    child.unref();
    const id = child.pid === undefined ? null : await processIdentity(child.pid);
    if (!id) throw new VmlbError('DISK_ATTACH_FAILED', 'qemu-storage-daemon exited at once');
    await this.record.add({ kind: 'daemon', pid: id.pid, startTime: id.startTime, exportFile: this.socketPath });
    const deadline = performance.now() + READY_TIMEOUT_MS;
    while (!(await pathExists(this.pidFile))) {
      if (this.exited) throw new VmlbError('DISK_ATTACH_FAILED', `qemu-storage-daemon exited before it was ready`);
      if (performance.now() > deadline) throw new VmlbError('DISK_ATTACH_FAILED', `qemu-storage-daemon was not ready within ${READY_TIMEOUT_MS / 1000} s`);
      await sleep(2);
    }
    await this.connect();
    await this.command('qmp_capabilities');
  }

  private connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(this.socketPath);
      this.socket = s;
      let greeted = false;
      s.setEncoding('utf8');
      s.on('data', (chunk: string) => {
        this.buffer += chunk;
        for (let nl = this.buffer.indexOf('\n'); nl >= 0; nl = this.buffer.indexOf('\n')) {
          const line = this.buffer.slice(0, nl).trim();
          this.buffer = this.buffer.slice(nl + 1);
          if (!line) continue;
          const msg = JSON.parse(line) as QmpReply & { QMP?: unknown };
          if (msg.QMP && !greeted) {
            greeted = true;
            resolve();
          } else if (msg.event) {
            for (const w of [...this.eventWaiters]) w(msg);
          } else if (typeof msg.id === 'number') {
            const p = this.pending.get(msg.id);
            this.pending.delete(msg.id);
            p?.resolve(msg);
          }
        }
      });
      s.on('error', (e) => {
        if (!greeted) reject(e);
        for (const p of this.pending.values()) p.reject(e);
        this.pending.clear();
      });
      s.unref();
    });
  }

  /** One QMP command; the daemon's error is thrown as a VmlbError with its description. */
  async command(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.exited || !this.socket) throw new VmlbError('DISK_DAEMON_DIED', 'qemu-storage-daemon is not running');
    const id = this.nextId++;
    const reply = await this.busy(
      new Promise<QmpReply>((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        this.socket!.write(JSON.stringify({ execute, arguments: args, id }) + '\n');
      }),
    );
    debug(`qmp ${execute} ${JSON.stringify(args ?? {})} -> ${reply.error ? reply.error.desc : 'ok'}`);
    if (reply.error) throw new VmlbError('QMP_ERROR', `qemu-storage-daemon: ${execute}: ${reply.error.desc}`);
    return reply.return;
  }

  /** Keeps the process alive while a command or wait is in flight, and only then. */
  private async busy<T>(p: Promise<T>): Promise<T> {
    if (this.inflight++ === 0) this.socket?.ref();
    try {
      return await p;
    } finally {
      if (--this.inflight === 0) this.socket?.unref();
    }
  }

  private waitEvent(match: (e: QmpReply) => boolean, timeoutMs: number): { promise: Promise<boolean>; cancel: () => void } {
    let cancel = () => {};
    const promise = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => finish(false), timeoutMs);
      const waiter = (e: QmpReply) => {
        if (match(e)) finish(true);
      };
      const finish = (v: boolean) => {
        clearTimeout(timer);
        this.eventWaiters.delete(waiter);
        resolve(v);
      };
      cancel = () => finish(false);
      this.eventWaiters.add(waiter);
    });
    return { promise: this.busy(promise), cancel };
  }

  /** Opens `image` and exports it as a raw file over FUSE at `exportFile` (which must exist). */
  async addExport(image: string, exportFile: string): Promise<string> {
    const name = `d${++this.counter}`;
    await this.command('blockdev-add', {
      driver: 'qcow2',
      'node-name': name,
      file: { driver: 'file', filename: image, aio: 'threads' },
      cache: { direct: false },
    });
    try {
      await this.command('block-export-add', { type: 'fuse', id: name, 'node-name': name, mountpoint: exportFile, writable: true });
    } catch (e) {
      await this.command('blockdev-del', { 'node-name': name }).catch(() => {});
      throw e;
    }
    return name;
  }

  /**
   * The writes and flushes of a blockdev (its qcow2 node and the file under it) that failed
   * so far: the image file's filesystem full (ENOSPC) or an I/O error. The FUSE export hands
   * such a failure back to the kernel, whose filesystem on the disk may carry on without the
   * data; this count is how the engine learns of it.
   */
  async failedWrites(name: string): Promise<number> {
    interface Stats { failed_wr_operations?: number; failed_flush_operations?: number; failed_zone_append_operations?: number }
    interface Entry { 'node-name'?: string; stats?: Stats; parent?: Entry }
    const entries = (await this.command('query-blockstats', { 'query-nodes': true })) as Entry[];
    let failed = 0;
    const count = (e: Entry | undefined): void => {
      if (!e) return;
      failed += (e.stats?.failed_wr_operations ?? 0) + (e.stats?.failed_flush_operations ?? 0);
      count(e.parent);
    };
    count(entries.find((e) => e['node-name'] === name));
    return failed;
  }

  /**
   * Removes an export and closes its image (flushing it). Returns how many of its writes and
   * flushes failed (see failedWrites), counted once the export is gone and before the image
   * is closed.
   */
  async removeExport(name: string): Promise<number> {
    const deleted = this.waitEvent((e) => e.event === 'BLOCK_EXPORT_DELETED' && e.data?.id === name, EXPORT_DELETE_TIMEOUT_MS);
    try {
      await this.command('block-export-del', { id: name });
    } catch (e) {
      deleted.cancel();
      throw e;
    }
    if (!(await deleted.promise)) {
      throw new VmlbError('EXPORT_BUSY', `the FUSE export ${name} was still in use ${EXPORT_DELETE_TIMEOUT_MS / 1000} s after it was removed`);
    }
    const failed = await this.failedWrites(name).catch(() => 0);
    await this.command('blockdev-del', { 'node-name': name });
    return failed;
  }

  async stop(): Promise<void> {
    if (this.child && !this.exited) {
      this.socket?.destroy();
      await stopChild(this.child, { exited: this.done, graceMs: STOP_GRACE_MS });
    }
    this.socket?.destroy();
    await rm(this.socketPath, { force: true });
    await rm(this.pidFile, { force: true });
    await rm(this.logFile, { force: true });
    await this.record?.remove();
  }

  /** At process exit (see stopWhenIdle): SIGKILL and the files removed, synchronously. */
  private killNow(): void {
    if (this.child && !this.exited) this.child.kill('SIGKILL');
    for (const file of [this.socketPath, this.pidFile, this.logFile, this.record?.path]) if (file) rmSync(file, { force: true });
  }
}

/**
 * Stops the FUSE daemon now if no disk holds it (it would stop on its own a moment after its
 * last disk): for a process about to exit, such as a worker that stops.
 */
export function stopIdleFuseDaemon(): Promise<void> {
  return FuseDaemon.shutdown();
}

/**
 * What every attached disk does the same way, whatever serves it: attaching is a series of
 * acquisitions, each of which pushes its own release on a stack as it is made; a failed attach
 * unwinds what it got so far, and release() unwinds all of it, last acquired first, exactly
 * once however often it is called. The fuse and nbd disks (attach-fuse.ts, attach-nbd.ts) say
 * only what they acquire and how each is given back.
 */
import { mkdir } from 'node:fs/promises';
import { AttachRecord, newAttachId, type AttachItem } from './attach-record.js';
import type { AttachedDisk, AttachOptions, BackendName } from './disk-backend.js';
import { AbortedError, VmlbError } from '../errors.js';
import { releaseOnFailure } from './release-on-failure.js';
import type { PartitionTable } from '../types.js';

export type ByteRange = { number: number; start: number; size: number };

export abstract class AttachedDiskBase implements AttachedDisk {
  readonly backend: BackendName;
  abstract readonly helperEnv: Record<string, string>;
  readonly image: string;
  /** Names the attachment's record and its files: `<backend>-<pid>-<random>`. */
  protected readonly id: string;
  protected readonly purpose: string;
  protected diskSize = 0;
  /** Set once the attach has succeeded. */
  protected attached = false;
  /** Removed once everything is released; until then the start-up sweep can release it all. */
  protected record: AttachRecord | undefined;
  /** One release per acquisition, in the order acquired. */
  private readonly releases: Array<() => Promise<void>> = [];
  /** Devices being made: release waits for them, so none is made behind its back. */
  private readonly pending = new Set<Promise<unknown>>();
  private readonly ranges = new Map<string, Promise<string>>();
  private releasing: Promise<void> | undefined;
  private released = false;

  protected constructor(backend: BackendName, image: string, opts: AttachOptions) {
    this.backend = backend;
    this.image = image;
    this.purpose = opts.purpose;
    this.id = newAttachId(backend);
  }

  get size(): number {
    return this.diskSize;
  }

  /** Runs the disk's acquire(); when it fails, releases what it acquired and throws why it failed. */
  protected static async attachDisk<D extends AttachedDiskBase>(disk: D, signal: AbortSignal | undefined): Promise<D> {
    const checkAbort = () => {
      if (signal?.aborted) throw new AbortedError(`attaching ${disk.image} was interrupted`);
    };
    try {
      checkAbort();
      await disk.acquire(checkAbort);
    } catch (e) {
      // The attach failure is the error worth reporting; a failed undo is noted in it.
      throw await releaseOnFailure(e, () => disk.release());
    }
    return disk;
  }

  /**
   * Writes the attachment's record first of all, naming `items` that are about to be made
   * (the sweep removes them only if they are there), with `dir`, where they go.
   */
  protected async createRecord(dir: string, items: AttachItem[]): Promise<AttachRecord> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    this.record = await AttachRecord.create({ id: this.id, backend: this.backend, image: this.image, purpose: this.purpose, items });
    return this.record;
  }

  /** Acquires the disk's parts, calling onRelease() for each as it goes. */
  protected abstract acquire(checkAbort: () => void): Promise<void>;

  /** The backend and device or file that a release failure names after the image. */
  protected abstract describe(): string;

  /**
   * Pushes the release of what was just acquired. Each release does only what is still to do
   * (it checks what is held), so that after a failed release() a later call can run the whole
   * stack again and finish what failed.
   */
  protected onRelease(release: () => Promise<void>): void {
    this.releases.push(release);
  }

  /** A sub-step's failure while attaching, named for the image. */
  protected attachError(message: string): VmlbError {
    return new VmlbError('DISK_ATTACH_FAILED', `attaching ${this.image} (${this.backend}): ${message}`);
  }

  protected get isReleased(): boolean {
    return this.released;
  }

  protected checkUsable(): void {
    if (this.released || this.releasing) throw new VmlbError('DISK_RELEASED', `${this.image} (${this.backend}) was already released`);
  }

  /** A partition's byte range, checked to lie inside the disk. */
  protected checkRange(part: ByteRange): void {
    const { start, size } = part;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(size) || start < 0 || size <= 0 || start + size > this.diskSize) {
      throw new VmlbError('BAD_RANGE', `partition ${part.number} (bytes ${start}+${size}) is not inside ${this.image} (${this.diskSize} bytes)`);
    }
  }

  /** The device for a byte range, made once (release waits for it); a failed attempt is not kept, so the next call tries again. */
  protected rangeOnce(key: string, make: () => Promise<string>): Promise<string> {
    let device = this.ranges.get(key);
    if (!device) {
      device = this.track(make());
      this.ranges.set(key, device);
      device.catch(() => this.ranges.delete(key));
    }
    return device;
  }

  /** Forgets the devices made for byte ranges (once they are detached). */
  protected forgetRanges(): void {
    this.ranges.clear();
  }

  /** Runs a device acquisition so that release() waits for it. */
  protected track<T>(p: Promise<T>): Promise<T> {
    this.pending.add(p);
    void p.then(
      () => this.pending.delete(p),
      () => this.pending.delete(p),
    );
    return p;
  }

  abstract wholeDevice(): Promise<string>;
  abstract partitionTable(): Promise<PartitionTable>;
  abstract rangeDevice(part: ByteRange): Promise<string>;
  abstract mountSource(part: ByteRange): Promise<{ source: string; options: string }>;

  release(): Promise<void> {
    if (this.released) return Promise.resolve();
    this.releasing ??= this.unwind().then(
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

  /** Every release, last acquired first; one that fails does not stop the others, and all failures are reported at once. */
  private async unwind(): Promise<void> {
    await Promise.allSettled([...this.pending]);
    const errors: unknown[] = [];
    for (const release of [...this.releases].reverse()) {
      try {
        await release();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length > 0) {
      // The record stays: once this process is gone, the start-up sweep retries.
      const messages = errors.map((e) => (e instanceof Error ? e.message : String(e)));
      throw new VmlbError('DISK_RELEASE_FAILED', `releasing ${this.image} (${this.describe()}) failed:\n  ${messages.join('\n  ')}`, {
        cause: new AggregateError(errors),
      });
    }
    this.releases.length = 0;
    await this.record?.remove();
  }
}

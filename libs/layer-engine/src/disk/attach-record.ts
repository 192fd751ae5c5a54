/**
 * State records of attached disks, so that a start-up sweep (sweep.ts) can release what a
 * SIGKILLed run left behind: one JSON record per attachment in `runDir()/attach/<id>.json`,
 * rewritten atomically each time something is acquired.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BackendName } from './disk-backend.js';
import { selfIdentity, type ProcessIdentity } from '../host/process-identity.js';
import { attachStateDir } from './run-dirs.js';

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

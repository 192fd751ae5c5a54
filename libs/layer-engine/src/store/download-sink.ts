import { createHash, type Hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { UndecodableError } from './shared-blob-errors.js';
import { startZstd, writeTo, type ZstdProcess } from './zstd-stream.js';

/** Where a download's bytes go: the file, hashed. */
export interface DownloadSink {
  write(chunk: Buffer): Promise<void>;
  /** The whole was received: its sha256 and size as written. */
  finish(): Promise<{ sha256: string; size: number }>;
  /** Empties the file to receive the object from its start. */
  restart(): Promise<void>;
  /** Releases what it holds (idempotent). */
  close(): Promise<void>;
}

/** The object is the file's bytes as they are. */
export class FileSink implements DownloadSink {
  private hash: Hash = createHash('sha256');
  private size = 0;
  constructor(private readonly fh: FileHandle) {}
  async write(chunk: Buffer): Promise<void> {
    await this.fh.write(chunk, 0, chunk.length, this.size);
    this.hash.update(chunk);
    this.size += chunk.length;
  }
  async finish() {
    return { sha256: this.hash.digest('hex'), size: this.size };
  }
  async restart(): Promise<void> {
    this.hash = createHash('sha256');
    this.size = 0;
    await this.fh.truncate(0);
  }
  async close(): Promise<void> {}
}

/**
 * The object is a zstd stream: `zstd -d` decompresses it into the file, hashed. The same
 * decompressor is fed across a resumed GET (its state is the stream so far).
 */
export class ZstdSink implements DownloadSink {
  private z!: ZstdProcess;
  private drained!: Promise<void>;
  private writeError: unknown = null;
  private hash!: Hash;
  private size = 0;
  constructor(private readonly fh: FileHandle) {
    this.start();
  }
  private start(): void {
    const z = startZstd({ decompress: true });
    this.z = z;
    this.hash = createHash('sha256');
    this.size = 0;
    this.writeError = null;
    this.drained = (async () => {
      for await (const c of z.stdout) {
        const b = c as Buffer;
        await this.fh.write(b, 0, b.length, this.size);
        this.hash.update(b);
        this.size += b.length;
      }
    })().catch((e: unknown) => {
      // The file could not be written (a full disk): stop the decompressor, report this.
      this.writeError ??= e;
      z.kill();
    });
  }
  /** Why the decompressor stopped before its input ended. */
  private async failure(): Promise<Error> {
    await this.drained;
    if (this.writeError) return this.writeError as Error;
    const e = await this.z.done.then(() => null, (x: unknown) => x as Error);
    return new UndecodableError(e?.message ?? 'zstd -d stopped before the end of its input');
  }
  async write(chunk: Buffer): Promise<void> {
    if (!(await writeTo(this.z, chunk))) throw await this.failure();
  }
  async finish() {
    this.z.stdin.end();
    await this.drained;
    if (this.writeError) throw this.writeError;
    const e = await this.z.done.then(() => null, (x: unknown) => x as Error);
    if (e) throw new UndecodableError(e.message);
    return { sha256: this.hash.digest('hex'), size: this.size };
  }
  async restart(): Promise<void> {
    await this.close();
    await this.fh.truncate(0);
    this.start();
  }
  async close(): Promise<void> {
    this.z.kill();
    await this.drained;
    await this.z.done.catch(() => undefined);
  }
}

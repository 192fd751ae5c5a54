import { createReadStream } from 'node:fs';
import { startZstd, writeTo } from './zstd-stream.js';

/** What an upload reads: the file's bytes as they are, or compressed while they are read. */

/** The file's bytes, each seen by `seen` first (the raw upload's source). */
export async function* fileChunks(file: string, seen: (c: Buffer) => void): AsyncGenerator<Buffer> {
  for await (const c of createReadStream(file, { highWaterMark: 4 << 20 })) {
    seen(c as Buffer);
    yield c as Buffer;
  }
}

/**
 * The file compressed by `zstd -LEVEL` while it is read (each read chunk seen by `seen`): the
 * compressed upload's source. Stopping it early (return()) ends the compressor.
 */
export async function* zstdChunks(file: string, size: number, level: number, seen: (c: Buffer) => void): AsyncGenerator<Buffer> {
  const z = startZstd({ compress: level, streamSize: size });
  const feed = (async () => {
    try {
      for await (const c of createReadStream(file, { highWaterMark: 1 << 20 })) {
        seen(c as Buffer);
        if (!(await writeTo(z, c as Buffer))) return;
      }
    } finally {
      z.stdin.end();
    }
  })();
  feed.catch(() => undefined);
  try {
    for await (const c of z.stdout) yield c as Buffer;
    await feed;
    await z.done;
  } finally {
    z.kill();
    await feed.catch(() => undefined);
  }
}

/** Buffers in arrival order, taken out in pieces of any size (the parts of an upload). */
export class ChunkQueue {
  private chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }
  /** The first `n` bytes (n ≤ length), as one buffer. */
  take(n: number): Buffer {
    if (this.chunks.length === 1 && this.chunks[0]!.length === n) {
      this.length = 0;
      return this.chunks.pop()!;
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.length -= n;
    return out;
  }
}

import { open } from 'node:fs/promises';
import { addAbortSignal, type Readable } from 'node:stream';
import { FileSink, ZstdSink } from './download-sink.js';
import type { S3Bucket } from './s3-bucket.js';
import { errorCode, isAccessDenied, isNotFound } from './s3-errors.js';
import type { CallOptions } from './s3-retry.js';

/**
 * Streams an object into a file, hashing what is written; null when there is no such object.
 * With `decode` ('zstd') the object is a compressed stream: it is decompressed on the way and
 * the hash and size are the decompressed bytes'; one that does not decompress fails with an
 * UndecodableError. A transfer cut short is resumed where it stopped (a ranged GET of the
 * object's bytes from there, fed on into the same decompressor), not started again; it starts
 * again only when the object changed meanwhile (another ETag) or the server ignores the range.
 */
export async function download(b: S3Bucket, object: string, file: string, o: CallOptions, decode: 'zstd' | null = null): Promise<{ sha256: string; size: number } | null> {
  const fh = await open(file, 'w');
  const sink = decode ? new ZstdSink(fh) : new FileSink(fh);
  /** Bytes of the object received (the offset a resumed GET starts at). */
  let received = 0;
  let etag: string | undefined;
  const restart = async () => {
    received = 0;
    await sink.restart();
  };
  try {
    const found = await b.withRetry(`download ${object}`, async () => {
      let res: Readable;
      try {
        res = received === 0 ? await b.client.getObject(b.config.bucket, object) : await b.client.getPartialObject(b.config.bucket, object, received);
      } catch (e) {
        if (isNotFound(e) || (isAccessDenied(e) && (await b.deniedBecauseAbsent(object)))) return false;
        // 416: the object is shorter than what we have, so it changed: start again.
        if (received > 0 && errorCode(e) === 'InvalidRange') await restart();
        throw e;
      }
      const msg = res as Readable & { statusCode?: number; headers?: Record<string, string | undefined> };
      const tag = msg.headers?.etag;
      if (received > 0 && (msg.statusCode !== 206 || (etag && tag && tag !== etag))) {
        res.destroy();
        await restart();
        throw Object.assign(new Error(`${object} changed on the server during the download (or the range was ignored): starting again`), { code: 'ECONNRESET' });
      }
      etag ??= tag;
      if (o.signal) addAbortSignal(o.signal, res);
      try {
        for await (const chunk of res as AsyncIterable<Buffer>) {
          await sink.write(chunk);
          received += chunk.length;
        }
      } finally {
        res.destroy();
      }
      return true;
    }, o);
    if (!found) return null;
    const got = await sink.finish();
    b.onEvent?.({ type: 'get-done', object, bytes: received, blobBytes: got.size });
    return got;
  } finally {
    await sink.close();
    await fh.close();
  }
}

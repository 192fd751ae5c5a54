import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { AbortedError, StoreError } from '../errors.js';
import type { IncompleteUpload, S3Bucket } from './s3-bucket.js';
import { describe, errorCode } from './s3-errors.js';
import { untilAborted, type CallOptions } from './s3-retry.js';
import { ChunkQueue, fileChunks, zstdChunks } from './upload-source.js';

/**
 * Uploads a file as an object and returns the object's size; with `expect`, fails (and leaves
 * no object) unless the file's bytes hash to it; with `zstd`, the object is the file
 * compressed, made while it streams. Up to `multipartThreshold` bytes go in one PUT; more go
 * as a multipart upload of `partSize` parts, `partConcurrency` at a time, each part retried
 * alone (a failed part is sent again, not the whole file). The upload is completed only once
 * the whole file has hashed right; any failure, an abort included, aborts it on the server, so
 * no incomplete upload is left holding parts (a killed process leaves one: `vmlb gc --shared`).
 */
export async function uploadFile(
  b: S3Bucket,
  object: string,
  file: string,
  expect: { sha256: string; size: number; layer: string } | null,
  o: CallOptions,
  zstd?: { zstd: number },
): Promise<number> {
  const size = (await stat(file)).size;
  const mismatch = (sent: { sha256: string; size: number }) =>
    new StoreError(
      `layer ${expect!.layer}: the local blob ${file} does not match its manifest (sha256 ${sent.sha256}, ${sent.size} bytes; the manifest says ${expect!.sha256}, ${expect!.size} bytes): not uploaded; the local store is damaged, remove that layer`,
    );
  if (expect && size !== expect.size) throw mismatch({ sha256: '(not read)', size });
  b.onEvent?.({ type: 'put-start', object, bytes: size });
  const hash = createHash('sha256');
  let read = 0;
  const seen = (c: Buffer) => {
    hash.update(c);
    read += c.length;
  };
  const check = (): Error | null => {
    const sha256 = hash.digest('hex');
    if (expect && (sha256 !== expect.sha256 || read !== size)) return mismatch({ sha256, size: read });
    if (read !== size) return new StoreError(`${file} changed size while it was being uploaded (${read} bytes read, ${size} expected): not uploaded`);
    return null;
  };
  const source = zstd ? zstdChunks(file, size, zstd.zstd, seen) : fileChunks(file, seen);
  const stored = await uploadStream(b, { object, expected: { size, exact: !zstd }, check, o }, source);
  b.onEvent?.({ type: 'put-done', object, bytes: stored });
  return stored;
}

/** One upload: its object, what it expects and checks, and the caller's options. */
interface Upload {
  object: string;
  /** Bounds the object's size (exactly when `exact`), for the part size and the messages. */
  expected: { size: number; exact: boolean };
  /** Runs once the source is done, before the object is made: an error from it leaves no object. */
  check: () => Error | null;
  o: CallOptions;
}

/** What a multipart upload takes its parts from: the bytes read ahead, and more on demand. */
interface PartSource {
  pending: ChunkQueue;
  /** Reads from the source until `want` bytes are pending or it is done. */
  fill: (want: number) => Promise<void>;
  ended: () => boolean;
}

/**
 * Uploads what `source` yields as one object (one PUT up to the threshold, else a multipart
 * upload) and returns its size.
 */
async function uploadStream(b: S3Bucket, u: Upload, source: AsyncGenerator<Buffer>): Promise<number> {
  const { object, check, o } = u;
  const { bucket } = b.config;
  const { threshold } = b.multipart;
  const pending = new ChunkQueue();
  let ended = false;
  const fill = async (want: number) => {
    while (!ended && pending.length < want) {
      if (o.signal?.aborted) throw new AbortedError();
      const r = await source.next();
      if (r.done) ended = true;
      else pending.push(r.value);
    }
  };
  try {
    await fill(threshold + 1);
    if (ended && pending.length <= threshold) {
      const body = pending.take(pending.length);
      const bad = check();
      if (bad) throw bad;
      await b.withRetry(`upload ${object}`, () => b.client.putObject(bucket, object, body, body.length, { 'Content-Type': 'application/octet-stream' }), o);
      return body.length;
    }
    return await uploadParts(b, u, { pending, fill, ended: () => ended });
  } finally {
    // Stops the source (a compressor) when the upload ended early.
    await source.return(undefined).catch(() => undefined);
  }
}

/** The rest of an upload above the threshold: parts in flight, then completed (or aborted on any failure). */
async function uploadParts(b: S3Bucket, u: Upload, { pending, fill, ended }: PartSource): Promise<number> {
  const { object, expected, check, o } = u;
  const { bucket } = b.config;
  const { concurrency } = b.multipart;
  // At most 10 000 parts (S3's limit): larger parts for a file that would need more.
  const partSize = Math.max(b.multipart.partSize, Math.ceil(expected.size / 10_000 / (1 << 20)) * (1 << 20));
  const of = expected.exact ? ` of ${Math.ceil(expected.size / partSize)}` : '';
  const uploadId = await b.withRetry(
    `start the upload of ${object}`,
    () => b.client.initiateNewMultipartUpload(bucket, object, { 'Content-Type': 'application/octet-stream' }),
    o,
  );
  const parts: Array<{ part: number; etag: string }> = [];
  const inFlight = new Set<Promise<void>>();
  let failed: unknown = null;
  let stored = 0;
  try {
    for (let part = 1; failed === null; part++) {
      await fill(partSize);
      if (pending.length === 0) break;
      if (part > 10_000) throw new StoreError(`${object} would need more than 10 000 parts of ${partSize} bytes`);
      const buf = pending.take(Math.min(partSize, pending.length));
      if (buf.length < partSize && !ended()) throw new Error('internal: a short part before the end');
      stored += buf.length;
      const md5 = createHash('md5').update(buf).digest('base64');
      const p = b.withRetry(
        `upload part ${part}${of} of ${object}`,
        () =>
          untilAborted(
            b.client.uploadPart({ bucketName: bucket, objectName: object, uploadID: encodeURIComponent(uploadId), partNumber: part, headers: { 'Content-MD5': md5 } }, buf),
            o.signal,
            () => b.dropConnections(),
          ),
        o,
      ).then(
        (r) => {
          parts.push({ part, etag: r.etag });
          b.onEvent?.({ type: 'part-done', object, part, bytes: buf.length });
        },
        (e: unknown) => {
          failed ??= e;
        },
      );
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
      while (inFlight.size >= concurrency) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failed !== null) throw failed;
    const bad = check();
    if (bad) throw bad;
    parts.sort((x, y) => x.part - y.part);
    let tries = 0;
    await b.withRetry(`complete the upload of ${object}`, async () => {
      try {
        await untilAborted(b.client.completeMultipartUpload(bucket, object, uploadId, parts), o.signal, () => b.dropConnections());
      } catch (e) {
        // A retry after a completion whose answer was lost: the upload is gone because it is
        // the object now.
        if (tries++ > 0 && errorCode(e) === 'NoSuchUpload' && (await b.client.statObject(bucket, object).then((st) => st.size, () => -1)) === stored) return;
        throw e;
      }
    }, o);
    return stored;
  } catch (e) {
    await Promise.allSettled(inFlight);
    await abortUpload(b, object, uploadId);
    throw e;
  }
}

/**
 * Aborts a multipart upload (its parts are freed), with a few quick tries and at most 15 s in
 * all, whatever the caller's signal says: it runs on the failure and Ctrl-C paths.
 */
async function abortUpload(b: S3Bucket, object: string, uploadId: string): Promise<void> {
  const deadline = AbortSignal.timeout(15_000);
  try {
    await untilAborted(
      b.withRetry(`abort the upload of ${object}`, async () => {
        try {
          await b.client.abortMultipartUpload(b.config.bucket, object, uploadId);
        } catch (e) {
          if (errorCode(e) !== 'NoSuchUpload') throw e;
        }
      }, { signal: deadline }),
      deadline,
      () => b.dropConnections(),
    );
    b.onEvent?.({ type: 'abort-upload', object, uploadId });
  } catch (e) {
    b.onEvent?.({ type: 'abort-upload-failed', object, uploadId, error: describe(e) });
  }
}

/** The incomplete multipart uploads under PREFIX (interrupted pushes), oldest first. */
export async function listIncompleteUploads(b: S3Bucket, o: CallOptions = {}): Promise<IncompleteUpload[]> {
  const { bucket, prefix } = b.config;
  return b.withRetry(`list the incomplete uploads under ${prefix || '/'}`, async () => {
    const out: IncompleteUpload[] = [];
    let keyMarker = '';
    let uploadIdMarker = '';
    for (;;) {
      const r = await b.client.listIncompleteUploadsQuery(bucket, prefix, keyMarker, uploadIdMarker, '');
      for (const u of r.uploads) out.push({ object: u.key, uploadId: u.uploadId, initiated: u.initiated.toISOString() });
      const next = { key: r.nextKeyMarker ?? '', id: r.nextUploadIdMarker ?? '' };
      if (!r.isTruncated || (next.key === keyMarker && next.id === uploadIdMarker) || (!next.key && !next.id)) break;
      keyMarker = next.key;
      uploadIdMarker = next.id;
    }
    return out.sort((x, y) => x.initiated.localeCompare(y.initiated));
  }, o);
}

/** Aborts an incomplete multipart upload (nothing happens when it is gone already). */
export async function abortIncompleteUpload(b: S3Bucket, u: Pick<IncompleteUpload, 'object' | 'uploadId'>, o: CallOptions = {}): Promise<void> {
  await b.withRetry(`abort the upload of ${u.object}`, async () => {
    try {
      await b.client.abortMultipartUpload(b.config.bucket, u.object, u.uploadId);
    } catch (e) {
      if (errorCode(e) !== 'NoSuchUpload') throw e;
    }
  }, o);
  b.onEvent?.({ type: 'abort-upload', object: u.object, uploadId: u.uploadId });
}

import type http from 'node:http';
import type { Readable } from 'node:stream';
import type { Client } from 'minio';
import { StoreError } from '../errors.js';
import { idleTimeoutTransport, keepAliveAgent, minioClient } from './s3-client.js';
import { describe, errorCode, isAccessDenied, isNotFound } from './s3-errors.js';
import { withRetry, type CallOptions, type RetryInfo, type RetryOptions } from './s3-retry.js';
import type { S3Config } from './s3-config.js';

export type SharedStoreEvent =
  /** `put-start`: the bytes to send (a compressed blob's: before compression); `put-done`: the object's size. */
  | { type: 'put-start' | 'put-done'; object: string; bytes: number }
  /** A download is complete: `bytes` came over the wire (a compressed blob's), `blobBytes` were written. */
  | { type: 'get-done'; object: string; bytes: number; blobBytes: number }
  | { type: 'remove'; object: string }
  /** One part of a multipart upload is stored. */
  | { type: 'part-done'; object: string; part: number; bytes: number }
  /** A multipart upload aborted (after a failure or an interrupt, or by gc). */
  | { type: 'abort-upload'; object: string; uploadId: string }
  | { type: 'abort-upload-failed'; object: string; uploadId: string; error: string }
  | ({ type: 'retry' } & RetryInfo);

/** A multipart upload that was started and neither completed nor aborted. */
export interface IncompleteUpload {
  /** The object it would write (the full name, PREFIX included). */
  object: string;
  uploadId: string;
  /** When it was started (ISO 8601). */
  initiated: string;
}

/** How a bucket is talked to: retries, idle connections, multipart sizes, and who hears of each write. */
export interface S3BucketOptions {
  /** @default { tries: 6, firstDelayMs: 250, maxDelayMs: 4000 } (about 8 s of waiting in all) */
  retry?: RetryOptions;
  /** A connection silent this long is dropped (and the request retried). @default 60_000 */
  idleTimeoutMs?: number;
  /**
   * Files up to `threshold` bytes go in one PUT; larger ones as a multipart upload of
   * `partSize` parts, `concurrency` of them in flight (each held in memory).
   * @default { threshold: 64 MiB, partSize: 32 MiB, concurrency: 2 }
   */
  multipart?: { threshold?: number; partSize?: number; concurrency?: number };
  /** Observes every object write and retry, in order (tests, logs, metrics). */
  onEvent?: (e: SharedStoreEvent) => void;
}

async function readText(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * One bucket's objects under the minio client: reads, writes and listings with retries (see
 * withRetry) and their failures as StoreErrors naming the store, over keep-alive connections
 * that a silent request gives up on. SharedStore's layers and records are objects of it;
 * uploads and downloads (s3-upload.ts, s3-download.ts) go through it too.
 */
export class S3Bucket {
  readonly config: S3Config;
  /** `s3://BUCKET/PREFIX`, for messages. */
  readonly url: string;
  readonly client: Client;
  private readonly agent: http.Agent;
  private readonly retry: Required<RetryOptions>;
  readonly multipart: { threshold: number; partSize: number; concurrency: number };
  readonly onEvent: ((e: SharedStoreEvent) => void) | undefined;
  private closed = false;

  constructor(config: S3Config, opts: S3BucketOptions = {}) {
    this.config = config;
    this.url = config.url;
    this.retry = { tries: 6, firstDelayMs: 250, maxDelayMs: 4000, ...opts.retry };
    this.onEvent = opts.onEvent;
    const mp = { threshold: 64 << 20, partSize: 32 << 20, concurrency: 2, ...opts.multipart };
    // S3's limits: parts of at least 5 MiB (but the last), at most 10 000 of them.
    if (mp.partSize < 5 << 20) throw new StoreError(`a multipart part must be at least 5 MiB, not ${mp.partSize} bytes`);
    this.multipart = { ...mp, threshold: Math.max(mp.threshold, mp.partSize), concurrency: Math.max(1, Math.floor(mp.concurrency)) };
    const idleMs = opts.idleTimeoutMs ?? 60_000;
    this.agent = keepAliveAgent(config.useSSL, idleMs);
    this.client = minioClient(config, this.agent, idleTimeoutTransport(config.useSSL, idleMs));
  }

  /** Creates the bucket when it does not exist (tests, first set-up; builds never create it). */
  async ensureBucket(o: CallOptions = {}): Promise<void> {
    const { bucket, region } = this.config;
    await this.withRetry(`create the bucket ${bucket}`, async () => {
      if (await this.client.bucketExists(bucket)) return;
      try {
        await this.client.makeBucket(bucket, region);
      } catch (e) {
        if (!['BucketAlreadyOwnedByYou', 'BucketAlreadyExists'].includes(errorCode(e))) throw e;
      }
    }, o);
  }

  /** The names (with their times and sizes) of the objects under `dir`, all levels down. */
  async list(dir: string, o: CallOptions): Promise<Array<{ name: string; lastModified: Date; size: number }>> {
    return this.withRetry(`list ${dir}`, async () => {
      const out: Array<{ name: string; lastModified: Date; size: number }> = [];
      for await (const item of this.client.listObjectsV2(this.config.bucket, dir, true)) {
        const { name, lastModified, size } = item as { name?: string; lastModified?: Date; size?: number };
        if (name) out.push({ name, lastModified: lastModified ?? new Date(0), size: size ?? 0 });
      }
      return out;
    }, o);
  }

  /** Drops pooled connections. Safe to call twice; the store must not be used afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.agent.destroy();
  }

  /** An object's text, or null when there is none. */
  async getText(object: string, o: CallOptions): Promise<string | null> {
    return this.withRetry(`read ${object}`, async () => {
      try {
        return await readText(await this.client.getObject(this.config.bucket, object));
      } catch (e) {
        if (isNotFound(e) || (isAccessDenied(e) && (await this.deniedBecauseAbsent(object)))) return null;
        throw e;
      }
    }, o);
  }

  /**
   * S3 (AWS, Ceph radosgw) answers a GET of a missing object AccessDenied, not NoSuchKey, to a
   * key that may read only some prefixes (a fleet pool's worker): listing the object's own name
   * is allowed to it, and an empty listing says the object is not there — a miss, not a refusal.
   */
  async deniedBecauseAbsent(object: string): Promise<boolean> {
    try {
      for await (const item of this.client.listObjectsV2(this.config.bucket, object, false)) {
        if ((item as { name?: string }).name === object) return false;
      }
      return true;
    } catch {
      return false;
    }
  }

  async putText(object: string, text: string, contentType: string, o: CallOptions): Promise<void> {
    const body = Buffer.from(text);
    await this.withRetry(`write ${object}`, async () => {
      this.onEvent?.({ type: 'put-start', object, bytes: body.length });
      await this.client.putObject(this.config.bucket, object, body, body.length, { 'Content-Type': contentType });
      this.onEvent?.({ type: 'put-done', object, bytes: body.length });
    }, o);
  }

  async removeObject(object: string, o: CallOptions): Promise<void> {
    await this.withRetry(`remove ${object}`, async () => {
      try {
        await this.client.removeObject(this.config.bucket, object);
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
      this.onEvent?.({ type: 'remove', object });
    }, o);
  }

  /** Cuts the connections in use, so a request stuck in the client fails now. */
  dropConnections(): void {
    this.agent.destroy();
  }

  withRetry<T>(what: string, fn: () => Promise<T>, o: CallOptions): Promise<T> {
    return withRetry(what, fn, o, {
      retry: this.retry,
      onRetry: (info) => this.onEvent?.({ type: 'retry', ...info }),
      fail: (w, e, f) => this.failure(w, e, f),
    });
  }

  private failure(what: string, e: unknown, f: { retryable: boolean; tries?: number }): StoreError {
    const code = errorCode(e);
    const hint =
      code === 'NoSuchBucket'
        ? `; create the bucket ${this.config.bucket} first, or fix the s3:// URL`
        : ['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch'].includes(code)
          ? '; check S3_ACCESS_KEY and S3_SECRET_KEY, and the key\'s rights on the bucket'
          : '';
    const after = f.tries ? ` (tried ${f.tries} times)` : '';
    return new StoreError(`shared store ${this.url} at ${this.config.endpoint}: ${what} failed${after}: ${describe(e)}${hint}`, {
      retryable: f.retryable,
      cause: e,
    });
  }
}

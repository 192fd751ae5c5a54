import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { addAbortSignal, type Readable } from 'node:stream';
import { Client } from 'minio';
import { AbortedError, StoreError, VmlbError } from './errors.js';
import type { LayerManifest, LocalStore } from './local-store.js';
import type { S3Config } from './s3-config.js';
import { startZstd, writeTo, ZSTD_LEVELS, type ZstdProcess } from './zstd-stream.js';

/**
 * The shared store: S3 (MinIO in production) with the local store's layout under PREFIX:
 *
 *   layers/<key>.qcow2.zst  the overlay blob as a zstd stream (the default: see "Compressed
 *                        transfer" below); one PUT up to 64 MiB, above, a multipart upload
 *                        done here part by part (see uploadFile)
 *   layers/<key>.qcow2   the overlay blob as it is: what vmlb wrote before compression, and
 *                        writes with VMLB_SHARED_COMPRESSION=none; read as ever
 *   layers/<key>.log     the log of the script that built it
 *   layers/<key>.json    the manifest, written LAST: a layer exists only when it exists, so a
 *                        reader never sees half a layer
 *   builds/…             build records (putJson/getJson)
 *
 * A pull streams the blob into a temporary file in the local store's layers folder (named so
 * that LocalStore.sweepTemp() removes it if the process dies), hashing it on the way, and
 * publishes it only when its sha256 equals the manifest's. Transient failures (connection
 * refused or reset, timeouts, 5xx, SlowDown) are retried with exponential backoff, then
 * surfaced as a StoreError with `retryable: true`; a refusal (403, NoSuchBucket) is not retried.
 * What a retry repeats is small: one part of an upload, the rest of a download (a ranged GET
 * from where it stopped). A request is given up on when its connection is silent for
 * `idleTimeoutMs`.
 *
 * A shared manifest also records `parentSha256`, the blob its overlay was written on: a layer
 * is pushed only when the shared store holds that exact parent, and pulled only onto it.
 *
 * Compressed transfer. A push compresses the blob while it streams (`zstd -1 -T0`, Debian's
 * `zstd` program in a child process: zstd-stream.ts) and uploads the compressed stream's parts
 * as they fill; the sha256 checked on the way is still that of the blob's own bytes. The
 * manifest keeps the blob's (uncompressed qcow2's) sha256 and size — what the local store
 * keeps and a pull verifies — and gains `transfer: { file: '<key>.qcow2.zst', encoding:
 * 'zstd', size }`. A pull decompresses while it streams and hashes the decompressed bytes: a
 * corrupt object is refused ("is corrupt", SharedBlobMismatchError) whether zstd rejects the
 * stream or it decompresses to other bytes, and nothing of it is kept. A pull cut short resumes
 * with a ranged GET of the compressed object from the byte it stopped at, fed on into the same
 * running decompressor (its state is the stream so far); only a changed object starts again. A
 * manifest without `transfer` (written before, or with VMLB_SHARED_COMPRESSION=none) is pulled
 * from `layers/<key>.qcow2` as before, so an old store, and a chain mixing both, keep working.
 * A vmlb from before this cannot read a compressed layer (it finds no `layers/<key>.qcow2`
 * and says the blob is missing): upgrade the readers first, or push with
 * VMLB_SHARED_COMPRESSION=none until every reader is upgraded. Images (`images/<top>.qcow2`,
 * putFile/getFile, presigned URLs a browser or curl downloads) stay as they are.
 *
 * Measured here (2 cores, the Debian example's 01_base: a 642 MiB qcow2; the machine shared
 * with other work, load average 8–22, so single runs vary ±40%; medians of 3 interleaved runs):
 *   size on the wire: zstd -1 249 MiB (39%), -3 238 MiB (37%), -6 229 MiB (36%); gzip -1
 *     (zlib) 263 MiB (41%); qemu-img convert -c zstd 255 MiB, zlib 259 MiB (stored bytes
 *     change); 02_packages (171 MiB) 56 MiB (33%) with zstd -1; 05_config (1.7 MiB) 0.12 MiB.
 *   compressing alone: zstd -1 -T2 1.7–3 s, -3 3–4.8 s, -6 12–13 s; gzip -1 11.7 s;
 *     qemu-img convert -c zstd 5.1–7.3 s, zlib 25 s (before the upload can start).
 *   push + pull, s3rver (its CPU is its limit): raw 24.9 s (push 16.0, pull 8.9); zstd -1
 *     16.5 s (10.5 + 6.1, 0.66× raw); zstd -3 16.7 s; one run each at load 12–13: zstd -6
 *     28.4 s, gzip -1 32.8 s, qcow2 -c zstd 20.5 s (10.0 s of it the convert).
 *   push + pull, radosgw (memstore, fast on loopback): raw 16.3 s, zstd -1 17.3 s, zstd -3
 *     17.9 s: a tie within the noise. On loopback the bytes cost little; between hosts they
 *     dominate (642 MiB raw is ≥ 5.6 s on a 1 Gbit/s link alone, 249 MiB 2.2 s).
 *   a small layer (05_config): the same either way (0.1–0.2 s; a zstd process starts in ms).
 *   qcow2-internal compression also changes the stored blob (its sha256 is then that of the
 *     compressed qcow2, and every layer must be converted before it is published) and slows
 *     what is built on it: reading the whole base 2.06 s vs 1.03 s, `02_packages` built on the
 *     compressed base 34.8 s vs 28.2 s. Not used.
 *   parts in flight (s3rver, load 15–22, one run each): raw 2/3/4: 31.1/30.2/31.7 s, zstd -1
 *     29.7/24.1/40.1 s: no gain above the noise on 2 cores; kept at 2.
 * zstd -1 is the fastest end to end that keeps the contract; -3 saves 4% more bytes for more
 * compression CPU (3–4.8 s vs 1.7–3 s here), which a busy 2-core worker pays while it builds.
 */

export interface RetryOptions {
  /** Attempts in all, the first included. @default 6 */
  tries?: number;
  /** The wait after the first failure; doubled after each next one. @default 250 */
  firstDelayMs?: number;
  /** @default 4000 */
  maxDelayMs?: number;
}

export interface SharedStoreOptions {
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
  /**
   * How layer blobs are pushed: `zstd:LEVEL` (`zstd` alone: level DEFAULT_ZSTD_LEVEL) or `none`
   * (as they are, `layers/<key>.qcow2`, which every vmlb reads). Pulls read either.
   * @default VMLB_SHARED_COMPRESSION from the environment, else `zstd`
   */
  compression?: string;
  /** Observes every object write and retry, in order (tests, logs, metrics). */
  onEvent?: (e: SharedStoreEvent) => void;
}

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

export interface RetryInfo {
  /** What was being done, e.g. `upload layers/<key>.qcow2`. */
  what: string;
  /** The attempt that failed (1-based), of `tries`. */
  attempt: number;
  tries: number;
  delayMs: number;
  error: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Called before each wait between attempts. */
  onRetry?: (info: RetryInfo) => void;
}

export interface PushOptions extends CallOptions {
  /**
   * Where the layer's parent is looked up (its shared manifest, for the parent's sha256): a
   * fleet pool's parent may live in a pool it trusts for reading. @default this store
   */
  findParent?: (key: string) => Promise<LayerManifest | null>;
  /**
   * Upload even when the shared store already has the layer: for a shared copy found corrupt.
   * Its manifest is removed first, so no reader sees the old manifest with the new blob.
   */
  replace?: boolean;
  /**
   * Upload a `# nocache` layer (or one built on it) too. The fleet does: such a layer's key
   * holds its build's nonce, so no other build ever takes it as a hit, and sharing it lets the
   * build's next layer job run on any worker. The fleet removes them once the build's image
   * is written (and `vmlb gc` removes what a failed build left).
   */
  uncacheable?: boolean;
}

export type PushResult =
  /** `bytes`: the blob's; `wireBytes`: the object's sent (less, compressed). */
  | { pushed: true; manifest: LayerManifest; bytes: number; wireBytes: number }
  /** 'exists': the shared store has it already (on the same parent). */
  | { pushed: false; reason: 'exists'; manifest: LayerManifest }
  /** The parent is not in the shared store (e.g. it is `# noshare`): the layer would be unusable there. */
  | { pushed: false; reason: 'parent-not-shared' }
  /** The shared store's copy of the parent has other bytes than ours: ours cannot be used on it. */
  | { pushed: false; reason: 'parent-differs' };

/** A pulled blob whose sha256 is not the manifest's. Retryable: a second fetch may be good. */
export class SharedBlobMismatchError extends StoreError {
  readonly key: string;
  readonly expected: string;
  readonly actual: string;
  /**
   * `undecodable`: the compressed object could not be decompressed (what zstd said); then
   * `actual` is `(undecodable)`.
   */
  constructor(args: { key: string; name: string; expected: string; actual: string; expectedSize: number; actualSize: number; undecodable?: { object: string; error: string } }) {
    const sizes = args.actualSize === args.expectedSize ? '' : ` (${args.actualSize} bytes, expected ${args.expectedSize})`;
    super(
      args.undecodable
        ? `the shared copy of layer ${args.name} (${args.key}) is corrupt: its compressed blob ${args.undecodable.object} does not decompress (${args.undecodable.error}); nothing of it was kept`
        : `the shared copy of layer ${args.name} (${args.key}) is corrupt: its blob's sha256 is ${args.actual}, its manifest says ${args.expected}${sizes}; nothing of it was kept`,
      { retryable: true },
    );
    this.key = args.key;
    this.expected = args.expected;
    this.actual = args.actual;
  }
}

/** A compressed stream that does not decompress (internal: pullOne reports it as SharedBlobMismatchError). */
class UndecodableError extends StoreError {}

/**
 * A layer's manifest in the shared store: the local one (blob: the uncompressed qcow2, its
 * sha256 and size, what a pull verifies) and, when the blob is stored compressed, `transfer`.
 */
export interface SharedLayerManifest extends LayerManifest {
  /** The stored object when it is not the blob as it is (`layers/<key>.qcow2`). */
  transfer?: SharedBlobTransfer;
}

export interface SharedBlobTransfer {
  /** Beside the manifest: `<key>.qcow2.zst`. */
  file: string;
  encoding: 'zstd';
  /** The object's size (the compressed stream's). */
  size: number;
}

/** The level pushes use unless told (see the module comment for the measurements). */
export const DEFAULT_ZSTD_LEVEL = 1;

/** `none` → null; `zstd` / `zstd:N` → the level. */
export function parseCompression(spec: string, from = 'compression'): { zstd: number } | null {
  const m = /^zstd(?::(\d+))?$/.exec(spec.trim());
  if (spec.trim() === 'none') return null;
  const level = m ? Number(m[1] ?? DEFAULT_ZSTD_LEVEL) : NaN;
  if (!(level >= ZSTD_LEVELS.min && level <= ZSTD_LEVELS.max)) {
    throw new StoreError(`${from} "${spec}" is not none, zstd or zstd:LEVEL (LEVEL ${ZSTD_LEVELS.min}–${ZSTD_LEVELS.max})`);
  }
  return { zstd: level };
}

const KEY_RE = /^[0-9a-f]{64}$/;
const SHA_RE = /^[0-9a-f]{64}$/;

const NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ESOCKETTIMEDOUT', 'EAI_AGAIN', 'ENETUNREACH',
  'EHOSTUNREACH', 'ENETDOWN', 'EHOSTDOWN', 'ECONNABORTED', 'ENOTCONN', 'ERR_STREAM_PREMATURE_CLOSE',
]);
const S3_TRANSIENT_CODES = new Set([
  'SlowDown', 'InternalError', 'ServiceUnavailable', 'RequestTimeout', 'OperationTimedOut',
  'XMinioServerNotInitialized', 'XMinioReadQuorum', 'XMinioWriteQuorum',
]);

function errorCode(e: unknown): string {
  return String((e as { code?: unknown })?.code ?? '');
}

function isNotFound(e: unknown): boolean {
  return e instanceof Error && e.name === 'S3Error' && ['NoSuchKey', 'NotFound'].includes(errorCode(e));
}

function isAccessDenied(e: unknown): boolean {
  return e instanceof Error && errorCode(e) === 'AccessDenied';
}

/** Worth another try: the network, a server error, or a server asking us to slow down. */
export function isTransientS3Error(e: unknown): boolean {
  const code = errorCode(e);
  if (NETWORK_CODES.has(code) || S3_TRANSIENT_CODES.has(code)) return true;
  const msg = (e as Error)?.message ?? '';
  // The minio client retries 5xx once itself and then throws a plain Error saying so.
  if (/Retryable HTTP status: 5\d\d|socket hang up|Request failed after \d+ retries/.test(msg)) return true;
  // An S3Error with no code: the reply was not S3's XML (typically a proxy's 502/504 page).
  return e instanceof Error && e.name === 'S3Error' && code === '';
}

function describe(e: unknown): string {
  const code = errorCode(e);
  const msg = (e as Error)?.message || String(e);
  return code && !msg.includes(code) ? `${code}: ${msg}` : msg;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    };
    const t = setTimeout(done, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new AbortedError());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `p`, or an AbortedError as soon as `signal` fires (after `onAbort` has stopped the work). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined, onAbort: () => void): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    const abort = () => {
      onAbort();
      reject(new AbortedError());
    };
    if (signal.aborted) return abort();
    signal.addEventListener('abort', abort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', abort));
  });
}

/**
 * The keep-alive agent. Its `timeout` applies to idle pooled sockets only: Node lowers it to a
 * second under the server's `Keep-Alive: timeout=N` hint, so a pooled socket is dropped before
 * the server closes it. It must not be the timeout of a request in flight: a reused socket
 * keeps the lowered value (4 s for a Node server such as s3rver), which is why uploads failed
 * within seconds, under load, with "no data for 60000 ms" while the server assembled a part.
 */
function keepAliveAgent(useSSL: boolean, idleMs: number): http.Agent {
  return useSSL ? new https.Agent({ keepAlive: true, timeout: idleMs }) : new http.Agent({ keepAlive: true, timeout: idleMs });
}

/**
 * The transport the minio client makes its requests with: each request is given up on (with
 * ETIMEDOUT, so it is retried) when its connection is silent for `idleMs` — set per request,
 * whatever timeout a pooled socket carried before.
 */
function idleTimeoutTransport(useSSL: boolean, idleMs: number): Transport {
  const mod = useSSL ? https : http;
  return {
    request: ((options: http.RequestOptions, callback?: (res: http.IncomingMessage) => void) => {
      const req = mod.request(options, callback);
      req.setTimeout(idleMs, () => req.destroy(Object.assign(new Error(`no data for ${idleMs} ms`), { code: 'ETIMEDOUT' })));
      return req;
    }) as Transport['request'],
  };
}

type Transport = NonNullable<ConstructorParameters<typeof Client>[0]['transport']>;

async function readText(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function checkManifest(value: unknown, key: string, object: string): SharedLayerManifest {
  const m = value as Partial<SharedLayerManifest> | null;
  const ok =
    !!m &&
    m.key === key &&
    (m.parent === null || (typeof m.parent === 'string' && KEY_RE.test(m.parent))) &&
    typeof m.blob?.sha256 === 'string' &&
    SHA_RE.test(m.blob.sha256) &&
    typeof m.blob.size === 'number' &&
    (m.parentSha256 === undefined || SHA_RE.test(m.parentSha256));
  if (!ok) throw new StoreError(`the shared manifest ${object} is malformed (not a manifest of layer ${key})`);
  const t = m.transfer as Partial<SharedBlobTransfer> | undefined;
  if (t !== undefined) {
    if (t?.encoding !== 'zstd') {
      throw new StoreError(`the shared manifest ${object} says its blob is stored as "${String(t?.encoding)}", which this vmlb cannot read: upgrade vmlb`);
    }
    if (t.file !== `${key}.qcow2.zst` || typeof t.size !== 'number') throw new StoreError(`the shared manifest ${object} is malformed (its transfer names another object than ${key}.qcow2.zst)`);
  }
  return m as SharedLayerManifest;
}

/** The file's bytes, each seen by `seen` first (the raw upload's source). */
async function* fileChunks(file: string, seen: (c: Buffer) => void): AsyncGenerator<Buffer> {
  for await (const c of createReadStream(file, { highWaterMark: 4 << 20 })) {
    seen(c as Buffer);
    yield c as Buffer;
  }
}

/**
 * The file compressed by `zstd -LEVEL` while it is read (each read chunk seen by `seen`): the
 * compressed upload's source. Stopping it early (return()) ends the compressor.
 */
async function* zstdChunks(file: string, size: number, level: number, seen: (c: Buffer) => void): AsyncGenerator<Buffer> {
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
class ChunkQueue {
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

/** Where a download's bytes go: the file, hashed. */
interface DownloadSink {
  write(chunk: Buffer): Promise<void>;
  /** The whole was received: its sha256 and size as written. */
  finish(): Promise<{ sha256: string; size: number }>;
  /** Empties the file to receive the object from its start. */
  restart(): Promise<void>;
  /** Releases what it holds (idempotent). */
  close(): Promise<void>;
}

class FileSink implements DownloadSink {
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
class ZstdSink implements DownloadSink {
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

/** The `minio` client for a store's configuration (one place that maps S3Config onto it). */
export function minioClient(
  config: S3Config,
  transportAgent?: ConstructorParameters<typeof Client>[0]['transportAgent'],
  transport?: Transport,
): Client {
  return new Client({
    endPoint: config.host,
    port: config.port,
    useSSL: config.useSSL,
    accessKey: config.accessKey,
    secretKey: config.secretKey,
    // Given, so the client never asks the server for the bucket's region first.
    region: config.region,
    pathStyle: config.pathStyle,
    ...(transportAgent ? { transportAgent } : {}),
    ...(transport ? { transport } : {}),
  });
}

export class SharedStore {
  readonly config: S3Config;
  /** `s3://BUCKET/PREFIX`, for messages. */
  readonly url: string;
  private readonly client: Client;
  private readonly agent: http.Agent;
  private readonly retry: Required<RetryOptions>;
  private readonly multipart: { threshold: number; partSize: number; concurrency: number };
  private readonly onEvent: ((e: SharedStoreEvent) => void) | undefined;
  /** How pushes store layer blobs: zstd at a level, or null (as they are). */
  readonly compression: { zstd: number } | null;
  private closed = false;

  constructor(config: S3Config, opts: SharedStoreOptions = {}) {
    this.config = config;
    this.url = config.url;
    this.retry = { tries: 6, firstDelayMs: 250, maxDelayMs: 4000, ...opts.retry };
    this.onEvent = opts.onEvent;
    const env = process.env.VMLB_SHARED_COMPRESSION;
    this.compression =
      opts.compression !== undefined
        ? parseCompression(opts.compression)
        : env
          ? parseCompression(env, 'VMLB_SHARED_COMPRESSION')
          : { zstd: DEFAULT_ZSTD_LEVEL };
    const mp = { threshold: 64 << 20, partSize: 32 << 20, concurrency: 2, ...opts.multipart };
    // S3's limits: parts of at least 5 MiB (but the last), at most 10 000 of them.
    if (mp.partSize < 5 << 20) throw new StoreError(`a multipart part must be at least 5 MiB, not ${mp.partSize} bytes`);
    this.multipart = { ...mp, threshold: Math.max(mp.threshold, mp.partSize), concurrency: Math.max(1, Math.floor(mp.concurrency)) };
    const idleMs = opts.idleTimeoutMs ?? 60_000;
    this.agent = keepAliveAgent(config.useSSL, idleMs);
    this.client = minioClient(config, this.agent, idleTimeoutTransport(config.useSSL, idleMs));
  }

  // ---- object names ----

  private layerObject(key: string, ext: 'qcow2' | 'qcow2.zst' | 'json' | 'log'): string {
    if (!KEY_RE.test(key)) throw new StoreError(`"${key}" is not a layer key`);
    return `${this.config.prefix}layers/${key}.${ext}`;
  }

  /** A record's object name: relative to PREFIX, outside layers/. */
  private recordObject(rel: string): string {
    const clean = rel.replace(/^\/+/, '');
    if (!clean || clean.split('/').some((p) => p === '' || p === '.' || p === '..') || clean.startsWith('layers/')) {
      throw new StoreError(`"${rel}" is not a record path (a relative path outside layers/, e.g. builds/<id>.json)`);
    }
    return `${this.config.prefix}${clean}`;
  }

  // ---- the bucket ----

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

  // ---- layers ----

  /** The layer's manifest, or null when the shared store does not have it. */
  async getManifest(key: string, o: CallOptions = {}): Promise<SharedLayerManifest | null> {
    const object = this.layerObject(key, 'json');
    const text = await this.getText(object, o);
    if (text === null) return null;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      value = null;
    }
    return checkManifest(value, key, object);
  }

  async hasLayer(key: string, o: CallOptions = {}): Promise<boolean> {
    return (await this.getManifest(key, o)) !== null;
  }

  /** The keys of every layer (every manifest) in the shared store. */
  async listLayers(): Promise<string[]> {
    return (await this.listManifests()).map((m) => m.key);
  }

  /** Every layer manifest with when it was written (a layer's upload ends with its manifest). */
  async listManifests(): Promise<Array<{ key: string; lastModified: Date }>> {
    const dir = `${this.config.prefix}layers/`;
    return this.withRetry(`list ${dir}`, async () => {
      const out: Array<{ key: string; lastModified: Date }> = [];
      for await (const item of this.client.listObjectsV2(this.config.bucket, dir, true)) {
        const { name = '', lastModified } = item as { name?: string; lastModified?: Date };
        const m = /([0-9a-f]{64})\.json$/.exec(name);
        if (m && name === `${dir}${m[1]}.json`) out.push({ key: m[1]!, lastModified: lastModified ?? new Date(0) });
      }
      return out;
    }, {});
  }

  /**
   * Uploads a layer of the local store: the blob (its sha256 checked against the local
   * manifest while it streams), then the log, then the manifest. Skipped when the shared store
   * has the layer already on the same parent, or lacks the parent (see PushResult).
   * @throws StoreError for a `# noshare` or `# nocache` layer: those are never uploaded.
   */
  async push(local: LocalStore, key: string, o: PushOptions = {}): Promise<PushResult> {
    const m = await local.getManifest(key);
    if (!m) throw new StoreError(`layer ${key} is not in the local store ${local.root}: there is nothing to push`);
    if (!m.share) throw new StoreError(`layer ${m.name} (${key}) is marked # noshare: it is never uploaded to the shared store`);
    if (!m.cacheable && !o.uncacheable) throw new StoreError(`layer ${m.name} (${key}) is # nocache or built on one: it is never uploaded to the shared store`);

    let parentSha256: string | undefined;
    if (m.parent) {
      const localParent = await local.getManifest(m.parent);
      if (!localParent) throw new StoreError(`layer ${m.name} (${key}): its parent ${m.parent} is missing from the local store ${local.root}`);
      const sharedParent = o.findParent ? await o.findParent(m.parent) : await this.getManifest(m.parent, o);
      if (!sharedParent) return { pushed: false, reason: 'parent-not-shared' };
      if (sharedParent.blob.sha256 !== localParent.blob.sha256) return { pushed: false, reason: 'parent-differs' };
      parentSha256 = localParent.blob.sha256;
    }

    const existing = await this.getManifest(key, o);
    // A copy whose recorded parent is no longer the shared parent is stale: replace it.
    const stale = !!existing?.parentSha256 && !!parentSha256 && existing.parentSha256 !== parentSha256;
    if (existing && !o.replace && !stale) return { pushed: false, reason: 'exists', manifest: existing };
    const comp = this.compression;
    if (existing) {
      await this.removeObject(this.layerObject(key, 'json'), o);
      // The copy being replaced may be stored under the other name: no key keeps two blobs.
      await this.removeObject(this.layerObject(key, comp ? 'qcow2' : 'qcow2.zst'), o);
    }

    const expect = { sha256: m.blob.sha256, size: m.blob.size, layer: `${m.name} (${key})` };
    const wireBytes = await this.uploadFile(this.layerObject(key, comp ? 'qcow2.zst' : 'qcow2'), local.blobPath(key), expect, o, comp ?? undefined);
    const logBytes = await stat(local.logPath(key)).then((s) => s.size, () => null);
    if (logBytes !== null) await this.uploadFile(this.layerObject(key, 'log'), local.logPath(key), null, o);
    const { parentSha256: _ignored, transfer: _local, ...rest } = m as SharedLayerManifest;
    const shared: SharedLayerManifest = {
      ...rest,
      ...(parentSha256 ? { parentSha256 } : {}),
      ...(comp ? { transfer: { file: `${key}.qcow2.zst`, encoding: 'zstd' as const, size: wireBytes } } : {}),
    };
    await this.putText(this.layerObject(key, 'json'), JSON.stringify(shared, null, 2) + '\n', 'application/json', o);
    return { pushed: true, manifest: shared, bytes: m.blob.size, wireBytes };
  }

  /**
   * Downloads one layer into the local store (its parent must be there already: see
   * pullChain) and returns its local manifest, which equals the shared one.
   * @throws SharedBlobMismatchError when the blob's sha256 is not the manifest's; nothing is kept.
   */
  async pull(local: LocalStore, key: string, o: CallOptions = {}): Promise<LayerManifest> {
    await local.init();
    const have = await local.getManifest(key);
    if (have) return have;
    const m = await this.getManifest(key, o);
    if (!m) throw new StoreError(`layer ${key} is not in the shared store ${this.url}`);
    return this.pullOne(local, m, o);
  }

  /**
   * Pulls what the local store lacks of the chains ending at `keys` (ancestors included,
   * found through the shared manifests), parent first. Returns the manifests it pulled.
   */
  async pullChain(local: LocalStore, keys: string[], o: CallOptions = {}): Promise<LayerManifest[]> {
    await local.init();
    const pulled: LayerManifest[] = [];
    const ensure = async (key: string): Promise<void> => {
      if (await local.getManifest(key)) return;
      const m = await this.getManifest(key, o);
      if (!m) throw new StoreError(`layer ${key} is in neither the local store nor the shared store ${this.url}`);
      if (m.parent) await ensure(m.parent);
      pulled.push(await this.pullOne(local, m, o));
    };
    for (const k of keys) await ensure(k);
    return pulled;
  }

  private async pullOne(local: LocalStore, m: LayerManifest, o: CallOptions): Promise<LayerManifest> {
    const { key } = m;
    if (m.parent) {
      const parent = await local.getManifest(m.parent);
      if (!parent) throw new StoreError(`cannot pull layer ${m.name} (${key}): its parent ${m.parent} is not in the local store (pull the chain)`);
      if (m.parentSha256 && m.parentSha256 !== parent.blob.sha256) {
        throw new StoreError(`the shared copy of layer ${m.name} (${key}) was built on another copy of its parent ${m.parent} than the local one: it cannot be used on it`);
      }
    }
    // Named like a blob being built, so sweepTemp() removes it if this process dies.
    const tmp = local.tempBlobPath(key);
    const tmpLog = tmp.replace(/\.qcow2$/, '.log');
    const t = (m as SharedLayerManifest).transfer;
    const object = this.layerObject(key, t ? 'qcow2.zst' : 'qcow2');
    try {
      const got = await this.download(object, tmp, o, t ? 'zstd' : null).catch((e: unknown) => {
        if (!(e instanceof UndecodableError)) throw e;
        const undecodable = { object: object.slice(this.config.prefix.length), error: e.message };
        throw new SharedBlobMismatchError({ key, name: m.name, expected: m.blob.sha256, actual: '(undecodable)', expectedSize: m.blob.size, actualSize: 0, undecodable });
      });
      if (got === null) throw new StoreError(`the shared store ${this.url} has the manifest of layer ${m.name} (${key}) but not its blob ${object}`);
      if (got.sha256 !== m.blob.sha256 || got.size !== m.blob.size) {
        throw new SharedBlobMismatchError({ key, name: m.name, expected: m.blob.sha256, actual: got.sha256, expectedSize: m.blob.size, actualSize: got.size });
      }
      const log = await this.download(this.layerObject(key, 'log'), tmpLog, o);
      // The local manifest is the shared one without `transfer` (how this store keeps the blob).
      const { transfer: _t, ...localManifest } = m as SharedLayerManifest;
      return await local.publishComplete(tmp, localManifest, log ? tmpLog : undefined);
    } finally {
      await rm(tmp, { force: true });
      await rm(tmpLog, { force: true });
    }
  }

  /** Removes a layer: its manifest first (from then on it does not exist), then blob and log. */
  async remove(key: string, o: CallOptions = {}): Promise<void> {
    for (const ext of ['json', 'qcow2.zst', 'qcow2', 'log'] as const) await this.removeObject(this.layerObject(key, ext), o);
  }

  // ---- records ----

  /** Writes a JSON record under PREFIX (e.g. `builds/<id>.json`). */
  async putJson(rel: string, value: unknown, o: CallOptions = {}): Promise<void> {
    await this.putText(this.recordObject(rel), JSON.stringify(value, null, 2) + '\n', 'application/json', o);
  }

  /** Reads a JSON record, or null when there is none. */
  async getJson<T = unknown>(rel: string, o: CallOptions = {}): Promise<T | null> {
    const object = this.recordObject(rel);
    const text = await this.getText(object, o);
    if (text === null) return null;
    try {
      return JSON.parse(text) as T;
    } catch (e) {
      throw new StoreError(`the record ${object} in ${this.url} is not JSON: ${(e as Error).message}`, { cause: e });
    }
  }

  /** The records under `relDir` (e.g. `uses/`), with their names relative to PREFIX. */
  async listRecords(relDir: string, o: CallOptions = {}): Promise<Array<{ rel: string; lastModified: Date; size: number }>> {
    const dir = `${this.recordObject(relDir.replace(/\/+$/, ''))}/`;
    return this.withRetry(`list ${dir}`, async () => {
      const out: Array<{ rel: string; lastModified: Date; size: number }> = [];
      for await (const item of this.client.listObjectsV2(this.config.bucket, dir, true)) {
        const { name, lastModified, size } = item as { name?: string; lastModified?: Date; size?: number };
        if (name) out.push({ rel: name.slice(this.config.prefix.length), lastModified: lastModified ?? new Date(0), size: size ?? 0 });
      }
      return out;
    }, o);
  }

  /** Removes a record (nothing happens when there is none). */
  async removeRecord(rel: string, o: CallOptions = {}): Promise<void> {
    await this.removeObject(this.recordObject(rel), o);
  }

  // ---- files outside layers/ (projects, images) ----

  /** Uploads a local file as `rel` under PREFIX (e.g. `images/<key>.qcow2`); returns its size. */
  async putFile(rel: string, file: string, o: CallOptions = {}): Promise<number> {
    const object = this.recordObject(rel);
    await this.uploadFile(object, file, null, o);
    return (await stat(file)).size;
  }

  /**
   * Downloads `rel` into `file` (written under a temporary name and renamed, so `file` is
   * never half there) and returns its sha256 and size, or null when there is no such object.
   */
  async getFile(rel: string, file: string, o: CallOptions = {}): Promise<{ sha256: string; size: number } | null> {
    const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(16).slice(2, 10)}`;
    try {
      const got = await this.download(this.recordObject(rel), tmp, o);
      if (got) await rename(tmp, file);
      return got;
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /** Drops pooled connections. Safe to call twice; the store must not be used afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.agent.destroy();
  }

  // ---- objects ----

  private async getText(object: string, o: CallOptions): Promise<string | null> {
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
  private async deniedBecauseAbsent(object: string): Promise<boolean> {
    try {
      for await (const item of this.client.listObjectsV2(this.config.bucket, object, false)) {
        if ((item as { name?: string }).name === object) return false;
      }
      return true;
    } catch {
      return false;
    }
  }

  private async putText(object: string, text: string, contentType: string, o: CallOptions): Promise<void> {
    const body = Buffer.from(text);
    await this.withRetry(`write ${object}`, async () => {
      this.onEvent?.({ type: 'put-start', object, bytes: body.length });
      await this.client.putObject(this.config.bucket, object, body, body.length, { 'Content-Type': contentType });
      this.onEvent?.({ type: 'put-done', object, bytes: body.length });
    }, o);
  }

  private async removeObject(object: string, o: CallOptions): Promise<void> {
    await this.withRetry(`remove ${object}`, async () => {
      try {
        await this.client.removeObject(this.config.bucket, object);
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
      this.onEvent?.({ type: 'remove', object });
    }, o);
  }

  /**
   * Uploads a file as an object and returns the object's size; with `expect`, fails (and leaves
   * no object) unless the file's bytes hash to it; with `zstd`, the object is the file
   * compressed, made while it streams. Up to `multipartThreshold` bytes go in one PUT; more go
   * as a multipart upload of `partSize` parts, `partConcurrency` at a time, each part retried
   * alone (a failed part is sent again, not the whole file). The upload is completed only once
   * the whole file has hashed right; any failure, an abort included, aborts it on the server, so
   * no incomplete upload is left holding parts (a killed process leaves one: `vmlb gc --shared`).
   */
  private async uploadFile(
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
    this.onEvent?.({ type: 'put-start', object, bytes: size });
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
    const stored = await this.uploadStream(object, source, { size, exact: !zstd }, check, o);
    this.onEvent?.({ type: 'put-done', object, bytes: stored });
    return stored;
  }

  /**
   * Uploads what `source` yields as one object (one PUT up to the threshold, else a multipart
   * upload) and returns its size. `check` runs once the source is done, before the object is
   * made: an error from it leaves no object. `expected.size` bounds the object's size (exactly
   * when `exact`), for the part size and the messages.
   */
  private async uploadStream(
    object: string,
    source: AsyncGenerator<Buffer>,
    expected: { size: number; exact: boolean },
    check: () => Error | null,
    o: CallOptions,
  ): Promise<number> {
    const { bucket } = this.config;
    const { threshold } = this.multipart;
    const pending = new ChunkQueue();
    let ended = false;
    /** Reads from the source until `want` bytes are pending or it is done. */
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
        await this.withRetry(`upload ${object}`, () => this.client.putObject(bucket, object, body, body.length, { 'Content-Type': 'application/octet-stream' }), o);
        return body.length;
      }
      return await this.uploadParts(object, pending, fill, () => ended, expected, check, o);
    } finally {
      // Stops the source (a compressor) when the upload ended early.
      await source.return(undefined).catch(() => undefined);
    }
  }

  private async uploadParts(
    object: string,
    pending: ChunkQueue,
    fill: (want: number) => Promise<void>,
    ended: () => boolean,
    expected: { size: number; exact: boolean },
    check: () => Error | null,
    o: CallOptions,
  ): Promise<number> {
    const { bucket } = this.config;
    const { concurrency } = this.multipart;
    // At most 10 000 parts (S3's limit): larger parts for a file that would need more.
    const partSize = Math.max(this.multipart.partSize, Math.ceil(expected.size / 10_000 / (1 << 20)) * (1 << 20));
    const of = expected.exact ? ` of ${Math.ceil(expected.size / partSize)}` : '';
    const uploadId = await this.withRetry(
      `start the upload of ${object}`,
      () => this.client.initiateNewMultipartUpload(bucket, object, { 'Content-Type': 'application/octet-stream' }),
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
        const p = this.withRetry(
          `upload part ${part}${of} of ${object}`,
          () =>
            untilAborted(
              this.client.uploadPart({ bucketName: bucket, objectName: object, uploadID: encodeURIComponent(uploadId), partNumber: part, headers: { 'Content-MD5': md5 } }, buf),
              o.signal,
              () => this.dropConnections(),
            ),
          o,
        ).then(
          (r) => {
            parts.push({ part, etag: r.etag });
            this.onEvent?.({ type: 'part-done', object, part, bytes: buf.length });
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
      await this.withRetry(`complete the upload of ${object}`, async () => {
        try {
          await untilAborted(this.client.completeMultipartUpload(bucket, object, uploadId, parts), o.signal, () => this.dropConnections());
        } catch (e) {
          // A retry after a completion whose answer was lost: the upload is gone because it is
          // the object now.
          if (tries++ > 0 && errorCode(e) === 'NoSuchUpload' && (await this.client.statObject(bucket, object).then((st) => st.size, () => -1)) === stored) return;
          throw e;
        }
      }, o);
      return stored;
    } catch (e) {
      await Promise.allSettled(inFlight);
      await this.abortUpload(object, uploadId);
      throw e;
    }
  }

  /**
   * Aborts a multipart upload (its parts are freed), with a few quick tries and at most 15 s in
   * all, whatever the caller's signal says: it runs on the failure and Ctrl-C paths.
   */
  private async abortUpload(object: string, uploadId: string): Promise<void> {
    const deadline = AbortSignal.timeout(15_000);
    try {
      await untilAborted(
        this.withRetry(`abort the upload of ${object}`, async () => {
          try {
            await this.client.abortMultipartUpload(this.config.bucket, object, uploadId);
          } catch (e) {
            if (errorCode(e) !== 'NoSuchUpload') throw e;
          }
        }, { signal: deadline }),
        deadline,
        () => this.dropConnections(),
      );
      this.onEvent?.({ type: 'abort-upload', object, uploadId });
    } catch (e) {
      this.onEvent?.({ type: 'abort-upload-failed', object, uploadId, error: describe(e) });
    }
  }

  /** The incomplete multipart uploads under PREFIX (interrupted pushes), oldest first. */
  async listIncompleteUploads(o: CallOptions = {}): Promise<IncompleteUpload[]> {
    const { bucket, prefix } = this.config;
    return this.withRetry(`list the incomplete uploads under ${prefix || '/'}`, async () => {
      const out: IncompleteUpload[] = [];
      let keyMarker = '';
      let uploadIdMarker = '';
      for (;;) {
        const r = await this.client.listIncompleteUploadsQuery(bucket, prefix, keyMarker, uploadIdMarker, '');
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
  async abortIncompleteUpload(u: Pick<IncompleteUpload, 'object' | 'uploadId'>, o: CallOptions = {}): Promise<void> {
    await this.withRetry(`abort the upload of ${u.object}`, async () => {
      try {
        await this.client.abortMultipartUpload(this.config.bucket, u.object, u.uploadId);
      } catch (e) {
        if (errorCode(e) !== 'NoSuchUpload') throw e;
      }
    }, o);
    this.onEvent?.({ type: 'abort-upload', object: u.object, uploadId: u.uploadId });
  }

  /**
   * Streams an object into a file, hashing what is written; null when there is no such object.
   * With `decode` ('zstd') the object is a compressed stream: it is decompressed on the way and
   * the hash and size are the decompressed bytes'; one that does not decompress fails with an
   * UndecodableError. A transfer cut short is resumed where it stopped (a ranged GET of the
   * object's bytes from there, fed on into the same decompressor), not started again; it starts
   * again only when the object changed meanwhile (another ETag) or the server ignores the range.
   */
  private async download(object: string, file: string, o: CallOptions, decode: 'zstd' | null = null): Promise<{ sha256: string; size: number } | null> {
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
      const found = await this.withRetry(`download ${object}`, async () => {
        let res: Readable;
        try {
          res = received === 0 ? await this.client.getObject(this.config.bucket, object) : await this.client.getPartialObject(this.config.bucket, object, received);
        } catch (e) {
          if (isNotFound(e) || (isAccessDenied(e) && (await this.deniedBecauseAbsent(object)))) return false;
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
      this.onEvent?.({ type: 'get-done', object, bytes: received, blobBytes: got.size });
      return got;
    } finally {
      await sink.close();
      await fh.close();
    }
  }

  /** Cuts the connections in use, so a request stuck in the client fails now. */
  private dropConnections(): void {
    this.agent.destroy();
  }

  private async withRetry<T>(what: string, fn: () => Promise<T>, o: CallOptions): Promise<T> {
    const { tries, firstDelayMs, maxDelayMs } = this.retry;
    for (let attempt = 1; ; attempt++) {
      if (o.signal?.aborted) throw new AbortedError();
      try {
        return await fn();
      } catch (e) {
        if (o.signal?.aborted) throw new AbortedError();
        if (e instanceof VmlbError) throw e;
        if (!isTransientS3Error(e)) throw this.failure(what, e, { retryable: false });
        if (attempt >= tries) throw this.failure(what, e, { retryable: true, tries: attempt });
        // Exponential, with ±25% jitter so a fleet of workers does not retry in step.
        const delayMs = Math.round(Math.min(maxDelayMs, firstDelayMs * 2 ** (attempt - 1)) * (0.75 + Math.random() * 0.5));
        const info: RetryInfo = { what, attempt, tries, delayMs, error: describe(e) };
        this.onEvent?.({ type: 'retry', ...info });
        o.onRetry?.(info);
        await sleep(delayMs, o.signal);
      }
    }
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

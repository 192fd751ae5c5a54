import { createHash } from 'node:crypto';
import { open, readFile, rename, rm, stat } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { addAbortSignal, type Readable } from 'node:stream';
import { Client } from 'minio';
import { AbortedError, StoreError, VmlbError } from './errors.js';
import type { LayerManifest, LocalStore } from './local-store.js';
import type { S3Config } from './s3-config.js';

/**
 * The shared store: S3 (MinIO in production) with the local store's layout under PREFIX:
 *
 *   layers/<key>.qcow2   the overlay blob (one PUT up to 64 MiB; above, a multipart upload
 *                        done here part by part: see uploadFile)
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
  /** Observes every object write and retry, in order (tests, logs, metrics). */
  onEvent?: (e: SharedStoreEvent) => void;
}

export type SharedStoreEvent =
  | { type: 'put-start' | 'put-done'; object: string; bytes: number }
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
  | { pushed: true; manifest: LayerManifest; bytes: number }
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
  constructor(args: { key: string; name: string; expected: string; actual: string; expectedSize: number; actualSize: number }) {
    const sizes = args.actualSize === args.expectedSize ? '' : ` (${args.actualSize} bytes, expected ${args.expectedSize})`;
    super(
      `the shared copy of layer ${args.name} (${args.key}) is corrupt: its blob's sha256 is ${args.actual}, its manifest says ${args.expected}${sizes}; nothing of it was kept`,
      { retryable: true },
    );
    this.key = args.key;
    this.expected = args.expected;
    this.actual = args.actual;
  }
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

function checkManifest(value: unknown, key: string, object: string): LayerManifest {
  const m = value as Partial<LayerManifest> | null;
  const ok =
    !!m &&
    m.key === key &&
    (m.parent === null || (typeof m.parent === 'string' && KEY_RE.test(m.parent))) &&
    typeof m.blob?.sha256 === 'string' &&
    SHA_RE.test(m.blob.sha256) &&
    typeof m.blob.size === 'number' &&
    (m.parentSha256 === undefined || SHA_RE.test(m.parentSha256));
  if (!ok) throw new StoreError(`the shared manifest ${object} is malformed (not a manifest of layer ${key})`);
  return m as LayerManifest;
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
  private closed = false;

  constructor(config: S3Config, opts: SharedStoreOptions = {}) {
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

  // ---- object names ----

  private layerObject(key: string, ext: 'qcow2' | 'json' | 'log'): string {
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
  async getManifest(key: string, o: CallOptions = {}): Promise<LayerManifest | null> {
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
    if (existing) await this.removeObject(this.layerObject(key, 'json'), o);

    await this.uploadFile(this.layerObject(key, 'qcow2'), local.blobPath(key), { sha256: m.blob.sha256, size: m.blob.size, layer: `${m.name} (${key})` }, o);
    const logBytes = await stat(local.logPath(key)).then((s) => s.size, () => null);
    if (logBytes !== null) await this.uploadFile(this.layerObject(key, 'log'), local.logPath(key), null, o);
    const { parentSha256: _ignored, ...rest } = m;
    const shared: LayerManifest = parentSha256 ? { ...rest, parentSha256 } : rest;
    await this.putText(this.layerObject(key, 'json'), JSON.stringify(shared, null, 2) + '\n', 'application/json', o);
    return { pushed: true, manifest: shared, bytes: m.blob.size };
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
    try {
      const got = await this.download(this.layerObject(key, 'qcow2'), tmp, o);
      if (got === null) throw new StoreError(`the shared store ${this.url} has the manifest of layer ${m.name} (${key}) but not its blob`);
      if (got.sha256 !== m.blob.sha256 || got.size !== m.blob.size) {
        throw new SharedBlobMismatchError({ key, name: m.name, expected: m.blob.sha256, actual: got.sha256, expectedSize: m.blob.size, actualSize: got.size });
      }
      const log = await this.download(this.layerObject(key, 'log'), tmpLog, o);
      return await local.publishComplete(tmp, m, log ? tmpLog : undefined);
    } finally {
      await rm(tmp, { force: true });
      await rm(tmpLog, { force: true });
    }
  }

  /** Removes a layer: its manifest first (from then on it does not exist), then blob and log. */
  async remove(key: string, o: CallOptions = {}): Promise<void> {
    for (const ext of ['json', 'qcow2', 'log'] as const) await this.removeObject(this.layerObject(key, ext), o);
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
        if (isNotFound(e)) return null;
        throw e;
      }
    }, o);
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
   * Uploads a file as an object; with `expect`, fails (and leaves no object) unless the file's
   * bytes hash to it. Up to `multipartThreshold` bytes go in one PUT; a larger file goes as a
   * multipart upload of `partSize` parts, `partConcurrency` at a time, each part retried alone
   * (a failed part is sent again, not the whole file). The upload is completed only once the
   * whole file has hashed right; any failure, an abort included, aborts it on the server, so
   * no incomplete upload is left holding parts (a killed process leaves one: `vmlb gc --shared`).
   */
  private async uploadFile(object: string, file: string, expect: { sha256: string; size: number; layer: string } | null, o: CallOptions): Promise<void> {
    const size = (await stat(file)).size;
    const mismatch = (sent: { sha256: string; size: number }) =>
      new StoreError(
        `layer ${expect!.layer}: the local blob ${file} does not match its manifest (sha256 ${sent.sha256}, ${sent.size} bytes; the manifest says ${expect!.sha256}, ${expect!.size} bytes): not uploaded; the local store is damaged, remove that layer`,
      );
    if (expect && size !== expect.size) throw mismatch({ sha256: '(not read)', size });
    this.onEvent?.({ type: 'put-start', object, bytes: size });
    if (size <= this.multipart.threshold) {
      const body = await readFile(file);
      const sha256 = createHash('sha256').update(body).digest('hex');
      if (expect && sha256 !== expect.sha256) throw mismatch({ sha256, size: body.length });
      await this.withRetry(`upload ${object}`, () => this.client.putObject(this.config.bucket, object, body, body.length, { 'Content-Type': 'application/octet-stream' }), o);
    } else {
      await this.uploadMultipart(object, file, size, expect ? (sent) => (sent.sha256 === expect.sha256 ? null : mismatch(sent)) : () => null, o);
    }
    this.onEvent?.({ type: 'put-done', object, bytes: size });
  }

  private async uploadMultipart(
    object: string,
    file: string,
    size: number,
    check: (sent: { sha256: string; size: number }) => Error | null,
    o: CallOptions,
  ): Promise<void> {
    const { bucket } = this.config;
    const { concurrency } = this.multipart;
    // At most 10 000 parts (S3's limit): larger parts for a file that would need more.
    const partSize = Math.max(this.multipart.partSize, Math.ceil(size / 10_000 / (1 << 20)) * (1 << 20));
    const uploadId = await this.withRetry(
      `start the upload of ${object}`,
      () => this.client.initiateNewMultipartUpload(bucket, object, { 'Content-Type': 'application/octet-stream' }),
      o,
    );
    const fh = await open(file, 'r');
    const parts: Array<{ part: number; etag: string }> = [];
    const inFlight = new Set<Promise<void>>();
    let failed: unknown = null;
    try {
      const whole = createHash('sha256');
      const count = Math.ceil(size / partSize);
      for (let part = 1; part <= count && failed === null; part++) {
        const offset = (part - 1) * partSize;
        const length = Math.min(partSize, size - offset);
        const buf = Buffer.allocUnsafe(length);
        for (let got = 0; got < length; ) {
          const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
          if (bytesRead === 0) throw new StoreError(`${file} shrank while it was being uploaded (${offset + got} of ${size} bytes read)`);
          got += bytesRead;
        }
        whole.update(buf);
        const md5 = createHash('md5').update(buf).digest('base64');
        const p = this.withRetry(
          `upload part ${part} of ${count} of ${object}`,
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
            this.onEvent?.({ type: 'part-done', object, part, bytes: length });
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
      const bad = check({ sha256: whole.digest('hex'), size });
      if (bad) throw bad;
      parts.sort((x, y) => x.part - y.part);
      let tries = 0;
      await this.withRetry(`complete the upload of ${object}`, async () => {
        try {
          await untilAborted(this.client.completeMultipartUpload(bucket, object, uploadId, parts), o.signal, () => this.dropConnections());
        } catch (e) {
          // A retry after a completion whose answer was lost: the upload is gone because it is
          // the object now.
          if (tries++ > 0 && errorCode(e) === 'NoSuchUpload' && (await this.client.statObject(bucket, object).then((st) => st.size, () => -1)) === size) return;
          throw e;
        }
      }, o);
    } catch (e) {
      await Promise.allSettled(inFlight);
      await this.abortUpload(object, uploadId);
      throw e;
    } finally {
      await fh.close();
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
   * Streams an object into a file, hashing it on the way; null when there is no such object.
   * A transfer cut short is resumed where it stopped (a ranged GET), not started again; it
   * starts again only when the object changed meanwhile (another ETag) or the server ignores
   * the range.
   */
  private async download(object: string, file: string, o: CallOptions): Promise<{ sha256: string; size: number } | null> {
    const fh = await open(file, 'w');
    let hash = createHash('sha256');
    let size = 0;
    let etag: string | undefined;
    const restart = async () => {
      hash = createHash('sha256');
      size = 0;
      await fh.truncate(0);
    };
    try {
      const found = await this.withRetry(`download ${object}`, async () => {
        let res: Readable;
        try {
          res = size === 0 ? await this.client.getObject(this.config.bucket, object) : await this.client.getPartialObject(this.config.bucket, object, size);
        } catch (e) {
          if (isNotFound(e)) return false;
          // 416: the object is shorter than what we have, so it changed: start again.
          if (size > 0 && errorCode(e) === 'InvalidRange') await restart();
          throw e;
        }
        const msg = res as Readable & { statusCode?: number; headers?: Record<string, string | undefined> };
        const tag = msg.headers?.etag;
        if (size > 0 && (msg.statusCode !== 206 || (etag && tag && tag !== etag))) {
          res.destroy();
          await restart();
          throw Object.assign(new Error(`${object} changed on the server during the download (or the range was ignored): starting again`), { code: 'ECONNRESET' });
        }
        etag ??= tag;
        if (o.signal) addAbortSignal(o.signal, res);
        for await (const chunk of res as AsyncIterable<Buffer>) {
          await fh.write(chunk, 0, chunk.length, size);
          hash.update(chunk);
          size += chunk.length;
        }
        return true;
      }, o);
      return found ? { sha256: hash.digest('hex'), size } : null;
    } finally {
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

import { rename, rm, stat } from 'node:fs/promises';
import { StoreError } from '../errors.js';
import { KEY_PATTERN, type LayerManifest } from './layer-manifest.js';
import type { LocalStore } from './local-store.js';
import { S3Bucket, type IncompleteUpload, type S3BucketOptions } from './s3-bucket.js';
import type { S3Config } from './s3-config.js';
import { download } from './s3-download.js';
import type { CallOptions } from './s3-retry.js';
import { abortIncompleteUpload, listIncompleteUploads, uploadFile } from './s3-upload.js';
import { SharedBlobMismatchError, UndecodableError } from './shared-blob-errors.js';
import { DEFAULT_ZSTD_LEVEL, parseCompression } from './shared-compression.js';
import { checkManifest, type SharedLayerManifest } from './shared-manifest.js';

/**
 * The shared store: S3 (MinIO in production) with the local store's layout under PREFIX:
 *
 *   layers/<key>.qcow2.zst  the overlay blob as a zstd stream (the default: see
 *                        shared-compression.ts); one PUT up to 64 MiB, above, a multipart upload
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
 * Layer blobs travel compressed (shared-compression.ts says how, and why zstd -1). The objects
 * are S3Bucket's (s3-bucket.ts: retries, connections), moved by s3-upload.ts and s3-download.ts.
 */

export interface SharedStoreOptions extends S3BucketOptions {
  /**
   * How layer blobs are pushed: `zstd:LEVEL` (`zstd` alone: level DEFAULT_ZSTD_LEVEL) or `none`
   * (as they are, `layers/<key>.qcow2`, which every vmlb reads). Pulls read either. The apps
   * pass VMLB_SHARED_COMPRESSION (see compressionFrom).
   * @default 'zstd'
   */
  compression?: string;
}

/**
 * The `compression` option from an app's environment: VMLB_SHARED_COMPRESSION when it is set,
 * checked here so that a bad value is refused naming the variable.
 */
export function compressionFrom(env: { VMLB_SHARED_COMPRESSION?: string }): Pick<SharedStoreOptions, 'compression'> {
  const spec = env.VMLB_SHARED_COMPRESSION;
  if (!spec) return {};
  parseCompression(spec, 'VMLB_SHARED_COMPRESSION');
  return { compression: spec };
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

/** The shared store of layers, build records and files (see the module comment). */
export class SharedStore {
  readonly config: S3Config;
  /** `s3://BUCKET/PREFIX`, for messages. */
  readonly url: string;
  private readonly bucket: S3Bucket;
  /** How pushes store layer blobs: zstd at a level, or null (as they are). */
  readonly compression: { zstd: number } | null;

  constructor(config: S3Config, opts: SharedStoreOptions = {}) {
    this.config = config;
    this.url = config.url;
    this.compression = opts.compression !== undefined ? parseCompression(opts.compression) : { zstd: DEFAULT_ZSTD_LEVEL };
    this.bucket = new S3Bucket(config, opts);
  }

  // ---- object names ----

  private layerObject(key: string, ext: 'qcow2' | 'qcow2.zst' | 'json' | 'log'): string {
    if (!KEY_PATTERN.test(key)) throw new StoreError(`"${key}" is not a layer key`);
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
  ensureBucket(o: CallOptions = {}): Promise<void> {
    return this.bucket.ensureBucket(o);
  }

  // ---- layers ----

  /** The layer's manifest, or null when the shared store does not have it. */
  async getManifest(key: string, o: CallOptions = {}): Promise<SharedLayerManifest | null> {
    const object = this.layerObject(key, 'json');
    const text = await this.bucket.getText(object, o);
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
    const out: Array<{ key: string; lastModified: Date }> = [];
    for (const { name, lastModified } of await this.bucket.list(dir, {})) {
      const m = /([0-9a-f]{64})\.json$/.exec(name);
      if (m && name === `${dir}${m[1]}.json`) out.push({ key: m[1]!, lastModified });
    }
    return out;
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
      await this.bucket.removeObject(this.layerObject(key, 'json'), o);
      // The copy being replaced may be stored under the other name: no key keeps two blobs.
      await this.bucket.removeObject(this.layerObject(key, comp ? 'qcow2' : 'qcow2.zst'), o);
    }

    const expect = { sha256: m.blob.sha256, size: m.blob.size, layer: `${m.name} (${key})` };
    const wireBytes = await uploadFile(this.bucket, this.layerObject(key, comp ? 'qcow2.zst' : 'qcow2'), local.blobPath(key), expect, o, comp ?? undefined);
    const logBytes = await stat(local.logPath(key)).then((s) => s.size, () => null);
    if (logBytes !== null) await uploadFile(this.bucket, this.layerObject(key, 'log'), local.logPath(key), null, o);
    const { parentSha256: _ignored, transfer: _local, ...rest } = m as SharedLayerManifest;
    const shared: SharedLayerManifest = {
      ...rest,
      ...(parentSha256 ? { parentSha256 } : {}),
      ...(comp ? { transfer: { file: `${key}.qcow2.zst`, encoding: 'zstd' as const, size: wireBytes } } : {}),
    };
    await this.bucket.putText(this.layerObject(key, 'json'), JSON.stringify(shared, null, 2) + '\n', 'application/json', o);
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
      const got = await download(this.bucket, object, tmp, o, t ? 'zstd' : null).catch((e: unknown) => {
        if (!(e instanceof UndecodableError)) throw e;
        const undecodable = { object: object.slice(this.config.prefix.length), error: e.message };
        throw new SharedBlobMismatchError({ key, name: m.name, expected: m.blob.sha256, actual: '(undecodable)', expectedSize: m.blob.size, actualSize: 0, undecodable });
      });
      if (got === null) throw new StoreError(`the shared store ${this.url} has the manifest of layer ${m.name} (${key}) but not its blob ${object}`);
      if (got.sha256 !== m.blob.sha256 || got.size !== m.blob.size) {
        throw new SharedBlobMismatchError({ key, name: m.name, expected: m.blob.sha256, actual: got.sha256, expectedSize: m.blob.size, actualSize: got.size });
      }
      const log = await download(this.bucket, this.layerObject(key, 'log'), tmpLog, o);
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
    for (const ext of ['json', 'qcow2.zst', 'qcow2', 'log'] as const) await this.bucket.removeObject(this.layerObject(key, ext), o);
  }

  // ---- records ----

  /** Writes a JSON record under PREFIX (e.g. `builds/<id>.json`). */
  async putJson(rel: string, value: unknown, o: CallOptions = {}): Promise<void> {
    await this.bucket.putText(this.recordObject(rel), JSON.stringify(value, null, 2) + '\n', 'application/json', o);
  }

  /** Reads a JSON record, or null when there is none. */
  async getJson<T = unknown>(rel: string, o: CallOptions = {}): Promise<T | null> {
    const object = this.recordObject(rel);
    const text = await this.bucket.getText(object, o);
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
    return (await this.bucket.list(dir, o)).map(({ name, lastModified, size }) => ({ rel: name.slice(this.config.prefix.length), lastModified, size }));
  }

  /** Removes a record (nothing happens when there is none). */
  async removeRecord(rel: string, o: CallOptions = {}): Promise<void> {
    await this.bucket.removeObject(this.recordObject(rel), o);
  }

  // ---- files outside layers/ (projects, images) ----

  /** Uploads a local file as `rel` under PREFIX (e.g. `images/<key>.qcow2`); returns its size. */
  async putFile(rel: string, file: string, o: CallOptions = {}): Promise<number> {
    const object = this.recordObject(rel);
    await uploadFile(this.bucket, object, file, null, o);
    return (await stat(file)).size;
  }

  /**
   * Downloads `rel` into `file` (written under a temporary name and renamed, so `file` is
   * never half there) and returns its sha256 and size, or null when there is no such object.
   */
  async getFile(rel: string, file: string, o: CallOptions = {}): Promise<{ sha256: string; size: number } | null> {
    const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(16).slice(2, 10)}`;
    try {
      const got = await download(this.bucket, this.recordObject(rel), tmp, o);
      if (got) await rename(tmp, file);
      return got;
    } finally {
      await rm(tmp, { force: true });
    }
  }


  /** The incomplete multipart uploads under PREFIX (interrupted pushes), oldest first. */
  listIncompleteUploads(o: CallOptions = {}): Promise<IncompleteUpload[]> {
    return listIncompleteUploads(this.bucket, o);
  }

  /** Aborts an incomplete multipart upload (nothing happens when it is gone already). */
  abortIncompleteUpload(u: Pick<IncompleteUpload, 'object' | 'uploadId'>, o: CallOptions = {}): Promise<void> {
    return abortIncompleteUpload(this.bucket, u, o);
  }

  /** Drops pooled connections. Safe to call twice; the store must not be used afterwards. */
  close(): void {
    this.bucket.close();
  }
}

/**
 * The shared store (S3) end to end: a real s3rver in a child process, or with
 * VMLB_TEST_S3=radosgw a radosgw of this file's own (test/helpers/s3-server.ts),
 * real builds through the CLI with `--cache s3://…`, and the SharedStore class itself where a
 * test needs to watch or disturb an upload. Each test uses its own prefix in one bucket.
 *
 * With S3_ENDPOINT set the suite runs against that server (e.g. a real MinIO) and skips the
 * tests that must stop and restart the server.
 */
import { execa } from 'execa';
import { Client } from 'minio';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { LayerManifest } from '../libs/layer-engine/src/store/layer-manifest.js';
import { LocalStore } from '../libs/layer-engine/src/store/local-store.js';
import { s3ConfigFrom, type S3Config } from '../libs/layer-engine/src/store/s3-config.js';
import type { SharedStoreEvent } from '../libs/layer-engine/src/store/s3-bucket.js';
import { SharedBlobMismatchError } from '../libs/layer-engine/src/store/shared-blob-errors.js';
import type { SharedLayerManifest } from '../libs/layer-engine/src/store/shared-manifest.js';
import { SharedStore, type SharedStoreOptions } from '../libs/layer-engine/src/store/shared-store.js';
import { EXTERNAL_S3_REASON, startS3Server, type S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, builtNames, cachedNames, findEvent, leftovers, sandbox, sha256sum, vmlb, writeProject, type LayerDef, type Sandbox, type VmlbRun } from './helpers/vmlb.js';

const BUCKET = 'vmlb-test';
const MiB = 1024 * 1024;

let sb: Sandbox;
let s3: S3Server;
let raw: Client;
const openStores: SharedStore[] = [];
const localStores = new Set<string>();

beforeAll(async () => {
  sb = await sandbox('shared');
  s3 = await startS3Server();
  const c = configFor(`s3://${BUCKET}/setup`);
  raw = new Client({ endPoint: c.host, port: c.port, useSSL: c.useSSL, accessKey: c.accessKey, secretKey: c.secretKey, region: c.region, pathStyle: true });
  await shared(`s3://${BUCKET}/setup`).ensureBucket();
});
afterEach(async () => {
  while (openStores.length) openStores.pop()!.close();
  expect(await leftovers(sb)).toEqual([]);
  // Nothing half-pulled or half-built stays behind in any store a test used.
  for (const dir of localStores) {
    const debris = (await readdir(path.join(dir, 'layers')).catch(() => [] as string[])).filter((f) => f.startsWith('.tmp-'));
    expect(debris, dir).toEqual([]);
  }
});
afterAll(async () => {
  await s3?.close();
  await sb?.cleanup();
});

if (EXTERNAL_S3_REASON) console.warn(`shared-store.test.ts: outage tests skipped: ${EXTERNAL_S3_REASON}`);

// ---- helpers ----

function cacheUrl(name: string): string {
  return `s3://${BUCKET}/${name}-${randomBytes(4).toString('hex')}`;
}

function configFor(url: string): S3Config {
  return s3ConfigFrom(url, s3.env);
}

function shared(url: string, opts: SharedStoreOptions = {}): SharedStore {
  const s = new SharedStore(configFor(url), opts);
  openStores.push(s);
  return s;
}

function storeDir(name: string): string {
  const dir = path.join(sb.dir, `store-${name}`);
  localStores.add(dir);
  return dir;
}

/** `vmlb build --json --cache URL` with its own local store. */
function buildWithCache(project: string, store: string, url: string, extra: string[] = []): Promise<VmlbRun> {
  return vmlb(sb, ['build', project, '--json', '--cache', url, ...extra], { ...s3.env, VMLB_STORE: store });
}

/** Each layer's key by its name, from the build's plan. */
function keysByName(run: VmlbRun): Record<string, string> {
  return Object.fromEntries((findEvent(run, 'plan')?.layers ?? []).map((l) => [l.name, l.key]));
}

function notices(run: VmlbRun): string[] {
  return run.events.flatMap((e) => (e.type === 'notice' ? [e.message] : []));
}

/** Every object name under the URL's prefix, relative to it, sorted. */
/** The layer objects under the prefix (builds also write use records under uses/: gc.test.ts checks those). */
async function objects(url: string): Promise<string[]> {
  const { prefix } = configFor(url);
  const names: string[] = [];
  for await (const item of raw.listObjectsV2(BUCKET, `${prefix}layers/`, true)) names.push((item as { name: string }).name.slice(prefix.length));
  return names.sort();
}

/** A layer's objects as pushed today: its blob compressed (`.qcow2.zst`), its log, its manifest. */
function layerObjects(...keys: string[]): string[] {
  return keys.flatMap((k) => [`layers/${k}.json`, `layers/${k}.log`, `layers/${k}.qcow2.zst`]).sort();
}

async function objectSha256(url: string, rel: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of await raw.getObject(BUCKET, `${configFor(url).prefix}${rel}`)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** The sha256 of a layer's blob as the shared store holds it (decompressed with zstd -d when it is `.qcow2.zst`). */
async function sharedBlobSha256(url: string, key: string): Promise<string> {
  const m = await sharedManifest(url, key);
  if (!m.transfer) return objectSha256(url, `layers/${key}.qcow2`);
  const file = await download(url, `layers/${m.transfer.file}`);
  const { stdout } = await execa('bash', ['-c', 'zstd -q -d -c "$1" | sha256sum', '_', file]);
  return stdout.split(' ')[0]!;
}

/** An object's size, or null when it is not there. */
async function objectSize(url: string, rel: string): Promise<number | null> {
  return raw.statObject(BUCKET, `${configFor(url).prefix}${rel}`).then((st) => st.size, () => null);
}

async function sharedManifest(url: string, key: string): Promise<SharedLayerManifest> {
  return JSON.parse(await readFile(await download(url, `layers/${key}.json`), 'utf8')) as SharedLayerManifest;
}

async function download(url: string, rel: string): Promise<string> {
  const file = path.join(sb.dir, `dl-${randomBytes(4).toString('hex')}`);
  await raw.fGetObject(BUCKET, `${configFor(url).prefix}${rel}`, file);
  return file;
}

async function localManifest(store: string, key: string): Promise<LayerManifest> {
  return JSON.parse(await readFile(path.join(store, 'layers', `${key}.json`), 'utf8')) as LayerManifest;
}

const threeLayers = (marker: string): Record<string, LayerDef> => ({
  '01_base': BUSYBOX_BASE,
  '02_two': { kind: 'build-layer', script: `echo ${marker} > /etc/two; cp /mnt/data.txt /etc/data.txt`, files: { 'data.txt': 'two\n' } },
  '03_three': { kind: 'build-layer', script: 'cat /etc/two > /etc/three; date > /etc/built-at' },
});

// ---- tests ----

describe('a project shared through S3', () => {
  let project: string;
  const storeA = () => storeDir('a');
  beforeAll(async () => {
    project = await writeProject(path.join(sb.dir, 'p3'), threeLayers('shared'));
  });

  it('a second, empty store builds nothing: every layer comes from the shared store, and the image is the same', async () => {
    const url = cacheUrl('roundtrip');
    const a = await buildWithCache(project, storeA(), url, ['-o', path.join(sb.dir, 'a.qcow2')]);
    expect(a.exitCode, a.stderr).toBe(0);
    expect(builtNames(a)).toEqual(['01_base', '02_two', '03_three']);
    expect(notices(a)).toEqual([]);
    const keys = keysByName(a);
    expect(await objects(url)).toEqual(layerObjects(...Object.values(keys)));

    const storeB = storeDir('b');
    const b = await buildWithCache(project, storeB, url, ['-o', path.join(sb.dir, 'b.qcow2')]);
    expect(b.exitCode, b.stderr).toBe(0);
    expect(builtNames(b)).toEqual([]);
    expect(cachedNames(b)).toEqual(['01_base', '02_two', '03_three']);
    expect(findEvent(b, 'plan')?.layers.map((l) => `${l.status}/${l.source}`)).toEqual(['hit/shared', 'hit/shared', 'hit/shared']);
    expect(b.events.flatMap((e) => (e.type === 'layer-cached' ? [e.source] : []))).toEqual(['shared', 'shared', 'shared']);
    expect(findEvent(b, 'done')).toMatchObject({ built: 0, cached: 3 });

    await execa('qemu-img', ['compare', '-U', path.join(sb.dir, 'a.qcow2'), path.join(sb.dir, 'b.qcow2')]);
    for (const key of Object.values(keys)) {
      // The same bytes, and a local manifest equal to the shared one but for how the shared
      // store holds the blob (compressed: its object's name, encoding and size).
      expect(await sha256sum(path.join(storeB, 'layers', `${key}.qcow2`))).toBe(await sha256sum(path.join(storeA(), 'layers', `${key}.qcow2`)));
      const { transfer, ...sharedRest } = await sharedManifest(url, key);
      expect(await localManifest(storeB, key)).toEqual(sharedRest);
      expect(transfer).toEqual({ file: `${key}.qcow2.zst`, encoding: 'zstd', size: await objectSize(url, `layers/${key}.qcow2.zst`) });
      expect(await readFile(path.join(storeB, 'layers', `${key}.log`), 'utf8')).toBe(await readFile(path.join(storeA(), 'layers', `${key}.log`), 'utf8'));
    }
    // Each shared layer names the parent bytes it was built on.
    expect((await sharedManifest(url, keys['03_three']!)).parentSha256).toBe((await localManifest(storeA(), keys['02_two']!)).blob.sha256);
  });

  it('a corrupt shared blob fails its sha256: the pull names the key and keeps nothing, and a build rebuilds the layer and pushes it over the bad copy', async () => {
    // Store A has the layers (built above or now); this build pushes them to a new prefix.
    const url = cacheUrl('corrupt');
    const a = await buildWithCache(project, storeA(), url, ['-o', path.join(sb.dir, 'a2.qcow2')]);
    expect(a.exitCode, a.stderr).toBe(0);
    const keys = keysByName(a);
    const [k1, k2, k3] = [keys['01_base']!, keys['02_two']!, keys['03_three']!];
    expect(await objects(url)).toEqual(layerObjects(k1, k2, k3));

    // Other bytes under 02's blob (a good zstd stream of other bytes), its manifest kept.
    const good = await sharedManifest(url, k2);
    const junk = randomBytes(256 * 1024);
    const junkZst = (await execa('zstd', ['-q', '-c'], { input: junk, encoding: 'buffer' })).stdout;
    await raw.putObject(BUCKET, `${configFor(url).prefix}layers/${k2}.qcow2.zst`, Buffer.from(junkZst), junkZst.length);
    const junkSha = createHash('sha256').update(junk).digest('hex');

    // The class: the pull of the chain stops at 02 with a retryable error naming key and sums.
    const probeDir = storeDir('probe');
    const probe = new LocalStore(probeDir);
    const err = await shared(url).pullChain(probe, [k3]).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(SharedBlobMismatchError);
    expect((err as SharedBlobMismatchError).retryable).toBe(true);
    expect((err as Error).message).toContain(k2);
    expect((err as Error).message).toContain(good.blob.sha256);
    expect((err as Error).message).toContain(junkSha);
    expect(await probe.getManifest(k1)).not.toBeNull();
    expect(await probe.getManifest(k2)).toBeNull();
    expect((await readdir(path.join(probeDir, 'layers'))).filter((f) => f.includes(k2))).toEqual([]);

    // A build: 01 from the shared store, 02 rebuilt (said in a notice naming the key), 03
    // rebuilt because the shared 03 was written on the old 02; both pushed over the old copies.
    const storeC = storeDir('c');
    const c = await buildWithCache(project, storeC, url, ['-o', path.join(sb.dir, 'c.qcow2')]);
    expect(c.exitCode, c.stderr).toBe(0);
    expect(cachedNames(c)).toEqual(['01_base']);
    expect(builtNames(c)).toEqual(['02_two', '03_three']);
    expect(findEvent(c, 'done')).toMatchObject({ built: 2, cached: 1 });
    expect(notices(c).some((n) => n.includes(k2) && n.includes('sha256'))).toBe(true);
    const c2 = await localManifest(storeC, k2);
    expect(c2.blob.sha256).not.toBe(good.blob.sha256);
    expect((await sharedManifest(url, k2)).blob.sha256).toBe(c2.blob.sha256);
    expect(await sharedBlobSha256(url, k2)).toBe(c2.blob.sha256);
    expect((await sharedManifest(url, k3)).parentSha256).toBe(c2.blob.sha256);
    expect(await sharedBlobSha256(url, k3)).toBe((await localManifest(storeC, k3)).blob.sha256);

    // The repaired chain is whole: another empty store builds nothing.
    const d = await buildWithCache(project, storeDir('d'), url, ['-o', path.join(sb.dir, 'd.qcow2')]);
    expect(d.exitCode, d.stderr).toBe(0);
    expect(builtNames(d)).toEqual([]);
    expect(notices(d)).toEqual([]);
    await execa('qemu-img', ['compare', '-U', path.join(sb.dir, 'c.qcow2'), path.join(sb.dir, 'd.qcow2')]);
  });
});

describe('compressed transfer', () => {
  let project: string;
  let store: string;
  let keys: Record<string, string>;
  beforeAll(async () => {
    project = await writeProject(path.join(sb.dir, 'numbers'), {
      '01_base': BUSYBOX_BASE,
      // About 20 MB of digits and newlines: a layer zstd shrinks several times.
      '02_numbers': { kind: 'build-layer', script: 'seq 1 3000000 > /numbers' },
    });
    store = storeDir('numbers');
    const r = await vmlb(sb, ['build', project, '--json'], { VMLB_STORE: store });
    expect(r.exitCode, r.stderr).toBe(0);
    keys = keysByName(r);
  });

  it('a compressible layer travels as a zstd stream much smaller than its blob, and arrives as identical bytes', async () => {
    const url = cacheUrl('zst');
    const push = await buildWithCache(project, store, url);
    expect(push.exitCode, push.stderr).toBe(0);
    const k2 = keys['02_numbers']!;
    expect(await objects(url)).toEqual(layerObjects(keys['01_base']!, k2));
    const m = await sharedManifest(url, k2);
    const local = await localManifest(store, k2);
    expect(m.blob).toEqual(local.blob);
    const stored = await objectSize(url, `layers/${k2}.qcow2.zst`);
    expect(m.transfer).toEqual({ file: `${k2}.qcow2.zst`, encoding: 'zstd', size: stored });
    expect(local.blob.size).toBeGreaterThan(20 * MiB);
    expect(stored!).toBeLessThan(local.blob.size / 4);
    expect(await objectSize(url, `layers/${k2}.qcow2`)).toBeNull();

    const other = storeDir('numbers-other');
    const pull = await buildWithCache(project, other, url);
    expect(pull.exitCode, pull.stderr).toBe(0);
    expect(builtNames(pull)).toEqual([]);
    for (const k of Object.values(keys)) {
      expect(await sha256sum(path.join(other, 'layers', `${k}.qcow2`))).toBe((await localManifest(store, k)).blob.sha256);
      // The local manifest says nothing of how the shared store keeps the blob.
      expect((await localManifest(other, k)) as SharedLayerManifest).not.toHaveProperty('transfer');
    }
  });

  it('a compressed stream with flipped bytes is refused as corrupt, and nothing of it is kept', async () => {
    const url = cacheUrl('zst-flip');
    const s = shared(url);
    const from = new LocalStore(store);
    for (const k of Object.values(keys)) expect((await s.push(from, k)).pushed).toBe(true);
    const k2 = keys['02_numbers']!;
    const object = `${configFor(url).prefix}layers/${k2}.qcow2.zst`;
    const bytes = await readFile(await download(url, `layers/${k2}.qcow2.zst`));
    for (let i = 0; i < 64; i++) bytes[Math.floor(bytes.length / 2) + i * 101]! ^= 0x5a;
    await raw.putObject(BUCKET, object, bytes, bytes.length);

    const probeDir = storeDir('zst-flip-probe');
    const probe = new LocalStore(probeDir);
    const err = await shared(url).pullChain(probe, [k2]).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(SharedBlobMismatchError);
    expect((err as Error).message).toMatch(new RegExp(`^the shared copy of layer 02_numbers \\(${k2}\\) is corrupt: .*; nothing of it was kept$`));
    expect((err as Error).message).not.toContain('\n');
    expect(await probe.getManifest(keys['01_base']!)).not.toBeNull();
    expect(await probe.getManifest(k2)).toBeNull();
    expect((await readdir(path.join(probeDir, 'layers'))).filter((f) => f.includes(k2) || f.startsWith('.tmp-'))).toEqual([]);
  });

  it('an old, uncompressed layer (layers/<key>.qcow2, no transfer in its manifest) is still pulled, with compressed children on it', async () => {
    const url = cacheUrl('zst-mixed');
    const from = new LocalStore(store);
    // The base as a vmlb from before compression (or VMLB_SHARED_COMPRESSION=none) pushed it.
    const old = shared(url, { compression: 'none' });
    const r1 = await old.push(from, keys['01_base']!);
    expect(r1).toMatchObject({ pushed: true });
    expect(r1.pushed && r1.wireBytes).toBe((await localManifest(store, keys['01_base']!)).blob.size);
    expect(await shared(url).push(from, keys['02_numbers']!)).toMatchObject({ pushed: true });
    expect(await objects(url)).toEqual(
      [`layers/${keys['01_base']}.json`, `layers/${keys['01_base']}.log`, `layers/${keys['01_base']}.qcow2`, ...layerObjects(keys['02_numbers']!)].sort(),
    );
    expect(await sharedManifest(url, keys['01_base']!)).not.toHaveProperty('transfer');

    const into = new LocalStore(storeDir('zst-mixed-into'));
    const pulled = await shared(url).pullChain(into, [keys['02_numbers']!]);
    expect(pulled.map((m) => m.name)).toEqual(['01_base', '02_numbers']);
    for (const k of Object.values(keys)) expect(await sha256sum(into.blobPath(k))).toBe((await localManifest(store, k)).blob.sha256);

    // The CLI with VMLB_SHARED_COMPRESSION=none pushes blobs as they are.
    const plain = cacheUrl('zst-none');
    const run = await vmlb(sb, ['build', project, '--json', '--cache', plain], { ...s3.env, VMLB_STORE: store, VMLB_SHARED_COMPRESSION: 'none' });
    expect(run.exitCode, run.stderr).toBe(0);
    expect((await objects(plain)).filter((n) => n.endsWith('.zst'))).toEqual([]);
    expect(await objectSha256(plain, `layers/${keys['02_numbers']}.qcow2`)).toBe((await localManifest(store, keys['02_numbers']!)).blob.sha256);
  });

  it('a compression setting other than none, zstd or zstd:LEVEL is refused in one line', () => {
    expect(() => new SharedStore(configFor(cacheUrl('x')), { compression: 'lz4' })).toThrow(/^compression "lz4" is not none, zstd or zstd:LEVEL \(LEVEL 1–19\)$/);
    expect(() => new SharedStore(configFor(cacheUrl('x')), { compression: 'zstd:0' })).toThrow(/is not none, zstd or zstd:LEVEL/);
    expect(shared(cacheUrl('x'), { compression: 'zstd:3' }).compression).toEqual({ zstd: 3 });
  });
});

describe('what is never uploaded', () => {
  it('# noshare and # nocache layers (and what is built on them) stay local', async () => {
    const url = cacheUrl('noshare');
    const project = await writeProject(path.join(sb.dir, 'private'), {
      '01_base': BUSYBOX_BASE,
      '02_public': { kind: 'build-layer', script: 'echo public > /etc/public' },
      '03_secret': { kind: 'build-layer', script: '# noshare\necho secret > /etc/secret' },
      '04_after': { kind: 'build-layer', script: 'cat /etc/secret > /etc/after' },
      '05_stamp': { kind: 'build-layer', script: '# nocache\ndate > /etc/stamp' },
    });
    const store = storeDir('private');
    const run = await buildWithCache(project, store, url);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(builtNames(run)).toEqual(['01_base', '02_public', '03_secret', '04_after', '05_stamp']);
    const keys = keysByName(run);
    expect(await objects(url)).toEqual(layerObjects(keys['01_base']!, keys['02_public']!));
    // The layers are in the local store, and the class refuses to upload the marked ones.
    const local = new LocalStore(store);
    expect((await local.getManifest(keys['03_secret']!))?.share).toBe(false);
    await expect(shared(url).push(local, keys['03_secret']!)).rejects.toThrow(/# noshare/);
    await expect(shared(url).push(local, keys['05_stamp']!)).rejects.toThrow(/# nocache/);
    // A child of a noshare layer would be unusable there without its parent: not uploaded.
    expect(await shared(url).push(local, keys['04_after']!)).toEqual({ pushed: false, reason: 'parent-not-shared' });
    expect(await objects(url)).toEqual(layerObjects(keys['01_base']!, keys['02_public']!));
  });
});

describe('a big layer', () => {
  let project: string;
  let store: string;
  let keys: Record<string, string>;
  let url: string;
  let first: VmlbRun;
  const bigBase = { ...BUSYBOX_BASE, script: BUSYBOX_BASE.script.replace('# disk-size 64M', '# disk-size 160M') };

  beforeAll(async () => {
    project = await writeProject(path.join(sb.dir, 'big'), {
      '01_base': bigBase,
      '02_big': { kind: 'build-layer', script: 'dd if=/dev/urandom of=/big bs=1M count=80 2>/dev/null; sha256sum /big > /big.sha256' },
    });
    store = storeDir('big');
    url = cacheUrl('big');
    first = await buildWithCache(project, store, url);
    keys = keysByName(first);
  });

  it('goes through a multipart upload (> 64 MiB) and round-trips with its sha256', async () => {
    expect(first.exitCode, first.stderr).toBe(0);
    expect(builtNames(first)).toEqual(['01_base', '02_big']);
    const big = keys['02_big']!;
    const m = await sharedManifest(url, big);
    expect(m.blob.size).toBeGreaterThan(64 * MiB);
    // The server saw a multipart upload start for this blob (s3rver's launcher reports it,
    // radosgw's ops log records it; an external server cannot be watched).
    const initiated = await s3.multipartInitiations();
    if (initiated) expect(initiated).toContain(`/${BUCKET}/${configFor(url).prefix}layers/${big}.qcow2.zst`);
    expect(await sharedBlobSha256(url, big)).toBe(m.blob.sha256);

    const other = storeDir('big-other');
    const pull = await buildWithCache(project, other, url);
    expect(pull.exitCode, pull.stderr).toBe(0);
    expect(builtNames(pull)).toEqual([]);
    expect(await sha256sum(path.join(other, 'layers', `${big}.qcow2`))).toBe(m.blob.sha256);
  });

  it('writes the manifest last: while the blob uploads, the manifest does not exist', async () => {
    const target = cacheUrl('order');
    const prefix = configFor(target).prefix;
    const big = keys['02_big']!;
    const blob = `${prefix}layers/${big}.qcow2.zst`;
    const manifest = `${prefix}layers/${big}.json`;
    const expected = (await localManifest(store, big)).blob;
    const events: SharedStoreEvent[] = [];
    let uploading = false;
    const s = shared(target, {
      onEvent: (e) => {
        events.push(e);
        if (e.type === 'put-start' && e.object === blob) uploading = true;
        if (e.type === 'put-done' && e.object === blob) uploading = false;
      },
    });
    const local = new LocalStore(store);
    await s.push(local, keys['01_base']!);

    // A second client watches the bucket while the push runs.
    const seen: Array<{ manifest: boolean; blobBytes: number | null; uploading: boolean }> = [];
    let watching = true;
    const size = (name: string) => raw.statObject(BUCKET, name).then((st) => st.size, () => null);
    const watcher = (async () => {
      while (watching) {
        const during = uploading;
        const [m, b] = await Promise.all([size(manifest), size(blob)]);
        seen.push({ manifest: m !== null, blobBytes: b, uploading: during && uploading });
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    const result = await s.push(local, big);
    watching = false;
    await watcher;
    expect(result.pushed).toBe(true);

    // Order of writes: blob, then log, then manifest.
    const writes = events.filter((e) => e.type === 'put-start' || e.type === 'put-done').map((e) => `${e.type} ${(e as { object: string }).object.slice(prefix.length)}`);
    expect(writes.filter((w) => w.includes(big))).toEqual([
      `put-start layers/${big}.qcow2.zst`,
      `put-done layers/${big}.qcow2.zst`,
      `put-start layers/${big}.log`,
      `put-done layers/${big}.log`,
      `put-start layers/${big}.json`,
      `put-done layers/${big}.json`,
    ]);
    // What another reader saw: never a manifest without the whole blob; and it did look
    // while the blob was on its way.
    const stored = (await sharedManifest(target, big)).transfer!.size;
    expect(stored).toBeGreaterThan(0);
    expect(seen.filter((o) => o.manifest && o.blobBytes !== stored)).toEqual([]);
    expect(seen.filter((o) => o.uploading && !o.manifest).length).toBeGreaterThan(3);
    expect([await size(manifest), await size(blob)]).toEqual([expect.any(Number), stored]);
    expect(expected.size).toBeGreaterThan(0);
  });

  it('a push or a pull stops at once when its signal fires; the pull leaves no temporary file', async () => {
    const target = cacheUrl('abort');
    const big = keys['02_big']!;
    const s = shared(target);
    const local = new LocalStore(store);
    await s.push(local, keys['01_base']!);
    const pushAbort = new AbortController();
    const pushStarted = Date.now();
    const pushing = s.push(local, big, { signal: pushAbort.signal });
    setTimeout(() => pushAbort.abort(), 100);
    await expect(pushing).rejects.toMatchObject({ code: 'ABORTED' });
    expect(Date.now() - pushStarted).toBeLessThan(2000);
    // The store is still usable, and the layer does not exist there.
    expect(await s.hasLayer(big)).toBe(false);
    expect(await s.hasLayer(keys['01_base']!)).toBe(true);

    // A pull from the complete copy, stopped once its temporary blob exists.
    const dir = storeDir('abort');
    const into = new LocalStore(dir);
    await into.init();
    const pullAbort = new AbortController();
    const pulling = shared(url).pullChain(into, [big], { signal: pullAbort.signal });
    const settled = pulling.then(() => 'done', () => 'failed');
    let sawTemp = false;
    while (!pullAbort.signal.aborted && (await Promise.race([settled, new Promise((r) => setTimeout(() => r('running'), 2))])) === 'running') {
      if ((await readdir(path.join(dir, 'layers'))).some((f) => f.startsWith(`.tmp-${big}`))) {
        sawTemp = true;
        pullAbort.abort();
      }
    }
    await expect(pulling).rejects.toMatchObject({ code: 'ABORTED' });
    expect(sawTemp).toBe(true);
    expect(await into.getManifest(big)).toBeNull();
    expect((await readdir(path.join(dir, 'layers'))).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
  });

  it.skipIf(!!EXTERNAL_S3_REASON)('a push retries while the server is down and succeeds once it is back', async () => {
    const target = cacheUrl('outage');
    const retries: SharedStoreEvent[] = [];
    const s = shared(target, { onEvent: (e) => e.type === 'retry' && retries.push(e) });
    const local = new LocalStore(store);
    const big = keys['02_big']!;
    await s.push(local, keys['01_base']!);

    await s3.stop!();
    const started = Date.now();
    const pushing = s.push(local, big);
    const back = new Promise<void>((resolve, reject) => setTimeout(() => s3.restart!().then(resolve, reject), 2000));
    const result = await pushing;
    await back;
    expect(result.pushed).toBe(true);
    expect(Date.now() - started).toBeGreaterThan(2000);
    expect(retries.length).toBeGreaterThan(0);
    expect(retries.every((r) => r.type === 'retry' && /ECONNREFUSED|ECONNRESET|hang up/.test(r.error))).toBe(true);
    const m = await sharedManifest(target, big);
    expect(m.blob.sha256).toBe((await localManifest(store, big)).blob.sha256);
    expect(await sharedBlobSha256(target, big)).toBe(m.blob.sha256);
  });

  it.skipIf(!!EXTERNAL_S3_REASON)('a server down for good: the push fails retryable, and a build goes on with its local store', async () => {
    const target = cacheUrl('down');
    const s = shared(target, { retry: { tries: 3, firstDelayMs: 50 } });
    await s3.stop!();
    try {
      const err = await s.push(new LocalStore(store), keys['01_base']!).then(() => null, (e: unknown) => e);
      expect(err).toMatchObject({ code: 'STORE_ERROR', retryable: true });
      expect((err as Error).message).toMatch(/tried 3 times.*ECONNREFUSED/);

      const run = await buildWithCache(project, store, target);
      expect(run.exitCode, run.stderr).toBe(0);
      expect(builtNames(run)).toEqual([]);
      expect(cachedNames(run)).toEqual(['01_base', '02_big']);
      const said = notices(run);
      expect(said).toHaveLength(1);
      expect(said[0]).toMatch(/shared store is unavailable; building with the local store only/);
    } finally {
      await s3.restart!();
    }
  });
});

describe('configuration', () => {
  it('a --cache URL without a bucket, or missing credentials, is refused before anything runs (exit 2, the variable named)', async () => {
    const project = await writeProject(path.join(sb.dir, 'cfg'), { '01_base': BUSYBOX_BASE });
    const noBucket = await vmlb(sb, ['build', project, '--cache', 's3://'], s3.env);
    expect(noBucket.exitCode).toBe(2);
    expect(noBucket.stderr).toMatch(/--cache \(VMLB_CACHE\): "s3:\/\/" names no bucket/);

    const noKeys = await vmlb(sb, ['build', project], {
      VMLB_CACHE: `s3://${BUCKET}/cfg`,
      S3_ENDPOINT: s3.endpoint,
      S3_ACCESS_KEY: '',
      S3_SECRET_KEY: '',
      AWS_ACCESS_KEY_ID: '',
      AWS_SECRET_ACCESS_KEY: '',
    });
    expect(noKeys.exitCode).toBe(2);
    expect(noKeys.stderr).toMatch(/S3_ACCESS_KEY: is not set/);
    expect(noKeys.stderr).toMatch(/S3_SECRET_KEY: is not set/);
    expect(noKeys.stdout).not.toMatch(/building/);
  });
});

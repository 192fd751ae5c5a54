/**
 * Large transfers against a real S3 server: Ceph radosgw (test/helpers/ceph-rgw.ts, a radosgw
 * of this file's own on the run's one Ceph cluster), reached directly or through a TCP proxy in
 * this file that counts the bytes each way, can slow the upload down, and can cut one
 * connection mid-transfer.
 *
 *  - a multipart part whose connection is cut is sent again alone (the bytes the server
 *    received are the blob and one part at most, not the blob twice), and the blob arrives
 *    intact; a pull cut mid-body resumes with a ranged GET;
 *  - a layer travels compressed (`layers/<key>.qcow2.zst`, a zstd stream): a compressible one
 *    is stored much smaller than its blob and round-trips to identical bytes, a compressed pull
 *    cut mid-body resumes (the rest of the stream, into the same decompressor), an old
 *    uncompressed object is still pulled;
 *  - a real `vmlb build --cache` interrupted (SIGINT) mid-part leaves no incomplete upload;
 *  - one killed (SIGKILL) mid-part leaves one, which `vmlb gc --shared` lists and removes.
 */
import { type ResultPromise } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../libs/layer-engine/src/store/local-store.js';
import { s3ConfigFrom } from '../libs/layer-engine/src/store/s3-config.js';
import type { SharedStoreEvent } from '../libs/layer-engine/src/store/s3-bucket.js';
import { minioClient } from '../libs/layer-engine/src/store/s3-client.js';
import { SharedStore, type SharedStoreOptions } from '../libs/layer-engine/src/store/shared-store.js';
import { startCephRgw, type CephRgw } from './helpers/ceph-rgw.js';
import { BUSYBOX_BASE, leftovers, planKeys, sandbox, spawnVmlb, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

const BUCKET = 'vmlb-transfer';
const MiB = 1024 * 1024;

let sb: Sandbox;
let rgw: CephRgw;
const stores: SharedStore[] = [];
const proxies: Proxy[] = [];
const children: ResultPromise[] = [];

beforeAll(async () => {
  sb = await sandbox('s3-transfer');
  rgw = await startCephRgw();
  await store(`s3://${BUCKET}/setup`).ensureBucket();
}, 240_000);
afterEach(async () => {
  for (const c of children.splice(0)) {
    c.kill('SIGKILL');
    await c;
  }
  while (stores.length) stores.pop()!.close();
  while (proxies.length) await proxies.pop()!.close();
});
afterAll(async () => {
  await rgw?.close();
  await sb?.cleanup();
});

// ---- helpers ----

function url(name: string): string {
  return `s3://${BUCKET}/${name}-${randomBytes(4).toString('hex')}`;
}

function minioClientFor(u: string) {
  return minioClient(s3ConfigFrom(u, rgw.env));
}

function store(u: string, opts: SharedStoreOptions & { endpoint?: string } = {}): SharedStore {
  const s = new SharedStore(s3ConfigFrom(u, { ...rgw.env, ...(opts.endpoint ? { S3_ENDPOINT: opts.endpoint } : {}) }), opts);
  stores.push(s);
  return s;
}

async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return h.digest('hex');
}

interface Proxy {
  endpoint: string;
  /** Bytes client → server and server → client, over every connection so far. */
  up: number;
  down: number;
  /** Cut the connection that carries byte `at` of the given direction (counted from now), once. */
  cutOnce(direction: 'up' | 'down', at: number): void;
  cuts: number;
  close(): Promise<void>;
}

/** A TCP proxy to radosgw; `upBytesPerSecond` slows the client → server direction. */
async function startProxy(o: { upBytesPerSecond?: number } = {}): Promise<Proxy> {
  const sockets = new Set<Socket>();
  let cut: { direction: 'up' | 'down'; at: number } | null = null;
  const started = Date.now();
  const p: Proxy = {
    endpoint: '',
    up: 0,
    down: 0,
    cuts: 0,
    cutOnce(direction, at) {
      cut = { direction, at: (direction === 'up' ? p.up : p.down) + at };
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
  const server: Server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: rgw.port });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    const relay = (from: Socket, to: Socket, direction: 'up' | 'down') =>
      from.on('data', (chunk: Buffer) => {
        p[direction] += chunk.length;
        if (cut && cut.direction === direction && p[direction] >= cut.at) {
          cut = null;
          p.cuts++;
          client.destroy();
          upstream.destroy();
          return;
        }
        if (!to.write(chunk)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
        const rate = direction === 'up' ? o.upBytesPerSecond : undefined;
        if (rate) {
          const ahead = p.up / rate - (Date.now() - started) / 1000;
          if (ahead > 0.02) {
            from.pause();
            setTimeout(() => from.resume(), ahead * 1000);
          }
        }
      });
    relay(client, upstream, 'up');
    relay(upstream, client, 'down');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  p.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return p;
}

async function until(what: string, ms: number, probe: () => Promise<boolean> | boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---- tests ----

describe('a transfer cut mid-way', () => {
  const size = 96 * MiB;
  const partSize = 16 * MiB;
  let blob: string;
  beforeAll(async () => {
    blob = path.join(sb.dir, 'blob.bin');
    await writeFile(blob, randomBytes(size));
  });

  it('a part whose connection is cut is sent again alone, and the blob arrives intact', async () => {
    const u = url('cut-part');
    const proxy = await startProxy();
    proxies.push(proxy);
    const events: SharedStoreEvent[] = [];
    const s = store(u, { endpoint: proxy.endpoint, multipart: { threshold: partSize, partSize, concurrency: 2 }, onEvent: (e) => events.push(e) });
    // Cut the connection that carries the middle of the third part.
    proxy.cutOnce('up', 2.5 * partSize);
    await s.putFile('big/blob.bin', blob);

    expect(proxy.cuts).toBe(1);
    const retries = events.filter((e) => e.type === 'retry');
    expect(retries.map((e) => (e as { what: string }).what)).toEqual([expect.stringMatching(/^upload part \d of 6 of .*big\/blob\.bin$/)]);
    expect(events.filter((e) => e.type === 'part-done')).toHaveLength(6);
    // The server received the blob once, plus at most the one part that was cut (and headers).
    expect(proxy.up).toBeGreaterThan(size);
    expect(proxy.up).toBeLessThan(size + partSize + MiB);
    // Completed: nothing incomplete stays, and the object is the file (read past the proxy).
    expect(await store(u).listIncompleteUploads()).toEqual([]);
    const back = path.join(sb.dir, 'back.bin');
    expect(await store(u).getFile('big/blob.bin', back)).toEqual({ sha256: await fileSha256(blob), size });
    expect(await fileSha256(back)).toBe(await fileSha256(blob));
  });

  it('a pull cut mid-body resumes where it stopped (a ranged GET), and the blob arrives intact', async () => {
    const u = url('cut-pull');
    await store(u).putFile('big/blob.bin', blob);
    const proxy = await startProxy();
    proxies.push(proxy);
    const events: SharedStoreEvent[] = [];
    const s = store(u, { endpoint: proxy.endpoint, onEvent: (e) => events.push(e) });
    proxy.cutOnce('down', size / 2);
    const back = path.join(sb.dir, 'pulled.bin');
    const got = await s.getFile('big/blob.bin', back);

    expect(proxy.cuts).toBe(1);
    expect(events.filter((e) => e.type === 'retry').map((e) => (e as { what: string }).what)).toEqual([expect.stringMatching(/^download .*big\/blob\.bin$/)]);
    // Half the blob, then the other half: not the blob and a half.
    expect(proxy.down).toBeLessThan(size + MiB);
    expect(got).toEqual({ sha256: await fileSha256(blob), size });
    expect(await fileSha256(back)).toBe(got!.sha256);
  });
});

describe('compressed layers on radosgw', () => {
  let local: LocalStore;
  let keys: string[];
  beforeAll(async () => {
    const project = await writeProject(path.join(sb.dir, 'zst-project'), {
      '01_base': { ...BUSYBOX_BASE, script: BUSYBOX_BASE.script.replace('# disk-size 64M', '# disk-size 200M') },
      // About 20 MB of digits (compressible), then 72 MiB of random bytes (not): a compressed
      // stream above the 64 MiB threshold, so it goes as a multipart upload of its own parts.
      '02_mixed': { kind: 'build-layer', script: 'seq 1 3000000 > /numbers; dd if=/dev/urandom of=/noise bs=1M count=72 2>/dev/null' },
      '03_numbers': { kind: 'build-layer', script: 'seq 2 3000001 > /numbers2' },
    });
    const r = await vmlb(sb, ['build', project, '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    keys = planKeys(r);
    local = new LocalStore(sb.store);
  });

  it('round-trips to identical blobs; a compressible layer is stored much smaller; the big one went multipart', async () => {
    const u = url('zst');
    const events: SharedStoreEvent[] = [];
    const s = store(u, { onEvent: (e) => events.push(e) });
    for (const k of keys) expect(await s.push(local, k)).toMatchObject({ pushed: true });
    const prefix = s3ConfigFrom(u, rgw.env).prefix;
    const parts = events.filter((e) => e.type === 'part-done' && e.object === `${prefix}layers/${keys[1]}.qcow2.zst`);
    expect(parts.length).toBeGreaterThan(1);

    const k3 = keys[2]!;
    const m3 = (await s.getManifest(k3))!;
    const blob3 = (await local.getManifest(k3))!.blob;
    expect(m3.blob).toEqual(blob3);
    expect(m3.transfer).toMatchObject({ file: `${k3}.qcow2.zst`, encoding: 'zstd' });
    const put = events.find((e) => e.type === 'put-done' && e.object === `${prefix}layers/${k3}.qcow2.zst`) as { bytes: number };
    expect(put.bytes).toBe(m3.transfer!.size);
    // The bytes on the server: the object's own size, read back from the server.
    const listed = await new Promise<number>((resolve, reject) => {
      let size = -1;
      const st = minioClientFor(u).listObjectsV2(BUCKET, `${prefix}layers/${k3}.qcow2.zst`);
      st.on('data', (o: { size?: number }) => (size = o.size ?? -1));
      st.on('error', reject);
      st.on('end', () => resolve(size));
    });
    expect(listed).toBe(m3.transfer!.size);
    expect(listed).toBeLessThan(blob3.size / 4);

    const into = new LocalStore(path.join(sb.dir, `zst-into-${randomBytes(3).toString('hex')}`));
    const pulled = await store(u).pullChain(into, [k3]);
    expect(pulled.map((m) => m.key)).toEqual(keys);
    for (const k of keys) expect(await fileSha256(into.blobPath(k))).toBe((await local.getManifest(k))!.blob.sha256);
  });

  it('a compressed pull cut mid-body resumes with a ranged GET and arrives intact; an old uncompressed parent is still pulled', async () => {
    const u = url('zst-cut');
    // The base as an older vmlb pushed it (as it is), the big layer compressed.
    await store(u, { compression: 'none' }).push(local, keys[0]!);
    await store(u).push(local, keys[1]!);
    const m0 = (await store(u).getManifest(keys[0]!))!;
    const m1 = (await store(u).getManifest(keys[1]!))!;
    expect(m0.transfer).toBeUndefined();
    expect(m1.transfer!.size).toBeGreaterThan(64 * MiB);

    const into = new LocalStore(path.join(sb.dir, `zst-cut-${randomBytes(3).toString('hex')}`));
    await store(u).pull(into, keys[0]!);
    const proxy = await startProxy();
    proxies.push(proxy);
    const events: SharedStoreEvent[] = [];
    const s = store(u, { endpoint: proxy.endpoint, onEvent: (e) => events.push(e) });
    proxy.cutOnce('down', m1.transfer!.size / 2);
    const got = await s.pull(into, keys[1]!);

    expect(proxy.cuts).toBe(1);
    expect(events.filter((e) => e.type === 'retry').map((e) => (e as { what: string }).what)).toEqual([expect.stringMatching(new RegExp(`^download .*layers/${keys[1]}\\.qcow2\\.zst$`))]);
    // Half the stream, then the rest: not one and a half.
    expect(proxy.down).toBeLessThan(m1.transfer!.size + MiB);
    expect(events.find((e) => e.type === 'get-done')).toMatchObject({ bytes: m1.transfer!.size, blobBytes: m1.blob.size });
    expect(got.blob.sha256).toBe(m1.blob.sha256);
    expect(await fileSha256(into.blobPath(keys[1]!))).toBe(m1.blob.sha256);
  });
});

describe('an interrupted multipart push of a real build', () => {
  let project: string;
  let bigKey: string;
  beforeAll(async () => {
    project = await writeProject(path.join(sb.dir, 'project'), {
      '01_base': { ...BUSYBOX_BASE, script: BUSYBOX_BASE.script.replace('# disk-size 64M', '# disk-size 200M') },
      '02_big': { kind: 'build-layer', script: 'dd if=/dev/urandom of=/big bs=1M count=120 2>/dev/null' },
    });
    // Built once without a shared store; each test's build then only pushes.
    const r = await vmlb(sb, ['build', project, '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    bigKey = planKeys(r)[1]!;
  });

  /** Starts `vmlb build --cache URL` through a slow proxy and returns once it is mid-part in the big layer's upload. */
  async function pushUntilMidPart(u: string): Promise<{ child: ResultPromise; direct: SharedStore; object: string }> {
    const proxy = await startProxy({ upBytesPerSecond: 24 * MiB });
    proxies.push(proxy);
    const direct = store(u);
    const object = `${s3ConfigFrom(u, rgw.env).prefix}layers/${bigKey}.qcow2.zst`;
    const child = spawnVmlb(sb, ['build', project, '--json', '--cache', u], { ...rgw.env, S3_ENDPOINT: proxy.endpoint });
    children.push(child);
    await until('the big layer\'s multipart upload to start', 60_000, async () => (await direct.listIncompleteUploads()).some((x) => x.object === object));
    const at = proxy.up;
    // Well inside the first 32 MiB part.
    await until('16 MiB of the upload to pass', 30_000, () => proxy.up > at + 16 * MiB);
    return { child, direct, object };
  }

  it('SIGINT mid-part: exit 130, the upload is aborted (no incomplete upload left), no layer half there', async () => {
    const u = url('sigint');
    const { child, direct } = await pushUntilMidPart(u);
    child.kill('SIGINT');
    const r = await child;
    expect(r.exitCode, String(r.stderr)).toBe(130);
    expect(await direct.listIncompleteUploads()).toEqual([]);
    expect(await direct.hasLayer(bigKey)).toBe(false);
    expect(await leftovers(sb)).toEqual([]);
  });

  it('SIGKILL mid-part leaves an incomplete upload; gc --shared lists it (--dry-run, --json) and removes it', async () => {
    const u = url('sigkill');
    const { child, direct, object } = await pushUntilMidPart(u);
    child.kill('SIGKILL');
    await child;
    const left = await direct.listIncompleteUploads();
    expect(left.map((x) => x.object)).toEqual([object]);

    // The default spares uploads younger than a day (a push may still be running).
    const young = await vmlb(sb, ['gc', '--shared', u, '--dry-run', '--json'], rgw.env);
    expect(young.exitCode, young.stderr).toBe(0);
    expect(JSON.parse(young.stdout).shared.incompleteUploads).toEqual([]);

    const dry = await vmlb(sb, ['gc', '--shared', u, '--uploads-older-than', '0', '--dry-run', '--json'], rgw.env);
    expect(dry.exitCode, dry.stderr).toBe(0);
    expect(JSON.parse(dry.stdout).shared.incompleteUploads).toEqual([{ object, uploadId: left[0]!.uploadId, initiated: left[0]!.initiated }]);
    expect(await direct.listIncompleteUploads()).toHaveLength(1);

    const text = await vmlb(sb, ['gc', '--shared', u, '--uploads-older-than', '0'], rgw.env);
    expect(text.exitCode, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`aborted 1 incomplete upload started before .*:\\n  ${object.replace(/[.]/g, '\\.')}  started `));
    expect(await direct.listIncompleteUploads()).toEqual([]);
    expect(await leftovers(sb)).toEqual([]);
  });
});

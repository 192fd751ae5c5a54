/**
 * Least privilege, enforced by real servers (deploy/README.md, "Credentials").
 *
 * The shared store: Ceph radosgw (test/helpers/ceph-rgw.ts, a radosgw of this file's own on the
 * run's one Ceph cluster, which other files use too: its buckets and users are this file's), one
 * radosgw user per pool of deploy/teams.example.json and one for the scheduler, and one bucket
 * policy made by deploy/minio/pool-policies.mjs from that teams file — the same statements as
 * the MinIO policies in deploy/minio/policies/, each given a Principal. Requests are made with
 * the minio client (and the engine's SharedStore) using each user's own keys:
 *   - a pool's keys read, write, delete, list and upload in parts in its own namespace;
 *   - they read and list the pools it trusts (a missing object there is "not found", not
 *     "denied", so a lookup is a miss), and cannot write there;
 *   - they cannot read, write or list another pool's namespace, builds/, teams/, PREFIX or the
 *     bucket's root;
 *   - the scheduler's keys read and write everything under PREFIX, nothing outside it.
 *   - pool `default` (the old list form of the teams file) has the store's old layout under
 *     PREFIX itself, and still no builds/;
 *   - (expected to fail, until the store handles it) a worker's lookup of a missing layer with
 *     its pool's keys: radosgw answers AccessDenied, not NoSuchKey, to prefix-limited keys.
 *
 * Redis: redis-server with deploy/redis/users.acl rendered by deploy/redis/render-acl.sh with
 * test passwords: no credentials → NOAUTH; the default user cannot log in; a BullMQ flow (a
 * parent and a child, as the scheduler submits builds) is added through the scheduler's user and
 * run by Workers and followed by QueueEvents on the worker's user, plus the fleet's own command
 * set (claims, pub/sub, streams, SCAN); the dangerous commands are refused.
 */
import { execa } from 'execa';
import { FlowProducer, Queue, QueueEvents, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { Client } from 'minio';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseShared, parseTeamsPools, rgwBucketPolicy, type Pools } from '../deploy/minio/pool-policies.mjs';
import { s3ConfigFrom } from '../libs/layer-engine/src/store/s3-config.js';
import { SharedStore } from '../libs/layer-engine/src/store/shared-store.js';
import { PoolStores } from '../libs/fleet/src/pools.js';
import { startCephRgw, type CephRgw } from './helpers/ceph-rgw.js';
import { startRedis, type RedisServer } from './helpers/redis-server.js';

const REPO = fileURLToPath(new URL('../', import.meta.url));
const DEPLOY = path.join(REPO, 'deploy');
const MiB = 1024 * 1024;

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'vmlb-pool-credentials-'));
});
afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The error code of a rejected S3 request (`AccessDenied`, `NoSuchKey`, …), or 'ok'. */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return String((e as { code?: string }).code ?? (e as Error).message);
  }
}

async function list(c: Client, bucket: string, prefix: string, recursive = true): Promise<string[]> {
  const names: string[] = [];
  for await (const item of c.listObjectsV2(bucket, prefix, recursive)) names.push((item as { name?: string; prefix?: string }).name ?? (item as { prefix: string }).prefix);
  return names;
}

async function readAll(c: Client, bucket: string, object: string): Promise<string> {
  const s = await c.getObject(bucket, object);
  const chunks: Buffer[] = [];
  for await (const chunk of s) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}

describe('shared store: one user and policy per pool, enforced by Ceph radosgw', () => {
  let rgw: CephRgw;
  const keys: Record<string, { accessKey: string; secretKey: string }> = {};
  const clients: Record<string, Client> = {};
  let admin: Client;
  let bucket: string;
  let prefix: string;
  let pools: Pools;
  const rgwUser = (who: string) => (who === 'scheduler' ? 'vmlb-scheduler' : `vmlb-pool-${who}`);
  const client = (accessKey: string, secretKey: string) =>
    new Client({ endPoint: '127.0.0.1', port: rgw.port, useSSL: false, accessKey, secretKey, region: rgw.region, pathStyle: true });

  async function addUser(who: string): Promise<void> {
    const k = { accessKey: `VMLB${randomBytes(8).toString('hex').toUpperCase()}`, secretKey: randomBytes(20).toString('hex') };
    await rgw.radosgwAdmin(['user', 'create', `--uid=${rgwUser(who)}`, `--display-name=${rgwUser(who)}`, `--access-key=${k.accessKey}`, `--secret-key=${k.secretKey}`]);
    keys[who] = k;
    clients[who] = client(k.accessKey, k.secretKey);
  }

  /** Sets the bucket policy of a teams file on a bucket, made by the deploy generator. */
  async function applyPolicy(teamsText: string, sharedUrl: string): Promise<{ bucket: string; prefix: string; pools: Pools }> {
    const shared = parseShared(sharedUrl);
    const p = parseTeamsPools(teamsText).pools;
    for (const pool of Object.keys(p)) if (!keys[pool]) await addUser(pool);
    await admin.makeBucket(shared.bucket, rgw.region);
    const users = Object.fromEntries(Object.keys(p).map((pool) => [pool, rgwUser(pool)]));
    const policy = rgwBucketPolicy({ bucket: shared.bucket, prefix: shared.prefix, pools: p, users, scheduler: rgwUser('scheduler') });
    await admin.setBucketPolicy(shared.bucket, JSON.stringify(policy));
    return { ...shared, pools: p };
  }

  beforeAll(async () => {
    rgw = await startCephRgw();
    // The helper's own user owns the buckets (as MinIO's root account does): pools and the
    // scheduler get only what the bucket policy grants them.
    admin = client(rgw.accessKey, rgw.secretKey);
    await addUser('scheduler');
    const teamsText = await readFile(path.join(DEPLOY, 'teams.example.json'), 'utf8');
    const fleetEnv = await readFile(path.join(DEPLOY, 'env/fleet.env'), 'utf8');
    const shared = /^VMLB_SHARED=(.*)$/m.exec(fleetEnv)![1]!;
    ({ bucket, prefix, pools } = await applyPolicy(teamsText, shared));
    // Something in every namespace, written by its owner (the scheduler for its own records).
    for (const pool of Object.keys(pools)) await clients[pool]!.putObject(bucket, `${prefix}pools/${pool}/layers/seed.json`, `{"pool":"${pool}"}`);
    await clients.scheduler!.putObject(bucket, `${prefix}builds/b1.json`, '{"build":"b1"}');
    await clients.scheduler!.putObject(bucket, `${prefix}teams/web/index.json`, '[]');
    await admin.putObject(bucket, 'elsewhere/x', 'not the fleet');
  }, 240_000);
  afterAll(async () => {
    await rgw?.close();
  });

  it('the example teams file has pools a and b that trust platform, and platform', () => {
    expect(pools).toEqual({ a: { reads: ['platform'] }, b: { reads: ['platform'] }, platform: { reads: [] } });
    expect(prefix).toBe('fleet/');
  });

  it("pool a's keys read, write, delete and list its own namespace, and upload in parts there", async () => {
    const a = clients.a!;
    const obj = `${prefix}pools/a/layers/k1.json`;
    expect(await outcome(a.putObject(bucket, obj, '{"k":1}'))).toBe('ok');
    expect(await readAll(a, bucket, obj)).toBe('{"k":1}');
    expect((await a.statObject(bucket, obj)).size).toBe(7);
    expect(await list(a, bucket, `${prefix}pools/a/`)).toEqual(expect.arrayContaining([obj, `${prefix}pools/a/layers/seed.json`]));
    expect(await list(a, bucket, `${prefix}pools/a/layers/`)).toContain(obj);
    expect(await outcome(a.removeObject(bucket, obj))).toBe('ok');
    // S3's rule (AWS, radosgw): a missing object is "not found" only to keys that may list the
    // bucket with no prefix; to keys whose listing is limited to prefixes it is "denied". A
    // list with the object's own name as the prefix is allowed and tells the two apart.
    expect(await outcome(a.statObject(bucket, obj))).toBe('AccessDenied');
    expect(await list(a, bucket, obj)).toEqual([]);

    // A multipart upload as the engine does it: parts, their list, abort; then one completed.
    const big = `${prefix}pools/a/images/big.qcow2`;
    const uploadId = await a.initiateNewMultipartUpload(bucket, big, {});
    const part = await a.uploadPart({ bucketName: bucket, objectName: big, uploadID: encodeURIComponent(uploadId), partNumber: 1, headers: {} }, Buffer.alloc(5 * MiB, 1));
    expect(part.etag).toBeTruthy();
    // ListParts of its own upload (protected in the client's types).
    const listParts = (a as unknown as { listParts(b: string, o: string, id: string): Promise<Array<{ part: number }>> }).listParts.bind(a);
    expect((await listParts(bucket, big, uploadId)).map((p) => p.part)).toEqual([1]);
    expect(await outcome(a.abortMultipartUpload(bucket, big, uploadId))).toBe('ok');

    // The engine's own store, on pool a's namespace with pool a's keys: a file over the
    // multipart threshold goes up in parts and comes back whole.
    const store = new SharedStore(s3ConfigFrom(`s3://${bucket}/${prefix}pools/a`, { ...rgw.env, S3_ACCESS_KEY: keys.a!.accessKey, S3_SECRET_KEY: keys.a!.secretKey }), {
      multipart: { threshold: 6 * MiB, partSize: 5 * MiB },
      retry: { tries: 1 },
    });
    try {
      const file = path.join(tmp, 'image.bin');
      await writeFile(file, randomBytes(11 * MiB));
      expect(await store.putFile('images/top.qcow2', file)).toBe(11 * MiB);
      const back = await store.getFile('images/top.qcow2', path.join(tmp, 'back.bin'));
      expect(back?.size).toBe(11 * MiB);
      expect(await store.listRecords('images/')).toEqual([expect.objectContaining({ rel: 'images/top.qcow2', size: 11 * MiB })]);
    } finally {
      store.close();
    }
  });

  it("pool a's keys read and list the trusted pool platform, and cannot write there", async () => {
    const a = clients.a!;
    expect(await readAll(a, bucket, `${prefix}pools/platform/layers/seed.json`)).toBe('{"pool":"platform"}');
    expect(await list(a, bucket, `${prefix}pools/platform/`)).toEqual([`${prefix}pools/platform/layers/seed.json`]);
    // A miss there answers as in its own namespace (denied, see above), and the list of its name
    // says it is a miss (empty), where in an untrusted pool the list is refused too.
    const missing = `${prefix}pools/platform/layers/missing.json`;
    expect(await outcome(a.statObject(bucket, missing))).toBe('AccessDenied');
    expect(await outcome(readAll(a, bucket, missing))).toBe('AccessDenied');
    expect(await list(a, bucket, missing)).toEqual([]);
    expect(await list(a, bucket, `${prefix}pools/platform/layers/seed.json`)).toEqual([`${prefix}pools/platform/layers/seed.json`]);
    expect(await outcome(list(a, bucket, `${prefix}pools/b/layers/missing.json`))).toBe('AccessDenied');
    expect(await outcome(a.putObject(bucket, `${prefix}pools/platform/layers/evil.json`, 'x'))).toBe('AccessDenied');
    expect(await outcome(a.removeObject(bucket, `${prefix}pools/platform/layers/seed.json`))).toBe('AccessDenied');
    expect(await outcome(a.initiateNewMultipartUpload(bucket, `${prefix}pools/platform/images/evil.qcow2`, {}))).toBe('AccessDenied');
    expect(await readAll(clients.platform!, bucket, `${prefix}pools/platform/layers/seed.json`)).toBe('{"pool":"platform"}');
    // Through the engine's store too: a trusted pool's lookups answer.
    const trusted = new SharedStore(s3ConfigFrom(`s3://${bucket}/${prefix}pools/platform`, { ...rgw.env, S3_ACCESS_KEY: keys.a!.accessKey, S3_SECRET_KEY: keys.a!.secretKey }), { retry: { tries: 1 } });
    try {
      await expect(trusted.listRecords('layers/')).resolves.toEqual([expect.objectContaining({ rel: 'layers/seed.json' })]);
      await expect(trusted.putJson('uses/evil.json', {})).rejects.toThrow(/AccessDenied|Access Denied/);
    } finally {
      trusted.close();
    }
  });

  it("pool a's keys cannot touch pool b, builds/, teams/, PREFIX or the bucket's root", async () => {
    const a = clients.a!;
    const denied = {
      'get pools/b': await outcome(readAll(a, bucket, `${prefix}pools/b/layers/seed.json`)),
      'stat pools/b': await outcome(a.statObject(bucket, `${prefix}pools/b/layers/seed.json`)),
      'put pools/b': await outcome(a.putObject(bucket, `${prefix}pools/b/layers/evil.json`, 'x')),
      'delete pools/b': await outcome(a.removeObject(bucket, `${prefix}pools/b/layers/seed.json`)),
      'list pools/b': await outcome(list(a, bucket, `${prefix}pools/b/`)),
      'get builds/': await outcome(readAll(a, bucket, `${prefix}builds/b1.json`)),
      'put builds/': await outcome(a.putObject(bucket, `${prefix}builds/forged.json`, '{}')),
      'list builds/': await outcome(list(a, bucket, `${prefix}builds/`)),
      'get teams/': await outcome(readAll(a, bucket, `${prefix}teams/web/index.json`)),
      'put PREFIX': await outcome(a.putObject(bucket, `${prefix}layers/evil.json`, 'x')),
      'list PREFIX': await outcome(list(a, bucket, prefix)),
      'list pools/': await outcome(list(a, bucket, `${prefix}pools/`, false)),
      'list pools/a without its slash': await outcome(list(a, bucket, `${prefix}pools/a`)),
      'list the root': await outcome(list(a, bucket, '', false)),
      'get outside PREFIX': await outcome(readAll(a, bucket, 'elsewhere/x')),
      'put outside PREFIX': await outcome(a.putObject(bucket, 'elsewhere/evil', 'x')),
      'list uploads': await outcome(a.listIncompleteUploadsQuery(bucket, `${prefix}pools/a/`, '', '', '')),
      'bucket policy': await outcome(a.getBucketPolicy(bucket)),
    };
    expect(Object.entries(denied).filter(([, r]) => r !== 'AccessDenied' && r !== 'Forbidden')).toEqual([]);
    // The refused stat of a HEAD carries no body: the minio client names it by its status.
    expect(denied['stat pools/b']).toMatch(/AccessDenied|Forbidden/);
    // Nothing of pool b was changed.
    expect(await readAll(clients.b!, bucket, `${prefix}pools/b/layers/seed.json`)).toBe('{"pool":"b"}');
    expect(await outcome(clients.scheduler!.statObject(bucket, `${prefix}pools/b/layers/evil.json`))).toBe('NotFound');
  });

  it('pool b reads platform but not a; platform, which trusts no pool, reads neither', async () => {
    const { b, platform } = clients;
    expect(await readAll(b!, bucket, `${prefix}pools/platform/layers/seed.json`)).toBe('{"pool":"platform"}');
    expect(await outcome(readAll(b!, bucket, `${prefix}pools/a/layers/seed.json`))).toBe('AccessDenied');
    expect(await outcome(list(b!, bucket, `${prefix}pools/a/`))).toBe('AccessDenied');
    expect(await outcome(b!.putObject(bucket, `${prefix}pools/b/layers/k.json`, '{}'))).toBe('ok');
    for (const other of ['a', 'b']) {
      expect(await outcome(readAll(platform!, bucket, `${prefix}pools/${other}/layers/seed.json`))).toBe('AccessDenied');
      expect(await outcome(platform!.putObject(bucket, `${prefix}pools/${other}/layers/evil.json`, 'x'))).toBe('AccessDenied');
    }
    expect(await outcome(platform!.putObject(bucket, `${prefix}pools/platform/layers/k.json`, '{}'))).toBe('ok');
  });

  it("the scheduler's keys read and write every pool, builds/ and teams/, and nothing outside PREFIX", async () => {
    const s = clients.scheduler!;
    for (const pool of Object.keys(pools)) {
      expect(await readAll(s, bucket, `${prefix}pools/${pool}/layers/seed.json`)).toBe(`{"pool":"${pool}"}`);
      expect(await outcome(s.putObject(bucket, `${prefix}pools/${pool}/projects/p.tar.gz`, 'tar'))).toBe('ok');
      expect(await outcome(s.removeObject(bucket, `${prefix}pools/${pool}/projects/p.tar.gz`))).toBe('ok');
    }
    expect(await readAll(s, bucket, `${prefix}builds/b1.json`)).toBe('{"build":"b1"}');
    expect(await outcome(s.putObject(bucket, `${prefix}teams/web/index.json`, '["b1"]'))).toBe('ok');
    const all = await list(s, bucket, prefix);
    expect(all).toEqual(expect.arrayContaining([`${prefix}builds/b1.json`, `${prefix}pools/a/layers/seed.json`, `${prefix}pools/b/layers/seed.json`, `${prefix}pools/platform/layers/seed.json`]));
    expect(await outcome(s.bucketExists(bucket))).toBe('ok');
    expect(await outcome(s.listIncompleteUploadsQuery(bucket, prefix, '', '', ''))).toBe('ok');
    // gc --shared: an upload left by a worker is aborted by the scheduler's keys.
    const left = `${prefix}pools/a/images/left.qcow2`;
    const id = await clients.a!.initiateNewMultipartUpload(bucket, left, {});
    expect(await outcome(s.abortMultipartUpload(bucket, left, id))).toBe('ok');
    expect(await outcome(readAll(s, bucket, 'elsewhere/x'))).toBe('AccessDenied');
    expect(await outcome(s.putObject(bucket, 'elsewhere/evil', 'x'))).toBe('AccessDenied');
  });

  // The engine's lookups with a pool's keys (libs/fleet PoolStores, as a worker makes them):
  // radosgw (like AWS S3) answers a prefix-limited key's GET of a missing object with
  // AccessDenied; the shared store then lists the object's own name (allowed) and takes an
  // empty listing for a miss. A real refusal stays one (the next test's stranger).
  it("a worker's lookup of a missing layer with its pool's keys is a miss, not an error", async () => {
    const view = new PoolStores('a', s3ConfigFrom(`s3://${bucket}/${prefix.replace(/\/$/, '')}`, { ...rgw.env, S3_ACCESS_KEY: keys.a!.accessKey, S3_SECRET_KEY: keys.a!.secretKey }), ['platform'], { retry: { tries: 1 } });
    try {
      expect(await view.find('2'.repeat(64))).toBeNull();
    } finally {
      view.close();
    }
  });

  it('keys of a user the policy does not name are refused everywhere', async () => {
    await addUser('stranger');
    const x = clients.stranger!;
    expect(await outcome(readAll(x, bucket, `${prefix}pools/platform/layers/seed.json`))).toBe('AccessDenied');
    expect(await outcome(x.putObject(bucket, `${prefix}pools/a/layers/evil.json`, 'x'))).toBe('AccessDenied');
    expect(await outcome(list(x, bucket, `${prefix}pools/a/`))).toBe('AccessDenied');
  });

  it('pool default (the old list form) has the old layout under PREFIX, and no builds/', async () => {
    const legacy = await applyPolicy(JSON.stringify([{ team: 'dev', tokenSha256: 'f'.repeat(64) }]), 's3://vmlb-legacy/old');
    expect(Object.keys(legacy.pools)).toEqual(['default']);
    const d = clients.default!;
    for (const dir of ['layers', 'images', 'projects', 'uses', 'logs']) {
      expect(await outcome(d.putObject(legacy.bucket, `old/${dir}/x`, 'x')), dir).toBe('ok');
      expect(await readAll(d, legacy.bucket, `old/${dir}/x`)).toBe('x');
    }
    expect(await list(d, legacy.bucket, 'old/layers/')).toEqual(['old/layers/x']);
    expect(await outcome(d.putObject(legacy.bucket, 'old/builds/forged.json', '{}'))).toBe('AccessDenied');
    expect(await outcome(d.putObject(legacy.bucket, 'old/pools/a/layers/x', 'x'))).toBe('AccessDenied');
    expect(await outcome(list(d, legacy.bucket, 'old/'))).toBe('AccessDenied');
    // The default pool's keys reach nothing of the other bucket's pools either.
    expect(await outcome(readAll(d, bucket, `${prefix}pools/a/layers/seed.json`))).toBe('AccessDenied');
  });
});

describe('Redis: the deploy ACL (default user off, scheduler and worker users)', () => {
  let redis: RedisServer;
  const pw = { scheduler: `s${randomBytes(16).toString('hex')}`, worker: `w${randomBytes(16).toString('hex')}`, admin: randomBytes(16).toString('hex') };
  /** What ACL LOG holds (refused commands, keys, channels, logins), as `user: reason object`. */
  const aclLog = async (): Promise<string[]> => {
    const a = connect(url('test-admin', pw.admin));
    const entries = (await a.call('ACL', 'LOG', '1000')) as unknown[][];
    await a.call('ACL', 'LOG', 'RESET');
    return entries.map((e) => {
      const f: Record<string, unknown> = {};
      for (let i = 0; i < e.length; i += 2) f[String(e[i])] = e[i + 1];
      return `${f.username}: ${f.reason} ${f.object} (${f.context})`;
    });
  };
  const url = (user: string, password: string) => `redis://${user}:${password}@127.0.0.1:${redis.port}`;
  const conns: Redis[] = [];
  const connect = (u: string, opts: { maxRetriesPerRequest?: number | null; enableReadyCheck?: boolean } = {}) => {
    const r = new Redis(u, { maxRetriesPerRequest: null, lazyConnect: true, retryStrategy: () => null, ...opts });
    conns.push(r);
    return r;
  };
  const denied = async (p: Promise<unknown>) => {
    try {
      await p;
      return 'ok';
    } catch (e) {
      return (e as Error).message;
    }
  };

  beforeAll(async () => {
    const acl = path.join(tmp, 'users.acl');
    const r = await execa('sh', [path.join(DEPLOY, 'redis/render-acl.sh'), path.join(DEPLOY, 'redis/users.acl'), acl], {
      env: { REDIS_SCHEDULER_PASSWORD: pw.scheduler, REDIS_WORKER_PASSWORD: pw.worker },
      reject: false,
    });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    // A user of this test only, to read ACL LOG: what the deploy's users were refused.
    await writeFile(acl, `${await readFile(acl, 'utf8')}user test-admin on >${pw.admin} ~* &* +@all\n`);
    // Always a server of this file's own: an external REDIS_URL would not run this ACL.
    const external = process.env.REDIS_URL;
    delete process.env.REDIS_URL;
    try {
      // DEBUG allowed by the server, so that it is the ACL that refuses it below.
      redis = await startRedis({ args: ['--aclfile', acl, '--enable-debug-command', 'yes'] });
    } finally {
      if (external !== undefined) process.env.REDIS_URL = external;
    }
  });
  afterAll(async () => {
    for (const c of conns) c.disconnect();
    await redis?.close();
  });

  it('render-acl.sh refuses a missing, short or URL-unsafe password', async () => {
    const render = (env: Record<string, string>) =>
      execa('sh', [path.join(DEPLOY, 'redis/render-acl.sh'), path.join(DEPLOY, 'redis/users.acl'), path.join(tmp, 'bad.acl')], { env, extendEnv: false, reject: false });
    const missing = await render({ PATH: process.env.PATH!, REDIS_SCHEDULER_PASSWORD: pw.scheduler });
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toMatch(/REDIS_WORKER_PASSWORD is not set/);
    expect((await render({ PATH: process.env.PATH!, REDIS_SCHEDULER_PASSWORD: 'short', REDIS_WORKER_PASSWORD: pw.worker })).stderr).toMatch(/at least 16/);
    expect((await render({ PATH: process.env.PATH!, REDIS_SCHEDULER_PASSWORD: `${pw.scheduler}@x`, REDIS_WORKER_PASSWORD: pw.worker })).stderr).toMatch(/letters, digits/);
  });

  it('a client without credentials is refused (NOAUTH); the default user cannot log in; a wrong password neither', async () => {
    // A plain client speaking RESP, as anything on the network could.
    const sock = createConnection({ host: '127.0.0.1', port: redis.port });
    let buf = '';
    sock.on('data', (d) => (buf += d.toString()));
    const send = async (...args: string[]) => {
      buf = '';
      sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
      for (let i = 0; i < 200 && !buf.endsWith('\r\n'); i++) await new Promise((r) => setTimeout(r, 10));
      return buf.trim();
    };
    try {
      await once(sock, 'connect');
      expect(await send('PING')).toMatch(/^-NOAUTH /);
      expect(await send('SET', 'vmlb:x', '1')).toMatch(/^-NOAUTH /);
      expect(await send('HELLO', '3')).toMatch(/^-NOAUTH /);
      expect(await send('AUTH', 'default', 'anything')).toMatch(/^-WRONGPASS /);
      expect(await send('AUTH', 'anything')).toMatch(/^-WRONGPASS /);
      expect(await send('AUTH', 'worker', 'not-the-password')).toMatch(/^-WRONGPASS /);
      expect(await send('PING')).toMatch(/^-NOAUTH /);
      expect(await send('AUTH', 'worker', pw.worker)).toBe('+OK');
      expect(await send('PING')).toBe('+PONG');
    } finally {
      sock.destroy();
    }
    // The ioredis URL form of the default user (redis://:PASSWORD@host) fails on connect.
    const legacy = connect(`redis://:${pw.worker}@127.0.0.1:${redis.port}`, { maxRetriesPerRequest: 0 });
    const errors: string[] = [];
    legacy.on('error', (e: Error) => errors.push(e.message));
    await legacy.connect().catch(() => {});
    expect(errors.join('\n')).toMatch(/WRONGPASS/);
  });

  it('redis://USER:PASSWORD@host logs in as that user (ioredis)', async () => {
    for (const user of ['scheduler', 'worker'] as const) {
      const c = connect(url(user, pw[user]));
      await c.connect();
      expect(await c.call('ACL', 'WHOAMI')).toBe(user);
      expect(await c.ping()).toBe('PONG');
    }
  });

  it('a BullMQ flow submitted as the scheduler runs on Workers connected as the worker', async () => {
    await aclLog();
    const sched = connect(url('scheduler', pw.scheduler));
    const flows = new FlowProducer({ connection: sched });
    const layersQ = 'vmlb-layers-a';
    const flattenQ = 'vmlb-flatten-a';
    const workerConn = () => ({ url: url('worker', pw.worker) });
    const ran: string[] = [];
    const workerOpts = { connection: new Redis(url('worker', pw.worker), { maxRetriesPerRequest: null }), stalledInterval: 1000, lockDuration: 2000 };
    conns.push(workerOpts.connection);
    const layers = new Worker(layersQ, async (job) => {
      ran.push(job.name);
      await job.updateProgress(50);
      await job.log(`built ${job.name}`);
      return { key: job.data.key };
    }, workerOpts);
    const flatten = new Worker(flattenQ, async (job) => {
      ran.push(job.name);
      const children = await job.getChildrenValues();
      return { keys: Object.values(children).map((v) => (v as { key: string }).key) };
    }, { ...workerOpts, connection: new Redis(url('worker', pw.worker), { maxRetriesPerRequest: null }) });
    conns.push(flatten.opts.connection as Redis);
    const events = new QueueEvents(flattenQ, { connection: { ...workerConn(), maxRetriesPerRequest: null } });
    try {
      await Promise.all([layers.waitUntilReady(), flatten.waitUntilReady(), events.waitUntilReady()]);
      const tree = await flows.add({
        name: 'flatten',
        queueName: flattenQ,
        opts: { jobId: 'b1-flatten' },
        children: [{ name: 'layer-1', queueName: layersQ, data: { key: 'k1' }, opts: { jobId: 'b1-1', failParentOnFailure: true } }],
      });
      const result = await tree.job.waitUntilFinished(events, 30_000);
      expect(result).toEqual({ keys: ['k1'] });
      expect(ran).toEqual(['layer-1', 'flatten']);
      // The scheduler reads the queue's state back.
      const q = new Queue(layersQ, { connection: sched });
      expect((await q.getJob('b1-1'))?.returnvalue).toEqual({ key: 'k1' });
      expect(await q.getJobCounts('completed')).toEqual({ completed: 1 });
      expect((await q.getJobLogs('b1-1')).logs).toEqual(['built layer-1']);
      await q.close();
    } finally {
      await Promise.all([layers.close(), flatten.close(), events.close(), flows.close()]);
    }
    // Nothing BullMQ or ioredis sent was refused, not even what they would have swallowed.
    expect(await aclLog()).toEqual([]);
  });

  it("the worker's user runs the fleet's own commands on vmlb:* keys and channels", async () => {
    const w = connect(url('worker', pw.worker));
    const sub = connect(url('worker', pw.worker));
    // A claim (SET NX PX), taken over by a Lua script as claims.ts does.
    expect(await w.set('vmlb:claim:k1', 'worker-1', 'PX', 60_000, 'NX')).toBe('OK');
    expect(await w.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0", 1, 'vmlb:claim:k1', 'worker-1', '1000')).toBe(1);
    // The layer-ready channel.
    const got = new Promise<string>((resolve) => sub.on('message', (_c: string, m: string) => resolve(m)));
    await sub.subscribe('vmlb:layer-ready');
    expect(await w.publish('vmlb:layer-ready', 'k1')).toBe(1);
    expect(await got).toBe('k1');
    // A build's event stream, the worker registry, the team cap, the log budget.
    await w.xadd('vmlb:events:b1', 'MAXLEN', '~', '1000', '*', 'type', 'layer-done');
    expect(((await w.xread('COUNT', 10, 'STREAMS', 'vmlb:events:b1', '0')) ?? []).length).toBe(1);
    await w.set('vmlb:worker:w1', '{}', 'EX', 30);
    await w.hset('vmlb:workers-seen', 'w1', '{}');
    expect((await w.scan('0', 'MATCH', 'vmlb:worker:*', 'COUNT', 100))[1]).toContain('vmlb:worker:w1');
    await w.zadd('vmlb:team-running:web', Date.now(), 'job1');
    expect(await w.incrby('vmlb:log-budget:b1', 10)).toBe(10);
    expect(await w.get('vmlb:pool:a')).toBeNull();
    expect(await aclLog()).toEqual([]);
  });

  it('both users are refused dangerous commands and keys outside bull:* and vmlb:*', async () => {
    for (const user of ['scheduler', 'worker'] as const) {
      const c = connect(url(user, pw[user]), { maxRetriesPerRequest: 0 });
      await c.connect();
      const refused = {
        FLUSHALL: await denied(c.flushall()),
        FLUSHDB: await denied(c.flushdb()),
        'CONFIG GET': await denied(c.config('GET', 'requirepass')),
        'CONFIG SET': await denied(c.config('SET', 'appendonly', 'no')),
        KEYS: await denied(c.keys('*')),
        'ACL LIST': await denied(c.call('ACL', 'LIST')),
        'ACL SETUSER': await denied(c.call('ACL', 'SETUSER', 'default', 'on', 'nopass', '+@all')),
        DEBUG: await denied(c.call('DEBUG', 'SLEEP', '0')),
        SHUTDOWN: await denied(c.call('SHUTDOWN', 'NOSAVE')),
        MONITOR: await denied(c.call('MONITOR')),
        'CLIENT KILL': await denied(c.call('CLIENT', 'KILL', 'TYPE', 'normal')),
        'CLIENT LIST': await denied(c.call('CLIENT', 'LIST')),
        'SCRIPT FLUSH': await denied(c.call('SCRIPT', 'FLUSH')),
        'FUNCTION FLUSH': await denied(c.call('FUNCTION', 'FLUSH')),
        REPLICAOF: await denied(c.call('REPLICAOF', '127.0.0.1', '1')),
        SAVE: await denied(c.call('SAVE')),
        MODULE: await denied(c.call('MODULE', 'LIST')),
        'SET other': await denied(c.set('other:key', '1')),
        'GET other': await denied(c.get('session:1')),
        'EVAL on other': await denied(c.eval("return redis.call('SET', 'other', '1')", 0)),
        'PUBLISH other': await denied(c.publish('other', 'x')),
      };
      // A script touching a key outside the user's patterns is refused by the script's own ACL check.
      expect(Object.entries(refused).filter(([, r]) => !/^NOPERM |can't access at least one of the keys/.test(r)), user).toEqual([]);
      expect(await c.ping()).toBe('PONG');
    }
    // And Redis logged each refusal, by user (the log the two checks above find empty).
    const log = await aclLog();
    expect(log).toEqual(expect.arrayContaining(['scheduler: command flushall (toplevel)', 'worker: command config|get (toplevel)', 'worker: key other:key (toplevel)']));
    // Redis is still whole and as configured.
    const w = connect(url('worker', pw.worker));
    expect(await w.get('vmlb:log-budget:b1')).toBe('10');
  });
});

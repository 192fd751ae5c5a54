/**
 * The scheduler against a real redis-server and S3 test server, s3rver or radosgw
 * (test/helpers/redis-server.ts,
 * s3-server.ts), started in this process: team tokens, upload validation, planning into a
 * BullMQ flow (with a hit taken from the shared store, put there by a local
 * `vmlb build --cache`), build records folded from the event stream, server-sent events,
 * `vmlb submit`/`pull`/`builds`/`cancel` through the CLI, cancel, restart, /healthz, /metrics.
 *
 * Workers are stood in for by small BullMQ workers in this file that append the events a real
 * worker would: the real ones run in test/fleet.test.ts.
 */
import { UnrecoverableError, Queue, Worker, type Job } from 'bullmq';
import { Client } from 'minio';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { gunzipSync, gzipSync } from 'node:zlib';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  FLATTEN_QUEUE,
  LAYER_QUEUE,
  LayerJobData,
  FlattenJobData,
  appendEvent,
  flattenJobId,
  layerJobId,
  redisConnection,
  redisKeys,
  removeRegistration,
  storePaths,
  writeRegistration,
  type BuildRecord,
  type FleetEvent,
} from '../libs/fleet/src/index.js';
import { s3ConfigFrom, SharedStore } from '../libs/layer-engine/src/index.js';
import type { RedisServer } from './helpers/redis-server.js';
import type { S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, spawnVmlb, vmlb, writeProject, type LayerDef, type Sandbox } from './helpers/vmlb.js';
import { startFleetServices, type FleetServices } from './helpers/fleet-services.js';
import { BuildHistory } from '../apps/scheduler/src/build-history.js';
import { testDatabaseUrl } from './helpers/postgres.js';
import { freePort } from './helpers/redis-server.js';
import {
  MINIMAL_LAYER,
  TOKENS,
  apiFor,
  readEvents,
  startScheduler,
  tarGz,
  waitFor,
  type RunningScheduler,
} from './helpers/fleet-api.js';


let services: FleetServices;
let sb: Sandbox;
let redis: RedisServer;
let s3: S3Server;
let env: Record<string, string>;
let sched: RunningScheduler;
let workDir: string;
let conn: ReturnType<typeof redisConnection>;
let queues: { layers: Queue; flatten: Queue };
let shared: SharedStore;
/** The schedulers' build history (PostgreSQL), read directly. */
let history: BuildHistory;
let raw: Client;
let prefix: string;
let bucket: string;

const api = apiFor(() => sched.url, TOKENS.web);
const cli = (args: string[], token: string = TOKENS.web) => vmlb(sb, args, { VMLB_SERVER: sched.url, VMLB_TOKEN: token });

beforeAll(async () => {
  services = await startFleetServices('scheduler', { env: { VMLB_MAX_UPLOAD: '256K' } });
  ({ sb, redis, s3, env } = services);
  const { sharedUrl } = services;
  workDir = path.join(sb.dir, 'scheduler-work');
  await mkdir(workDir, { recursive: true });
  sched = await startScheduler(env, { workDir });
  conn = redisConnection(redis.url, 'scheduler-test');
  queues = { layers: new Queue(LAYER_QUEUE, { connection: conn }), flatten: new Queue(FLATTEN_QUEUE, { connection: conn }) };
  const c = s3ConfigFrom(sharedUrl, env);
  prefix = c.prefix;
  bucket = c.bucket;
  shared = new SharedStore(c);
  history = await BuildHistory.open(await testDatabaseUrl(sharedUrl));
  raw = new Client({ endPoint: c.host, port: c.port, useSSL: c.useSSL, accessKey: c.accessKey, secretKey: c.secretKey, region: c.region, pathStyle: true });
});

afterEach(async (ctx) => {
  if (ctx.task.result?.state === 'fail') console.error(`scheduler log:\n${sched.log.lines.slice(-40).join('\n')}`);
  // Nothing of an upload stays behind, accepted or refused.
  expect(await readdir(workDir).then((f) => f.filter((n) => n !== 'no-local-store'))).toEqual([]);
});

afterAll(async () => {
  await sched?.close();
  await queues?.layers.close();
  await queues?.flatten.close();
  conn?.disconnect();
  shared?.close();
  await history?.close();
  await services?.close();
});

// ---- helpers ----

async function objectNames(under = ''): Promise<string[]> {
  const names: string[] = [];
  for await (const item of raw.listObjectsV2(bucket, `${prefix}${under}`, true)) names.push((item as { name: string }).name.slice(prefix.length));
  return names.sort();
}

async function objectSha256(rel: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of await raw.getObject(bucket, `${prefix}${rel}`)) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function emptyQueues(): Promise<void> {
  await queues.layers.obliterate({ force: true });
  await queues.flatten.obliterate({ force: true });
}

async function submit(body: Buffer, token: string = TOKENS.web): Promise<BuildRecord> {
  // These tests play the workers' part with fake images: the builds make a flattened image.
  const r = await api.json<BuildRecord>('POST', '/v1/builds?flatten=1', { body, token });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body;
}

const smallProject = (marker: string) => tarGz([MINIMAL_LAYER, { name: '02_app/build-layer', content: `#!/bin/sh\necho ${marker}\n` }]);

const ev = {
  job: (index: number, status: Extract<FleetEvent, { type: 'job' }>['status'], extra: object = {}): FleetEvent => ({ type: 'job', at: Date.now(), index, status, worker: 'fake-worker', ...extra }),
  log: (index: number, name: string, chunk: string): FleetEvent => ({ type: 'engine', at: Date.now(), index, worker: 'fake-worker', event: { type: 'layer-log', at: Date.now(), index, name, chunk } }),
};

/** Puts a small stand-in image for a chain's top key, as a flatten worker would (image, then its manifest). */
async function putFakeImage(top: string, content: Buffer): Promise<{ key: string; path: string; bytes: number }> {
  const file = path.join(sb.dir, `img-${randomBytes(3).toString('hex')}`);
  await writeFile(file, content);
  const rel = storePaths.image(top);
  await shared.putFile(rel, file);
  await shared.putJson(rel.replace(/\.qcow2$/, '.json'), { version: 1, key: top, chain: [top], bytes: content.length, sha256: createHash('sha256').update(content).digest('hex') });
  return { key: top, path: rel, bytes: content.length };
}

/**
 * Stand-in workers: each layer job appends what a worker appends (building, a log line, done or
 * failed) and the flatten job writes a fake image. `fail` names layers whose script "fails".
 */
function fakeWorkers(o: { fail?: string[]; image?: Buffer; onLayer?: (job: Job) => Promise<void> } = {}): { ready: Promise<void>; close(): Promise<void> } {
  const connections = [redisConnection(redis.url, 'fake-layer-worker'), redisConnection(redis.url, 'fake-flatten-worker')];
  const layer = new Worker(
    LAYER_QUEUE,
    async (job: Job) => {
      const d = LayerJobData.parse(job.data);
      await appendEvent(conn, d.buildId, ev.job(d.index, 'building'));
      await o.onLayer?.(job);
      await appendEvent(conn, d.buildId, ev.log(d.index, d.name, `building ${d.name}\n`));
      if (o.fail?.includes(d.name)) {
        await appendEvent(conn, d.buildId, ev.job(d.index, 'failed', { exitCode: 7, logTail: 'it went wrong', message: `layer ${d.name} exited with status 7` }));
        throw new UnrecoverableError(`layer ${d.name} exited with status 7`);
      }
      await appendEvent(conn, d.buildId, ev.job(d.index, 'done', { seconds: 0.5, bytes: 4096 }));
      return { key: d.key };
    },
    { connection: connections[0]! },
  );
  // Registered as a live worker of pool default would be (else each build says no worker is live).
  const fakeId = `fake-worker-${randomBytes(3).toString('hex')}`;
  const now = new Date().toISOString();
  const registered = writeRegistration(conn, { id: fakeId, host: 'test', pid: process.pid, backend: 'fuse', pool: 'default', slots: 2, busy: 0, cachedBytes: 0, version: 'test', startedAt: now, lastHeartbeat: now, state: 'running' }, 600_000);
  const flatten = new Worker(
    FLATTEN_QUEUE,
    async (job: Job) => {
      const d = FlattenJobData.parse(job.data);
      const top = d.chain[d.chain.length - 1]!;
      await appendEvent(conn, d.buildId, { type: 'flatten', at: Date.now(), status: 'building', worker: 'fake-worker' });
      const image = await putFakeImage(top, o.image ?? Buffer.from(`image of ${top}\n`));
      await appendEvent(conn, d.buildId, { type: 'flatten', at: Date.now(), status: 'done', worker: 'fake-worker', image });
      return { image };
    },
    { connection: connections[1]! },
  );
  return {
    ready: registered,
    async close() {
      await removeRegistration(conn, fakeId);
      await layer.close(true);
      await flatten.close(true);
      for (const c of connections) c.disconnect();
    },
  };
}

async function record(id: string): Promise<BuildRecord> {
  const r = await api.json<BuildRecord>('GET', `/v1/builds/${id}`);
  expect(r.status).toBe(200);
  return r.body;
}

// ---- tests ----

describe('team tokens', () => {
  it('answers 401 without a token or with a wrong one, and lets /healthz and /metrics through', async () => {
    const none = await api('GET', '/v1/builds', { token: null });
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect((await api.json('GET', '/v1/builds', { token: null })).body.error.code).toBe('UNAUTHORIZED');
    expect((await api('GET', '/v1/builds', { token: 'not-a-token' })).status).toBe(401);
    expect((await api('GET', '/v1/builds', { headers: { authorization: `Basic ${TOKENS.web}` }, token: null })).status).toBe(401);
    // An upload without a token is refused before its body is read.
    expect((await api('POST', '/v1/builds', { token: null, body: await smallProject('x') })).status).toBe(401);
    expect((await api('GET', '/healthz', { token: null })).status).toBe(200);
    expect((await api('GET', '/metrics', { token: null })).status).toBe(200);
  });

  it('shows a team only its own builds (another team\'s is 404), and an admin all of them', async () => {
    const b = await submit(await smallProject('teams'));
    expect(b.team).toBe('web');
    expect((await api('GET', `/v1/builds/${b.id}`, { token: TOKENS.data })).status).toBe(404);
    expect((await api('GET', `/v1/builds/${b.id}/events`, { token: TOKENS.data })).status).toBe(404);
    expect((await api('GET', `/v1/builds/${b.id}/image`, { token: TOKENS.data })).status).toBe(404);
    const cancel = await api.json('POST', `/v1/builds/${b.id}/cancel`, { token: TOKENS.data });
    expect(cancel.status).toBe(404);
    expect(cancel.body.error.message).toBe(`there is no build ${b.id}`);
    // The same answer as for a build that does not exist at all.
    expect((await api.json('GET', '/v1/builds/b000000000000', { token: TOKENS.data })).body.error.message).toBe('there is no build b000000000000');

    const mine = await api.json<{ builds: Array<{ id: string; team: string }> }>('GET', '/v1/builds');
    expect(mine.body.builds.map((x) => x.id)).toContain(b.id);
    expect(new Set(mine.body.builds.map((x) => x.team))).toEqual(new Set(['web']));
    const theirs = await api.json<{ builds: Array<{ id: string }> }>('GET', '/v1/builds', { token: TOKENS.data });
    expect(theirs.body.builds.map((x) => x.id)).not.toContain(b.id);
    expect((await api('GET', '/v1/builds?team=web', { token: TOKENS.data })).status).toBe(403);

    expect((await api('GET', `/v1/builds/${b.id}`, { token: TOKENS.ops })).status).toBe(200);
    const all = await api.json<{ builds: Array<{ id: string }> }>('GET', '/v1/builds', { token: TOKENS.ops });
    expect(all.body.builds.map((x) => x.id)).toContain(b.id);
    const webOnly = await api.json<{ builds: Array<{ id: string; team: string }> }>('GET', '/v1/builds?team=web&state=queued', { token: TOKENS.ops });
    expect(webOnly.body.builds.map((x) => x.id)).toContain(b.id);
    expect((await api.json('GET', '/v1/builds?state=done', { token: TOKENS.ops })).body.builds.map((x: { id: string }) => x.id)).not.toContain(b.id);
    await emptyQueues();
  });
});

describe('an uploaded project is untrusted', () => {
  const refusals: Array<[string, () => Promise<Buffer>, string]> = [
    ['an absolute path', () => tarGz([MINIMAL_LAYER, { name: '/etc/cron.d/evil', content: 'x' }]), '/etc/cron.d/evil'],
    ['a climb out with ..', () => tarGz([MINIMAL_LAYER, { name: '01_base/../../evil', content: 'x' }]), '01_base/../../evil'],
    ['a device node', () => tarGz([MINIMAL_LAYER, { name: '01_base/null', type: 'character-device' }]), '01_base/null'],
    ['a block device', () => tarGz([MINIMAL_LAYER, { name: '01_base/disk', type: 'block-device' }]), '01_base/disk'],
    ['a FIFO', () => tarGz([MINIMAL_LAYER, { name: '01_base/pipe', type: 'fifo' }]), '01_base/pipe'],
    ['a symlink out of the project', () => tarGz([MINIMAL_LAYER, { name: '01_base/passwd', type: 'symlink', linkname: '../../etc/passwd' }]), '01_base/passwd'],
    ['an absolute symlink', () => tarGz([MINIMAL_LAYER, { name: '01_base/passwd', type: 'symlink', linkname: '/etc/passwd' }]), '01_base/passwd'],
    [
      'a symlink that escapes through another symlink',
      () => tarGz([MINIMAL_LAYER, { name: '01_base/here', type: 'symlink', linkname: '.' }, { name: '01_base/up', type: 'symlink', linkname: 'here/here/../..' }]),
      '01_base/up',
    ],
    ['a file written through a symlink', () => tarGz([MINIMAL_LAYER, { name: '01_base/d', type: 'symlink', linkname: '.' }, { name: '01_base/d/x', content: 'x' }]), '01_base/d/x'],
    ['a hard link to outside', () => tarGz([MINIMAL_LAYER, { name: '01_base/h', type: 'link', linkname: '../../etc/shadow' }]), '01_base/h'],
  ];

  it.each(refusals)('refuses %s with the entry named, and stores nothing', async (_what, make, entry) => {
    const before = await objectNames();
    const r = await api.json('POST', '/v1/builds', { body: await make() });
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe('UNSAFE_ENTRY');
    expect(r.body.error.entry).toBe(entry);
    expect(r.body.error.message).toContain(`"${entry}"`);
    expect(await objectNames()).toEqual(before);
    expect(await queues.layers.getJobCounts()).toMatchObject({ waiting: 0, 'waiting-children': 0 });
  });

  it('refuses an upload over the size cap with 413, and stores nothing', async () => {
    const before = await objectNames();
    const big = await tarGz([MINIMAL_LAYER, { name: '01_base/blob', content: randomBytes(300 * 1024).toString('base64') }]);
    expect(big.length).toBeGreaterThan(256 * 1024);
    const r = await api.json('POST', '/v1/builds', { body: big });
    expect(r.status).toBe(413);
    expect(r.body.error.code).toBe('UPLOAD_TOO_LARGE');
    // Without a Content-Length too: the cap holds on the bytes as they come.
    const chunked = await fetch(`${sched.url}/v1/builds`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKENS.web}`, 'content-type': 'application/gzip' },
      body: new Blob([big]).stream(),
      duplex: 'half',
    } as RequestInit);
    expect(chunked.status).toBe(413);
    expect(await objectNames()).toEqual(before);
  });

  it('refuses what is not a .tar.gz, too many entries, and an invalid project (naming the folder)', async () => {
    const junk = await api.json('POST', '/v1/builds', { body: randomBytes(2000) });
    expect([junk.status, junk.body.error.code]).toEqual([400, 'NOT_A_TAR_GZ']);
    const many = await tarGz([MINIMAL_LAYER, ...Array.from({ length: 10_001 }, (_, i) => ({ name: `01_base/f${i}`, content: '' }))]);
    const tooMany = await api.json('POST', '/v1/builds', { body: many });
    expect([tooMany.status, tooMany.body.error.code]).toEqual([400, 'TOO_MANY_ENTRIES']);
    const bad = await api.json('POST', '/v1/builds', { body: await tarGz([MINIMAL_LAYER, { name: '02_x/build-layer', content: '#!/bin/sh\n', mode: 0o644 }]) });
    expect([bad.status, bad.body.error.code]).toEqual([400, 'PROJECT_INVALID']);
    expect(bad.body.error.message).toContain('02_x/build-layer: not executable');
    const wrongType = await api('POST', '/v1/builds', { body: await smallProject('t'), headers: { 'content-type': 'text/plain' } });
    expect(wrongType.status).toBe(415);
  });

  it('refuses a gzip bomb by its header at once, and bounds what an upload may inflate to', async () => {
    const before = await objectNames();
    // One entry that claims 16 GiB (the header's size, base-256 encoded): refused before its data is read.
    const bomb = gzipSync(Buffer.concat([ustarHeader('01_base/huge', 16 * 1024 ** 3), Buffer.alloc(4 << 20)]));
    const r = await api.json('POST', '/v1/builds', { body: bomb });
    expect([r.status, r.body.error.code]).toEqual([400, 'ARCHIVE_TOO_LARGE']);
    expect(r.body.error.message).toMatch(/would extract to more than 512 MiB \(at "01_base\/huge", 16 GiB\)/);
    // A small project followed by 100 MiB of zeros inside the gzip stream, past the tar's end.
    const tail = Buffer.concat([gunzipSync(await smallProject('tail')), Buffer.alloc(100 << 20)]);
    const small = await startScheduler(env, { workDir, archiveLimits: { maxExtractedBytes: 1 << 20 } });
    try {
      const r2 = await apiFor(() => small.url, TOKENS.web).json('POST', '/v1/builds', { body: gzipSync(tail, { level: 9 }) });
      expect([r2.status, r2.body.error.code]).toEqual([400, 'ARCHIVE_TOO_LARGE']);
      expect(r2.body.error.message).toMatch(/inflates to more than .* refused as a gzip bomb/);
    } finally {
      await small.close();
    }
    expect(await objectNames()).toEqual(before);
  });

  it('refuses a name that is not UTF-8 at submission, naming it; UTF-8 names pass, ustar and pax alike', async () => {
    const script = Buffer.from('#!/bin/sh\ntrue\n');
    const raw = gzipSync(Buffer.concat([ustarHeader('01_base/create-disk', script.length, 0o755), pad(script), ustarHeader(Buffer.from('01_base/caf\xe9', 'latin1'), 0), Buffer.alloc(1024)]));
    const r = await api.json('POST', '/v1/builds', { body: raw });
    expect([r.status, r.body.error.code]).toEqual([400, 'UNSAFE_ENTRY']);
    expect(r.body.error.message).toBe('the project archive\'s entry "01_base/caf\\xe9" has a name that is not UTF-8; nothing was stored');
    const ok = await api.json('POST', '/v1/builds', { body: await tarGz([MINIMAL_LAYER, { name: '01_base/café.txt', content: 'x' }, { name: `01_base/${'é'.repeat(60)}.txt`, content: 'long, so in a pax header' }]) });
    expect(ok.status, JSON.stringify(ok.body)).toBe(201);
    expect((await api.json('POST', `/v1/builds/${ok.body.id}/cancel`)).status).toBe(200);
  });

  it('answers 408 to an upload that stalls (VMLB_UPLOAD_IDLE), and stores nothing', async () => {
    const before = await objectNames();
    const idle = await startScheduler({ ...env, VMLB_UPLOAD_IDLE: '1s' }, { workDir });
    try {
      const port = Number(new URL(idle.url).port);
      const answer = await new Promise<string>((resolve, reject) => {
        const sock = net.connect(port, '127.0.0.1', () => {
          sock.write(`POST /v1/builds HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKENS.web}\r\nContent-Type: application/gzip\r\nContent-Length: 100000\r\n\r\n`);
          sock.write(randomBytes(1000));
        });
        let got = '';
        sock.on('data', (d) => (got += d.toString('latin1')));
        sock.on('close', () => resolve(got));
        sock.on('error', reject);
        setTimeout(() => {
          sock.destroy();
          resolve(got);
        }, 10_000);
      });
      expect(answer).toMatch(/^HTTP\/1\.1 408 /);
      expect(answer).toContain('UPLOAD_STALLED');
    } finally {
      await idle.close();
    }
    expect(await objectNames()).toEqual(before);
  });

  it('answers 400 to a ?team= that is no team (an admin asking), 403 to another team (a team asking)', async () => {
    for (const route of ['/v1/builds?team=..%2F..', '/v1/stats/cache?team=..%2F..', '/v1/builds?team=nobody']) {
      const r = await api.json('GET', route, { token: TOKENS.ops });
      expect([route, r.status, r.body.error.code]).toEqual([route, 400, 'NO_SUCH_TEAM']);
    }
    const other = await api.json('GET', '/v1/builds?team=data', { token: TOKENS.web });
    expect(other.status).toBe(403);
  });
});

/** A ustar header for one regular file (a base-256 size past 8 GiB), as the bytes a hostile client may send. */
function ustarHeader(name: string | Buffer, size: number, mode = 0o644): Buffer {
  const h = Buffer.alloc(512);
  (typeof name === 'string' ? Buffer.from(name) : name).copy(h, 0);
  h.write(mode.toString(8).padStart(7, '0') + '\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  if (size < 8 ** 11) h.write(size.toString(8).padStart(11, '0') + '\0', 124, 'latin1');
  else {
    h[124] = 0x80;
    let v = BigInt(size);
    for (let i = 135; i > 124; i--, v >>= 8n) h[i] = Number(v & 0xffn);
  }
  h.write('00000000000\0', 136, 'latin1');
  h.write('0', 156, 'latin1');
  h.write('ustar\0' + '00', 257, 'latin1');
  h.fill(' ', 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return h;
}

function pad(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

describe('a submission', () => {
  let projectDir: string;
  let baseKey: string;

  beforeAll(async () => {
    // The base layer goes to the shared store through a local build with --cache, as a developer's laptop would put it there.
    const base = await writeProject(path.join(sb.dir, 'base-only'), { '01_base': BUSYBOX_BASE });
    const r = await vmlb(sb, ['build', base, '--json', '--cache', env.VMLB_SHARED!], s3.env);
    expect(r.exitCode, r.stderr).toBe(0);
    const plan = r.events.find((e) => e.type === 'plan');
    baseKey = plan!.type === 'plan' ? plan!.layers[0]!.key : '';
    const layers: Record<string, LayerDef> = {
      '01_base': BUSYBOX_BASE,
      '02_tools': { kind: 'build-layer', script: 'echo tools > /etc/tools' },
      '03_app': { kind: 'build-layer', script: 'echo app > /etc/app', files: { '.hidden': 'part of the key\n' } },
    };
    projectDir = await writeProject(path.join(sb.dir, 'three'), layers);
    await mkdir(path.join(projectDir, 'build'), { recursive: true });
    await writeFile(path.join(projectDir, 'build', 'image.qcow2'), 'not sent');
    await mkdir(path.join(projectDir, '.git'), { recursive: true });
    await writeFile(path.join(projectDir, '.git', 'HEAD'), 'not sent');
  });

  it('stores the project by its hash and queues flatten ← 03 ← 02, with no job for the hit', async () => {
    await emptyQueues();
    const run = await cli(['submit', projectDir, '--detach', '--json', '--flatten']);
    expect(run.exitCode, run.stderr).toBe(0);
    // No worker is live (none registered here): it says so, in one line, and the API's answer too.
    expect(run.stderr).toBe('vmlb: warning: no worker of pool default is live: the build waits until one registers');
    const b = JSON.parse(run.stdout) as BuildRecord;
    expect(b.warning).toBe('no worker of pool default is live: the build waits until one registers');
    expect((await record(b.id)).warning).toBe('no worker of pool default is live: the build waits until one registers');
    const listedWaiting = (await api.json<{ builds: Array<{ id: string; warning?: string }> }>('GET', '/v1/builds')).body.builds.find((x) => x.id === b.id);
    expect(listedWaiting?.warning).toBe('no worker of pool default is live: the build waits until one registers');
    // A worker registers: the warning is gone (within the second the scheduler keeps its look).
    const at = new Date().toISOString();
    await writeRegistration(conn, { id: 'registered-meanwhile', host: 'test', pid: process.pid, backend: 'fuse', pool: 'default', slots: 1, busy: 0, cachedBytes: 0, version: 'test', startedAt: at, lastHeartbeat: at, state: 'running' }, 600_000);
    try {
      await waitFor('the warning to clear', async () => (await record(b.id)).warning === undefined, 10_000, 100);
    } finally {
      await removeRegistration(conn, 'registered-meanwhile');
    }
    expect(b.layers.map((l) => [l.name, l.status])).toEqual([['01_base', 'hit'], ['02_tools', 'queued'], ['03_app', 'queued']]);
    expect(b.layers[0]!.key).toBe(baseKey);

    // By content hash: the object's sha256 is its name.
    expect(await objectNames('projects/')).toContain(storePaths.project(b.project));
    expect(await objectSha256(storePaths.project(b.project))).toBe(b.project);
    // Packed without build/ and .git, with the layer's dot-file.
    const tarball = path.join(sb.dir, 'project.tar.gz');
    await raw.fGetObject(bucket, `${prefix}${storePaths.project(b.project)}`, tarball);
    const { execa } = await import('execa');
    const listing = String((await execa('tar', ['-tzf', tarball])).stdout).split('\n');
    expect(listing).toContain('03_app/.hidden');
    expect(listing.some((n) => n.startsWith('build') || n.startsWith('.git'))).toBe(false);
    // The same project again is the same object.
    const again = await cli(['submit', projectDir, '--detach', '--json', '--flatten']);
    expect((JSON.parse(again.stdout) as BuildRecord).project).toBe(b.project);

    // The flow: a chain, parent waits for child.
    const flatten = (await queues.flatten.getJob(flattenJobId(b.id)))!;
    expect(await flatten.getState()).toBe('waiting-children');
    expect(FlattenJobData.parse(flatten.data)).toEqual({ buildId: b.id, team: 'web', pool: 'default', reads: [], chain: b.layers.map((l) => l.key), project: b.project, nonce: b.id });
    expect(flatten.opts.attempts).toBe(5);
    const deps = async (j: Job) => (await j.getDependencies()).unprocessed ?? [];
    expect(await deps(flatten)).toContain(`bull:${LAYER_QUEUE}:${layerJobId(b.id, 2)}`);
    const l2 = (await queues.layers.getJob(layerJobId(b.id, 2)))!;
    expect(await l2.getState()).toBe('waiting-children');
    expect(await deps(l2)).toContain(`bull:${LAYER_QUEUE}:${layerJobId(b.id, 1)}`);
    const l1 = (await queues.layers.getJob(layerJobId(b.id, 1)))!;
    expect(await l1.getState()).toBe('waiting');
    expect(await queues.layers.getJob(layerJobId(b.id, 0))).toBeUndefined();
    const d1 = LayerJobData.parse(l1.data);
    expect(d1).toMatchObject({ buildId: b.id, team: 'web', project: b.project, nonce: b.id, index: 1, name: '02_tools', chain: [baseKey], cacheable: true, share: true });
    expect(l1.opts).toMatchObject({ attempts: 5, failParentOnFailure: true, backoff: { type: 'exponential' } });
    expect(l1.opts.removeOnComplete).toMatchObject({ age: expect.any(Number) });
    expect(l1.opts.removeOnFail).toMatchObject({ age: expect.any(Number) });

    // The record is in the build history.
    const stored = await history.get(b.id);
    expect(stored).toMatchObject({ id: b.id, team: 'web', state: 'queued', project: b.project });
    // And a use record naming its chain, so `vmlb gc --shared` keeps these layers.
    const uses = await Promise.all(
      (await shared.listRecords('uses')).map((r) => shared.getJson<{ project?: string; keys: string[] }>(r.rel)),
    );
    expect(uses).toContainEqual(expect.objectContaining({ project: b.project, keys: b.layers.map((l) => l.key) }));
    await emptyQueues();
  });

  it('follows the workers\' events to done: record, live events, vmlb submit\'s display, vmlb pull', async () => {
    await emptyQueues();
    const image = randomBytes(64 * 1024);
    const workers = fakeWorkers({ image });
    try {
      const run = await cli(['submit', projectDir, '--plain', '--flatten', '--no-pull']);
      expect(run.exitCode, `${run.stdout}\n${run.stderr}`).toBe(0);
      expect(run.stdout).toMatch(/01_base CACHED \(shared/);
      expect(run.stdout).toMatch(/#2 \[2\/3\] 02_tools build-layer building/);
      expect(run.stdout).toMatch(/#2 building 02_tools|02_tools/);
      expect(run.stdout).toMatch(/#3 DONE/);
      expect(run.stdout).toMatch(/image: s3:\/\/.*images\/[0-9a-f]{64}\.qcow2 \(flattened/);
      expect(run.stdout).toMatch(/built 2, cached 1/);
      const id = /build (b[0-9a-z]+)/.exec(run.stdout)![1]!;

      const r = await record(id);
      expect(r.state).toBe('done');
      expect(r.layers.map((l) => l.status)).toEqual(['hit', 'done', 'done']);
      expect(r.layers[1]).toMatchObject({ worker: 'fake-worker', seconds: 0.5, bytes: 4096 });
      expect(r.image).toMatchObject({ key: r.layers[2]!.key, bytes: image.length });
      expect(await history.get(id)).toMatchObject({ state: 'done', image: r.image });

      // Its events, after the fact: the same story from the stream, ending with the record.
      const after = await readEvents(await api('GET', `/v1/builds/${id}/events`));
      expect(after.events.map((e) => e.type)).toEqual(expect.arrayContaining(['plan', 'layer-cached', 'layer-start', 'layer-log', 'layer-done', 'output', 'done']));
      expect(after.end).toMatchObject({ id, state: 'done' });
      // Resuming after an event id gives only what came after it.
      const resumed = await readEvents(await api('GET', `/v1/builds/${id}/events`, { headers: { 'last-event-id': after.ids[0]! } }));
      expect(resumed.events.find((e) => e.type === 'plan')).toBeUndefined();
      expect(resumed.ids.length).toBeLessThan(after.ids.length);

      // The image: streamed, or a presigned redirect.
      const pulled = path.join(sb.dir, 'pulled.qcow2');
      const pull = await cli(['pull', id, '-o', pulled, '--server-image']);
      expect(pull.exitCode, pull.stderr).toBe(0);
      expect(await readFile(pulled)).toEqual(image);
      const redirect = await api('GET', `/v1/builds/${id}/image?redirect=1`);
      expect(redirect.status).toBe(302);
      const viaUrl = Buffer.from(await (await fetch(redirect.headers.get('location')!)).arrayBuffer());
      expect(viaUrl).toEqual(image);

      const list = await cli(['builds']);
      expect(list.stdout).toMatch(/^BUILD\s+TEAM\s+POOL\s+PROJECT\s+SUBMITTER\s+STATE\s+LAYERS\s+CREATED\s+TOOK\n/);
      expect(list.stdout).toMatch(new RegExp(`${id}\\s+web\\s+default\\s+\\S+\\s+\\S+\\s+done\\s+3 \\(1 cached, 2 built\\)`));
      const listed = JSON.parse((await cli(['builds', '--json'])).stdout) as Array<{ id: string; pool: string; projectName?: string; submitter?: string }>;
      expect(listed.find((b) => b.id === id)?.pool).toBe('default');
      // What vmlb submit said of the project is in the history, and a search finds it.
      const mineListed = listed.find((b) => b.id === id)!;
      expect(mineListed.projectName).toBeTruthy();
      expect(mineListed.submitter).toMatch(/@/);
      const found = JSON.parse((await cli(['builds', '--json', '--search', mineListed.projectName!.slice(1, 6)])).stdout) as Array<{ id: string }>;
      expect(found.map((b) => b.id)).toContain(id);
      const none = JSON.parse((await cli(['builds', '--json', '--search', 'no-such-project-anywhere'])).stdout) as Array<{ id: string }>;
      expect(none).toEqual([]);
    } finally {
      await workers.close();
    }
  });

  it('fails the build when a layer fails, and vmlb submit exits 1 showing the failure', async () => {
    await emptyQueues();
    const workers = fakeWorkers({ fail: ['02_tools'] });
    try {
      await workers.ready;
      const run = await cli(['submit', projectDir, '--plain']);
      expect(run.exitCode, `${run.stdout}\n${run.stderr}`).toBe(1);
      // The log streamed as it came, then the failure (its tail is not repeated).
      expect(run.stdout).toMatch(/#2 building 02_tools\n[\s\S]*#2 ERROR exit 7/);
      const id = /build (b[0-9a-z]+)/.exec(run.stdout)![1]!;
      // Said once, in one line: no repeated words, no worker path, no log in the message.
      expect(run.stdout.split('\n').at(-1)).toBe('error: layer 02_tools exited with status 7');
      expect(run.stderr).toBe(`vmlb: build ${id} failed: layer 02_tools exited with status 7`);
      const r = await record(id);
      expect(r.error).toBe('layer 02_tools exited with status 7');
      expect(r.state).toBe('failed');
      expect(r.layers.map((l) => l.status)).toEqual(['hit', 'failed', 'cancelled']);
      expect(r.layers[1]).toMatchObject({ exitCode: 7, logTail: 'it went wrong' });
      const img = await api.json('GET', `/v1/builds/${id}/image`);
      expect([img.status, img.body.error.code]).toEqual([409, 'NO_IMAGE']);
    } finally {
      await workers.close();
    }
  });

  it('a project whose layers all hit and whose image exists is done at once, with no job', async () => {
    await emptyQueues();
    const base = await writeProject(path.join(sb.dir, 'base-again'), { '01_base': BUSYBOX_BASE });
    await putFakeImage(baseKey, Buffer.from('base image'));
    const run = await cli(['submit', base, '--plain', '--flatten', '--no-pull']);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/built 0, cached 1/);
    expect(await queues.flatten.getJobCounts()).toMatchObject({ waiting: 0, 'waiting-children': 0, completed: 0 });
  });
});

describe('a chain build (the default)', () => {
  it('queues no flatten job, is done when its last layer is, and gets its image flattened once when first asked for (202 meanwhile)', async () => {
    await emptyQueues();
    const image = randomBytes(32 * 1024);
    const r = await api.json<BuildRecord>('POST', '/v1/builds', { body: await smallProject('chain') });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const b = r.body;
    expect(b.output).toBe('chain');
    expect(await queues.flatten.getJob(flattenJobId(b.id))).toBeUndefined();
    const top = (await queues.layers.getJob(layerJobId(b.id, b.layers.length - 1)))!;
    expect(await top.getState()).toMatch(/waiting/);
    const workers = fakeWorkers({ image });
    try {
      const done = await waitFor('the chain build to be done', async () => {
        const x = await record(b.id);
        return x.state === 'done' ? x : undefined;
      });
      expect(done.image).toBeNull();
      expect(await queues.flatten.getJob(flattenJobId(b.id))).toBeUndefined();
      // The image, asked for: flattened once, 202 until it is there.
      const first = await api('GET', `/v1/builds/${b.id}/image`);
      expect(first.status).toBe(202);
      expect(first.headers.get('retry-after')).toBe('2');
      expect(await queues.flatten.getJob(flattenJobId(b.id))).toBeDefined();
      const got = await waitFor('the image', async () => {
        const res = await api('GET', `/v1/builds/${b.id}/image`);
        return res.status === 200 ? Buffer.from(await res.arrayBuffer()) : undefined;
      });
      expect(got).toEqual(image);
      expect((await record(b.id)).image).toMatchObject({ key: b.layers[b.layers.length - 1]!.key, bytes: image.length });
    } finally {
      await workers.close();
    }
    await emptyQueues();
  });
});

describe('cancel', () => {
  it('marks the build cancelled, removes its waiting jobs, and leaves a running one to its worker', async () => {
    await emptyQueues();
    let running: Job | undefined;
    let answered = false;
    const workers = fakeWorkers({
      onLayer: async (job) => {
        running = job;
        const d = LayerJobData.parse(job.data);
        // A real worker polls the cancel key and aborts its build (here: once the test has the answer, so the job is still running when cancel looks).
        await waitFor('the cancel key', async () => answered && (await conn.exists(redisKeys.cancelled(d.buildId))) === 1, 30_000);
        await appendEvent(conn, d.buildId, ev.job(d.index, 'cancelled', { message: 'the build was cancelled' }));
        throw new UnrecoverableError('cancelled');
      },
    });
    try {
      const b = await submit(await tarGz([MINIMAL_LAYER, { name: '02_a/build-layer', content: '#!/bin/sh\n' }, { name: '03_b/build-layer', content: '#!/bin/sh\n' }]));
      await waitFor('the first job to run', async () => running);
      const events = api('GET', `/v1/builds/${b.id}/events`);
      const r = await api.json('POST', `/v1/builds/${b.id}/cancel`);
      answered = true;
      expect(r.status).toBe(200);
      expect(r.body.state).toBe('cancelled');
      expect(r.body.error).toBe('cancelled by web');
      expect(r.body.jobs.running).toEqual([layerJobId(b.id, 0)]);
      expect(r.body.jobs.removed).toEqual([flattenJobId(b.id), layerJobId(b.id, 2), layerJobId(b.id, 1)]);
      expect(await queues.flatten.getJob(flattenJobId(b.id))).toBeUndefined();
      expect(await queues.layers.getJob(layerJobId(b.id, 1))).toBeUndefined();
      expect(await conn.get(redisKeys.cancelled(b.id))).toBe('web');
      expect(await history.get(b.id)).toMatchObject({ state: 'cancelled' });
      const followed = await readEvents(await events);
      expect(followed.end).toMatchObject({ state: 'cancelled' });
      expect(followed.events.at(-1)).toMatchObject({ type: 'failed', code: 'CANCELLED' });
      const again = await api.json('POST', `/v1/builds/${b.id}/cancel`);
      expect([again.status, again.body.error.code]).toEqual([409, 'ALREADY_FINISHED']);
      const cliCancel = await cli(['cancel', b.id]);
      expect(cliCancel.exitCode).toBe(1);
    } finally {
      await workers.close();
    }
  });
});

describe('a scheduler restart', () => {
  it('vmlb submit rides it out: says it lost the scheduler, reconnects, resumes the events, exits 0 when the build is done', async () => {
    await emptyQueues();
    const dir = await writeProject(path.join(sb.dir, 'restart-cli'), {
      '01_base': { kind: 'create-disk', script: '# disk-size 64M\necho base\n' },
      '02_app': { kind: 'build-layer', script: 'echo restart-cli\n' },
    });
    let out = '';
    const child = spawnVmlb(sb, ['submit', dir, '--plain', '--flatten', '--no-pull'], { VMLB_SERVER: sched.url, VMLB_TOKEN: TOKENS.web });
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const id = await waitFor('the submission', async () => /as build (b[0-9a-z]+)/.exec(out)?.[1]);
    const b = await record(id);
    const todo = b.layers.filter((l) => l.status === 'queued').map((l) => l.index);
    await appendEvent(conn, id, ev.job(todo[0]!, 'building'));
    await waitFor('the record to say building', async () => (await history.get(id).catch(() => null))?.state === 'building');
    const port = Number(new URL(sched.url).port);
    await sched.close();
    await waitFor('vmlb submit to say it lost the scheduler', async () => /lost the scheduler \(.*\); reconnecting — build b[0-9a-z]+ goes on in the fleet meanwhile/.test(out), 20_000);
    // Meanwhile the workers go on.
    for (const i of todo) await appendEvent(conn, id, ev.job(i, 'done', { seconds: 1, bytes: 10 }));
    const image = await putFakeImage(b.layers[b.layers.length - 1]!.key, Buffer.from('restart image'));
    await appendEvent(conn, id, { type: 'flatten', at: Date.now(), status: 'done', worker: 'fake-worker', image });
    await new Promise((r) => setTimeout(r, 1500));
    sched = await startScheduler(env, { workDir, config: { ...sched.config, schedulerPort: port } });
    const r = await child;
    expect(r.exitCode, out).toBe(0);
    expect(out).toMatch(/reached the scheduler again after \d+ s; following build b[0-9a-z]+ from where it was/);
    expect(out).toMatch(/^image: s3:\/\/.*\(flattened/m);
    expect(out.match(/lost the scheduler/g)).toHaveLength(1);
    await emptyQueues();
  });

  it('vmlb submit exits 3 when the scheduler cannot be reached (an outage, not a failed build), saying so once', async () => {
    const dir = await writeProject(path.join(sb.dir, 'unreachable'), { '01_base': { kind: 'create-disk', script: '# disk-size 64M\necho base\n' } });
    const r = await vmlb(sb, ['submit', dir, '--plain'], { VMLB_SERVER: `http://127.0.0.1:${await freePort()}`, VMLB_TOKEN: TOKENS.web });
    expect(r.exitCode).toBe(3);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^vmlb: cannot reach the scheduler at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED$/);
  });

  it('goes on following an unfinished build from where its record was stored', async () => {
    await emptyQueues();
    const b = await submit(await smallProject('restart'));
    await appendEvent(conn, b.id, ev.job(1, 'building'));
    // s3rver writes an object in place: a read racing a write can see half of it (MinIO's puts are atomic).
    await waitFor('the record to say building', async () => (await history.get(b.id).catch(() => null))?.state === 'building');
    await sched.close();
    // Meanwhile the worker went on.
    await appendEvent(conn, b.id, ev.job(1, 'done', { seconds: 3, bytes: 10 }));
    const image = await putFakeImage(b.layers[1]!.key, Buffer.from('restart image'));
    await appendEvent(conn, b.id, { type: 'flatten', at: Date.now(), status: 'done', worker: 'fake-worker', image });
    sched = await startScheduler(env, { workDir });
    const done = await waitFor('the build to be done', async () => {
      const r = await record(b.id);
      return r.state === 'done' ? r : undefined;
    });
    expect(done.layers[1]).toMatchObject({ status: 'done', seconds: 3, bytes: 10 });
    expect(done.image).toEqual(image);
    await emptyQueues();
  });
});

describe('/healthz and /metrics', () => {
  it('/healthz says whether Redis and S3 answer', async () => {
    const ok = await api.json('GET', '/healthz', { token: null });
    expect(ok).toMatchObject({ status: 200, body: { ok: true, redis: 'ok', s3: 'ok' } });
    if (!s3.stop || !s3.restart) return;
    await s3.stop();
    try {
      const down = await api.json('GET', '/healthz', { token: null });
      expect(down.status).toBe(503);
      expect(down.body).toMatchObject({ ok: false, redis: 'ok' });
      expect(down.body.s3).not.toBe('ok');
    } finally {
      await s3.restart();
    }
    await waitFor('S3 to answer again', async () => (await api('GET', '/healthz', { token: null })).status === 200);
  });

  it('/metrics is Prometheus text with the default metrics and the fleet\'s own', async () => {
    // Something to count on this scheduler (the restart above made a new one).
    const b = await submit(await smallProject('metrics'));
    await api('GET', `/v1/builds/${b.id}`);
    await api('POST', '/v1/builds', { body: await tarGz([MINIMAL_LAYER, { name: '/abs', content: '' }]) });
    await emptyQueues();
    const res = await api('GET', '/metrics', { token: null });
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    for (const line of text.split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      expect(line).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/);
    }
    expect(text).toMatch(/^# TYPE process_cpu_user_seconds_total counter$/m);
    expect(text).toMatch(/^# TYPE vmlb_builds_submitted_total counter$/m);
    expect(text).toMatch(/^vmlb_builds_submitted_total\{team="web",pool="default"\} [1-9]\d*$/m);
    expect(text).toMatch(/^# TYPE vmlb_layer_cache_lookups_total counter$/m);
    expect(text).toMatch(/^vmlb_shared_store_up 1$/m);
    expect(text).toMatch(/^vmlb_queue_oldest_job_age_seconds\{queue="vmlb-layers",pool="default",kind="layer"\} \d+(\.\d+)?$/m);
    expect(text).toMatch(/^vmlb_uploads_refused_total\{reason="UNSAFE_ENTRY"\} [1-9]\d*$/m);
    expect(text).toMatch(/^vmlb_queue_jobs\{queue="vmlb-layers",pool="default",kind="layer",state="waiting"\} \d+$/m);
    expect(text).toMatch(/^vmlb_queue_jobs\{queue="vmlb-flatten",pool="default",kind="flatten",state="waiting"\} \d+$/m);
    expect(text).toMatch(/^vmlb_http_request_duration_seconds_bucket\{le="0.1",method="GET",route="\/v1\/builds\/:id",status="200"\} \d+$/m);
    expect(text).toMatch(/^vmlb_builds_active \d+$/m);
    expect(text).toMatch(/^vmlb_fleet_workers\{pool="default"\} \d+$/m);
  });
});

describe('vmlb submit without a scheduler or a token', () => {
  it('exits 2 naming what is missing, or the refused token', async () => {
    const noServer = await vmlb(sb, ['submit', '.', '--detach'], { VMLB_SERVER: '', VMLB_TOKEN: '', XDG_CONFIG_HOME: path.join(sb.dir, 'no-config') });
    expect(noServer.exitCode).toBe(2);
    expect(noServer.stderr).toMatch(/--server \(or VMLB_SERVER\) and --token \(or VMLB_TOKEN\)/);
    const badToken = await cli(['builds'], 'wrong-token');
    expect(badToken.exitCode).toBe(2);
    expect(badToken.stderr).toMatch(/refused the token \(401\)/);
    // The config file is read when the environment says nothing.
    const cfg = path.join(sb.dir, 'xdg');
    await mkdir(path.join(cfg, 'vmlb'), { recursive: true });
    await writeFile(path.join(cfg, 'vmlb', 'config.json'), JSON.stringify({ server: sched.url, token: TOKENS.data }));
    const fromFile = await vmlb(sb, ['builds', '--json'], { VMLB_SERVER: '', VMLB_TOKEN: '', XDG_CONFIG_HOME: cfg });
    expect(fromFile.exitCode, fromFile.stderr).toBe(0);
    expect(JSON.parse(fromFile.stdout)).toEqual([]);
  });
});

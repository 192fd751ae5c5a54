/**
 * The layer sandbox through the one-machine fleet (`npm run fleet`: its Redis, scheduler and
 * two worker processes; S3 is this suite's S3 test server, s3rver or radosgw, given as
 * S3_ENDPOINT): a submitted project
 * that names a host path is refused at submission; a hostile team's layers of every kind,
 * built by a worker, reach neither the worker host nor the fleet's Redis, S3 and scheduler, nor
 * a listener the test opens, nor the worker's credentials, which are in no job's data either;
 * a worker refuses to run unsandboxed.
 */
import { Redis } from 'ioredis';
import { cp, readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBucket } from './helpers/fleet-api.js';
import { startDevFleet, type DevFleet } from './helpers/dev-fleet.js';
import { buildEscapeTool, escapeLayer, escapeLines, hostAddresses, hostMarker, hostToolsAttack, listen, otherBuildPair, type Listener } from './helpers/hostile.js';
import { startS3Server, type S3Server } from './helpers/s3-server.js';
import { startWorkerProcess } from './helpers/worker-process.js';
import { BUSYBOX_BASE, leftovers, sandbox, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
let s3: S3Server;
let fleet: DevFleet;
let escape: string;
let marker: { file: string; secret: string };
let loopback: Listener;
let ports: { scheduler: number; redis: number; s3: number };
/** The fleet's S3 secret (a key pair of its own on the server): no layer may see it, no job may carry it. */
let secret = `s3-secret-${Math.random().toString(36).slice(2)}`;
const submitEnv = () => fleet.exported;

beforeAll(async () => {
  sb = await sandbox('sandbox-fleet');
  escape = await buildEscapeTool(sb.dir);
  marker = await hostMarker(sb.dir);
  loopback = await listen('127.0.0.1');
  s3 = await startS3Server();
  const sharedUrl = `s3://vmlb-test/sandbox-fleet-${Date.now().toString(36)}`;
  await ensureBucket({ ...s3.env, VMLB_SHARED: sharedUrl });
  // One worker with two slots: two builds' jobs run side by side on the same host.
  // An external server cannot be given keys: its own secret is the one looked for then.
  const keys = s3.withSecret ? await s3.withSecret(secret) : s3.env;
  secret = keys.S3_SECRET_KEY!;
  fleet = await startDevFleet({ env: { ...keys, VMLB_SHARED: sharedUrl, VMLB_FLEET_DIR: path.join(sb.dir, 'fleet'), VMLB_WORKER_SLOTS: '2' }, workers: 1 });
  ports = { ...fleet.ports, s3: Number(new URL(s3.env.S3_ENDPOINT!).port) };
});

afterAll(async () => {
  await fleet?.stop();
  await loopback?.close();
  await s3?.close();
  // Nothing the workers attached outlives the fleet.
  const left = sb ? await leftovers(sb) : [];
  await sb?.cleanup();
  expect(left).toEqual([]);
});

describe('the sandbox through the fleet', () => {
  it('refuses a submission that names a host path, naming the layer and the hint (exit 2)', async () => {
    const project = await writeProject(path.join(sb.dir, 'host-bind'), {
      '01_base': BUSYBOX_BASE,
      '02_root': { kind: 'build-layer', script: '# chroot-bind-mount / /host\nls /host' },
      '03_up': { kind: 'build-layer', script: '# chroot-bind-mount ../../.. /up\nls /up' },
      '04_own': { kind: 'build-layer', script: '# chroot-bind-mount files /srv/files\nls /srv/files', files: { 'files/a': 'a\n' } },
    });
    const run = await vmlb(sb, ['submit', project, '--plain'], submitEnv());
    expect(run.exitCode, run.stdout).toBe(2);
    expect(run.stderr).toMatch(/the scheduler refused it: the project has 2 problems/);
    expect(run.stderr).toContain('02_root: # chroot-bind-mount / /host: a submitted project names no host path (the source is absolute)');
    expect(run.stderr).toContain('03_up: # chroot-bind-mount ../../.. /up: a submitted project names no host path (the source leads out of the project)');
    expect(run.stderr).not.toContain('04_own');
    // Nothing was queued.
    const list = await vmlb(sb, ['builds', '--json'], submitEnv());
    expect(JSON.parse(list.stdout)).toEqual([]);
  });

  it("builds a hostile team's layers, every try blocked: the worker host, the fleet's services, its secrets", async () => {
    const dir = path.join(sb.dir, 'hostile');
    const connects = [
      { name: 'redis', host: '127.0.0.1', port: ports.redis },
      { name: 's3', host: '127.0.0.1', port: ports.s3 },
      { name: 'scheduler', host: '127.0.0.1', port: ports.scheduler },
      { name: 'listener', host: '127.0.0.1', port: loopback.port },
      ...hostAddresses().flatMap((a, i) => [
        { name: `host-${i}-redis`, host: a, port: ports.redis },
        { name: `host-${i}-scheduler`, host: a, port: ports.scheduler },
      ]),
      { name: 'slirp-gateway-redis', host: '10.0.2.2', port: ports.redis },
    ];
    const layer = escapeLayer({ escape, marker: marker.file, secret: marker.secret, connects, canary: secret });
    await writeProject(dir, {
      '01_base': { kind: 'create-disk', script: `${BUSYBOX_BASE.script}\n${hostToolsAttack({ marker: marker.file, secret: marker.secret, canary: secret })}` },
      '02_escape': layer,
      '03_modify': { kind: 'modify-disk', script: `# disk-size 96M\n${hostToolsAttack({ marker: marker.file, secret: marker.secret, canary: secret })}` },
    });
    await cp(escape, path.join(dir, '02_escape/escape'));
    const before = loopback.connections();
    const run = await vmlb(sb, ['submit', dir, '--plain'], submitEnv());
    expect(run.exitCode, `${run.stdout}\n${run.stderr}\n${fleet.errors.slice(-3000)}`).toBe(0);
    const tries = escapeLines(run.stdout);
    expect(tries.length, run.stdout).toBeGreaterThan(40);
    expect(tries.filter((t) => t.outcome === 'OPEN').map((t) => t.line)).toEqual([]);
    for (const name of ['net-redis', 'net-s3', 'net-scheduler', 'net-listener', 'environ', 'proc-1-root', 'host-file', 'request']) {
      expect(tries.some((t) => t.name === name && t.outcome === 'blocked'), name).toBe(true);
    }
    expect(run.stdout).toMatch(/ESCAPE-SUMMARY 0 open/);
    expect(loopback.connections()).toBe(before);
  });

  it("cannot see another build's files running at the same time on the same worker", async () => {
    const pair = await otherBuildPair(sb.dir, { nocache: true });
    // The shared base first, then both builds at once on the one worker.
    expect((await vmlb(sb, ['submit', pair.a, '--plain'], submitEnv())).exitCode).toBe(0);
    const [ra, rb] = await Promise.all([vmlb(sb, ['submit', pair.a, '--plain'], submitEnv()), vmlb(sb, ['submit', pair.b, '--plain'], submitEnv())]);
    expect(ra.exitCode, ra.stdout).toBe(0);
    expect(rb.exitCode, rb.stdout).toBe(0);
    pair.expectIsolated(ra.stdout, rb.stdout);
  });

  it("keeps a team's # cache-mount folder on the worker across its builds, under the team's name", async () => {
    const dir = await writeProject(path.join(sb.dir, 'cache'), {
      '01_base': BUSYBOX_BASE,
      '02_cached': {
        kind: 'build-layer',
        script: ['# cache-mount /var/cache/things', '# nocache', 'set -eu', 'n=$(cat /var/cache/things/count 2>/dev/null || echo 0)', 'n=$((n + 1)); echo $n > /var/cache/things/count', 'echo "count $n"'].join('\n'),
      },
    });
    const first = await vmlb(sb, ['submit', dir, '--plain'], submitEnv());
    expect(first.exitCode, first.stdout).toBe(0);
    expect(first.stdout).toMatch(/#2 count 1/);
    const second = await vmlb(sb, ['submit', dir, '--plain'], submitEnv());
    expect(second.stdout).toMatch(/#2 count 2/);
    // npm run fleet's one team is "dev": its folder, in the worker's store.
    const kept = await readdir(path.join(sb.dir, 'fleet', 'worker-1', 'store', 'cache-mounts', 'dev'));
    expect(kept.filter((n) => n.startsWith('var_cache_things-'))).toHaveLength(1);
  });

  it("keeps the worker's credentials out of every job's data in Redis", async () => {
    const redis = new Redis(`redis://127.0.0.1:${ports.redis}`, { maxRetriesPerRequest: null });
    try {
      const keys = await redis.keys('*');
      expect(keys.some((k) => k.startsWith('bull:'))).toBe(true);
      let dumped = '';
      for (const k of keys) {
        const type = await redis.type(k);
        if (type === 'hash') dumped += JSON.stringify(await redis.hgetall(k));
        else if (type === 'string') dumped += await redis.get(k);
        else if (type === 'list') dumped += (await redis.lrange(k, 0, -1)).join('\n');
        else if (type === 'stream') dumped += JSON.stringify(await redis.xrange(k, '-', '+'));
        else if (type === 'zset') dumped += (await redis.zrange(k, '0', '-1')).join('\n');
        else if (type === 'set') dumped += (await redis.smembers(k)).join('\n');
      }
      expect(dumped.length).toBeGreaterThan(1000);
      expect(dumped).not.toContain(secret);
      // The jobs are there (their data JSON in BullMQ's hashes), only without the secret.
      expect(dumped).toMatch(/\\"team\\":\\"dev\\"/);
    } finally {
      redis.disconnect();
    }
  });

  it('a worker refuses to run with the sandbox off', async () => {
    const w = startWorkerProcess({ name: 'unsandboxed', dir: sb.dir, redisUrl: `redis://127.0.0.1:${ports.redis}`, sharedUrl: 's3://vmlb-test/x', s3env: s3.env, env: { VMLB_SANDBOX: '0' } });
    const exit = await w.exited;
    expect(exit.exitCode).toBe(2);
    expect(w.log.join('\n')).toMatch(/VMLB_SANDBOX: a worker runs every layer sandboxed/);
  });
});

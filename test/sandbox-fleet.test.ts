/**
 * The layer sandbox through the one-machine fleet (`npm run fleet`: its Redis, scheduler and
 * two worker processes; S3 is this suite's s3rver, given as S3_ENDPOINT): a submitted project
 * that names a host path is refused at submission; a hostile team's layers of every kind,
 * built by a worker, reach neither the worker host nor the fleet's Redis, S3 and scheduler, nor
 * a listener the test opens, nor the worker's credentials, which are in no job's data either;
 * a worker refuses to run unsandboxed.
 */
import { execa, type ResultPromise } from 'execa';
import { Redis } from 'ioredis';
import { cp } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBucket, waitFor } from './helpers/fleet-api.js';
import { buildEscapeTool, escapeLayer, escapeLines, hostAddresses, hostMarker, hostToolsAttack, listen, type Listener } from './helpers/hostile.js';
import { startS3Server, type S3Server } from './helpers/s3-server.js';
import { startWorkerProcess } from './helpers/worker-process.js';
import { BUSYBOX_BASE, REPO, leftovers, sandbox, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
let s3: S3Server;
let fleet: ResultPromise;
let output = '';
let errors = '';
let escape: string;
let marker: { file: string; secret: string };
let loopback: Listener;
let ports: { scheduler: number; redis: number; s3: number };
const exported: Record<string, string> = {};
/** The fleet's S3 secret (s3rver does not check it): no layer may see it, no job may carry it. */
const SECRET = `s3-secret-${Math.random().toString(36).slice(2)}`;
const submitEnv = () => ({ VMLB_SERVER: exported.VMLB_SERVER!, VMLB_TOKEN: exported.VMLB_TOKEN! });

beforeAll(async () => {
  sb = await sandbox('sandbox-fleet');
  escape = await buildEscapeTool(sb.dir);
  marker = await hostMarker(sb.dir);
  loopback = await listen('127.0.0.1');
  s3 = await startS3Server();
  const sharedUrl = `s3://vmlb-test/sandbox-fleet-${Date.now().toString(36)}`;
  await ensureBucket({ ...s3.env, VMLB_SHARED: sharedUrl });
  fleet = execa('npm', ['run', '-s', 'fleet'], {
    cwd: REPO,
    // One worker with two slots: two builds' jobs run side by side on the same host.
    env: { ...s3.env, S3_SECRET_KEY: SECRET, VMLB_SHARED: sharedUrl, VMLB_FLEET_DIR: path.join(sb.dir, 'fleet'), VMLB_FLEET_WORKERS: '1', VMLB_WORKER_SLOTS: '2', VMLB_SERVER: '', VMLB_TOKEN: '' },
    reject: false,
    buffer: false,
    stdin: 'ignore',
    detached: true,
  });
  fleet.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  fleet.stderr!.on('data', (d: Buffer) => (errors += d.toString()));
  const upLine = /fleet: up: scheduler http:\/\/127\.0\.0\.1:(\d+), Redis redis:\/\/127\.0\.0\.1:(\d+),/;
  await waitFor('npm run fleet up', async () => (/export VMLB_TOKEN=\S+\n/.test(output) && upLine.test(errors)) || (fleet.exitCode !== undefined && fleet.exitCode !== null), 90_000, 200);
  for (const m of output.matchAll(/^export (VMLB_SERVER|VMLB_TOKEN)=(\S+)$/gm)) exported[m[1]!] = m[2]!;
  const up = upLine.exec(errors);
  expect(up, errors).not.toBeNull();
  ports = { scheduler: Number(up![1]), redis: Number(up![2]), s3: Number(new URL(s3.env.S3_ENDPOINT!).port) };
  await waitFor('the worker', async () => /"msg":"worker started"/.test(errors), 60_000, 200);
});

afterAll(async () => {
  if (fleet && fleet.exitCode === null && fleet.signalCode === null) {
    try {
      process.kill(-fleet.pid!, 'SIGINT');
    } catch {
      /* gone */
    }
    const t = setTimeout(() => process.kill(-fleet.pid!, 'SIGKILL'), 60_000);
    await fleet;
    clearTimeout(t);
  }
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
    const layer = escapeLayer({ escape, marker: marker.file, secret: marker.secret, connects, canary: SECRET });
    await writeProject(dir, {
      '01_base': { kind: 'create-disk', script: `${BUSYBOX_BASE.script}\n${hostToolsAttack({ marker: marker.file, secret: marker.secret, canary: SECRET })}` },
      '02_escape': layer,
      '03_modify': { kind: 'modify-disk', script: `# disk-size 96M\n${hostToolsAttack({ marker: marker.file, secret: marker.secret, canary: SECRET })}` },
    });
    await cp(escape, path.join(dir, '02_escape/escape'));
    const before = loopback.connections();
    const run = await vmlb(sb, ['submit', dir, '--plain'], submitEnv());
    expect(run.exitCode, `${run.stdout}\n${run.stderr}\n${errors.slice(-3000)}`).toBe(0);
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
    const secretName = `other-build-${Math.random().toString(36).slice(2)}`;
    const a = await writeProject(path.join(sb.dir, 'job-a'), {
      '01_base': BUSYBOX_BASE,
      // # nocache: built again by the second submission, while B's layer looks.
      '02_secret': { kind: 'build-layer', script: `# nocache\nset -eu\necho secret > /root/${secretName}\necho "written at $(date +%s)"; sleep 8` },
    });
    const b = await writeProject(path.join(sb.dir, 'job-b'), {
      '01_base': BUSYBOX_BASE,
      '02_look': {
        kind: 'build-layer',
        script: [
          'sleep 3',
          'echo "looking at $(date +%s)"',
          `if find / -name '${secretName}' 2>/dev/null | grep -q .; then echo "ESCAPE other-build OPEN"; else echo "ESCAPE other-build blocked"; fi`,
          `if grep -q 'vmlb' /proc/mounts; then echo "ESCAPE engine-mounts OPEN $(grep vmlb /proc/mounts | head -2)"; else echo "ESCAPE engine-mounts blocked"; fi`,
        ].join('\n'),
      },
    });
    // The shared base first, then both builds at once on the one worker.
    expect((await vmlb(sb, ['submit', a, '--plain'], submitEnv())).exitCode).toBe(0);
    const [ra, rb] = await Promise.all([vmlb(sb, ['submit', a, '--plain'], submitEnv()), vmlb(sb, ['submit', b, '--plain'], submitEnv())]);
    expect(ra.exitCode, ra.stdout).toBe(0);
    expect(rb.exitCode, rb.stdout).toBe(0);
    expect(escapeLines(rb.stdout).map((t) => `${t.name} ${t.outcome}`)).toEqual(['other-build blocked', 'engine-mounts blocked']);
    // B looked while A's layer, with its file written, was still running.
    const wrote = Number(/written at (\d+)/.exec(ra.stdout)?.[1]);
    const looked = Number(/looking at (\d+)/.exec(rb.stdout)?.[1]);
    expect(looked - wrote, `${ra.stdout}\n${rb.stdout}`).toBeGreaterThanOrEqual(0);
    expect(looked - wrote).toBeLessThan(8);
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
      expect(dumped).not.toContain(SECRET);
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

/**
 * The fleet on a Sentinel-managed Redis (REDIS_SENTINELS), through a real failover: a primary
 * redis-server, two replicas and three redis-sentinel processes (test/helpers/redis-sentinel.ts,
 * passwords on the data nodes and on the sentinels), a scheduler in this process and two real
 * worker processes given only the sentinels, the S3 test server (s3rver, or radosgw with
 * VMLB_TEST_S3=radosgw). A build of three slow layers is submitted with `vmlb submit`, and the
 * primary is SIGKILLed while the first of them runs: the sentinels promote a replica and every
 * part finds it by itself. The build completes, every layer reaches the shared store, and
 * nothing is built twice but, at most, the layer that was in flight.
 *
 * Then deploy/'s Sentinel configuration (its ACL users and config files), run the same way.
 *
 * The configuration's own checks (REDIS_SENTINELS and the rest, each bad value named) are unit
 * tests beside it: libs/fleet/src/config.test.ts.
 */
import { execa, type ResultPromise } from 'execa';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import type { FleetEvent } from '../libs/fleet/src/build-record.js';
import { readEvents } from '../libs/fleet/src/event-stream.js';
import { redisKeys } from '../libs/fleet/src/names.js';
import { fleetConfigFrom } from '../libs/fleet/src/config.js';
import { freePort, portOpen } from '../libs/fleet/src/loopback-port.js';
import { redisConnection } from '../libs/fleet/src/redis.js';
import { primaryPortFrom, sentinelSeesWholeSet } from '../apps/scheduler/src/sentinel-set.js';
import { SharedStore } from '../libs/layer-engine/src/store/shared-store.js';
import { s3ConfigFrom } from '../libs/layer-engine/src/store/s3-config.js';
import { TOKENS, apiFor, ensureBucket, startScheduler, waitFor, type RunningScheduler } from './helpers/fleet-api.js';
import { startSentinelSet, type SentinelSet } from './helpers/redis-sentinel.js';
import { startS3Server, type S3Server } from './helpers/s3-server.js';
import { WORKER_MAIN, startWorkerProcess, workerLogs, type WorkerProcess } from './helpers/worker-process.js';
import { BUSYBOX_BASE, REPO, sandbox, spawnVmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

const missing = !existsSync(WORKER_MAIN) ? `${WORKER_MAIN} does not exist` : !existsSync('/usr/bin/redis-sentinel') ? 'redis-sentinel is not installed (Debian: redis-sentinel; scripts/test.sh installs it)' : null;
if (missing) console.warn(`redis-sentinel.test.ts skipped: ${missing}`);

type JobEvent = Extract<FleetEvent, { type: 'job' }>;

describe.skipIf(missing !== null)('a fleet on a Sentinel-managed Redis', () => {
  let sb: Sandbox;
  let s3: S3Server;
  let set: SentinelSet;
  let sched: RunningScheduler;
  let redis: Redis;
  let shared: SharedStore;
  const workers: WorkerProcess[] = [];
  const api = apiFor(() => sched.url, TOKENS.web);

  const events = async (buildId: string): Promise<FleetEvent[]> => (await readEvents(redis, buildId, '0', { count: 100_000 })).map((e) => e.event);
  const registered = async (id: string) => (await redis.get(redisKeys.worker(id))) !== null;

  beforeAll(async () => {
    sb = await sandbox('sentinel');
    [s3, set] = await Promise.all([startS3Server(), startSentinelSet()]);
    const sharedUrl = `s3://vmlb-test/sentinel-${Date.now().toString(36)}`;
    // Only the sentinels: no REDIS_URL anywhere.
    const env = { ...s3.env, VMLB_SHARED: sharedUrl, ...set.env };
    await ensureBucket(env);
    sched = await startScheduler(env);
    redis = redisConnection(set.target, 'sentinel-test');
    redis.on('error', () => {});
    shared = new SharedStore(s3ConfigFrom(sharedUrl, s3.env));
    // The production lock (30 s): a failover of a few seconds must not look like a dead worker.
    for (const name of ['a', 'b']) workers.push(startWorkerProcess({ name, id: `ws-${name}`, dir: sb.dir, sharedUrl, s3env: s3.env, shortLocks: false, env: set.env }));
    await waitFor(`both workers to register\n${workerLogs(workers)}`, async () => (await registered('ws-a')) && (await registered('ws-b')), 60_000);
  });

  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') console.error(`${workerLogs(workers, 60)}\n--- scheduler\n${sched?.log.lines.slice(-40).join('\n')}`);
  });

  afterAll(async () => {
    for (const w of workers) {
      if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL');
      await w.exited;
    }
    await sched?.close();
    redis?.disconnect();
    shared?.close();
    await set?.close();
    await s3?.close();
    await sb?.cleanup();
  });

  it('kill -9 of the primary while the first slow layer builds: the build completes, every layer is in the shared store, none built twice but the one in flight', async () => {
    const project = await writeProject(path.join(sb.dir, 'slow'), {
      '01_base': BUSYBOX_BASE,
      '02_a': { kind: 'build-layer', script: 'echo a-start; sleep 3; echo a > /a; echo a-end' },
      '03_b': { kind: 'build-layer', script: 'echo b-start; sleep 3; cat /a > /b; echo b-end' },
      '04_c': { kind: 'build-layer', script: 'echo c-start; sleep 3; cat /b > /c; echo c-end' },
    });
    const submit = spawnVmlb(sb, ['submit', project, '--plain'], { VMLB_SERVER: sched.url, VMLB_TOKEN: TOKENS.web });
    let out = '';
    submit.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const id = await waitFor(`vmlb submit to name its build\n${out}`, async () => /as build (b[0-9a-z]+)/.exec(out)?.[1], 60_000);

    await waitFor(
      'layer 02_a to run its script',
      async () => (await events(id)).some((e) => e.type === 'engine' && e.event.type === 'layer-log' && e.event.chunk.includes('a-start')),
      90_000,
      50,
    );
    const killed = await set.killPrimary();
    const failover = await set.waitForFailover();
    expect(failover.port).not.toBe(killed.port);
    console.log(`sentinel failover: primary ${killed.port} killed, ${failover.port} promoted in ${Math.round(failover.ms)} ms`);

    // The scheduler's health says Redis again, through the promoted replica.
    const health = await waitFor(
      '/healthz to say Redis is ok after the failover',
      async () => {
        const r = await fetch(`${sched.url}/healthz`);
        const body = (await r.json()) as { redis: string };
        return body.redis === 'ok' ? { status: r.status, body } : undefined;
      },
      30_000,
      100,
    );
    expect(health.status, JSON.stringify(health.body)).toBe(200);

    const result = await submit;
    expect(result.exitCode, `${out}\n${result.stderr}`).toBe(0);
    expect(out).toMatch(/^4 layers: 0 cached, 4 to build$/m);
    expect(out).toMatch(/^built 4, cached 0 in /m);
    // vmlb submit followed the build through the failover to its end.
    expect(out.trimEnd().split('\n').slice(-4).join('\n'), out).toMatch(/built 4, cached 0 in |its layers are in /);

    const record = await api.json('GET', `/v1/builds/${id}`);
    expect(record.body.state, JSON.stringify(record.body)).toBe('done');
    expect(record.body.layers.map((l: { status: string }) => l.status)).toEqual(['done', 'done', 'done', 'done']);
    // Every layer in the shared store, whole (its manifest is written last).
    for (const l of record.body.layers as Array<{ key: string; name: string }>) expect(await shared.getManifest(l.key), l.name).not.toBeNull();

    // Built once each; the layer in flight at the kill (02_a) at most twice.
    const all = await events(id);
    const starts = (i: number) => all.filter((e): e is JobEvent => e.type === 'job' && e.status === 'building' && e.index === i).length;
    expect([0, 2, 3].map(starts)).toEqual([1, 1, 1]);
    expect(starts(1)).toBeGreaterThanOrEqual(1);
    expect(starts(1)).toBeLessThanOrEqual(2);
    const log = all.flatMap((e) => (e.type === 'engine' && e.event.type === 'layer-log' ? [e.event.chunk] : [])).join('');
    for (const m of ['b-start', 'c-start', 'c-end']) expect(log.match(new RegExp(m, 'g')), m).toHaveLength(1);
    expect((log.match(/a-start/g) ?? []).length).toBeLessThanOrEqual(2);
    if (starts(1) > 1) console.log('sentinel failover: the layer in flight (02_a) was built again');

    // Both workers came through it: running, and registered in the promoted primary.
    for (const w of workers) expect(w.child.exitCode, w.name).toBeNull();
    await waitFor('both workers to heartbeat into the new primary', async () => (await registered('ws-a')) && (await registered('ws-b')), 20_000);
  });
});

/**
 * deploy/'s Sentinel variant, for real: the configuration compose.sentinel.yaml and the systemd
 * drop-ins use (deploy/redis: users.acl with replication.acl rendered by render-acl.sh, each data
 * node's file by node-conf.sh, each sentinel's by sentinel-conf.sh), on loopback ports. The
 * replicas sync as the ACL user replica, the sentinels watch and fail over as the ACL user
 * sentinel, and a fleet part logs in as its own user (worker) through the sentinels.
 */
describe.skipIf(missing !== null)("deploy/redis: the Sentinel variant's ACL users and config files", () => {
  const DEPLOY_REDIS = path.join(REPO, 'deploy/redis');
  const children: ResultPromise[] = [];
  let dir: string;
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await Promise.all(children.map((c) => c.catch(() => undefined)));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('replicas sync as user replica, sentinels fail over as user sentinel (and rewrite the old primary into a replica), the worker user reaches the new primary', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-deploy-sentinel-'));
    const pw = () => randomBytes(16).toString('hex');
    const secrets = { REDIS_SCHEDULER_PASSWORD: pw(), REDIS_WORKER_PASSWORD: pw(), REDIS_REPLICA_PASSWORD: pw(), REDIS_SENTINEL_AUTH_PASSWORD: pw(), REDIS_SENTINEL_PASSWORD: pw() };
    const sh = async (script: string, args: string[], env: Record<string, string>) => {
      const r = await execa('sh', [path.join(DEPLOY_REDIS, script), ...args], { env: { PATH: process.env.PATH!, ...secrets, ...env }, extendEnv: false, reject: false });
      expect(r.exitCode, `${script}: ${r.stdout}${r.stderr}`).toBe(0);
      return String(r.stdout);
    };
    const tpl = path.join(dir, 'users.tpl');
    await writeFile(tpl, (await readFile(path.join(DEPLOY_REDIS, 'users.acl'), 'utf8')) + (await readFile(path.join(DEPLOY_REDIS, 'replication.acl'), 'utf8')));
    const acl = path.join(dir, 'users.acl');
    expect(await sh('render-acl.sh', [tpl, acl], {})).toMatch(/users: default scheduler worker replica sentinel/);

    const nodePorts = [await freePort(), await freePort(), await freePort()];
    const sentinelPorts = [await freePort(), await freePort(), await freePort()];
    // Returns the child in an object: a ResultPromise returned from an async function would be awaited to its exit.
    const start = async (cmd: string, args: string[], port: number): Promise<{ child: ResultPromise }> => {
      const child = execa('setpriv', ['--pdeathsig', 'KILL', '--', cmd, ...args], { stdio: 'ignore', reject: false, cleanup: true });
      children.push(child);
      await waitFor(`${cmd} on ${port}`, () => portOpen(port), 10_000, 20);
      return { child };
    };
    const nodeConf = (i: number) => path.join(dir, `node-${i}`, 'redis.conf');
    const nodes: ResultPromise[] = [];
    for (let i = 0; i < 3; i++) {
      await mkdir(path.dirname(nodeConf(i)), { recursive: true });
      const out = await sh('node-conf.sh', [nodeConf(i)], {
        REDIS_PORT: String(nodePorts[i]),
        REDIS_BIND: '127.0.0.1',
        REDIS_ANNOUNCE_HOST: '127.0.0.1',
        REDIS_ACLFILE: acl,
        ...(i > 0 ? { REDIS_PRIMARY_HOST: '127.0.0.1', REDIS_PRIMARY_PORT: String(nodePorts[0]) } : {}),
      });
      expect(out).toContain(i > 0 ? 'a replica of 127.0.0.1' : 'the primary');
      nodes.push((await start('redis-server', [nodeConf(i)], nodePorts[i]!)).child);
    }
    // A second run keeps the file: the node's role is the sentinels' from now on.
    expect(await sh('node-conf.sh', [nodeConf(1)], { REDIS_ANNOUNCE_HOST: 'x' })).toContain('exists');
    for (let i = 0; i < 3; i++) {
      const conf = path.join(dir, `sentinel-${i}`, 'sentinel.conf');
      await mkdir(path.dirname(conf), { recursive: true });
      await sh('sentinel-conf.sh', [conf], {
        SENTINEL_PORT: String(sentinelPorts[i]),
        SENTINEL_BIND: '127.0.0.1',
        SENTINEL_ANNOUNCE_HOST: '127.0.0.1',
        REDIS_PRIMARY_HOST: '127.0.0.1',
        REDIS_PRIMARY_PORT: String(nodePorts[0]),
        SENTINEL_DOWN_AFTER_MS: '1000',
        SENTINEL_FAILOVER_TIMEOUT_MS: '3000',
      });
      await start('redis-sentinel', [conf], sentinelPorts[i]!);
    }
    const sentinelPassword = secrets.REDIS_SENTINEL_PASSWORD;
    // Both replicas linked (as user replica), every sentinel seeing them and the others (as user sentinel).
    await waitFor('the sentinels to see the whole set', async () => {
      for (const p of sentinelPorts) if (!(await sentinelSeesWholeSet(p, { name: 'vmlb', sentinelPassword, replicas: 2, sentinels: 3 }))) return false;
      return true;
    }, 30_000, 200);

    // The worker's user, through the sentinels (REDIS_URL's credentials, as compose gives them).
    const target = fleetConfigFrom({ VMLB_SHARED: 's3://bucket/p', S3_ENDPOINT: 'http://s3:9000', S3_ACCESS_KEY: 'k', S3_SECRET_KEY: 's', REDIS_URL: `redis://worker:${secrets.REDIS_WORKER_PASSWORD}@ignored:6379`, REDIS_SENTINELS: sentinelPorts.map((p) => `127.0.0.1:${p}`).join(','), REDIS_SENTINEL_PASSWORD: sentinelPassword }).redis;
    const client = redisConnection(target, 'deploy-sentinel-test');
    client.on('error', () => {});
    try {
      await client.set('vmlb:deploy-sentinel', 'before');
      // Not the default user, and not beyond the fleet's keys.
      await expect(client.set('other:key', '1')).rejects.toThrow(/NOPERM/);

      nodes[0]!.kill('SIGKILL');
      await nodes[0];
      const promoted = await waitFor('a replica promoted', async () => {
        const named = await Promise.all(sentinelPorts.map((p) => primaryPortFrom(p, 'vmlb', sentinelPassword)));
        const next = named.find((p) => p !== null && p !== nodePorts[0]);
        return next && named.filter((p) => p === next).length >= 2 ? next : undefined;
      }, 30_000, 50);
      expect(nodePorts.slice(1)).toContain(promoted);
      await client.set('vmlb:deploy-sentinel', 'after');
      expect(await client.get('vmlb:deploy-sentinel')).toBe('after');

      // The old primary comes back from its own file, as a primary: the sentinels turn it into a
      // replica and CONFIG REWRITE its file, so that a later restart keeps that role.
      await start('redis-server', [nodeConf(0)], nodePorts[0]!);
      await waitFor('the old primary rewritten as a replica', async () => new RegExp(`^replicaof 127\\.0\\.0\\.1 ${promoted}$`, 'm').test(await readFile(nodeConf(0), 'utf8')), 40_000, 250);
      await waitFor('every sentinel to see two linked replicas again', async () => {
        for (const p of sentinelPorts) if (!(await sentinelSeesWholeSet(p, { name: 'vmlb', sentinelPassword, replicas: 2, sentinels: 3 }))) return false;
        return true;
      }, 30_000, 200);
    } finally {
      client.disconnect();
    }
  });
});

/**
 * `npm run fleet` survives its parts, with real processes and real kills: a SIGKILLed
 * scheduler is started again on the same port with the same token and the builds it knew; a
 * SIGKILL of the launcher's whole process group mid-build leaves no process it started (every
 * part has a parent-death signal), only what the workers attached, which the next start on the
 * same folder sweeps; and a part that dies at once every time is given up on in one line.
 *
 * The fleet here runs its own s3rver (no S3_ENDPOINT), so that it too is one of its parts; with
 * VMLB_TEST_S3=radosgw (npm run test:radosgw) it is given this file's radosgw as S3_ENDPOINT
 * instead, and a prefix of its own there (VMLB_SHARED).
 */
import { execa, type ResultPromise } from 'execa';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevFleet, type DevFleet } from './helpers/dev-fleet.js';
import { waitFor } from './helpers/fleet-api.js';
import { s3Kind, startS3Server, type S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, REPO, leftovers, sandbox, spawnVmlb, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';
import { primaryPortFrom, roleOf } from '../apps/scheduler/src/sentinel-set.js';

const WORKER_MAIN = path.join(REPO, 'apps/worker/src/main.ts');
const workerMissing = !existsSync(WORKER_MAIN);
if (workerMissing) console.warn(`dev-fleet.test.ts skipped: ${WORKER_MAIN} does not exist yet`);

/** A sleep no other test runs, to find this file's layer scripts by. */
const SLEEP = 'sleep 6171';

interface Proc {
  pid: number;
  ppid: number;
  state: string;
  args: string;
}

async function processes(): Promise<Map<number, Proc>> {
  const table = new Map<number, Proc>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    if (!stat) continue;
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const args = (await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ').trim();
    table.set(Number(name), { pid: Number(name), ppid: Number(ppid), state: state!, args });
  }
  return table;
}

/** The pids of every process below `root` (not root itself). */
function descendants(table: Map<number, Proc>, root: number): number[] {
  const found: number[] = [];
  const walk = (pid: number) => {
    for (const p of table.values()) {
      if (p.ppid === pid && !found.includes(p.pid)) {
        found.push(p.pid);
        walk(p.pid);
      }
    }
  };
  walk(root);
  return found;
}

/** Processes (not zombies) whose environment or arguments name `dir`, other than this one. */
async function processesNaming(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const p of (await processes()).values()) {
    if (p.pid === process.pid || p.state === 'Z') continue;
    const environ = await readFile(`/proc/${p.pid}/environ`, 'utf8').catch(() => '');
    if (environ.includes(dir) || p.args.includes(dir)) found.push(`${p.pid} (parent ${p.ppid}) ${p.args}`);
  }
  return found;
}

/** Waits until none of `pids` runs any more (gone, or a zombie waiting for init); returns those that still do. */
async function survivors(pids: number[], withinMs: number): Promise<string[]> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const table = await processes();
    const alive = pids.map((pid) => table.get(pid)).filter((p): p is Proc => !!p && p.state !== 'Z');
    if (alive.length === 0 || Date.now() > deadline) return alive.map((p) => `${p.pid} (parent ${p.ppid}) ${p.args}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** What the engine attached for builds of this test (loop devices, mounts), not processes. */
async function attached(sb: Sandbox): Promise<string[]> {
  return (await leftovers(sb)).filter((l) => !l.startsWith('process '));
}

async function buildState(sb: Sandbox, fleet: DevFleet, id: string): Promise<string | undefined> {
  const list = await vmlb(sb, ['builds', '--json'], fleet.exported);
  if (list.exitCode !== 0) return undefined;
  return (JSON.parse(list.stdout) as Array<{ id: string; state: string }>).find((b) => b.id === id)?.state;
}

describe.skipIf(workerMissing)('npm run fleet survives its parts', () => {
  let sb: Sandbox;
  let fleet: DevFleet | undefined;
  let fleetDir: string;
  let submit: ResultPromise | undefined;
  let slowBuild = '';
  let debris: string[] = [];
  let s3: S3Server | undefined;
  /** Its own s3rver (S3_ENDPOINT empty), or this file's server and a prefix of its own there. */
  const s3Env = (): Record<string, string> => (s3 ? { ...s3.env, VMLB_SHARED: `s3://vmlb-test/dev-fleet-${randomBytes(4).toString('hex')}` } : { S3_ENDPOINT: '', VMLB_SHARED: '' });
  let fleetS3: Record<string, string> = {};
  const fleetEnv = () => ({ ...fleetS3, VMLB_FLEET_DIR: fleetDir, VMLB_WORKER_SLOTS: '2' });

  beforeAll(async () => {
    sb = await sandbox('dev-fleet');
    if (s3Kind() === 'radosgw') s3 = await startS3Server();
    // The same store across the fleet's restarts on the same folder.
    fleetS3 = s3Env();
    fleetDir = path.join(sb.dir, 'fleet');
    fleet = await startDevFleet({ env: fleetEnv(), workers: 2 });
  });

  afterAll(async () => {
    submit?.kill('SIGKILL');
    await fleet?.stop();
    await execa('pkill', ['-KILL', '-f', SLEEP], { reject: false });
    await s3?.close();
    await sb?.cleanup();
  });

  it('kill -9 of the scheduler: restarted on the same port, the same token works, a build submitted before the kill is known and finishes', async () => {
    const f = fleet!;
    const project = await writeProject(path.join(sb.dir, 'quick'), {
      '01_base': BUSYBOX_BASE,
      '02_wait': { kind: 'build-layer', script: 'sleep 3; echo waited > /etc/waited' },
    });
    const sub = await vmlb(sb, ['submit', project, '--detach'], f.exported);
    expect(sub.exitCode, sub.stderr).toBe(0);
    const id = sub.stdout.trim();
    expect(id).toMatch(/^b[0-9a-z]+$/);

    const old = f.pids().scheduler!;
    process.kill(old, 'SIGKILL');
    const port = new URL(f.exported.VMLB_SERVER).port;
    await waitFor('the scheduler restarted', async () => f.pids().scheduler !== old, 30_000);
    expect(f.errors).toMatch(new RegExp(`^fleet: scheduler \\(pid ${old}\\) died \\(signal SIGKILL\\) after [\\d.]+ s: restarting it in 1 s \\(same port ${port}, same token\\)$`, 'm'));
    expect(f.errors).toMatch(new RegExp(`^fleet: restarted scheduler \\(pid ${f.pids().scheduler}\\)$`, 'm'));
    expect((await fetch(`${f.exported.VMLB_SERVER}/healthz`)).ok).toBe(true);

    // The same token, the same build (its record is in Redis, which the restart kept).
    const list = await vmlb(sb, ['builds', '--json'], f.exported);
    expect(list.exitCode, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as Array<{ id: string }>).map((b) => b.id)).toContain(id);
    const final = await waitFor('the build to finish', async () => {
      const s = await buildState(sb, f, id);
      return s && !['queued', 'building'].includes(s) ? s : undefined;
    }, 150_000, 1000);
    expect(final, f.errors.slice(-3000)).toBe('done');
  });

  it('kill -9 of Redis and of a worker: each restarted (same port and data, same store), the builds still known', async () => {
    const f = fleet!;
    const before = await vmlb(sb, ['builds', '--json'], f.exported);
    expect(before.exitCode, before.stderr).toBe(0);
    const known = (JSON.parse(before.stdout) as Array<{ id: string; state: string }>).map((b) => `${b.id} ${b.state}`);
    expect(known.length).toBeGreaterThan(0);
    const { redis, 'worker-1': worker } = f.pids();
    process.kill(redis!, 'SIGKILL');
    process.kill(worker!, 'SIGKILL');
    await waitFor('Redis and the worker restarted', async () => f.pids().redis !== redis && f.pids()['worker-1'] !== worker, 60_000, 200);
    expect(f.errors).toMatch(new RegExp(`^fleet: redis \\(pid ${redis}\\) died \\(signal SIGKILL\\) after [\\d.]+ s: restarting it in 1 s \\(same port ${f.ports.redis}, same data in \\S+\\)$`, 'm'));
    expect(f.errors).toMatch(new RegExp(`^fleet: worker-1 \\(pid ${worker}\\) died \\(signal SIGKILL\\) after [\\d.]+ s: restarting it in 1 s \\(same id dev-worker-1, same store in \\S+, same metrics port \\d+\\)$`, 'm'));
    // Redis came back with every write it had (append-only file, fsync always).
    const after = await waitFor('the builds again', async () => {
      const r = await vmlb(sb, ['builds', '--json'], f.exported);
      return r.exitCode === 0 ? (JSON.parse(r.stdout) as Array<{ id: string; state: string }>).map((b) => `${b.id} ${b.state}`) : undefined;
    }, 20_000, 500);
    expect(after).toEqual(known);
  });

  it('kill -9 of the launcher\'s process group mid-build: within seconds no process it started remains; the workers leave only what they attached', async () => {
    const f = fleet!;
    const project = await writeProject(path.join(sb.dir, 'slow'), {
      '01_base': BUSYBOX_BASE,
      '02_slow': { kind: 'build-layer', script: `echo data > /etc/slow\necho READY-MARK\n${SLEEP}` },
    });
    submit = spawnVmlb(sb, ['submit', project, '--plain'], f.exported);
    let out = '';
    submit.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('the slow layer to run', async () => out.includes('READY-MARK'), 150_000, 200);
    slowBuild = /as build (b[0-9a-z]+)/.exec(out)![1]!;

    const launcher = await f.launcherPid();
    const table = await processes();
    expect(table.get(launcher)?.args).toMatch(/dev-fleet\.ts/);
    const tree = descendants(table, launcher);
    const parts = Object.values(f.pids());
    for (const pid of parts) expect(tree).toContain(pid);
    // The script's sleep is below a worker, its helpers too.
    const sleeper = [...table.values()].find((p) => p.args === SLEEP);
    expect(sleeper && tree.includes(sleeper.pid), `no ${SLEEP} below the launcher`).toBe(true);

    f.signal('SIGKILL');
    await f.proc;
    submit.kill('SIGKILL');
    await submit;
    submit = undefined;

    // Every process below the launcher dies with it (parent-death signals all the way down),
    // none left running with parent 1.
    expect(await survivors([launcher, ...tree], 5000)).toEqual([]);
    expect(await processesNaming(fleetDir)).toEqual([]);
    expect(String((await execa('pgrep', ['-af', SLEEP], { reject: false })).stdout)).toBe('');
    // What the engine's start-up sweep removes: loop devices and mounts of the run folder.
    debris = await attached(sb);
    for (const d of debris) expect(d).toMatch(/^(loop|mount) /);
  });

  it('the next start on the same folder (with --prometheus) sweeps what the killed workers attached and still knows the builds', async () => {
    expect(slowBuild).not.toBe('');
    fleet = await startDevFleet({ env: fleetEnv(), workers: 2, args: ['--prometheus'] });
    const f = fleet;
    if (process.env.VMLB_TEST_DEBUG) console.log('debris', debris, /cleaned up after an interrupted run[^"]*/.exec(f.errors)?.[0]);
    if (debris.length > 0) expect(f.errors).toMatch(/cleaned up after an interrupted run/);
    // A new launcher, a new token: the builds are the dev team's, kept in the fleet's Redis.
    const list = await vmlb(sb, ['builds', '--json'], f.exported);
    expect(list.exitCode, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as Array<{ id: string }>).map((b) => b.id)).toContain(slowBuild);
    const cancel = await vmlb(sb, ['cancel', slowBuild], f.exported);
    expect(cancel.exitCode, `${cancel.stdout}${cancel.stderr}`).toBe(0);
    await waitFor('the slow build cancelled', async () => (await buildState(sb, f, slowBuild)) === 'cancelled', 60_000, 500);
    await waitFor('its script stopped', async () => String((await execa('pgrep', ['-af', SLEEP], { reject: false })).stdout) === '', 30_000, 200);
    expect(await attached(sb)).toEqual([]);
  });

  it('metrics: each worker answers /metrics on its own printed port; --prometheus runs a prometheus on the fleet\'s config, every target up', async () => {
    const f = fleet!;
    const line = /^fleet: metrics: scheduler (\S+)\/metrics((?:, worker-\d+ \S+)*)$/m.exec(f.errors);
    expect(line, f.errors).not.toBeNull();
    const workerUrls = [...line![2]!.matchAll(/worker-\d+ (http:\/\/127\.0\.0\.1:\d+\/metrics)/g)].map((m) => m[1]!);
    expect(workerUrls.length).toBe(2);
    expect(new Set(workerUrls).size).toBe(2);
    const ids = new Set<string>();
    for (const url of workerUrls) {
      const text = await (await fetch(url)).text();
      expect(text).toMatch(/^vmlb_worker_slots\{/m);
      ids.add(/worker="([^"]+)"/.exec(text)![1]!);
    }
    expect([...ids].sort()).toEqual(['dev-worker-1', 'dev-worker-2']);
    const promUrl = /^fleet: prometheus: (http:\/\/127\.0\.0\.1:\d+) \(config (\S+),/m.exec(f.errors);
    expect(promUrl, f.errors).not.toBeNull();
    expect(promUrl![2]).toBe(path.join(fleetDir, 'prometheus.yml'));
    type Target = { labels: { job: string; instance: string }; health: string; lastError: string };
    const targets = async () => ((await (await fetch(`${promUrl![1]}/api/v1/targets`)).json()) as { data: { activeTargets: Target[] } }).data.activeTargets;
    await waitFor('every prometheus target up', async () => {
      const t = await targets();
      return t.length === 3 && t.every((x) => x.health === 'up');
    }, 45_000, 500).catch(() => undefined);
    const t = await targets();
    expect(t.map((x) => [x.labels.job, x.labels.instance, x.health, x.lastError]).sort()).toEqual(
      [
        ['vmlb-scheduler', new URL(f.exported.VMLB_SERVER).host, 'up', ''],
        ...workerUrls.map((u) => ['vmlb-worker', new URL(u).host, 'up', '']),
      ].sort(),
    );
    // The deploy rules are loaded.
    const rules = (await (await fetch(`${promUrl![1]}/api/v1/rules`)).json()) as { data: { groups: Array<{ rules: Array<{ name: string }> }> } };
    expect(rules.data.groups.flatMap((g) => g.rules.map((r) => r.name))).toContain('VmlbCacheHitRatioLow');
  });

  it('a scheduler that dies at once every time (its port taken) is given up on in one line, and the fleet stops leaving nothing', async () => {
    const f = fleet!;
    const port = Number(new URL(f.exported.VMLB_SERVER).port);
    const pids = Object.values(f.pids());
    const launcher = await f.launcherPid();
    const tree = descendants(await processes(), launcher);
    process.kill(f.pids().scheduler!, 'SIGKILL');
    const squatter = net.createServer();
    await waitFor('the scheduler\'s port', () => new Promise<boolean>((resolve) => {
      squatter.once('error', () => resolve(false));
      squatter.listen(port, '127.0.0.1', () => resolve(true));
    }), 5000, 20);
    try {
      const t0 = Date.now();
      const r = await f.proc;
      expect(r.exitCode, f.errors.slice(-3000)).toBe(1);
      expect(Date.now() - t0).toBeLessThan(90_000);
    } finally {
      squatter.close();
    }
    const fleetLines = f.errors.split('\n').filter((l) => l.startsWith('fleet: '));
    // The kill, then deaths at once (EADDRINUSE), each reported with the restart, then one line.
    expect(fleetLines.filter((l) => /^fleet: scheduler \(pid \d+\) died \(exit code 1\) after [\d.]+ s: restarting it in [\d.]+ s \(same port/.test(l)).length).toBeGreaterThanOrEqual(3);
    expect(fleetLines.filter((l) => /giving up/.test(l))).toEqual(['fleet: scheduler died (exit code 1) 5 times in a row within 30 s of starting: giving up on it, stopping the fleet']);
    expect(fleetLines.at(-1)).toBe('fleet: stopped');
    expect(await survivors([launcher, ...tree, ...pids], 5000)).toEqual([]);
    expect(await processesNaming(fleetDir)).toEqual([]);
    expect(await attached(sb)).toEqual([]);
  });

  it('a fleet in a temporary folder, killed with SIGKILL, is swept and removed by the next npm run fleet', async () => {
    await fleet?.stop();
    const tempEnv = { ...s3Env(), VMLB_FLEET_DIR: '' };
    const stateDir = (f: DevFleet) => /^fleet: up: .*; state in (\S+)$/m.exec(f.errors)![1]!;
    const killed = await startDevFleet({ env: tempEnv, workers: 1 });
    const dir = stateDir(killed);
    const launcher = await killed.launcherPid();
    killed.signal('SIGKILL');
    await killed.proc;
    expect(await survivors([launcher, ...Object.values(killed.pids())], 5000)).toEqual([]);
    expect(existsSync(path.join(dir, 'launcher.json'))).toBe(true);

    fleet = await startDevFleet({ env: tempEnv, workers: 1 });
    expect(fleet.errors).toContain(`fleet: removed the state of a killed fleet (launcher pid ${launcher}) in ${dir}`);
    expect(existsSync(dir)).toBe(false);
    const own = stateDir(fleet);
    await fleet.stop();
    expect(existsSync(own)).toBe(false);
  });
});

describe.skipIf(workerMissing || !existsSync('/usr/bin/redis-sentinel'))('npm run fleet -- --sentinel', () => {
  let sb: Sandbox;
  let fleet: DevFleet | undefined;
  let s3: S3Server | undefined;

  beforeAll(async () => {
    sb = await sandbox('dev-fleet-sentinel');
    if (s3Kind() === 'radosgw') s3 = await startS3Server();
  });

  afterAll(async () => {
    await fleet?.stop();
    await s3?.close();
    await sb?.cleanup();
  });

  it('a primary, two replicas and three sentinels: kill -9 of the primary, a replica takes over, the next build completes, the killed node comes back as a replica', async () => {
    const fleetDir = path.join(sb.dir, 'fleet');
    const s3env: Record<string, string> = s3 ? { ...s3.env, VMLB_SHARED: `s3://vmlb-test/dev-fleet-sentinel-${randomBytes(4).toString('hex')}` } : { S3_ENDPOINT: '', VMLB_SHARED: '' };
    fleet = await startDevFleet({ env: { ...s3env, VMLB_FLEET_DIR: fleetDir, VMLB_WORKER_SLOTS: '2' }, workers: 1, args: ['--sentinel'] });
    const f = fleet;
    expect(f.errors).toMatch(/^fleet: up: scheduler \S+, Redis sentinels [\d.:,]+ \(master vmlb; primary redis-1 on port \d+, replicas redis-2 and redis-3; /m);
    expect(f.sentinelPorts).toHaveLength(3);
    for (const part of ['redis-1', 'redis-2', 'redis-3', 'sentinel-1', 'sentinel-2', 'sentinel-3']) expect(f.pids()[part], part).toBeGreaterThan(0);
    const { sentinelPassword, password } = JSON.parse(await readFile(path.join(fleetDir, 'redis-sentinel/secrets.json'), 'utf8')) as { sentinelPassword: string; password: string };
    const primary = () => primaryPortFrom(f.sentinelPorts[0]!, 'vmlb', sentinelPassword);

    const project = async (name: string, text: string) => writeProject(path.join(sb.dir, name), { '01_base': BUSYBOX_BASE, '02_text': { kind: 'build-layer', script: `echo ${text} > /etc/text` } });
    const first = await vmlb(sb, ['submit', await project('one', 'one'), '--plain'], f.exported);
    expect(first.exitCode, `${first.stdout}${first.stderr}\n${f.errors.slice(-3000)}`).toBe(0);
    const firstId = /as build (b[0-9a-z]+)/.exec(first.stdout)![1]!;

    const oldPort = (await primary())!;
    const old = f.pids()['redis-1']!;
    process.kill(old, 'SIGKILL');
    const newPort = await waitFor('the sentinels to promote a replica', async () => {
      const p = await primary();
      return p && p !== oldPort && (await roleOf(p, password)) === 'master' ? p : undefined;
    }, 30_000, 100);
    expect(f.errors).toMatch(new RegExp(`^fleet: redis-1 \\(pid ${old}\\) died \\(signal SIGKILL\\) after [\\d.]+ s: restarting it in 10 s \\(same port ${oldPort}, `, 'm'));

    const second = await vmlb(sb, ['submit', await project('two', 'two'), '--plain'], f.exported);
    expect(second.exitCode, `${second.stdout}${second.stderr}\n${f.errors.slice(-3000)}`).toBe(0);
    expect(second.stdout).toMatch(/^built 1, cached 1 in /m);
    // The first build's record came through too, from the promoted replica.
    const list = await vmlb(sb, ['builds', '--json'], f.exported);
    expect((JSON.parse(list.stdout) as Array<{ id: string; state: string }>).find((b) => b.id === firstId)?.state).toBe('done');
    // The killed node, restarted after the failover, is a replica of the new primary.
    await waitFor('redis-1 back as a replica', async () => f.pids()['redis-1'] !== old && (await roleOf(oldPort, password)) === 'slave', 30_000, 200);
    expect(await primary(), `a second failover?\n${f.errors.slice(-4000)}`).toBe(newPort);

    const pids = Object.values(f.pids());
    await f.stop();
    expect(await survivors(pids, 5000)).toEqual([]);
    fleet = undefined;
  });
});

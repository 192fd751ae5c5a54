/**
 * Two scheduler processes behind a real load balancer, and the leader killed mid-build. Two
 * `node apps/scheduler/src/main.ts` processes (each on its own port) on one Redis, one S3 shared
 * store and one PostgreSQL database, with the production lease (ttl 5 s, renewed every 1 s);
 * Debian's haproxy in front (test/helpers/haproxy.ts: health checks on /healthz, leastconn, long
 * timeouts for the SSE streams); one real worker process; a project whose second layer sleeps
 * 8 s. Three `vmlb submit` clients of that project: two through haproxy (leastconn puts their
 * event streams one on each scheduler, checked in haproxy's stats) and one straight to the
 * scheduler that does not lead; and a fourth build of it that nobody follows (`--detach`, to the
 * leader), which only a new leader adopting the history's unfinished builds can finish. Then
 * kill -9 of the leading scheduler while the slow layer runs, and: the other one takes the lease
 * over, haproxy takes the dead one out, every build is done with each layer built once in the
 * fleet, and each client followed its build to the end (the one whose stream was on the dead
 * scheduler saying it lost it and was reconnected through haproxy before the build moved on).
 * Nothing is left running.
 */
import { Redis } from 'ioredis';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ResultPromise } from 'execa';
import type { FleetEvent } from '../libs/fleet/src/build-record.js';
import { readEvents } from '../libs/fleet/src/event-stream.js';
import { redisKeys } from '../libs/fleet/src/names.js';
import { TOKENS, waitFor, writeTeamsFile } from './helpers/fleet-api.js';
import { startFleetServices, type FleetServices } from './helpers/fleet-services.js';
import { HAPROXY, startHaproxy, type Haproxy } from './helpers/haproxy.js';
import { withTestDatabase } from './helpers/postgres.js';
import { startSchedulerProcess, type SchedulerProcess } from './helpers/scheduler-process.js';
import { BUSYBOX_BASE, leftovers, spawnVmlb, vmlb, writeProject } from './helpers/vmlb.js';
import { WORKER_MAIN, startWorkerProcess, workerLogs, type WorkerProcess } from './helpers/worker-process.js';

const missing = process.env.REDIS_URL
  ? 'REDIS_URL is set: the suite cannot use a private Redis'
  : !existsSync(HAPROXY)
    ? `${HAPROXY} is not installed (apt-get install haproxy)`
    : !existsSync(WORKER_MAIN)
      ? `${WORKER_MAIN} does not exist`
      : null;
if (missing) console.warn(`scheduler-ha.test.ts skipped: ${missing}`);

/** How long the slow layer sleeps: the leader is killed while it runs. */
const SLOW_S = 8;

interface Client {
  name: string;
  child: ResultPromise;
  out: () => string;
  /** Its output lines, each with when it came (Date.now()). */
  seen: Array<{ at: number; line: string }>;
  /** Its build id, once it said it submitted. */
  build?: string;
}

/** Processes (not zombies) among `pids` still running after `withinMs`. */
async function survivors(pids: number[], withinMs: number): Promise<string[]> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const alive: string[] = [];
    for (const pid of pids) {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
      if (stat && stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z') alive.push(`${pid} ${(await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ')}`);
    }
    if (alive.length === 0 || Date.now() > deadline) return alive;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Processes other than this one whose environment or arguments name `dir`. */
async function processesNaming(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    if (!stat || stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z') continue;
    const environ = await readFile(`/proc/${name}/environ`, 'utf8').catch(() => '');
    const args = (await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ');
    if (environ.includes(dir) || args.includes(dir)) found.push(`${name} ${args}`);
  }
  return found;
}

describe.skipIf(missing !== null)('two scheduler processes behind haproxy', () => {
  let services: FleetServices;
  let redis: Redis;
  let lb: Haproxy;
  let worker: WorkerProcess;
  const schedulers: SchedulerProcess[] = [];
  const clients: Client[] = [];
  const pids: number[] = [];

  const diagnostics = () =>
    [
      ...schedulers.map((s) => `--- scheduler ${s.name} (pid ${s.pid}, ${s.url})\n${s.log.slice(-25).join('\n')}`),
      `--- haproxy\n${lb?.log.slice(-20).join('\n')}`,
      workerLogs(worker ? [worker] : [], 25),
      ...clients.map((c) => `--- vmlb submit (${c.name})\n${c.out().slice(-3000)}`),
    ].join('\n');

  async function stopAll(): Promise<void> {
    for (const c of clients) if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill('SIGKILL');
    await Promise.allSettled(clients.map((c) => c.child));
    await Promise.allSettled(schedulers.map((s) => s.stop()));
    await worker?.stop();
    await lb?.close();
  }

  beforeAll(async () => {
    services = await startFleetServices('scheduler-ha');
    redis = new Redis(services.redis.url, { maxRetriesPerRequest: null });
    const env = await withTestDatabase(services.env);
    const teamsFile = await writeTeamsFile(services.sb.dir);
    // Both at once, as a deploy starts them; whichever takes the lease first leads.
    const started = await Promise.allSettled(['a', 'b'].map((name) => startSchedulerProcess({ name, env, teamsFile })));
    for (const s of started) if (s.status === 'fulfilled') schedulers.push(s.value);
    for (const s of started) if (s.status === 'rejected') throw s.reason;
    pids.push(...schedulers.map((s) => s.pid));
    lb = await startHaproxy({ dir: services.sb.dir, backends: schedulers.map((s) => ({ name: s.name, url: s.url })) });
    pids.push(lb.pid);
    for (const s of schedulers) await lb.waitForStatus(s.name, 'UP');
    worker = startWorkerProcess({ name: 'ha', dir: services.sb.dir, redisUrl: services.redis.url, sharedUrl: services.sharedUrl, s3env: services.s3.env, env: { VMLB_WORKER_SLOTS: '3' } });
    pids.push(worker.child.pid!);
    await waitFor('the worker to register', async () => (await redis.keys(redisKeys.worker('*'))).length > 0, 60_000, 200);
  });

  afterAll(async () => {
    await stopAll();
    redis?.disconnect();
    await services?.close();
  });

  it('kill -9 of the leader mid-build: the other takes the lease over, the build finishes once, every vmlb submit follows it to the end', async () => {
    const sb = services.sb;
    const project = await writeProject(path.join(sb.dir, 'slow'), {
      '01_base': BUSYBOX_BASE,
      '02_slow': { kind: 'build-layer', script: `echo slow layer starts\nsleep ${SLOW_S}\necho slow > /etc/slow\necho slow layer done` },
    });
    const healths = await Promise.all(schedulers.map((s) => s.health()));
    expect(healths.map((h) => h?.ok)).toEqual([true, true]);
    expect(healths.filter((h) => h!.leader), JSON.stringify(healths)).toHaveLength(1);
    const leader = schedulers[healths.findIndex((h) => h!.leader)]!;
    const other = schedulers.find((s) => s !== leader)!;
    expect((await leader.health())!.scheduler).not.toBe((await other.health())!.scheduler);

    const submit = (name: string, server: string): Client => {
      let out = '';
      const child = spawnVmlb(sb, ['submit', project, '--plain', '--no-pull', '--name', `ha-${name}`], { VMLB_SERVER: server, VMLB_TOKEN: TOKENS.web });
      const c: Client = { name, child, out: () => out, seen: [] };
      const take = (d: Buffer) => {
        out += d.toString();
        for (const line of d.toString().split('\n').filter(Boolean)) c.seen.push({ at: Date.now(), line });
      };
      child.stdout!.on('data', take);
      child.stderr!.on('data', take);
      clients.push(c);
      pids.push(child.pid!);
      return c;
    };
    const submitted = async (c: Client) => {
      c.build = await waitFor(`vmlb submit (${c.name}) to submit`, async () => /as build (b[0-9a-z]+)/.exec(c.out())?.[1] ?? (c.child.exitCode !== null ? Promise.reject(new Error(`vmlb submit (${c.name}) exited ${c.child.exitCode}:\n${c.out()}`)) : undefined), 60_000);
      return c.build;
    };
    /** haproxy's current sessions per backend (an open event stream is one). */
    const sessions = async () => Object.fromEntries((await lb.backends()).map((b) => [b.name, b.sessions]));

    // One client straight to the scheduler that does not lead.
    const direct = submit('direct', other.url);
    await submitted(direct);
    // Two through haproxy, one after the other: leastconn puts the second stream beside the first.
    const lbClients: Client[] = [];
    const streamOn = new Map<Client, string>();
    for (const name of ['lb-1', 'lb-2']) {
      const c = submit(name, lb.url);
      lbClients.push(c);
      await submitted(c);
      const want = lbClients.length;
      const s = await waitFor(`the event stream of ${name} open through haproxy`, async () => {
        const now = await sessions();
        return Object.values(now).reduce((a, b) => a + b, 0) === want ? now : undefined;
      }, 20_000, 50);
      const server = Object.keys(s).find((k) => s[k]! > 0 && ![...streamOn.values()].includes(k));
      if (!server) throw new Error(`both event streams through haproxy are on one scheduler: ${JSON.stringify(s)}\n${diagnostics()}`);
      streamOn.set(c, server);
    }
    expect(await sessions()).toEqual({ a: 1, b: 1 });
    const onLeader = lbClients.find((c) => streamOn.get(c) === leader.name)!;
    const onOther = lbClients.find((c) => streamOn.get(c) === other.name)!;
    // And one that nobody follows, submitted to the leader: only a leader that adopts the
    // history's unfinished builds finishes it.
    const detached = await vmlb(sb, ['submit', project, '--detach', '--no-pull', '--name', 'ha-detached'], { VMLB_SERVER: leader.url, VMLB_TOKEN: TOKENS.web });
    expect(detached.exitCode, detached.stderr).toBe(0);
    const unfollowed = detached.stdout.trim();
    const builds = [...clients.map((c) => c.build!), unfollowed];
    expect(new Set(builds).size).toBe(4);

    const events = async (id: string): Promise<Array<{ id: string; event: FleetEvent }>> => readEvents(redis, id, '0', { count: 100_000 });
    const all = async () => (await Promise.all(builds.map(events))).flat();
    type JobEvent = Extract<FleetEvent, { type: 'job' }>;
    const jobs = (es: Array<{ event: FleetEvent }>, status: JobEvent['status'], index: number) =>
      es.map((e) => e.event).filter((e): e is JobEvent => e.type === 'job' && e.status === status && e.index === index);

    // The slow layer runs (in whichever build's job took the layer's claim): kill -9 of the leader.
    await waitFor('the slow layer to be building', async () => jobs(await all(), 'building', 1).length > 0, 90_000, 100).catch((e: Error) => {
      throw new Error(`${e.message}\n${diagnostics()}`);
    });
    expect(jobs(await all(), 'done', 1), 'the slow layer finished before the kill').toEqual([]);
    const killedAt = Date.now();
    process.kill(leader.pid, 'SIGKILL');
    const death = await leader.exited;
    expect(death.signal).toBe('SIGKILL');

    // haproxy takes the dead one out; the other takes the lease over (ttl 5 s, a try every 1 s).
    const [outMs, takeoverMs] = await Promise.all([
      lb.waitForStatus(leader.name, 'DOWN', 30_000).then(() => Date.now() - killedAt),
      waitFor('the other scheduler to lead', async () => (await other.health())?.leader === true, 30_000, 50).then(() => Date.now() - killedAt),
    ]);
    console.log(`scheduler-ha: haproxy took the dead scheduler out ${outMs} ms after the kill; the other led after ${takeoverMs} ms`);
    // 5 s of lease and a try every second: about 6 s; more only when the host is slow to schedule us.
    expect(takeoverMs).toBeLessThan(12_000);
    expect(other.log.join('\n')).toMatch(/following builds: this scheduler leads/);

    // Every client follows its build to the end.
    const results = await Promise.all(
      clients.map((c) =>
        Promise.race([
          c.child,
          new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`vmlb submit (${c.name}) did not finish within 90 s of the kill\n${diagnostics()}`)), 90_000)),
        ]),
      ),
    );
    for (const [i, c] of clients.entries()) expect(results[i]!.exitCode, `vmlb submit (${c.name}):\n${c.out()}\n${diagnostics()}`).toBe(0);
    // The one whose stream was on the dead scheduler lost it, and haproxy reconnected it to the other.
    expect(onLeader.out()).toMatch(new RegExp(`lost the scheduler \\(.*\\); reconnecting — build ${onLeader.build} goes on in the fleet meanwhile`));
    expect(onLeader.out()).toMatch(new RegExp(`reached the scheduler again after \\d+ s; following build ${onLeader.build} from where it was`));
    expect(onLeader.out().match(/lost the scheduler/g)).toHaveLength(1);
    // The others never noticed.
    for (const c of [onOther, direct]) expect(c.out(), c.name).not.toMatch(/lost the scheduler/);
    for (const c of clients) expect(c.out(), c.name).toMatch(/02_slow/);

    // Done in the history (asked through haproxy, so the survivor answers), each layer built once.
    const record = async (id: string) => (await (await fetch(`${lb.url}/v1/builds/${id}`, { headers: { authorization: `Bearer ${TOKENS.web}` } })).json()) as { state: string; layers: Array<{ status: string }> };
    await waitFor('the unfollowed build to be done', async () => (await record(unfollowed)).state === 'done', 30_000, 200).catch(async (e: Error) => {
      throw new Error(`${e.message}: it is ${JSON.stringify(await record(unfollowed))}\n${diagnostics()}`);
    });
    for (const id of builds) {
      const rec = await record(id);
      expect(rec.state, JSON.stringify(rec)).toBe('done');
      expect(rec.layers.map((l) => l.status).every((s) => s === 'done' || s === 'hit'), JSON.stringify(rec)).toBe(true);
    }
    const es = await all();
    for (const index of [0, 1]) {
      expect(jobs(es, 'building', index), `layer ${index}: built once in the fleet`).toHaveLength(1);
      expect(es.filter((e) => e.event.type === 'engine' && e.event.event.type === 'layer-done' && e.event.index === index), `layer ${index}: one layer-done`).toHaveLength(1);
    }
    // Its `done` came after the kill: the new leader folded it.
    const slowDone = jobs(es, 'done', 1).filter((e) => e.seconds !== undefined);
    expect(slowDone).toHaveLength(1);
    expect(slowDone[0]!.at).toBeGreaterThan(killedAt);
    // The reconnected stream was open (and said so) before that event: it did not wait for it.
    const reached = onLeader.seen.find((l) => /reached the scheduler again/.test(l.line))!;
    expect(reached.at, `${onLeader.name} said it reached the scheduler again only ${reached.at - slowDone[0]!.at} ms after the slow layer's done`).toBeLessThan(slowDone[0]!.at);
    // Each build's stream says the (new) leader stored its final record.
    for (const id of builds) expect((await events(id)).some((e) => e.event.type === 'ended'), id).toBe(true);
    expect(lb.log.join('\n')).toMatch(new RegExp(`Server schedulers/${leader.name} is DOWN`));
  });

  it('leaves nothing running', async () => {
    await stopAll();
    expect(await survivors(pids, 10_000)).toEqual([]);
    expect(await processesNaming(services.sb.dir)).toEqual([]);
    expect(await leftovers(services.sb)).toEqual([]);
  });
});

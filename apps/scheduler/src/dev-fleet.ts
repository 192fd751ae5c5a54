/**
 * `npm run fleet`: a whole fleet on this machine, on loopback, for trying `vmlb submit`:
 * a private redis-server, the S3 test server (s3rver, or the MinIO named by S3_ENDPOINT with
 * S3_ACCESS_KEY/S3_SECRET_KEY), a private PostgreSQL for the build history (initdb in the
 * fleet's folder, run as Debian's postgres user; private-postgres.ts), the scheduler, the web dashboard when there is one, and two
 * workers. It prints the scheduler's URL and a development token as two shell lines,
 *
 *   export VMLB_SERVER=http://127.0.0.1:PORT
 *   export VMLB_TOKEN=…
 *
 * on stdout (everything else goes to stderr, each child's lines prefixed with its name), and
 * stops everything, workers first, on Ctrl-C or SIGTERM.
 *
 * A part that dies is started again on the same port, with the same token and the same state
 * (Redis persists every write to its folder; s3rver's folder and the worker stores are kept),
 * after a backoff (1 s, doubling up to 15 s). A part that dies again within 30 s of starting,
 * 5 times in a row, is given up on; the fleet stops when that part is Redis, S3 or the
 * scheduler. Every child is started through `setpriv --pdeathsig KILL`, so none outlives this
 * launcher, even when it is killed with SIGKILL; a worker killed that way mid-build leaves only
 * what the engine's start-up sweep removes (loop devices, mounts), which the next start of that
 * worker does (a kept VMLB_FLEET_DIR), or the next `npm run fleet` (a temporary folder).
 *
 *   VMLB_FLEET_WORKERS   how many workers (with VMLB_FLEET_TEAMS: per pool)  @default 2 (per pool: 1)
 *   VMLB_FLEET_TEAMS     teams and their pools, TEAM:POOL,…  (e.g. web:a,db:b,base:platform)
 *                        @default one admin team `dev` in pool `default`; given, the teams
 *                        are not admins, and each gets `export VMLB_TOKEN_<TEAM>=…`
 *   VMLB_FLEET_READS     pools a pool trusts for reading, POOL:TRUSTED,… (e.g. a:platform,b:platform)
 *   VMLB_WORKER_SLOTS    each worker's slots                            @default 2
 *   VMLB_SCHEDULER_PORT  the scheduler's port                           @default a free one
 *   VMLB_SHARED          the shared store                               @default s3://vmlb/fleet
 *   VMLB_FLEET_DIR       where the fleet keeps its state (Redis, s3rver's files, worker stores)
 *                        @default a new temporary folder, removed at the end
 *
 * `npm run fleet -- --sentinel` (`npm run fleet --sentinel` works too, through npm's
 * npm_config_sentinel, while npm still passes unknown flags on that way): instead of the one
 * redis-server, a Sentinel-managed Redis: three data nodes (redis-1 the primary at first, redis-2
 * and redis-3 its replicas) and three sentinels (sentinel-1..3), each a part like the others, with
 * passwords (kept in redis-sentinel/secrets.json of the fleet's folder); the scheduler and the
 * workers get REDIS_SENTINELS, REDIS_SENTINEL_NAME, REDIS_PASSWORD and REDIS_SENTINEL_PASSWORD
 * instead of REDIS_URL. Kill the primary (its pid is on its "started" line; the "up" line says
 * which node it is) and the sentinels promote a replica within seconds (down-after 3 s); the
 * killed node is started again only after 10 s, once that is done, so that it comes back as a
 * replica rather than as a second primary. A kept VMLB_FLEET_DIR starts the node that was the primary last as the
 * primary again (redis-sentinel/primary).
 *
 * Metrics: each worker serves /metrics on a free port of its own (VMLB_WORKER_METRICS_PORT,
 * kept across its restarts; a VMLB_WORKER_METRICS_PORT of the caller's environment is not
 * used: workers would share it), each printed on the "metrics" line. The fleet's folder gets
 * `prometheus.yml`, a ready Prometheus config for it: the scheduler and every worker as the
 * jobs `vmlb-scheduler` and `vmlb-worker` (the names deploy/prometheus/alerts.yml uses, loaded
 * as its rules), every 5 s. `npm run fleet -- --prometheus` (or `npm run fleet --prometheus`)
 * also runs Debian's `prometheus` with it as one more part, on a free loopback port, its data in
 * the fleet's `prometheus/` folder, and prints its URL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { SharedStore, commandOnPath, describeSweep, isRunning, s3ConfigFrom, selfIdentity, sweep, type ProcessIdentity } from '@vmlb/layer-engine';
import { freePort, portOpen } from '@vmlb/fleet';
import { sha256Hex } from './teams.js';
import { ensureDatabase, postgresReady, preparePostgres } from './private-postgres.js';
import { primaryPortFrom, sentinelSeesWholeSet, writeSentinelSet } from './sentinel-set.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const ALERT_RULES = path.join(REPO, 'deploy/prometheus/alerts.yml');
const S3RVER_LAUNCHER = path.join(REPO, 'test/fixtures/s3rver-launcher.mjs');
const SCHEDULER_MAIN = path.join(REPO, 'apps/scheduler/src/main.ts');
const WORKER_MAIN = path.join(REPO, 'apps/worker/src/main.ts');
const DASHBOARD_MAIN = path.join(REPO, 'apps/web-dashboard/src/main.ts');

/** Restarts: after 1 s, then doubling with each quick death in a row, up to 15 s. */
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 15_000;
/** A part that ran this long before it died counts as having worked: its backoff starts over. */
const STABLE_MS = 30_000;
/** Deaths in a row, each within STABLE_MS of its start, before the part is given up on. */
const MAX_QUICK_DEATHS = 5;
/** How long a (re)started part may take to serve. */
const READY_MS = 60_000;

/** The file in the fleet's folder that names the launcher using it. */
const LAUNCHER_FILE = 'launcher.json';
const TEMP_PREFIX = 'vmlb-fleet-';

const say = (msg: string) => process.stderr.write(`fleet: ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const seconds = (ms: number) => `${Math.round(ms / 100) / 10} s`;

interface PartSpec {
  name: string;
  cmd: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  /** Whether it serves (polled); without one, it is ready once spawned. */
  ready?: () => Promise<boolean>;
  /** A line of its output that says it is ready (for parts that have no port). */
  readyLine?: RegExp;
  /** What keeps its place across restarts, for the restart line. */
  keeps: string;
  /** Given up on, it stops the fleet. */
  essential: boolean;
  /** The first restart's delay (doubling as the others'). @default BACKOFF_FIRST_MS */
  restartAfterMs?: number;
}

interface Run {
  proc: ChildProcess;
  startedAt: number;
  /** How it ended: 'exit code 1', 'signal SIGKILL', or 'could not start: …'. */
  ended: Promise<string>;
  readonly done: boolean;
  sawReadyLine: boolean;
}

interface Part {
  spec: PartSpec;
  run?: Run;
  /** Resolves once its first run serves; rejects when that run ends before. */
  firstReady: Promise<void>;
  /** Resolves when supervision ends (stopping, or given up on). */
  supervised: Promise<void>;
}

const parts: Part[] = [];
let stopping = false;
let signalled = false;
let gaveUp: (name: string) => void = () => undefined;
const givenUp = new Promise<string>((resolve) => (gaveUp = resolve));

// Whatever happens to this launcher, no child outlives it: a normal exit kills them here, a
// SIGKILL of the launcher through their parent-death signal.
process.on('exit', () => {
  for (const p of parts) if (p.run && !p.run.done) p.run.proc.kill('SIGKILL');
});

async function waitUntil(what: string, ok: () => Promise<boolean>, timeoutMs = 30_000, gone?: () => string | undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok().catch(() => false))) {
    if (stopping || signalled) throw new Error('interrupted');
    const end = gone?.();
    if (end !== undefined) throw new Error(`${what} ended (${end}) before it was ready`);
    if (Date.now() > deadline) throw new Error(`${what} did not come up within ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

/**
 * One run of a part: in a process group of its own (Ctrl-C reaches only this launcher, which
 * then stops the children in order), with a parent-death signal (setpriv sets it and execs the
 * command, so the pid is the part's own; it survives the exec, as none of these is set-id), its
 * output prefixed with its name on stderr. Spawned from the main thread, the one whose death
 * the signal follows.
 */
function launch(spec: PartSpec): Run {
  const proc = spawn('setpriv', ['--pdeathsig', 'KILL', '--', spec.cmd, ...spec.args], { env: spec.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true, cwd: REPO });
  let done = false;
  const ended = new Promise<string>((resolve) => {
    proc.once('exit', (code, signal) => {
      done = true;
      resolve(signal ? `signal ${signal}` : `exit code ${code}`);
    });
    proc.once('error', (e) => {
      done = true;
      resolve(`could not start: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'setpriv (util-linux) is not installed' : e.message}`);
    });
  });
  const run: Run = {
    proc,
    startedAt: Date.now(),
    ended,
    get done() {
      return done;
    },
    sawReadyLine: false,
  };
  for (const stream of [proc.stdout!, proc.stderr!]) {
    createInterface({ input: stream }).on('line', (line) => {
      if (spec.readyLine?.test(line)) run.sawReadyLine = true;
      process.stderr.write(`[${spec.name}] ${line}\n`);
    });
  }
  return run;
}

async function whenReady(spec: PartSpec, run: Run): Promise<void> {
  const gone = () => (run.done ? 'it exited' : undefined);
  if (spec.ready) await waitUntil(spec.name, spec.ready, READY_MS, gone);
  else if (spec.readyLine) await waitUntil(spec.name, async () => run.sawReadyLine, READY_MS, gone);
}

/**
 * Starts a part and keeps it running: a run that ends while the fleet is not stopping is
 * reported (which part, how it ended) and followed by another after a backoff, until the part
 * dies MAX_QUICK_DEATHS times in a row within STABLE_MS of its start. Redis, S3 and the
 * scheduler must come up the first time (the fleet cannot start without them); the others go
 * through the same restarts from their first run.
 */
function startPart(spec: PartSpec): Part {
  let firstOk: () => void = () => undefined;
  let firstFailed: (e: Error) => void = () => undefined;
  const firstReady = new Promise<void>((resolve, reject) => ((firstOk = resolve), (firstFailed = reject)));
  firstReady.catch(() => undefined);
  const part: Part = { spec, firstReady, supervised: Promise.resolve() };
  parts.push(part);

  let everReady = false;
  /** One run, from its start to its end; says when a restarted one serves. */
  const runOnce = async (restart: boolean): Promise<{ run: Run; how: string }> => {
    const run = launch(spec);
    part.run = run;
    if (!restart) say(`started ${spec.name} (pid ${run.proc.pid ?? '?'})`);
    whenReady(spec, run).then(
      () => {
        everReady = true;
        firstOk();
        if (restart) say(`restarted ${spec.name} (pid ${run.proc.pid ?? '?'})`);
      },
      (e: Error) => {
        // Not ready in time: it counts as a death like any other.
        if (!run.done && !stopping && !signalled) {
          say(`${spec.name} (pid ${run.proc.pid ?? '?'}): ${e.message}: killing it`);
          run.proc.kill('SIGKILL');
        }
      },
    );
    return { run, how: await run.ended };
  };

  part.supervised = (async () => {
    let quickDeaths = 0;
    for (let restart = false; ; restart = true) {
      const { run, how } = await runOnce(restart);
      if (stopping) return;
      if (!everReady && spec.essential) {
        firstFailed(new Error(`${spec.name} ended (${how}) before it was ready`));
        return;
      }
      const lived = Date.now() - run.startedAt;
      // A run that had worked for a while starts the count over.
      quickDeaths = lived < STABLE_MS ? quickDeaths + 1 : 0;
      if (quickDeaths >= MAX_QUICK_DEATHS) {
        say(`${spec.name} died (${how}) ${quickDeaths} times in a row within ${STABLE_MS / 1000} s of starting: giving up on it${spec.essential ? ', stopping the fleet' : ''}`);
        if (spec.essential) gaveUp(spec.name);
        return;
      }
      const delay = Math.min(BACKOFF_MAX_MS, (spec.restartAfterMs ?? BACKOFF_FIRST_MS) * 2 ** Math.max(0, quickDeaths - 1));
      say(`${spec.name} (pid ${run.proc.pid ?? '?'}) died (${how}) after ${seconds(lived)}: restarting it in ${seconds(delay)} (${spec.keeps})`);
      const until = Date.now() + delay;
      while (Date.now() < until && !stopping) await sleep(Math.min(100, until - Date.now()));
      if (stopping) return;
    }
  })();
  return part;
}

async function stopPart(p: Part, graceMs: number): Promise<void> {
  const run = p.run;
  if (!run || run.done) return p.supervised;
  run.proc.kill('SIGTERM');
  const t = setTimeout(() => {
    say(`${p.spec.name} did not stop within ${graceMs / 1000} s: killing it`);
    run.proc.kill('SIGKILL');
  }, graceMs);
  await run.ended;
  clearTimeout(t);
  await p.supervised;
}

async function readLauncher(dir: string): Promise<ProcessIdentity | null> {
  try {
    const j = JSON.parse(await readFile(path.join(dir, LAUNCHER_FILE), 'utf8')) as ProcessIdentity;
    return typeof j.pid === 'number' && typeof j.startTime === 'string' ? j : null;
  } catch {
    return null;
  }
}

/** Mount points at or under dir. */
async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m === dir || m.startsWith(`${dir}/`));
}

/**
 * The state of a fleet whose launcher was killed (SIGKILL) in a temporary folder: what its
 * workers left attached is swept (the engine's start-up sweep, for each worker's run folder),
 * then the folder is removed. Folders of launchers that still run, and those that name none, are
 * left alone.
 */
async function sweepKilledFleets(): Promise<void> {
  const tmp = os.tmpdir();
  let names: string[];
  try {
    names = (await readdir(tmp)).filter((n) => n.startsWith(TEMP_PREFIX));
  } catch {
    return;
  }
  for (const name of names) {
    const dir = path.join(tmp, name);
    const owner = await readLauncher(dir);
    if (!owner || (await isRunning(owner))) continue;
    const notes: string[] = [];
    const problems: string[] = [];
    const prevRunDir = process.env.VMLB_RUN_DIR;
    try {
      for (const w of (await readdir(dir)).filter((n) => /^worker-\d+$/.test(n))) {
        const runDir = path.join(dir, w, 'run');
        if (!existsSync(runDir)) continue;
        process.env.VMLB_RUN_DIR = runDir;
        const report = await sweep();
        const line = describeSweep(report);
        if (line) notes.push(`${w}: ${line}`);
        problems.push(...report.errors);
      }
    } catch (e) {
      problems.push((e as Error).message);
    } finally {
      if (prevRunDir === undefined) delete process.env.VMLB_RUN_DIR;
      else process.env.VMLB_RUN_DIR = prevRunDir;
    }
    const mounted = await mountsUnder(dir);
    if (problems.length || mounted.length) {
      say(`left the state of a killed fleet in ${dir}: ${[...problems, ...mounted.map((m) => `${m} is still mounted`)].join('; ')}`);
      continue;
    }
    await rm(dir, { recursive: true, force: true });
    say(`removed the state of a killed fleet (launcher pid ${owner.pid}) in ${dir}${notes.length ? `; ${notes.join('; ')}` : ''}`);
  }
}

/** A fleet's teams and pools, from VMLB_FLEET_TEAMS and VMLB_FLEET_READS; throws naming what is wrong. */
function fleetTeams(env: NodeJS.ProcessEnv): { teams: Array<{ team: string; pool: string }>; reads: Map<string, string[]>; admin: boolean } {
  const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
  const problems: string[] = [];
  const pairs = (name: string, text: string) =>
    text
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean)
      .map((item) => {
        const [a = '', b, ...rest] = item.split(':');
        if (!NAME.test(a) || (b !== undefined && !NAME.test(b)) || rest.length) problems.push(`${name}: "${item}" is not NAME:POOL (letters, digits, . _ -)`);
        return [a, b] as const;
      });
  const given = env.VMLB_FLEET_TEAMS?.trim();
  const teams = given ? pairs('VMLB_FLEET_TEAMS', given).map(([team, pool]) => ({ team, pool: pool ?? 'default' })) : [{ team: 'dev', pool: 'default' }];
  const seen = new Set<string>();
  for (const t of teams) {
    if (seen.has(t.team)) problems.push(`VMLB_FLEET_TEAMS: team ${t.team} is named twice`);
    seen.add(t.team);
  }
  const reads = new Map<string, string[]>();
  const pools = new Set(teams.map((t) => t.pool));
  for (const [pool, trusted] of pairs('VMLB_FLEET_READS', env.VMLB_FLEET_READS ?? '')) {
    if (!trusted) continue;
    if (!pools.has(pool) || !pools.has(trusted)) problems.push(`VMLB_FLEET_READS: ${pool}:${trusted} names a pool no team of VMLB_FLEET_TEAMS is in (pools: ${[...pools].join(', ')})`);
    reads.set(pool, [...(reads.get(pool) ?? []), trusted]);
  }
  if (problems.length) throw new Error(problems.join('; '));
  return { teams, reads, admin: !given };
}

/** `VMLB_TOKEN_<TEAM>`: the team's name upper-cased, anything but letters and digits as `_`. */
function tokenVariable(team: string): string {
  return `VMLB_TOKEN_${team.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
}

/** The fleet's Redis as its parts are told it: the variables, and how the "up" line says it. */
interface FleetRedis {
  env: Record<string, string>;
  where: string;
  /** Before the Redis parts stop (sentinel mode: which node is the primary, for the next start). */
  beforeStop(): Promise<void>;
}

const SENTINEL_DIR = 'redis-sentinel';
const SENTINEL_NAME = 'vmlb';
/**
 * How long a data node may not answer before the sentinels call it down. Not 1 s: on a host busy
 * with builds (and a fsync per write), a healthy primary can stall that long, and the sentinels
 * would fail over a second time, from the node they just promoted.
 */
const SENTINEL_DOWN_AFTER_MS = 3000;
/** Longer than the sentinels take to fail over (down-after, then the vote and the promotion). */
const DATA_NODE_RESTART_MS = 10_000;

/** A data node's and a sentinel's part name, 0-based index. */
const nodePart = (i: number) => `redis-${i + 1}`;

/**
 * `--sentinel`: three data nodes and three sentinels as parts (sentinel-set.ts writes their config
 * files, which they rewrite as roles change), every write of each node persisted to its folder.
 * Passwords and the last primary are kept in the fleet's folder.
 */
async function startSentinelParts(dir: string, env: NodeJS.ProcessEnv, up: (p: Part) => Promise<void>): Promise<FleetRedis> {
  const setDir = path.join(dir, SENTINEL_DIR);
  await mkdir(setDir, { recursive: true });
  const secretsFile = path.join(setDir, 'secrets.json');
  let secrets: { password: string; sentinelPassword: string };
  try {
    secrets = JSON.parse(await readFile(secretsFile, 'utf8')) as typeof secrets;
  } catch {
    secrets = { password: randomBytes(16).toString('hex'), sentinelPassword: randomBytes(16).toString('hex') };
    await writeFile(secretsFile, JSON.stringify(secrets) + '\n', { mode: 0o600 });
  }
  const primaryFile = path.join(setDir, 'primary');
  const last = Number((await readFile(primaryFile, 'utf8').catch(() => '0')).trim());
  const primary = [0, 1, 2].includes(last) ? last : 0;
  const nodePorts = [await freePort(), await freePort(), await freePort()];
  const sentinelPorts = [await freePort(), await freePort(), await freePort()];
  const files = await writeSentinelSet({ dir: setDir, name: SENTINEL_NAME, nodePorts, sentinelPorts, primary, ...secrets, appendOnly: true, logToStdout: true, downAfterMs: SENTINEL_DOWN_AFTER_MS, failoverTimeoutMs: 3 * SENTINEL_DOWN_AFTER_MS });

  // The primary first, so that the replicas sync from it at once.
  const order = [primary, ...[0, 1, 2].filter((i) => i !== primary)];
  for (const i of order) {
    await up(
      startPart({
        name: nodePart(i),
        cmd: 'redis-server',
        args: [files.nodeConfs[i]!],
        env,
        ready: () => portOpen(nodePorts[i]!),
        keeps: `same port ${nodePorts[i]}, same data in ${path.join(setDir, `node-${i}`)}; its role is the sentinels'`,
        essential: true,
        restartAfterMs: DATA_NODE_RESTART_MS,
      }),
    );
  }
  for (let i = 0; i < 3; i++) {
    await up(
      startPart({
        name: `sentinel-${i + 1}`,
        cmd: 'redis-sentinel',
        args: [files.sentinelConfs[i]!],
        env,
        ready: () => portOpen(sentinelPorts[i]!),
        keeps: `same port ${sentinelPorts[i]}, what it knew in ${path.join(setDir, `sentinel-${i}`)}`,
        essential: true,
      }),
    );
  }
  // They learn of the replicas and of each other through the primary (every 2 s or so): without
  // the others, no failover could be voted.
  await waitUntil('the sentinels to see the whole set', async () => {
    for (const p of sentinelPorts) if (!(await sentinelSeesWholeSet(p, { name: SENTINEL_NAME, sentinelPassword: secrets.sentinelPassword, replicas: 2, sentinels: 3 }))) return false;
    return true;
  }, READY_MS);

  const sentinels = sentinelPorts.map((p) => `127.0.0.1:${p}`).join(',');
  return {
    env: { REDIS_SENTINELS: sentinels, REDIS_SENTINEL_NAME: SENTINEL_NAME, REDIS_PASSWORD: secrets.password, REDIS_SENTINEL_PASSWORD: secrets.sentinelPassword },
    where: `sentinels ${sentinels} (master ${SENTINEL_NAME}; primary ${nodePart(primary)} on port ${nodePorts[primary]}, replicas ${order.slice(1).map(nodePart).join(' and ')}; passwords in ${secretsFile})`,
    async beforeStop() {
      for (const p of sentinelPorts) {
        const port = await primaryPortFrom(p, SENTINEL_NAME, secrets.sentinelPassword);
        if (port && nodePorts.includes(port)) {
          await writeFile(primaryFile, `${nodePorts.indexOf(port)}\n`);
          return;
        }
      }
    },
  };
}

/**
 * A Prometheus config for the dev fleet (JSON is YAML): the scheduler and the workers under the
 * job names deploy/prometheus/alerts.yml expects, its rules, every 5 s.
 */
function prometheusConfig(scheduler: string, workers: string[]): string {
  const config = {
    global: { scrape_interval: '5s', evaluation_interval: '5s', external_labels: { fleet: 'vmlb-dev' } },
    rule_files: [ALERT_RULES],
    scrape_configs: [
      { job_name: 'vmlb-scheduler', metrics_path: '/metrics', static_configs: [{ targets: [scheduler] }] },
      { job_name: 'vmlb-worker', metrics_path: '/metrics', static_configs: [{ targets: workers }] },
    ],
  };
  return `# Prometheus for this dev fleet (npm run fleet): prometheus --config.file=THIS_FILE\n${JSON.stringify(config, null, 2)}\n`;
}

async function main(): Promise<number> {
  const env = process.env;
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => a !== '--sentinel' && a !== '--prometheus');
  if (unknown.length) {
    say(`unknown argument ${unknown[0]} (known: --sentinel, --prometheus)`);
    return 2;
  }
  const sentinelMode = args.includes('--sentinel') || env.npm_config_sentinel === 'true';
  const prometheusMode = args.includes('--prometheus') || env.npm_config_prometheus === 'true';
  if (prometheusMode && !(await commandOnPath('prometheus'))) {
    say("--prometheus: prometheus is not installed (Debian's package: apt-get install prometheus)");
    return 2;
  }
  let teamSpec: ReturnType<typeof fleetTeams>;
  try {
    teamSpec = fleetTeams(env);
  } catch (e) {
    say((e as Error).message);
    return 2;
  }
  const keepDir = !!env.VMLB_FLEET_DIR;
  let dir: string;
  if (env.VMLB_FLEET_DIR) {
    dir = path.resolve(env.VMLB_FLEET_DIR);
    const owner = await readLauncher(dir);
    if (owner && owner.pid !== process.pid && (await isRunning(owner))) {
      say(`${dir} is in use by the fleet of launcher pid ${owner.pid}: stop that one first, or give another VMLB_FLEET_DIR`);
      return 2;
    }
  } else {
    await sweepKilledFleets().catch((e: Error) => say(`could not sweep the state of killed fleets: ${e.message}`));
    dir = await mkdtemp(path.join(os.tmpdir(), TEMP_PREFIX));
  }
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, LAUNCHER_FILE), JSON.stringify(await selfIdentity()) + '\n');

  let fleetRedis: FleetRedis | undefined;
  const cleanup = async (code: number): Promise<number> => {
    stopping = true;
    // Workers first (they finish or hand back their jobs), then what they talk to; the sentinels
    // before the data nodes (no failover while they stop).
    const order = ['prometheus', 'worker', 'dashboard', 'scheduler', 'postgres', 's3', 'sentinel', 'redis'];
    for (const prefix of order) {
      if (prefix === 'sentinel') await fleetRedis?.beforeStop().catch(() => undefined);
      await Promise.all(parts.filter((p) => p.spec.name.startsWith(prefix)).map((p) => stopPart(p, prefix === 'worker' ? 20_000 : 5000)));
    }
    if (!keepDir) await rm(dir, { recursive: true, force: true });
    else await rm(path.join(dir, LAUNCHER_FILE), { force: true });
    say('stopped');
    return code;
  };
  let interrupted: (sig: string) => void = () => undefined;
  const interruption = new Promise<string>((resolve) => (interrupted = resolve));
  const stopOn = (why: string) => {
    if (stopping || signalled) return;
    signalled = true;
    say(`${why}: stopping the fleet`);
    interrupted(why);
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => stopOn(sig));
  // npm does not pass signals on to its script: should npm itself be killed, go down with it.
  const parent = process.ppid;
  const parentAlive = () => {
    try {
      process.kill(parent, 0);
      return true;
    } catch {
      return false;
    }
  };
  setInterval(() => !parentAlive() && stopOn('the parent process is gone'), 1000).unref();
  const up = (p: Part) =>
    Promise.race([
      p.firstReady,
      interruption.then(() => {
        throw new Error('interrupted');
      }),
    ]);

  try {
    // ---- Redis: every write persisted to its folder, so that a restarted one has it all ----
    if (sentinelMode) {
      fleetRedis = await startSentinelParts(dir, env, up);
    } else {
      const redisPort = await freePort();
      await mkdir(path.join(dir, 'redis'), { recursive: true });
      const redis = startPart({
        name: 'redis',
        cmd: 'redis-server',
        args: ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', path.join(dir, 'redis')],
        env,
        ready: () => portOpen(redisPort),
        keeps: `same port ${redisPort}, same data in ${path.join(dir, 'redis')}`,
        essential: true,
      });
      await up(redis);
      const redisUrl = `redis://127.0.0.1:${redisPort}`;
      fleetRedis = { env: { REDIS_URL: redisUrl }, where: redisUrl, beforeStop: async () => undefined };
    }

    // ---- S3 ----
    let s3env: Record<string, string>;
    if (env.S3_ENDPOINT) {
      s3env = {};
      say(`using the S3 server at ${env.S3_ENDPOINT}`);
    } else {
      const s3Port = await freePort();
      await mkdir(path.join(dir, 's3'), { recursive: true });
      const s3 = startPart({
        name: 's3',
        cmd: process.execPath,
        args: [S3RVER_LAUNCHER, JSON.stringify({ port: s3Port, directory: path.join(dir, 's3') })],
        env,
        ready: () => portOpen(s3Port),
        keeps: `same port ${s3Port}, same files in ${path.join(dir, 's3')}`,
        essential: true,
      });
      await up(s3);
      s3env = { S3_ENDPOINT: `http://127.0.0.1:${s3Port}`, S3_ACCESS_KEY: 'S3RVER', S3_SECRET_KEY: 'S3RVER', S3_REGION: 'us-east-1' };
    }
    const sharedUrl = env.VMLB_SHARED || 's3://vmlb/fleet';
    const store = new SharedStore(s3ConfigFrom(sharedUrl, { ...env, ...s3env }, { urlName: 'VMLB_SHARED' }));
    await store.ensureBucket().finally(() => store.close());

    // ---- teams: fresh tokens, the same for the launcher's life (one admin team `dev`, or VMLB_FLEET_TEAMS) ----
    const tokens = teamSpec.teams.map((t) => ({ ...t, token: `dev-${randomBytes(24).toString('base64url')}` }));
    const token = tokens[0]!.token;
    const teamsFile = path.join(dir, 'teams.json');
    const teamsJson = {
      teams: tokens.map((t) => ({ team: t.team, tokenSha256: sha256Hex(t.token), admin: teamSpec.admin, pool: t.pool })),
      pools: Object.fromEntries([...teamSpec.reads].map(([pool, reads]) => [pool, { reads }])),
    };
    await writeFile(teamsFile, JSON.stringify(teamsJson, null, 2) + '\n', { mode: 0o600 });

    const fleetEnv: NodeJS.ProcessEnv = { ...env, ...s3env, ...fleetRedis.env, VMLB_SHARED: sharedUrl };
    // With sentinels, a REDIS_URL of the caller's environment is not the fleet's.
    if (sentinelMode) delete fleetEnv.REDIS_URL;

    // ---- PostgreSQL: the build history, in the fleet's folder (a kept VMLB_FLEET_DIR keeps it) ----
    const pgPrepared = await preparePostgres({ dir: path.join(dir, 'postgres'), port: await freePort() });
    const postgres = startPart({
      name: 'postgres',
      cmd: pgPrepared.cmd,
      args: pgPrepared.args,
      env,
      ready: () => postgresReady(pgPrepared.baseUrl),
      keeps: `same port ${pgPrepared.port}, same data in ${path.join(dir, 'postgres')}`,
      essential: true,
    });
    await up(postgres);
    const databaseUrl = await ensureDatabase(pgPrepared.baseUrl, 'vmlb');

    // ---- the scheduler ----
    const port = env.VMLB_SCHEDULER_PORT ? Number(env.VMLB_SCHEDULER_PORT) : await freePort();
    const server = `http://127.0.0.1:${port}`;
    const scheduler = startPart({
      name: 'scheduler',
      cmd: process.execPath,
      args: ['--import', 'tsx', SCHEDULER_MAIN],
      env: { ...fleetEnv, VMLB_DATABASE_URL: databaseUrl, VMLB_TEAMS_FILE: teamsFile, VMLB_SCHEDULER_HOST: '127.0.0.1', VMLB_SCHEDULER_PORT: String(port) },
      ready: async () => (await fetch(`${server}/healthz`)).ok,
      keeps: `same port ${port}, same token`,
      essential: true,
    });
    await up(scheduler);

    // ---- the dashboard, when there is one ----
    if (existsSync(DASHBOARD_MAIN)) {
      const dashPort = await freePort();
      startPart({
        name: 'dashboard',
        cmd: process.execPath,
        args: ['--import', 'tsx', DASHBOARD_MAIN],
        env: { ...fleetEnv, VMLB_SERVER: server, VMLB_TEAMS_FILE: teamsFile, VMLB_DASHBOARD_HOST: '127.0.0.1', VMLB_DASHBOARD_PORT: String(dashPort) },
        ready: () => portOpen(dashPort),
        keeps: `same port ${dashPort}`,
        essential: false,
      });
      say(`dashboard: http://127.0.0.1:${dashPort}`);
    }

    // ---- the workers: VMLB_FLEET_WORKERS of the one pool, or per pool of VMLB_FLEET_TEAMS ----
    const poolNames = [...new Set(teamSpec.teams.map((t) => t.pool))];
    const perPool = Number(env.VMLB_FLEET_WORKERS || (teamSpec.admin ? 2 : 1));
    const workerPools = poolNames.flatMap((pool) => Array.from({ length: perPool }, () => pool));
    const workers = workerPools.length;
    const metricsPorts: number[] = [];
    if (!existsSync(WORKER_MAIN)) say(`no worker yet (${path.relative(REPO, WORKER_MAIN)} is missing): builds will stay queued`);
    else {
      for (let i = 1; i <= workers; i++) {
        const pool = workerPools[i - 1]!;
        const workerId = pool === 'default' ? `dev-worker-${i}` : `dev-${pool}-worker-${i}`;
        const wdir = path.join(dir, `worker-${i}`);
        await mkdir(path.join(wdir, 'run'), { recursive: true });
        const metricsPort = await freePort();
        metricsPorts.push(metricsPort);
        startPart({
          name: `worker-${i}`,
          cmd: process.execPath,
          args: ['--import', 'tsx', WORKER_MAIN],
          env: {
            ...fleetEnv,
            VMLB_WORKER_ID: workerId,
            VMLB_WORKER_POOL: pool,
            VMLB_STORE: path.join(wdir, 'store'),
            VMLB_RUN_DIR: path.join(wdir, 'run'),
            VMLB_WORKER_SLOTS: env.VMLB_WORKER_SLOTS || '2',
            VMLB_WORKER_GRACE: env.VMLB_WORKER_GRACE || '15s',
            VMLB_WORKER_METRICS_PORT: String(metricsPort),
            VMLB_WORKER_METRICS_HOST: '127.0.0.1',
          },
          readyLine: /"msg":"worker started"/,
          keeps: `same id ${workerId}${pool === 'default' ? '' : ` in pool ${pool}`}, same store in ${wdir}, same metrics port ${metricsPort}`,
          essential: false,
        });
      }
    }

    // ---- Prometheus: a config for this fleet, and with --prometheus Debian's prometheus on it ----
    const promConfig = path.join(dir, 'prometheus.yml');
    await writeFile(promConfig, prometheusConfig(`127.0.0.1:${port}`, metricsPorts.map((p) => `127.0.0.1:${p}`)));
    let prometheusUrl: string | undefined;
    if (prometheusMode) {
      const promPort = await freePort();
      const promData = path.join(dir, 'prometheus');
      await mkdir(promData, { recursive: true });
      prometheusUrl = `http://127.0.0.1:${promPort}`;
      const prom = startPart({
        name: 'prometheus',
        cmd: 'prometheus',
        args: [`--config.file=${promConfig}`, `--storage.tsdb.path=${promData}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'],
        env,
        ready: async () => (await fetch(`${prometheusUrl}/-/ready`)).ok,
        keeps: `same port ${promPort}, same data in ${promData}`,
        essential: false,
      });
      await up(prom);
    }

    say(`up: scheduler ${server}, Redis ${fleetRedis.where}, shared store ${sharedUrl}${s3env.S3_ENDPOINT ? ` at ${s3env.S3_ENDPOINT}` : ''}, ${existsSync(WORKER_MAIN) ? workers : 0} workers; state in ${dir}`);
    say(`dashboard: ${server}/ (sign in with the token below); metrics: ${server}/metrics`);
    say(`metrics: scheduler ${server}/metrics${metricsPorts.map((p, i) => `, worker-${i + 1} http://127.0.0.1:${p}/metrics`).join('')}`);
    say(prometheusUrl ? `prometheus: ${prometheusUrl} (config ${promConfig}, rules ${path.relative(REPO, ALERT_RULES)})` : `prometheus config: ${promConfig} (prometheus --config.file=${promConfig}; or npm run fleet -- --prometheus)`);
    if (!teamSpec.admin) say(`teams: ${tokens.map((t) => `${t.team} (pool ${t.pool})`).join(', ')}${teamSpec.reads.size ? `; pools reading others: ${[...teamSpec.reads].map(([p, r]) => `${p} reads ${r.join(', ')}`).join('; ')}` : ''}`);
    say(`paste these lines into your shell, then \`vmlb submit DIR\` (VMLB_TOKEN is ${tokens[0]!.team}'s); Ctrl-C here stops the fleet`);
    const perTeam = teamSpec.admin ? '' : tokens.map((t) => `export ${tokenVariable(t.team)}=${t.token}\n`).join('');
    process.stdout.write(`export VMLB_SERVER=${server}\nexport VMLB_TOKEN=${token}\n${perTeam}`);

    // Runs until interrupted, or until Redis, S3 or the scheduler is given up on.
    const why = await Promise.race([interruption.then((sig) => ({ sig })), givenUp.then((name) => ({ name }))]);
    return cleanup('name' in why ? 1 : 0);
  } catch (e) {
    if (!signalled) say(`could not start the fleet: ${(e as Error).message}`);
    return cleanup(signalled ? 0 : 1);
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    say(`unexpected error: ${(e as Error).stack ?? String(e)}`);
    for (const p of parts) p.run?.proc.kill('SIGKILL');
    process.exit(1);
  },
);

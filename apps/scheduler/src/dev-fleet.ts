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
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SharedStore, commandOnPath, isRunning, s3ConfigFrom, selfIdentity } from '@vmlb/layer-engine';
import { freePort, portOpen } from '@vmlb/fleet';
import { sha256Hex } from './teams.js';
import { ensureDatabase, postgresReady, preparePostgres } from './private-postgres.js';
import { LAUNCHER_FILE, TEMP_PREFIX, readLauncher, sweepKilledFleets } from './dev-fleet-dir.js';
import { PartSupervisor, REPO, say, type Part } from './dev-fleet-parts.js';
import { ALERT_RULES, prometheusConfig } from './dev-fleet-prometheus.js';
import { startFleetRedis, type FleetRedis } from './dev-fleet-redis.js';
import { fleetTeams, tokenVariable } from './dev-fleet-teams.js';

const S3RVER_LAUNCHER = path.join(REPO, 'test/fixtures/s3rver-launcher.mjs');
const SCHEDULER_MAIN = path.join(REPO, 'apps/scheduler/src/main.ts');
const WORKER_MAIN = path.join(REPO, 'apps/worker/src/main.ts');
const DASHBOARD_MAIN = path.join(REPO, 'apps/web-dashboard/src/main.ts');

/** The fleet's parts (dev-fleet-parts.ts), stopped in order at the end. */
const supervisor = new PartSupervisor();

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
    supervisor.stopping = true;
    // Workers first (they finish or hand back their jobs), then what they talk to; the sentinels
    // before the data nodes (no failover while they stop).
    const order = ['prometheus', 'worker', 'dashboard', 'scheduler', 'postgres', 's3', 'sentinel', 'redis'];
    for (const prefix of order) {
      if (prefix === 'sentinel') await fleetRedis?.beforeStop().catch(() => undefined);
      await Promise.all(supervisor.parts.filter((p) => p.spec.name.startsWith(prefix)).map((p) => supervisor.stop(p, prefix === 'worker' ? 20_000 : 5000)));
    }
    if (!keepDir) await rm(dir, { recursive: true, force: true });
    else await rm(path.join(dir, LAUNCHER_FILE), { force: true });
    say('stopped');
    return code;
  };
  let interrupted: (sig: string) => void = () => undefined;
  const interruption = new Promise<string>((resolve) => (interrupted = resolve));
  const stopOn = (why: string) => {
    if (supervisor.stopping || supervisor.signalled) return;
    supervisor.signalled = true;
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
    fleetRedis = await startFleetRedis(supervisor, dir, env, sentinelMode, up);

    // ---- S3 ----
    let s3env: Record<string, string>;
    if (env.S3_ENDPOINT) {
      s3env = {};
      say(`using the S3 server at ${env.S3_ENDPOINT}`);
    } else {
      const s3Port = await freePort();
      await mkdir(path.join(dir, 's3'), { recursive: true });
      const s3 = supervisor.start({
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
    const postgres = supervisor.start({
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
    const scheduler = supervisor.start({
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
      supervisor.start({
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
        supervisor.start({
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
      const prom = supervisor.start({
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
    const why = await Promise.race([interruption.then((sig) => ({ sig })), supervisor.givenUp.then((name) => ({ name }))]);
    return cleanup('name' in why ? 1 : 0);
  } catch (e) {
    if (!supervisor.signalled) say(`could not start the fleet: ${(e as Error).message}`);
    return cleanup(supervisor.signalled ? 0 : 1);
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    say(`unexpected error: ${(e as Error).stack ?? String(e)}`);
    supervisor.killAll();
    process.exit(1);
  },
);

/**
 * `npm run fleet`: a whole fleet on this machine, on loopback, for trying `vmlb submit`:
 * a private redis-server, the S3 test server (s3rver, or the MinIO named by S3_ENDPOINT with
 * S3_ACCESS_KEY/S3_SECRET_KEY), the scheduler, the web dashboard when there is one, and two
 * workers. It prints the scheduler's URL and a development token as two shell lines,
 *
 *   export VMLB_SERVER=http://127.0.0.1:PORT
 *   export VMLB_TOKEN=…
 *
 * on stdout (everything else goes to stderr, each child's lines prefixed with its name), and
 * stops everything, workers first, on Ctrl-C or SIGTERM.
 *
 *   VMLB_FLEET_WORKERS   how many workers                               @default 2
 *   VMLB_WORKER_SLOTS    each worker's slots                            @default 2
 *   VMLB_SCHEDULER_PORT  the scheduler's port                           @default a free one
 *   VMLB_SHARED          the shared store                               @default s3://vmlb/fleet
 *   VMLB_FLEET_DIR       where the fleet keeps its state (Redis, s3rver's files, worker stores)
 *                        @default a new temporary folder, removed at the end
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { SharedStore, s3ConfigFrom } from '@vmlb/layer-engine';
import { freePort, portOpen } from '@vmlb/fleet';
import { sha256Hex } from './teams.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const S3RVER_LAUNCHER = path.join(REPO, 'test/fixtures/s3rver-launcher.mjs');
const SCHEDULER_MAIN = path.join(REPO, 'apps/scheduler/src/main.ts');
const WORKER_MAIN = path.join(REPO, 'apps/worker/src/main.ts');
const DASHBOARD_MAIN = path.join(REPO, 'apps/web-dashboard/src/main.ts');

const say = (msg: string) => process.stderr.write(`fleet: ${msg}\n`);

interface Child {
  name: string;
  proc: ChildProcess;
  exited: Promise<number | null>;
}

const children: Child[] = [];
let stopping = false;
let signalled = false;

// Whatever happens to this launcher, no child outlives it.
process.on('exit', () => {
  for (const c of children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
});

async function waitUntil(what: string, ok: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok().catch(() => false))) {
    if (stopping || signalled) throw new Error('interrupted');
    if (Date.now() > deadline) throw new Error(`${what} did not come up within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Starts a child in a process group of its own (Ctrl-C reaches only this launcher, which then
 * stops the children in order), its output prefixed with its name on stderr.
 */
function start(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv, onLine?: (line: string) => void): Child {
  const proc = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true, cwd: REPO });
  for (const stream of [proc.stdout!, proc.stderr!]) {
    createInterface({ input: stream }).on('line', (line) => {
      onLine?.(line);
      process.stderr.write(`[${name}] ${line}\n`);
    });
  }
  const exited = new Promise<number | null>((resolve) => {
    proc.once('exit', (code, signal) => {
      if (!stopping) say(`${name} exited (${signal ?? code}) on its own`);
      resolve(code);
    });
    proc.once('error', (e) => {
      say(`${name} could not start: ${e.message}`);
      resolve(null);
    });
  });
  const child = { name, proc, exited };
  children.push(child);
  return child;
}

async function stopChild(c: Child, graceMs: number): Promise<void> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  c.proc.kill('SIGTERM');
  const t = setTimeout(() => {
    say(`${c.name} did not stop within ${graceMs / 1000} s: killing it`);
    c.proc.kill('SIGKILL');
  }, graceMs);
  await c.exited;
  clearTimeout(t);
}

async function main(): Promise<number> {
  const env = process.env;
  const keepDir = !!env.VMLB_FLEET_DIR;
  const dir = env.VMLB_FLEET_DIR ? path.resolve(env.VMLB_FLEET_DIR) : await mkdtemp(path.join(os.tmpdir(), 'vmlb-fleet-'));
  await mkdir(dir, { recursive: true });

  const cleanup = async (code: number): Promise<number> => {
    stopping = true;
    // Workers first (they finish or hand back their jobs), then what they talk to.
    const order = ['worker', 'dashboard', 'scheduler', 's3', 'redis'];
    for (const prefix of order) {
      await Promise.all(children.filter((c) => c.name.startsWith(prefix)).map((c) => stopChild(c, prefix === 'worker' ? 20_000 : 5000)));
    }
    if (!keepDir) await rm(dir, { recursive: true, force: true });
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

  try {
    // ---- Redis ----
    const redisPort = await freePort();
    await mkdir(path.join(dir, 'redis'), { recursive: true });
    start('redis', 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', path.join(dir, 'redis')], env);
    await waitUntil('redis-server', () => portOpen(redisPort));
    const redisUrl = `redis://127.0.0.1:${redisPort}`;

    // ---- S3 ----
    let s3env: Record<string, string>;
    if (env.S3_ENDPOINT) {
      s3env = {};
      say(`using the S3 server at ${env.S3_ENDPOINT}`);
    } else {
      let s3Port = 0;
      await mkdir(path.join(dir, 's3'), { recursive: true });
      start('s3', process.execPath, [S3RVER_LAUNCHER, JSON.stringify({ port: 0, directory: path.join(dir, 's3') })], env, (line) => {
        const m = /^\{"port":(\d+)\}$/.exec(line);
        if (m) s3Port = Number(m[1]);
      });
      await waitUntil('s3rver', async () => s3Port > 0);
      s3env = { S3_ENDPOINT: `http://127.0.0.1:${s3Port}`, S3_ACCESS_KEY: 'S3RVER', S3_SECRET_KEY: 'S3RVER', S3_REGION: 'us-east-1' };
    }
    const sharedUrl = env.VMLB_SHARED || 's3://vmlb/fleet';
    const store = new SharedStore(s3ConfigFrom(sharedUrl, { ...env, ...s3env }, { urlName: 'VMLB_SHARED' }));
    await store.ensureBucket().finally(() => store.close());

    // ---- teams: one admin team with a fresh token ----
    const token = `dev-${randomBytes(24).toString('base64url')}`;
    const teamsFile = path.join(dir, 'teams.json');
    await writeFile(teamsFile, JSON.stringify([{ team: 'dev', tokenSha256: sha256Hex(token), admin: true }], null, 2) + '\n', { mode: 0o600 });

    const fleetEnv: NodeJS.ProcessEnv = { ...env, ...s3env, REDIS_URL: redisUrl, VMLB_SHARED: sharedUrl };

    // ---- the scheduler ----
    const port = env.VMLB_SCHEDULER_PORT ? Number(env.VMLB_SCHEDULER_PORT) : await freePort();
    const server = `http://127.0.0.1:${port}`;
    start('scheduler', process.execPath, ['--import', 'tsx', SCHEDULER_MAIN], {
      ...fleetEnv,
      VMLB_TEAMS_FILE: teamsFile,
      VMLB_SCHEDULER_HOST: '127.0.0.1',
      VMLB_SCHEDULER_PORT: String(port),
    });
    await waitUntil('the scheduler', async () => (await fetch(`${server}/healthz`)).ok);

    // ---- the dashboard, when there is one ----
    if (existsSync(DASHBOARD_MAIN)) {
      const dashPort = await freePort();
      start('dashboard', process.execPath, ['--import', 'tsx', DASHBOARD_MAIN], { ...fleetEnv, VMLB_SERVER: server, VMLB_TEAMS_FILE: teamsFile, VMLB_DASHBOARD_HOST: '127.0.0.1', VMLB_DASHBOARD_PORT: String(dashPort) });
      say(`dashboard: http://127.0.0.1:${dashPort}`);
    }

    // ---- the workers ----
    const workers = Number(env.VMLB_FLEET_WORKERS || 2);
    if (!existsSync(WORKER_MAIN)) say(`no worker yet (${path.relative(REPO, WORKER_MAIN)} is missing): builds will stay queued`);
    else {
      for (let i = 1; i <= workers; i++) {
        const wdir = path.join(dir, `worker-${i}`);
        await mkdir(path.join(wdir, 'run'), { recursive: true });
        start(`worker-${i}`, process.execPath, ['--import', 'tsx', WORKER_MAIN], {
          ...fleetEnv,
          VMLB_WORKER_ID: `dev-worker-${i}`,
          VMLB_STORE: path.join(wdir, 'store'),
          VMLB_RUN_DIR: path.join(wdir, 'run'),
          VMLB_WORKER_SLOTS: env.VMLB_WORKER_SLOTS || '2',
          VMLB_WORKER_GRACE: env.VMLB_WORKER_GRACE || '15s',
        });
      }
    }

    say(`up: scheduler ${server}, Redis ${redisUrl}, shared store ${sharedUrl}${s3env.S3_ENDPOINT ? ` at ${s3env.S3_ENDPOINT}` : ''}, ${existsSync(WORKER_MAIN) ? workers : 0} workers; state in ${dir}`);
    say(`dashboard: ${server}/ (sign in with the token below); metrics: ${server}/metrics`);
    say('paste these two lines into your shell, then `vmlb submit DIR`; Ctrl-C here stops the fleet');
    process.stdout.write(`export VMLB_SERVER=${server}\nexport VMLB_TOKEN=${token}\n`);

    // Runs until interrupted, or until the scheduler or Redis dies.
    const essential = children.filter((c) => ['redis', 's3', 'scheduler'].includes(c.name));
    const died = Promise.race(essential.map((c) => c.exited.then(() => c.name)));
    const why = await Promise.race([interruption.then((sig) => ({ sig })), died.then((name) => ({ name }))]);
    if ('name' in why) {
      say(`${why.name} stopped: stopping the fleet`);
      return cleanup(1);
    }
    return cleanup(0);
  } catch (e) {
    say(`could not start the fleet: ${(e as Error).message}`);
    return cleanup(1);
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    say(`unexpected error: ${(e as Error).stack ?? String(e)}`);
    for (const c of children) c.proc.kill('SIGKILL');
    process.exit(1);
  },
);

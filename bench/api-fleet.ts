/**
 * The API benchmarks' fleet: a scheduler process (apps/scheduler/dist/main.js, as deployed) over
 * a private redis-server, s3rver and PostgreSQL, a worker process when one is wanted, and ten
 * teams' tokens; stopped whatever happens.
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startPrivatePostgres } from '../apps/scheduler/src/private-postgres.js';
import { sha256Hex } from '../apps/scheduler/src/teams.js';
import { freePort, startRedis, type RedisServer } from '../test/helpers/redis-server.js';
import { startS3Server, type S3Server } from '../test/helpers/s3-server.js';
import { REPO } from './harness.js';
import type { Sandbox } from './sandbox.js';

const SCHEDULER_MAIN = path.join(REPO, 'apps/scheduler/dist/main.js');
export const TEAMS = Array.from({ length: 10 }, (_, i) => `team${i}`);
export const token = (team: string) => `bench-token-${team}-0123456789`;
const ADMIN = 'bench-token-admin-0123456789';

export interface Fleet {
  url: string;
  /** The scheduler process. */
  pid: number;
  redis: RedisServer;
  s3: S3Server;
  env: NodeJS.ProcessEnv;
  sharedUrl: string;
}

/** Redis, s3rver and a scheduler process, stopped whatever happens. */
export async function withScheduler<T>(sb: Sandbox, fn: (f: Fleet) => Promise<T>): Promise<T> {
  const [redis, s3, pg] = await Promise.all([startRedis(), startS3Server(), startPrivatePostgres({ fast: true })]);
  let child: import('node:child_process').ChildProcess | undefined;
  const stderr: string[] = [];
  try {
    const teamsFile = path.join(sb.dir, 'teams.json');
    await writeFile(teamsFile, JSON.stringify([...TEAMS.map((t) => ({ team: t, tokenSha256: sha256Hex(token(t)) })), { team: 'ops', tokenSha256: sha256Hex(ADMIN), admin: true }]));
    const port = await freePort();
    const sharedUrl = `s3://vmlb-bench/api-${randomBytes(3).toString('hex')}`;
    const env = { ...process.env, ...s3.env, REDIS_URL: redis.url, VMLB_SHARED: sharedUrl, VMLB_DATABASE_URL: await pg.ensureDatabase('vmlb'), VMLB_TEAMS_FILE: teamsFile, VMLB_SCHEDULER_HOST: '127.0.0.1', VMLB_SCHEDULER_PORT: String(port) };
    const { SharedStore, s3ConfigFrom } = await import('../libs/layer-engine/src/index.js');
    const store = new SharedStore(s3ConfigFrom(sharedUrl, env));
    await store.ensureBucket();
    store.close();
    const { spawn } = await import('node:child_process');
    child = spawn(process.execPath, [SCHEDULER_MAIN], { cwd: REPO, env, stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (b: Buffer) => stderr.push(...b.toString().split('\n').filter(Boolean).slice(-20)));
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 30_000;
    for (;;) {
      const ok = await fetch(`${url}/healthz`).then((r) => r.ok, () => false);
      if (ok) break;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the scheduler did not start:\n${stderr.slice(-15).join('\n')}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    return await fn({ url, pid: child.pid!, redis, s3, env, sharedUrl });
  } finally {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child!.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    await Promise.allSettled([redis.close(), s3.close()]);
    await pg.close();
  }
}

/** A real worker process (apps/worker/dist/main.js) while fn runs. */
export async function withWorker<T>(sb: Sandbox, f: Fleet, fn: () => Promise<T>): Promise<T> {
  const { spawn } = await import('node:child_process');
  const stderr: string[] = [];
  const child = spawn(process.execPath, [path.join(REPO, 'apps/worker/dist/main.js')], {
    cwd: REPO,
    env: { ...f.env, ...sb.env, VMLB_WORKER_ID: 'bench-worker', VMLB_WORKER_SLOTS: '2' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr!.on('data', (b: Buffer) => stderr.push(...b.toString().split('\n').filter(Boolean).slice(-20)));
  const exited = new Promise((r) => child.once('exit', r));
  try {
    return await fn();
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${stderr.slice(-10).join('\n')}`);
  } finally {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(t);
    }
  }
}

export async function submit(url: string, tgz: Buffer, team: string): Promise<{ id: string; state: string }> {
  const r = await fetch(`${url}/v1/builds`, { method: 'POST', headers: { authorization: `Bearer ${token(team)}`, 'content-type': 'application/gzip' }, body: tgz });
  const body = (await r.json()) as { id: string; state: string };
  if (r.status !== 201) throw new Error(`submit: ${r.status} ${JSON.stringify(body)}`);
  return body;
}

/**
 * A real scheduler as its own OS process (apps/scheduler's main: `node --import tsx src/main.ts`
 * for the tests, so they run the source; `node dist/main.js`, as deployed, for the benchmarks),
 * on its own loopback port, configured from the environment as in production, its stderr (JSON
 * log lines) kept. Started with node itself (not the `tsx` command, which forks a child that
 * outlives a kill -9: TESTING.md), so `kill()` with SIGKILL is the death of the scheduler.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../libs/fleet/src/loopback-port.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
export const SCHEDULER_SRC_MAIN = path.join(REPO, 'apps/scheduler/src/main.ts');
export const SCHEDULER_DIST_MAIN = path.join(REPO, 'apps/scheduler/dist/main.js');

export interface SchedulerHealth {
  ok: boolean;
  scheduler: string;
  leader: boolean;
  following: number;
  [k: string]: unknown;
}

export interface SchedulerProcess {
  name: string;
  url: string;
  port: number;
  pid: number;
  child: ChildProcess;
  log: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Its /healthz (whatever the status), or null when it does not answer. */
  health(timeoutMs?: number): Promise<SchedulerHealth | null>;
  /** SIGTERM (a clean stop: it gives the lease up), SIGKILL after `graceMs`; waits for the exit. */
  stop(graceMs?: number): Promise<void>;
}

export interface SchedulerProcessOptions {
  name: string;
  /** REDIS_URL, VMLB_SHARED, the S3 variables, VMLB_DATABASE_URL… (added to this process's environment). */
  env: Record<string, string | undefined>;
  teamsFile: string;
  /** @default a free one */
  port?: number;
  /** @default 'src' */
  main?: 'src' | 'dist';
  /** @default 60_000 */
  readyTimeoutMs?: number;
}

export async function startSchedulerProcess(o: SchedulerProcessOptions): Promise<SchedulerProcess> {
  const port = o.port ?? (await freePort());
  const argv = o.main === 'dist' ? [SCHEDULER_DIST_MAIN] : ['--import', 'tsx', SCHEDULER_SRC_MAIN];
  const env = { ...process.env, ...o.env, VMLB_TEAMS_FILE: o.teamsFile, VMLB_SCHEDULER_HOST: '127.0.0.1', VMLB_SCHEDULER_PORT: String(port) };
  const child = spawn(process.execPath, argv, { cwd: REPO, env, stdio: ['ignore', 'ignore', 'pipe'] });
  const log: string[] = [];
  child.stderr!.on('data', (b: Buffer) => {
    log.push(...b.toString().split('\n').filter(Boolean));
    if (process.env.VMLB_TEST_DEBUG) process.stderr.write(`[${o.name}] ${b.toString()}`);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const url = `http://127.0.0.1:${port}`;
  const health = async (timeoutMs = 3000) => {
    try {
      const r = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(timeoutMs) });
      return (await r.json()) as SchedulerHealth;
    } catch {
      return null;
    }
  };
  const running = () => child.exitCode === null && child.signalCode === null;
  const stop = async (graceMs = 10_000) => {
    if (!running()) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(t);
  };
  const deadline = Date.now() + (o.readyTimeoutMs ?? 60_000);
  for (;;) {
    const h = await health();
    if (h?.ok) break;
    if (!running() || Date.now() > deadline) {
      await stop(1000);
      throw new Error(`scheduler ${o.name} did not start (${running() ? 'no healthy /healthz in time' : `exited ${child.exitCode ?? child.signalCode}`}):\n${log.slice(-20).join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { name: o.name, url, port, pid: child.pid!, child, log, exited, health, stop };
}

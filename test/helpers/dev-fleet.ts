/**
 * `npm run fleet` as a user runs it, for a test: started in a process group of its own (so the
 * test can press "Ctrl-C" on it as a terminal does), its stdout and stderr kept, waited for
 * until it prints its two export lines, its "up" line and its workers have started.
 */
import { execa, type ResultPromise } from 'execa';
import { readFile } from 'node:fs/promises';
import { expect } from 'vitest';
import { waitFor } from './fleet-api.js';
import { REPO } from './vmlb.js';

export interface DevFleet {
  proc: ResultPromise;
  /** What it printed so far. */
  readonly output: string;
  readonly errors: string;
  /** VMLB_SERVER and VMLB_TOKEN from its export lines. */
  exported: { VMLB_SERVER: string; VMLB_TOKEN: string };
  /** Every variable of its export lines (VMLB_TOKEN_<TEAM> too, with VMLB_FLEET_TEAMS). */
  exports: Record<string, string>;
  /** The ports of its scheduler and Redis (NaN with --sentinel), from its "up" line. */
  ports: { scheduler: number; redis: number };
  /** With --sentinel: the sentinels' ports, from its "up" line. */
  sentinelPorts: number[];
  /** The pid of each part it runs (redis, s3, scheduler, dashboard, worker-N), the latest run's. */
  pids(): Record<string, number>;
  /** The launcher's own pid (the parent of its parts). */
  launcherPid(): Promise<number>;
  /** A signal to its whole process group (npm, its shell, the launcher). */
  signal(signal?: NodeJS.Signals): void;
  /** Ctrl-C, then SIGKILL after a minute, and waits for it (if it still runs). */
  stop(): Promise<void>;
}

/**
 * `workers`: VMLB_FLEET_WORKERS (per pool with VMLB_FLEET_TEAMS); `started`: how many to wait for
 * (@default workers); `args`: the launcher's own (e.g. `--sentinel`).
 */
export async function startDevFleet(o: { env: Record<string, string>; workers: number; started?: number; args?: string[] }): Promise<DevFleet> {
  let output = '';
  let errors = '';
  const proc = execa('npm', ['run', '-s', 'fleet', ...(o.args?.length ? ['--', ...o.args] : [])], {
    cwd: REPO,
    env: { ...o.env, VMLB_FLEET_WORKERS: String(o.workers), VMLB_SERVER: '', VMLB_TOKEN: '' },
    reject: false,
    buffer: false,
    stdin: 'ignore',
    detached: true,
  });
  proc.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (errors += d.toString()));
  const signal = (sig: NodeJS.Signals = 'SIGINT') => {
    try {
      process.kill(-proc.pid!, sig);
    } catch {
      /* the group is gone already */
    }
  };
  const ended = () => proc.exitCode !== undefined && proc.exitCode !== null;
  const upLine = /fleet: up: scheduler http:\/\/127\.0\.0\.1:(\d+), Redis (?:redis:\/\/127\.0\.0\.1:(\d+)|sentinels ([\d.:,]+) )/;
  await waitFor('npm run fleet up', async () => (/export VMLB_TOKEN=\S+\n/.test(output) && upLine.test(errors)) || ended(), 90_000, 200);
  const exported: Record<string, string> = {};
  for (const m of output.matchAll(/^export (VMLB_[A-Z0-9_]+)=(\S+)$/gm)) exported[m[1]!] = m[2]!;
  expect(exported.VMLB_SERVER, errors).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  expect(exported.VMLB_TOKEN, errors).toMatch(/\S/);
  const up = upLine.exec(errors)!;
  const started = o.started ?? o.workers;
  // A busy host (radosgw and a second vitest beside it) starts a worker in tens of seconds.
  await waitFor(`${started} workers`, async () => (errors.match(/"msg":"worker started"/g) ?? []).length >= started || ended(), 120_000, 200).catch((e: Error) => {
    throw new Error(`${e.message}; npm run fleet printed:\n${errors.split('\n').slice(-40).join('\n')}`);
  });
  expect((errors.match(/"msg":"worker started"/g) ?? []).length, errors).toBeGreaterThanOrEqual(started);
  const pids = () => {
    const found: Record<string, number> = {};
    for (const m of errors.matchAll(/^fleet: (?:started|restarted) (\S+) \(pid (\d+)\)$/gm)) found[m[1]!] = Number(m[2]);
    return found;
  };
  return {
    proc,
    get output() {
      return output;
    },
    get errors() {
      return errors;
    },
    exported: { VMLB_SERVER: exported.VMLB_SERVER!, VMLB_TOKEN: exported.VMLB_TOKEN! },
    exports: exported,
    ports: { scheduler: Number(up[1]), redis: Number(up[2]) },
    sentinelPorts: up[3] ? up[3].split(',').map((a) => Number(a.split(':')[1])) : [],
    pids,
    async launcherPid() {
      const scheduler = pids().scheduler;
      const stat = await readFile(`/proc/${scheduler}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    },
    signal,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      signal();
      const t = setTimeout(() => signal('SIGKILL'), 60_000);
      await proc;
      clearTimeout(t);
    },
  };
}

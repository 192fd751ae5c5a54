/**
 * The fleet benchmarks' processes and services, stopped whatever happens: a private
 * redis-server and/or s3rver (test/helpers), and child processes whose JSON lines on stdout can
 * be waited for (the BullMQ queue worker of fleet-queue-worker.ts, real workers).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { startRedis, type RedisServer } from '../test/helpers/redis-server.js';
import { startS3Server, type S3Server } from '../test/helpers/s3-server.js';
import { BENCH_DIR, REPO } from './harness.js';

const QUEUE_WORKER = path.join(BENCH_DIR, 'fleet-queue-worker.ts');

export interface Proc {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  stderr: string[];
  /** Resolves at the first stdout JSON line matching, rejects if the process exits first. */
  waitFor(pred: (l: Record<string, unknown>) => boolean, what: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

export function startProc(argv: string[], env: NodeJS.ProcessEnv): Proc {
  const child = spawn(argv[0]!, argv.slice(1), { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Array<Record<string, unknown>> = [];
  const stderr: string[] = [];
  const waiters = new Set<() => void>();
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => {
    exited = true;
    for (const w of waiters) w();
    resolve();
  }));
  createInterface({ input: child.stdout! }).on('line', (l) => {
    if (!l.startsWith('{')) return;
    try {
      lines.push(JSON.parse(l) as Record<string, unknown>);
    } catch {
      return;
    }
    for (const w of waiters) w();
  });
  createInterface({ input: child.stderr! }).on('line', (l) => {
    stderr.push(l);
    if (stderr.length > 200) stderr.shift();
  });
  return {
    child,
    lines,
    stderr,
    waitFor(pred, what, timeoutMs = 60_000) {
      return new Promise((resolve, reject) => {
        let from = 0;
        const check = () => {
          for (; from < lines.length; from++) {
            if (pred(lines[from]!)) {
              done();
              return resolve(lines[from]!);
            }
          }
          if (exited) {
            done();
            reject(new Error(`${what}: the process exited first:\n${stderr.slice(-15).join('\n')}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${what}: timed out after ${timeoutMs} ms:\n${stderr.slice(-15).join('\n')}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    async stop() {
      if (exited) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exit;
      clearTimeout(t);
    },
  };
}

/** Runs fn with the services it asks for, stopping every one of them (and its processes) after. */
export async function withServices<T>(
  want: { redis?: boolean; s3?: boolean },
  fn: (s: { redis: RedisServer | null; s3: S3Server | null; procs: Proc[] }) => Promise<T>,
): Promise<T> {
  const procs: Proc[] = [];
  let redis: RedisServer | null = null;
  let s3: S3Server | null = null;
  try {
    if (want.redis) redis = await startRedis();
    if (want.s3) s3 = await startS3Server();
    return await fn({ redis, s3, procs });
  } finally {
    await Promise.allSettled(procs.map((p) => p.stop()));
    await Promise.allSettled([redis?.close(), s3?.close()]);
  }
}

export function queueWorker(procs: Proc[], redisUrl: string, queue: string, concurrency: number, sleepMs: number): Proc {
  const p = startProc([process.execPath, '--import', 'tsx', QUEUE_WORKER], {
    ...process.env,
    REDIS_URL: redisUrl,
    QUEUE: queue,
    CONCURRENCY: String(concurrency),
    SLEEP_MS: String(sleepMs),
  });
  procs.push(p);
  return p;
}

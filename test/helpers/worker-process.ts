/**
 * A real fleet worker as its own process (`node --import tsx apps/worker/src/main.ts`), with
 * its own local store and run dir as on its own host, its stderr (JSON log lines) kept for a
 * failing test to show.
 */
import { execa, type ResultPromise } from 'execa';
import path from 'node:path';
import { REPO } from './vmlb.js';

export const WORKER_MAIN = path.join(REPO, 'apps/worker/src/main.ts');

export interface WorkerProcess {
  name: string;
  id: string;
  child: ResultPromise;
  log: string[];
  exited: Promise<{ exitCode?: number; signal?: string }>;
  /** SIGTERM (a clean stop: jobs finish or go back to the queue), then waits for the exit. */
  stop(): Promise<{ exitCode?: number; signal?: string }>;
}

export interface WorkerProcessOptions {
  /** Names the worker (`w-NAME`) and its folders under `dir`. */
  name: string;
  dir: string;
  /** REDIS_URL; without it, `env` says where Redis is (e.g. REDIS_SENTINELS). */
  redisUrl?: string;
  sharedUrl: string;
  s3env: Record<string, string>;
  /** @default `w-NAME` */
  id?: string;
  /** A 2 s job lock, so a SIGKILLed worker's job runs again within about 3 s (TESTING.md); false keeps the production 30 s. @default true */
  shortLocks?: boolean;
  env?: Record<string, string>;
}

export function startWorkerProcess(o: WorkerProcessOptions): WorkerProcess {
  const id = o.id ?? `w-${o.name}`;
  const env: Record<string, string | undefined> = {
    ...process.env,
    ...o.s3env,
    ...(o.redisUrl ? { REDIS_URL: o.redisUrl } : {}),
    VMLB_SHARED: o.sharedUrl,
    VMLB_STORE: path.join(o.dir, `store-${o.name}`),
    VMLB_RUN_DIR: path.join(o.dir, `run-${o.name}`),
    VMLB_WORKER_ID: id,
    VMLB_WORKER_SLOTS: '2',
    VMLB_BACKEND: 'fuse',
    ...(o.shortLocks === false ? {} : { VMLB_WORKER_LOCK_MS: '2000', VMLB_WORKER_STALLED_MS: '1000' }),
    ...o.env,
  };
  // An empty value in `env` unsets the variable (e.g. VMLB_WORKER_SLOTS: '' for the worker's own count).
  for (const [k, v] of Object.entries(env)) if (v === '') delete env[k];
  const child = execa(process.execPath, ['--import', 'tsx', WORKER_MAIN], {
    cwd: REPO,
    env,
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    buffer: false,
  });
  const log: string[] = [];
  child.stderr!.on('data', (b: Buffer) => {
    log.push(...b.toString().split('\n').filter(Boolean));
    if (process.env.VMLB_TEST_DEBUG) process.stderr.write(`[${o.name}] ${b.toString()}`);
  });
  child.stdout!.resume();
  const exited = child.then((r) => ({ exitCode: r.exitCode, signal: r.signal }));
  return {
    name: o.name,
    id,
    child,
    log,
    exited,
    async stop() {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** The last lines of each worker's log, for a failure message. */
export function workerLogs(workers: Iterable<WorkerProcess>, lines = 30): string {
  return [...workers].map((w) => `--- ${w.name}\n${w.log.slice(-lines).join('\n')}`).join('\n');
}

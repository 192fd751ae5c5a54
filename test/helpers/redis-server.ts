/**
 * A private redis-server for a test file: a free loopback port, no persistence (unless
 * `appendOnly`), stopped by
 * its pid (TESTING.md: never the machine's default port). `stop()` and `start()` again on the
 * same port let tests restart Redis mid-build. REDIS_URL in the environment makes the suite
 * use an existing server instead (then stop/start are not available).
 */
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { freePort, portOpen } from '../../libs/fleet/src/loopback-port.js';
import os from 'node:os';
import path from 'node:path';

export { freePort };

export interface RedisServer {
  url: string;
  port: number;
  /** False when the suite uses an external REDIS_URL. */
  controllable: boolean;
  stop(): Promise<void>;
  start(): Promise<void>;
  /**
   * SIGSTOP / SIGCONT: the server keeps its connections but answers nothing (a partition, as
   * a client sees it: no error, no reply), until `thaw()`.
   */
  freeze(): void;
  thaw(): void;
  close(): Promise<void>;
}

async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await portOpen(port)) return;
    if (Date.now() > deadline) throw new Error(`redis-server did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface StartRedisOptions {
  /**
   * Persist every write (`--appendonly yes --appendfsync always`), as a production Redis for
   * BullMQ runs: `stop()` then `start()` comes back from the same folder with the queue as it
   * was. Without it a restart is a Redis with nothing in it.
   */
  appendOnly?: boolean;
  /** More redis-server arguments, e.g. `['--aclfile', FILE]` (an external REDIS_URL ignores them). */
  args?: string[];
}

export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisServer> {
  if (process.env.REDIS_URL) {
    const url = process.env.REDIS_URL;
    return { url, port: Number(new URL(url).port || 6379), controllable: false, stop: async () => {}, start: async () => {}, freeze: () => {}, thaw: () => {}, close: async () => {} };
  }
  const port = await freePort();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-redis-'));
  let child: ResultPromise | undefined;
  const start = async () => {
    const persistence = opts.appendOnly ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];
    child = execa('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', ...persistence, '--dir', dir, ...(opts.args ?? [])], {
      stdio: 'ignore',
      reject: false,
      cleanup: true,
    });
    await waitForPort(port);
  };
  const stop = async () => {
    if (!child) return;
    child.kill('SIGCONT');
    child.kill('SIGKILL');
    await child;
    child = undefined;
  };
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    controllable: true,
    stop,
    start,
    freeze: () => void child?.kill('SIGSTOP'),
    thaw: () => void child?.kill('SIGCONT'),
    async close() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

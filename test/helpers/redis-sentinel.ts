/**
 * A real Sentinel-managed Redis for a test file or a benchmark: a primary redis-server, its
 * replicas (`replicaof`) and redis-sentinel processes (Debian's `redis-sentinel`), each on a free
 * loopback port, from config files in a temporary folder (apps/scheduler/src/sentinel-set.ts
 * writes them), as children that are waited on and stopped by their pids (`cleanup: true` and a
 * parent-death signal: none outlives this process). Sentinels that call a primary down after
 * `downAfterMs` (1 s) make a failover take a few seconds (2.3 s here).
 *
 * `killPrimary()` SIGKILLs whichever node the sentinels name as the primary; `waitForFailover()`
 * waits until they name another one and that one says it is the primary; `restartKilled()` brings
 * the killed node back as a replica of the new primary, so that the set is whole again.
 */
import { execa, type ResultPromise } from 'execa';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort, portOpen } from '../../libs/fleet/src/loopback-port.js';
import type { RedisTarget } from '../../libs/fleet/src/redis-target.js';
import { primaryPortFrom, roleOf, sentinelSeesWholeSet, writeSentinelSet, type SentinelSetLayout } from '../../apps/scheduler/src/sentinel-set.js';

export interface StartSentinelSetOptions {
  /** The data nodes' password; false: none. @default a random one */
  password?: string | false;
  /** The sentinels' own password; false: none. @default a random one */
  sentinelPassword?: string | false;
  /** @default 2 */
  replicas?: number;
  /** @default 3 */
  sentinels?: number;
  /** @default vmlb */
  name?: string;
  /** @default 1000 */
  downAfterMs?: number;
  /** @default 3000 */
  failoverTimeoutMs?: number;
}

export interface Failover {
  /** The new primary. */
  host: string;
  port: number;
  /** From the kill until the sentinels named the new primary and it said so itself. */
  ms: number;
}

export interface SentinelSet {
  name: string;
  password?: string;
  sentinelPassword?: string;
  sentinels: Array<{ host: string; port: number }>;
  /** REDIS_SENTINELS, REDIS_SENTINEL_NAME, REDIS_PASSWORD, REDIS_SENTINEL_PASSWORD for a fleet part. */
  env: Record<string, string>;
  /** The same, as the fleet's config has it (redisConnection takes it). */
  target: RedisTarget;
  /** The port of the node the sentinels name as the primary now. */
  primaryPort(): Promise<number>;
  /** The pids of every process of the set that runs. */
  pids(): number[];
  /** Until every sentinel sees the primary, every replica linked and the other sentinels. */
  ready(timeoutMs?: number): Promise<void>;
  /** SIGKILL of the current primary (asked from a sentinel), waited for. */
  killPrimary(): Promise<{ port: number; pid: number; at: number }>;
  waitForFailover(timeoutMs?: number): Promise<Failover>;
  /** The killed node again, as a replica of the current primary. */
  restartKilled(): Promise<void>;
  /** Stops everything, removes the folder. Safe to call twice. */
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs: number, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`sentinel set: timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export async function startSentinelSet(o: StartSentinelSetOptions = {}): Promise<SentinelSet> {
  const name = o.name ?? 'vmlb';
  const password = o.password === false ? undefined : (o.password ?? randomBytes(12).toString('hex'));
  const sentinelPassword = o.sentinelPassword === false ? undefined : (o.sentinelPassword ?? randomBytes(12).toString('hex'));
  const replicas = o.replicas ?? 2;
  const sentinelCount = o.sentinels ?? 3;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-sentinel-'));
  const nodePorts: number[] = [];
  for (let i = 0; i <= replicas; i++) nodePorts.push(await freePort());
  const sentinelPorts: number[] = [];
  for (let i = 0; i < sentinelCount; i++) sentinelPorts.push(await freePort());
  const layout: SentinelSetLayout = { dir, name, nodePorts, sentinelPorts, password, sentinelPassword, downAfterMs: o.downAfterMs ?? 1000, failoverTimeoutMs: o.failoverTimeoutMs ?? 3000 };
  const files = await writeSentinelSet(layout);

  const nodes: Array<ResultPromise | undefined> = [];
  const sentinels: Array<ResultPromise | undefined> = [];
  // setpriv --pdeathsig: even a test process that dies without its exit handlers (a crash, a
  // SIGKILL) takes them along; it execs the server, so the pid is the server's own.
  const spawn = (cmd: string, args: string[]) => execa('setpriv', ['--pdeathsig', 'KILL', '--', cmd, ...args], { stdio: 'ignore', reject: false, cleanup: true });
  const kill = async (c: ResultPromise | undefined) => {
    if (!c) return;
    c.kill('SIGKILL');
    await c;
  };
  const startNode = async (i: number, extra: string[] = []) => {
    nodes[i] = spawn('redis-server', [files.nodeConfs[i]!, ...extra]);
    await until(`redis-server on port ${nodePorts[i]}`, () => portOpen(nodePorts[i]!), 10_000);
  };
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await Promise.all([...sentinels, ...nodes].map(kill));
    await rm(dir, { recursive: true, force: true });
  };

  const sentinelAddrs = sentinelPorts.map((port) => ({ host: '127.0.0.1', port }));
  const primaryPort = async () => until('a sentinel to name the primary', async () => {
    for (const p of sentinelPorts) {
      const port = await primaryPortFrom(p, name, sentinelPassword);
      if (port) return port;
    }
    return null;
  }, 10_000);
  const ready = async (timeoutMs = 30_000) => {
    await until('every sentinel to see the whole set', async () => {
      for (const p of sentinelPorts) if (!(await sentinelSeesWholeSet(p, { name, sentinelPassword, replicas, sentinels: sentinelCount }))) return false;
      return true;
    }, timeoutMs, 100);
  };
  let killed: { index: number; port: number; at: number } | undefined;

  try {
    await startNode(0);
    for (let i = 1; i <= replicas; i++) await startNode(i);
    for (let i = 0; i < sentinelCount; i++) {
      sentinels[i] = spawn('redis-sentinel', [files.sentinelConfs[i]!]);
      await until(`redis-sentinel on port ${sentinelPorts[i]}`, () => portOpen(sentinelPorts[i]!), 10_000);
    }
    await ready();
  } catch (e) {
    await close();
    throw e;
  }

  const env: Record<string, string> = {
    REDIS_SENTINELS: sentinelAddrs.map((s) => `${s.host}:${s.port}`).join(','),
    REDIS_SENTINEL_NAME: name,
    ...(password ? { REDIS_PASSWORD: password } : {}),
    ...(sentinelPassword ? { REDIS_SENTINEL_PASSWORD: sentinelPassword } : {}),
  };
  return {
    name,
    password,
    sentinelPassword,
    sentinels: sentinelAddrs,
    env,
    target: { kind: 'sentinel', sentinels: sentinelAddrs, name, password, sentinelPassword },
    primaryPort,
    pids: () => [...nodes, ...sentinels].filter((c) => c && c.exitCode === null && c.pid).map((c) => c!.pid!),
    ready,
    async killPrimary() {
      const port = await primaryPort();
      const index = nodePorts.indexOf(port);
      const child = nodes[index];
      if (index < 0 || !child?.pid) throw new Error(`sentinel set: the sentinels name port ${port}, which is no node of this set that runs`);
      const pid = child.pid;
      await kill(child);
      nodes[index] = undefined;
      killed = { index, port, at: performance.now() };
      return { port, pid, at: killed.at };
    },
    async waitForFailover(timeoutMs = 30_000) {
      if (!killed) throw new Error('sentinel set: waitForFailover() before killPrimary()');
      const k = killed;
      const port = await until('the sentinels to promote a replica', async () => {
        // A majority names the same new primary, and it says it is one.
        const named = await Promise.all(sentinelPorts.map((p) => primaryPortFrom(p, name, sentinelPassword)));
        const next = named.find((p) => p !== null && p !== k.port);
        if (!next || named.filter((p) => p === next).length < Math.floor(sentinelPorts.length / 2) + 1) return null;
        return (await roleOf(next, password)) === 'master' ? next : null;
      }, timeoutMs);
      return { host: '127.0.0.1', port, ms: performance.now() - k.at };
    },
    async restartKilled() {
      if (!killed) return;
      const primary = await primaryPort();
      await startNode(killed.index, ['--replicaof', '127.0.0.1', String(primary)]);
      killed = undefined;
    },
    close,
  };
}

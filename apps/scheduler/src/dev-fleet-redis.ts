import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort, portOpen } from '@vmlb/fleet';
import { READY_MS, type Part, type PartSupervisor } from './dev-fleet-parts.js';
import { primaryPortFrom, sentinelSeesWholeSet, writeSentinelSet } from './sentinel-set.js';

/** The fleet's Redis as its parts are told it: the variables, and how the "up" line says it. */
export interface FleetRedis {
  env: Record<string, string>;
  where: string;
  /** Before the Redis parts stop (sentinel mode: which node is the primary, for the next start). */
  beforeStop(): Promise<void>;
}

/**
 * The fleet's Redis, its first run up: one redis-server, or with `--sentinel` a Sentinel-managed
 * set. Every write is persisted to its folder, so that a restarted one has it all.
 */
export async function startFleetRedis(parts: PartSupervisor, dir: string, env: NodeJS.ProcessEnv, sentinel: boolean, up: (p: Part) => Promise<void>): Promise<FleetRedis> {
  if (sentinel) return startSentinelParts(parts, dir, env, up);
  const redisPort = await freePort();
  await mkdir(path.join(dir, 'redis'), { recursive: true });
  const redis = parts.start({
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
  return { env: { REDIS_URL: redisUrl }, where: redisUrl, beforeStop: async () => undefined };
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
async function startSentinelParts(parts: PartSupervisor, dir: string, env: NodeJS.ProcessEnv, up: (p: Part) => Promise<void>): Promise<FleetRedis> {
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
      parts.start({
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
      parts.start({
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
  await parts.waitUntil('the sentinels to see the whole set', async () => {
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

import { Redis } from 'ioredis';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * A Sentinel-managed Redis on this machine, on loopback, for `npm run fleet --sentinel`, the
 * test harness (test/helpers/redis-sentinel.ts) and the benchmarks: the config files of a primary,
 * its replicas and the sentinels that watch them, and the questions to ask the sentinels. Who
 * starts and stops the processes is the caller's business; what is here starts nothing.
 *
 * Each node and each sentinel runs from a config file of its own folder, because both rewrite
 * it: a sentinel records what it learnt (the replicas, the other sentinels, the current primary
 * and its epoch), and a data node gets `CONFIG REWRITE` from the sentinels after each
 * `REPLICAOF`, so a node restarted from its file comes back in the role it last had.
 */

export interface SentinelSetLayout {
  /** Where node-<i>/ and sentinel-<i>/ go. */
  dir: string;
  /** The master group name. @default vmlb */
  name?: string;
  /** The data nodes' ports; `primary` is the index of the one that starts as the primary. */
  nodePorts: number[];
  primary?: number;
  sentinelPorts: number[];
  /** The data nodes' password (requirepass, and masterauth for their replication links). */
  password?: string;
  /** The sentinels' own password (their requirepass; they use it with each other too). */
  sentinelPassword?: string;
  /** No answer for this long and a sentinel thinks the primary is down. @default 1000 */
  downAfterMs?: number;
  /** @default 3000 (Sentinel's default is 3 minutes) */
  failoverTimeoutMs?: number;
  /** Every write to an append-only file, fsynced (as the fleet's single Redis runs). @default false */
  appendOnly?: boolean;
  /** Log to stdout (a supervisor prefixes the lines) rather than to a file in the folder. @default false */
  logToStdout?: boolean;
}

export interface SentinelSetFiles {
  nodeConfs: string[];
  sentinelConfs: string[];
}

const LOOPBACK = '127.0.0.1';
/** A password goes into a config line as it is. */
const PLAIN = /^[A-Za-z0-9._~-]+$/;

function check(layout: SentinelSetLayout): void {
  for (const [what, pw] of [['password', layout.password], ['sentinelPassword', layout.sentinelPassword]] as const) {
    if (pw !== undefined && !PLAIN.test(pw)) throw new Error(`sentinel set: ${what} must be letters, digits and . _ ~ - only`);
  }
  if (layout.sentinelPorts.length < 1) throw new Error('sentinel set: no sentinel');
}

/** The majority of the sentinels: what it takes to agree that the primary is down. */
export function quorumOf(sentinels: number): number {
  return Math.floor(sentinels / 2) + 1;
}

export function dataNodeConf(layout: SentinelSetLayout, i: number): string {
  const primary = layout.primary ?? 0;
  const dir = path.join(layout.dir, `node-${i}`);
  const lines = [
    `port ${layout.nodePorts[i]}`,
    `bind ${LOOPBACK}`,
    `dir ${dir}`,
    'save ""',
    // everysec, not always: a process killed loses nothing either way (the page cache keeps its
    // writes), and a fsync per write on a busy disk stalls the node's replies to the sentinels'
    // pings for as long as the disk takes — long enough, under load, to be failed over.
    ...(layout.appendOnly ? ['appendonly yes', 'appendfsync everysec'] : ['appendonly no']),
    // BullMQ cannot work with keys evicted under it (its docs, "Going to production").
    'maxmemory-policy noeviction',
    `logfile ${layout.logToStdout ? '""' : path.join(dir, 'redis.log')}`,
    // Every node may be a replica one day: each has the password for the link too.
    ...(layout.password ? [`requirepass ${layout.password}`, `masterauth ${layout.password}`] : []),
    ...(i === primary ? [] : [`replicaof ${LOOPBACK} ${layout.nodePorts[primary]}`]),
  ];
  return `${lines.join('\n')}\n`;
}

export function sentinelConf(layout: SentinelSetLayout, i: number): string {
  const name = layout.name ?? 'vmlb';
  const dir = path.join(layout.dir, `sentinel-${i}`);
  const lines = [
    `port ${layout.sentinelPorts[i]}`,
    `bind ${LOOPBACK}`,
    `dir ${dir}`,
    `logfile ${layout.logToStdout ? '""' : path.join(dir, 'sentinel.log')}`,
    ...(layout.sentinelPassword ? [`requirepass ${layout.sentinelPassword}`] : []),
    `sentinel monitor ${name} ${LOOPBACK} ${layout.nodePorts[layout.primary ?? 0]} ${quorumOf(layout.sentinelPorts.length)}`,
    `sentinel down-after-milliseconds ${name} ${layout.downAfterMs ?? 1000}`,
    `sentinel failover-timeout ${name} ${layout.failoverTimeoutMs ?? 3000}`,
    `sentinel parallel-syncs ${name} 1`,
    ...(layout.password ? [`sentinel auth-pass ${name} ${layout.password}`] : []),
  ];
  return `${lines.join('\n')}\n`;
}

/** Writes node-<i>/redis.conf and sentinel-<i>/sentinel.conf (new ones: any old state is replaced). */
export async function writeSentinelSet(layout: SentinelSetLayout): Promise<SentinelSetFiles> {
  check(layout);
  const write = async (folder: string, file: string, text: string) => {
    const dir = path.join(layout.dir, folder);
    await mkdir(dir, { recursive: true });
    const f = path.join(dir, file);
    await writeFile(f, text, { mode: 0o600 });
    return f;
  };
  const files: SentinelSetFiles = { nodeConfs: [], sentinelConfs: [] };
  for (let i = 0; i < layout.nodePorts.length; i++) files.nodeConfs.push(await write(`node-${i}`, 'redis.conf', dataNodeConf(layout, i)));
  for (let i = 0; i < layout.sentinelPorts.length; i++) files.sentinelConfs.push(await write(`sentinel-${i}`, 'sentinel.conf', sentinelConf(layout, i)));
  return files;
}

/** One command on a short-lived connection that does not retry: an answer, or an error. */
export async function askOnce(port: number, password: string | undefined, args: [string, ...(string | number)[]], timeoutMs = 1000): Promise<unknown> {
  const c = new Redis({ host: LOOPBACK, port, password, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, enableOfflineQueue: false, connectTimeout: timeoutMs, commandTimeout: timeoutMs });
  c.on('error', () => {});
  try {
    await c.connect();
    return await c.call(args[0], ...args.slice(1));
  } finally {
    c.disconnect();
  }
}

/** The primary's port as this sentinel names it, or null (no answer, or it knows no such master). */
export async function primaryPortFrom(sentinelPort: number, name: string, sentinelPassword?: string): Promise<number | null> {
  try {
    const r = await askOnce(sentinelPort, sentinelPassword, ['SENTINEL', 'get-master-addr-by-name', name]);
    return Array.isArray(r) && r.length === 2 ? Number(r[1]) : null;
  } catch {
    return null;
  }
}

/** A flat [k, v, k, v] reply as an object. */
function fields(reply: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (!Array.isArray(reply)) return out;
  for (let i = 0; i + 1 < reply.length; i += 2) out[String(reply[i])] = String(reply[i + 1]);
  return out;
}

/**
 * Whether this sentinel sees the set whole: the master up, `replicas` replicas with their links
 * up, and the other sentinels (it learns of them through the primary, every 2 s). Without the
 * others no failover can be voted.
 */
export async function sentinelSeesWholeSet(sentinelPort: number, o: { name: string; sentinelPassword?: string; replicas: number; sentinels: number }): Promise<boolean> {
  try {
    const master = fields(await askOnce(sentinelPort, o.sentinelPassword, ['SENTINEL', 'master', o.name]));
    if (master.flags !== 'master' || Number(master['num-other-sentinels']) < o.sentinels - 1) return false;
    const replicas = (await askOnce(sentinelPort, o.sentinelPassword, ['SENTINEL', 'replicas', o.name])) as unknown[];
    const linked = (Array.isArray(replicas) ? replicas : []).map(fields).filter((r) => r.flags === 'slave' && r['master-link-status'] === 'ok');
    return linked.length >= o.replicas;
  } catch {
    return false;
  }
}

/** The role a data node says it has (`master`, `slave`), or null when it does not answer. */
export async function roleOf(port: number, password?: string): Promise<string | null> {
  try {
    const r = await askOnce(port, password, ['ROLE']);
    return Array.isArray(r) ? String(r[0]) : null;
  } catch {
    return null;
  }
}

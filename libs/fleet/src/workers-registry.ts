import type { Redis } from 'ioredis';
import type { SeenWorker } from './api-types.js';
import { redisKeys } from './names.js';

/**
 * Worker registrations: `vmlb:worker:<id>`, JSON, written by each worker's heartbeat every
 * HEARTBEAT_MS with a TTL of REGISTRATION_TTL_MS, so a worker that dies disappears from the
 * scheduler's view within 15 s, and one that stops cleanly removes its own at once.
 */

export const HEARTBEAT_MS = 5000;
export const REGISTRATION_TTL_MS = 15_000;

export interface WorkerRegistration {
  id: string;
  host: string;
  pid: number;
  backend: 'fuse' | 'nbd';
  /** The pool whose jobs it takes (VMLB_WORKER_POOL); absent from workers of before pools: default. */
  pool?: string;
  /** Layer jobs it runs at once (its BullMQ concurrency). */
  slots: number;
  /** Layer and flatten jobs running now. */
  busy: number;
  /** Bytes in its local store (layers and logs). */
  cachedBytes: number;
  version: string;
  /** ISO times. */
  startedAt: string;
  lastHeartbeat: string;
  /** 'running', 'stopping' once it has stopped taking jobs, 'stopped' once it has (listStoppedWorkers). */
  state: 'running' | 'stopping' | 'stopped';
  /** When it stopped cleanly (ISO; state `stopped` only). */
  stoppedAt?: string;
}

/**
 * Writes a worker's registration (with its TTL) and its line in `vmlb:workers-seen`, a hash that
 * outlives the TTL: a worker that died is still listed there, with its last heartbeat, until
 * SEEN_KEEP_MS have passed. That is what the dashboard and the heartbeat alert show.
 */
export async function writeRegistration(redis: Redis, reg: WorkerRegistration, ttlMs = REGISTRATION_TTL_MS): Promise<void> {
  const text = JSON.stringify(reg);
  await redis.multi().set(redisKeys.worker(reg.id), text, 'PX', ttlMs).hset(redisKeys.workersSeen, reg.id, text).exec();
}

/**
 * A clean stop: the worker is gone from both views (it is not a dead one), and with its last
 * registration (`last`) it is listed as stopped for STOPPED_KEEP_MS (listStoppedWorkers), so the
 * fleet page says so rather than the worker just vanishing.
 */
export async function removeRegistration(redis: Redis, workerId: string, last?: WorkerRegistration, now = Date.now()): Promise<void> {
  const m = redis.multi().del(redisKeys.worker(workerId)).hdel(redisKeys.workersSeen, workerId);
  if (last) {
    const stopped: WorkerRegistration = { ...last, busy: 0, state: 'stopped', stoppedAt: new Date(now).toISOString() };
    m.hset(redisKeys.workersStopped, workerId, JSON.stringify(stopped));
  }
  await m.exec();
}

/** How long a worker that stopped cleanly stays listed as stopped. */
export const STOPPED_KEEP_MS = 3600_000;

/**
 * The workers that stopped cleanly within STOPPED_KEEP_MS (live: false, state `stopped`), but
 * not one registered again since (a worker of the same id); older ones are dropped here. Apart
 * from listKnownWorkers: a stopped worker is no dead one (no heartbeat alert, no metric).
 */
export async function listStoppedWorkers(redis: Redis, now = Date.now()): Promise<SeenWorker[]> {
  const stopped = await redis.hgetall(redisKeys.workersStopped);
  const ids = Object.keys(stopped);
  if (ids.length === 0) return [];
  const seenAgain = await redis.hmget(redisKeys.workersSeen, ...ids);
  const out: SeenWorker[] = [];
  const stale: string[] = [];
  ids.forEach((id, i) => {
    const r = parse(stopped[id]!);
    const at = Date.parse(r?.stoppedAt ?? '');
    if (!r || !(now - at <= STOPPED_KEEP_MS) || seenAgain[i]) stale.push(id);
    else out.push({ ...r, live: false });
  });
  if (stale.length) await redis.hdel(redisKeys.workersStopped, ...stale);
  return out.sort((a, b) => a.id.localeCompare(b.id));
}

/** How long a worker that stopped without a word stays listed (as not live). */
export const SEEN_KEEP_MS = 24 * 3600_000;

/**
 * Every worker registered now, and those whose heartbeat stopped within SEEN_KEEP_MS (live:
 * false); older ones are dropped from the hash here.
 */
export async function listKnownWorkers(redis: Redis, now = Date.now()): Promise<SeenWorker[]> {
  const [live, seen] = await Promise.all([listWorkers(redis), redis.hgetall(redisKeys.workersSeen)]);
  const byId = new Map<string, SeenWorker>(live.map((w) => [w.id, { ...w, live: true }]));
  const stale: string[] = [];
  for (const [id, text] of Object.entries(seen)) {
    if (byId.has(id)) continue;
    const r = parse(text);
    if (!r || now - Date.parse(r.lastHeartbeat) > SEEN_KEEP_MS) stale.push(id);
    else byId.set(id, { ...r, live: false });
  }
  if (stale.length) await redis.hdel(redisKeys.workersSeen, ...stale);
  return [...byId.values()].sort((a, b) => a.id.localeCompare(b.id));
}

export async function readRegistration(redis: Redis, workerId: string): Promise<WorkerRegistration | null> {
  const text = await redis.get(redisKeys.worker(workerId));
  return text ? parse(text) : null;
}

/** Every live worker's registration, by id. */
export async function listWorkers(redis: Redis): Promise<WorkerRegistration[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', redisKeys.workerPattern, 'COUNT', 200);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  if (keys.length === 0) return [];
  const values = await redis.mget(...keys);
  return values
    .map((v) => (v ? parse(v) : null))
    .filter((r): r is WorkerRegistration => r !== null)
    .sort((a, b) => a.id.localeCompare(b.id));
}

function parse(text: string): WorkerRegistration | null {
  try {
    const r = JSON.parse(text) as WorkerRegistration;
    return typeof r?.id === 'string' ? r : null;
  } catch {
    return null;
  }
}

import type { Redis } from 'ioredis';
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
  /** 'running', or 'stopping' once it has stopped taking jobs. */
  state: 'running' | 'stopping';
}

export async function writeRegistration(redis: Redis, reg: WorkerRegistration, ttlMs = REGISTRATION_TTL_MS): Promise<void> {
  await redis.set(redisKeys.worker(reg.id), JSON.stringify(reg), 'PX', ttlMs);
}

export async function removeRegistration(redis: Redis, workerId: string): Promise<void> {
  await redis.del(redisKeys.worker(workerId));
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

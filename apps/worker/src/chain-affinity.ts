import type { Redis } from 'ioredis';
import type { LocalStore } from '@vmlb/layer-engine';
import { listWorkers, redisKeys } from '@vmlb/fleet';

/**
 * Chain affinity: a layer job should run where its parent chain already is, so that nobody
 * pulls a 650 MiB base for a one-file layer. BullMQ hands a job to whichever worker asks
 * first, so a worker that lacks (some of) the chain looks whether another live worker of its
 * pool holds more of it and has a free slot; if so it puts the job back for a moment
 * (AFFINITY_RETRY_MS) for that worker to take. A job waits so at most AFFINITY_WAIT_MS in all,
 * counted from the first time it was put back; after that any worker builds it. A holder with
 * one free slot waits for one job: more jobs put back for it (`vmlb:affinity-waiters:<id>`)
 * than it has free slots, and the next one builds where it is.
 *
 * What each worker holds is a Redis set, `vmlb:worker-keys:<id>` (the keys of its local
 * store), written when it starts and whenever a job ends, with the registration's TTL.
 *
 * Waiting is for chains worth it: when what this worker lacks of the chain is at most
 * VMLB_AFFINITY_SMALL_CHAIN (32 MiB: about what a worker pulls from a store on its network
 * within one put-back) in the shared store (the manifests' blob sizes), pulling it costs less than
 * one put-back (AFFINITY_RETRY_MS, a second dispatch, and the chance that the holder's slots
 * are taken meanwhile by the job's siblings), so the job builds where it is at once.
 */
export const AFFINITY_WAIT_MS = 3000;
export const AFFINITY_RETRY_MS = 150;

const HELD_TTL_MS = 60_000;

const heldKeysKey = redisKeys.workerKeys;
const affinityKey = redisKeys.affinity;

/** Writes the keys of this worker's local store (replacing the last list). */
export async function publishHeldKeys(redis: Redis, workerId: string, store: LocalStore): Promise<void> {
  const keys = (await store.list()).map((l) => l.manifest.key);
  const m = redis.multi().del(heldKeysKey(workerId));
  if (keys.length) m.sadd(heldKeysKey(workerId), ...keys).pexpire(heldKeysKey(workerId), HELD_TTL_MS);
  await m.exec();
}

export async function dropHeldKeys(redis: Redis, workerId: string): Promise<void> {
  await redis.del(heldKeysKey(workerId));
}

/** The keys of `chain` the local store lacks, in order. */
async function missingHere(store: LocalStore, chain: string[]): Promise<string[]> {
  const missing: string[] = [];
  for (const k of chain) if ((await store.getManifest(k).catch(() => null)) === null) missing.push(k);
  return missing;
}

/**
 * The id of another live, running worker of `pool` with a free slot that holds more of
 * `chain` than this one does, if there is one (the one holding most).
 */
export async function betterHolder(
  redis: Redis,
  o: { workerId: string; pool: string; store: LocalStore; chain: string[]; jobId: string },
): Promise<{ id: string; held: number; mine: number; missing: string[] } | null> {
  if (o.chain.length === 0) return null;
  const missing = await missingHere(o.store, o.chain);
  const mine = o.chain.length - missing.length;
  if (missing.length === 0) return null;
  const others = (await listWorkers(redis)).filter((w) => w.id !== o.workerId && (w.pool ?? 'default') === o.pool && w.state === 'running' && w.busy < w.slots);
  let best: { id: string; held: number; mine: number; missing: string[] } | null = null;
  for (const w of others) {
    // Its free slots are for the jobs put back for it already: one slot, one job waits for it;
    // the others build where they are.
    if ((await waitersFor(redis, w.id, o.jobId)) >= w.slots - w.busy) continue;
    const flags = (await redis.smismember(heldKeysKey(w.id), ...o.chain)) as number[];
    const held = flags.reduce((a, b) => a + b, 0);
    if (held > mine && (!best || held > best.held)) best = { id: w.id, held, mine, missing };
  }
  return best;
}

/** How many other jobs were put back for `holder` within the last two retry periods. */
async function waitersFor(redis: Redis, holder: string, jobId: string): Promise<number> {
  const key = redisKeys.affinityWaiters(holder);
  await redis.zremrangebyscore(key, '-inf', String(Date.now() - 2 * AFFINITY_RETRY_MS));
  const ids = await redis.zrange(key, '0', '-1');
  return ids.filter((id) => id !== jobId).length;
}

/**
 * Whether the layers of its chain this worker lacks (`missing`, see betterHolder) are small
 * enough to pull rather than wait for a holder (at most `limit` bytes; never with a limit of
 * 0): every one is in the shared store (`manifest` gives its blob size) and they add up to at
 * most that. A missing layer not in the shared store (a `# noshare` layer, which would be
 * built again here) is never small.
 */
export async function missingChainIsSmall(missing: string[], limit: number, manifest: (key: string) => Promise<{ blob: { size: number } } | null>): Promise<boolean> {
  if (limit <= 0) return false;
  let bytes = 0;
  for (const k of missing) {
    const m = await manifest(k).catch(() => null);
    if (!m) return false;
    bytes += m.blob.size;
    if (bytes > limit) return false;
  }
  return true;
}

/** Says that `jobId` was put back for `holder` to take (see waitersFor). */
export async function waitFor(redis: Redis, holder: string, jobId: string): Promise<void> {
  const key = redisKeys.affinityWaiters(holder);
  await redis.multi().zadd(key, String(Date.now()), jobId).pexpire(key, 10 * AFFINITY_RETRY_MS).exec();
}

/** Whether the job may still be put back for a better holder (true the first AFFINITY_WAIT_MS after it first was). */
export async function mayWaitForHolder(redis: Redis, jobId: string): Promise<boolean> {
  await redis.set(affinityKey(jobId), String(Date.now()), 'PX', 10 * AFFINITY_WAIT_MS, 'NX');
  const first = Number(await redis.get(affinityKey(jobId)));
  return Date.now() - first < AFFINITY_WAIT_MS;
}

/** Queue names and Redis keys shared by the scheduler and the workers (see docs/fleet.md). */

export const LAYER_QUEUE = 'vmlb-layers';
export const FLATTEN_QUEUE = 'vmlb-flatten';

/** A pool's layer queue: pool default's keeps the name from before pools (see pools.ts). */
export const layerQueueOf = (pool: string): string => (pool === 'default' ? LAYER_QUEUE : `${LAYER_QUEUE}-${pool}`);
export const flattenQueueOf = (pool: string): string => (pool === 'default' ? FLATTEN_QUEUE : `${FLATTEN_QUEUE}-${pool}`);

/**
 * What a claim and its ready message name: a layer key (or `image:<top>`) inside a pool. Pool
 * default's are the bare key, as before pools; another pool's carry it (`<pool>/<key>`), so the
 * same key built in two pools is two claims.
 */
export const poolClaimKey = (pool: string, what: string): string => (pool === 'default' ? what : `${pool}/${what}`);

/**
 * BullMQ job ids: one per layer of a build, one flatten. Not `<buildId>:<index>`: BullMQ 6
 * refuses a custom id with one ':' ("Custom Id cannot contain :"; it keeps `a:b:c` for old
 * repeatable jobs), so the separator is '-' (build ids are lowercase letters and digits).
 */
export const layerJobId = (buildId: string, index: number): string => `${buildId}-${index}`;
export const flattenJobId = (buildId: string): string => `${buildId}-flatten`;

export const redisKeys = {
  /** SET NX PX: who builds this layer key now (value: the claimant's id). */
  claim: (key: string) => `vmlb:claim:${key}`,
  /** Pub/sub channel: a layer key's manifest is now in the shared store (message: the key). */
  layerReady: 'vmlb:layer-ready',
  /** Stream of a build's events (XADD by workers, XREAD by the scheduler). */
  events: (buildId: string) => `vmlb:events:${buildId}`,
  /** Characters of layer output a build's workers have put in its event stream (INCRBY; see takeLogBudget). */
  logBudget: (buildId: string) => `vmlb:log-budget:${buildId}`,
  /** A worker's registration, refreshed by its heartbeat (JSON, TTL). */
  worker: (workerId: string) => `vmlb:worker:${workerId}`,
  workerPattern: 'vmlb:worker:*',
  /** Set: the layer keys in a worker's local store (chain affinity, apps/worker/src/chain-affinity.ts). */
  workerKeys: (workerId: string) => `vmlb:worker-keys:${workerId}`,
  /** When a layer job was first put back for a worker that holds its chain (ms since the epoch). */
  affinity: (jobId: string) => `vmlb:affinity:${jobId}`,
  /** Sorted set: jobs put back lately for this worker to take (chain affinity), scored by when. */
  affinityWaiters: (workerId: string) => `vmlb:affinity-waiters:${workerId}`,
  /** Hash: worker id → its last registration, kept after its TTL so a dead worker stays visible. */
  workersSeen: 'vmlb:workers-seen',
  /** Hash: worker id → its last registration (state `stopped`), for a while after it stopped cleanly. */
  workersStopped: 'vmlb:workers-stopped',
  /** JSON { reads: string[] }: a pool as the scheduler's teams file defines it (written at start). */
  pool: (pool: string) => `vmlb:pool:${pool}`,
  /**
   * Hash: team → its pool, as the schedulers' teams file says (rewritten at start and every
   * 10 s): a worker starts its teams' lookup series at 0 (docs/metrics.md).
   */
  teams: 'vmlb:teams',
  /** Running layer jobs of a team (the per-team cap). */
  teamRunning: (team: string) => `vmlb:team-running:${team}`,
  /** SET NX PX, renewed: the scheduler that follows builds now (value: its instance id; apps/scheduler/src/leader-lease.ts). */
  leader: 'vmlb:scheduler-leader',
  /** Set when a build is cancelled; workers check it while they build. */
  cancelled: (buildId: string) => `vmlb:cancelled:${buildId}`,
} as const;

/** Shared-store paths beside `layers/` (relative to the store's prefix). */
export const storePaths = {
  project: (sha256: string) => `projects/${sha256}.tar.gz`,
  build: (buildId: string) => `builds/${buildId}.json`,
  image: (topKey: string) => `images/${topKey}.qcow2`,
  /** The log of a layer job whose script failed (at most VMLB_LOG_MAX, uploaded by its worker). */
  failedLog: (buildId: string, index: number) => `logs/${buildId}/${index}.failed.log`,
} as const;

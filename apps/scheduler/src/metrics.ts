import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { DEFAULT_POOL, DROPPED_DEFAULT_METRICS, DURATION_BUCKETS, LAYER_CACHE_LOOKUPS, listKnownWorkers, type SeenWorker } from '@vmlb/fleet';
import type { StoredRecord } from './build-records.js';

/** Jobs in these states are waiting to run (waiting-children wait on their parent layer instead). */
export const QUEUED_STATES = ['waiting', 'prioritized', 'delayed'] as const;
export const JOB_STATES = ['waiting', 'waiting-children', 'active', 'delayed', 'prioritized', 'completed', 'failed'] as const;

/** A pool's two queues, as the metrics read them. */
export interface MetricPool {
  pool: string;
  queues: { layers: Queue; flatten: Queue };
}

export interface MetricSources {
  /**
   * Every pool and its queues, asked at each scrape: pools of a reloaded teams file show up
   * (PoolRegistry.all()).
   */
  pools: () => MetricPool[];
  /** The teams and their pools now (the teams file; reloaded ones too): their series start at 0. */
  teams?: () => Array<{ team: string; pool: string }>;
  redis: Redis;
  activeBuilds: () => number;
  /** The shared store's latest probe: true when it answered. */
  sharedStoreUp: () => Promise<boolean>;
  /**
   * Whether this scheduler leads now. The fleet's state (queues, workers, heartbeats) is one for
   * every scheduler: only the leader exports it, so that a sum over the schedulers' series (the
   * alert rules', Grafana's) counts each job and worker once. Absent: always (one scheduler).
   */
  leading?: () => boolean;
}

/**
 * The refusals of an upload itself (upload.ts, project-archive.ts): their series start at 0.
 * Other 4xx answers to a submission (a bad token, …) get theirs when they first happen.
 */
export const UPLOAD_REFUSALS = ['EMPTY_UPLOAD', 'UPLOAD_TOO_LARGE', 'UPLOAD_INCOMPLETE', 'UPLOAD_STALLED', 'NOT_A_TAR_GZ', 'EMPTY_ARCHIVE', 'ARCHIVE_TOO_LARGE', 'TOO_MANY_ENTRIES', 'UNSAFE_ENTRY'] as const;

/** The `kind` label of a queue series: what its jobs do (the worker's `queue` label says the same). */
export const QUEUE_KINDS = [['layers', 'layer'], ['flatten', 'flatten']] as const;

/**
 * The scheduler's Prometheus metrics, on a registry of its own (so two schedulers in one
 * process, as in tests, do not collide): prom-client's default process metrics, and the
 * fleet's own with the `vmlb_` prefix (the catalog is in docs/metrics.md). Queue depths, the
 * workers and the shared store's state are read when Prometheus scrapes (the queues and the
 * workers by the leading scheduler only); the pools and teams too, so that those of a reloaded
 * teams file appear.
 */
export class SchedulerMetrics {
  readonly registry = new Registry();
  readonly submitted: Counter<'team' | 'pool'>;
  /** Builds by final state. */
  readonly builds: Counter<'team' | 'pool' | 'state'>;
  readonly buildSeconds: Histogram<'state' | 'pool'>;
  /** Plan-time hits: layers the shared store had when the build was submitted (workers count the rest). */
  readonly lookups: Counter<'result' | 'source' | 'team' | 'pool'>;
  readonly uploadsRefused: Counter<'reason'>;
  readonly uploadBytes: Histogram;
  readonly httpDuration: Histogram<'method' | 'route' | 'status'>;
  /** 1 while this scheduler holds the leader lease (follows builds), else 0. */
  readonly leader: Gauge;
  private readonly initialized = new Set<string>();

  /** A build that reached its final state: counted, and its time from submission to the end observed. */
  finished(r: StoredRecord): void {
    const pool = r.pool ?? DEFAULT_POOL;
    this.builds.inc({ team: r.team, pool, state: r.state });
    const seconds = (Date.parse(r.finishedAt ?? new Date().toISOString()) - Date.parse(r.createdAt)) / 1000;
    this.buildSeconds.observe({ state: r.state, pool }, Math.max(0, seconds));
  }

  /**
   * Creates the per-team series at 0, so that a team's first failed build or first hit after a
   * restart is an increase Prometheus sees (a series born at 1 has no increase()). Called again
   * at each scrape with the teams of the moment (a team added by a reload, or moved to another
   * pool, gets its series then).
   */
  initTeams(teams: Array<{ team: string; pool: string }>): void {
    for (const { team, pool } of teams) {
      const id = `${team}\u0000${pool}`;
      if (this.initialized.has(id)) continue;
      this.initialized.add(id);
      this.submitted.inc({ team, pool }, 0);
      for (const state of ['done', 'failed', 'cancelled']) this.builds.inc({ team, pool, state }, 0);
      this.lookups.inc({ result: 'hit', source: 'shared', team, pool }, 0);
    }
  }

  constructor(sources: MetricSources) {
    const redisReady = () => sources.redis.status === 'ready';
    const leading = () => sources.leading?.() ?? true;
    collectDefaultMetrics({ register: this.registry });
    // Gauges with a counter's suffix (`promtool check metrics` refuses them); the per-type ones stay.
    for (const name of DROPPED_DEFAULT_METRICS) this.registry.removeSingleMetric(name);
    const registers = [this.registry];
    const self = this;
    const initNow = () => sources.teams && self.initTeams(sources.teams());
    this.submitted = new Counter({ name: 'vmlb_builds_submitted_total', help: 'Builds accepted by the scheduler, by team and pool.', labelNames: ['team', 'pool'], registers, collect: initNow });
    this.builds = new Counter({ name: 'vmlb_builds_total', help: 'Builds that reached a final state (done, failed, cancelled), by team and pool.', labelNames: ['team', 'pool', 'state'], registers, collect: initNow });
    this.buildSeconds = new Histogram({
      name: 'vmlb_build_duration_seconds',
      help: 'Builds end to end, from submission to their final state, by state and pool.',
      labelNames: ['state', 'pool'],
      buckets: [0.1, ...DURATION_BUCKETS],
      registers,
    });
    this.lookups = new Counter({ ...LAYER_CACHE_LOOKUPS, labelNames: [...LAYER_CACHE_LOOKUPS.labelNames], registers, collect: initNow });
    this.uploadsRefused = new Counter({ name: 'vmlb_uploads_refused_total', help: 'Project uploads refused, by reason (error code).', labelNames: ['reason'], registers });
    for (const reason of UPLOAD_REFUSALS) this.uploadsRefused.inc({ reason }, 0);
    this.uploadBytes = new Histogram({
      name: 'vmlb_upload_bytes',
      help: 'Sizes of accepted project uploads.',
      buckets: [1024, 16 * 1024, 256 * 1024, 1024 ** 2, 8 * 1024 ** 2, 64 * 1024 ** 2],
      registers,
    });
    this.httpDuration = new Histogram({
      name: 'vmlb_http_request_duration_seconds',
      help: 'Scheduler API requests, by route and status (SSE streams count until they end).',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.005, 0.025, 0.1, 0.5, 2, 10, 60, 600],
      registers,
    });
    this.leader = new Gauge({ name: 'vmlb_scheduler_leader', help: 'Whether this scheduler holds the leader lease and follows builds (1) or not (0): one of the fleet\'s schedulers has 1.', registers });
    new Gauge({
      name: 'vmlb_builds_active',
      help: 'Builds the scheduler is following as the leader (queued or building); 0 on the other schedulers.',
      registers,
      collect() {
        this.set(sources.activeBuilds());
      },
    });
    // Every queue of every pool, as the pools are now: [pool, kind, queue name, Queue].
    const queues = () => sources.pools().flatMap(({ pool, queues: q }) => QUEUE_KINDS.map(([field, kind]) => ({ pool, kind, queue: q[field] })));
    new Gauge({
      name: 'vmlb_queue_jobs',
      help: 'Jobs in the fleet queues, by queue (its name), pool, kind (layer, flatten) and state.',
      labelNames: ['queue', 'pool', 'kind', 'state'],
      registers,
      async collect() {
        this.reset();
        if (!leading() || !redisReady()) return;
        const counts = await Promise.all(queues().map(async (q) => ({ ...q, byState: await q.queue.getJobCounts(...JOB_STATES) })));
        this.reset();
        for (const { pool, kind, queue, byState } of counts) {
          for (const [state, n] of Object.entries(byState)) this.set({ queue: queue.name, pool, kind, state }, n);
        }
      },
    });
    new Gauge({
      name: 'vmlb_queue_oldest_job_age_seconds',
      help: 'Age of the oldest job waiting to run (waiting, prioritized or delayed), by queue, pool and kind; 0 when none waits.',
      labelNames: ['queue', 'pool', 'kind'],
      registers,
      async collect() {
        this.reset();
        if (!leading() || !redisReady()) return;
        const ages = await Promise.all(queues().map(async (q) => ({ ...q, age: await oldestQueuedAge(q.queue) })));
        this.reset();
        for (const { pool, kind, queue, age } of ages) this.set({ queue: queue.name, pool, kind }, age ?? 0);
      },
    });
    // One read of the workers serves the fleet gauges and the heartbeats of a scrape.
    // While Redis is down a scrape must not wait for it to come back: the gauges that read it
    // are left out (the queues, the heartbeats) or keep the last value read (the fleet's), and
    // vmlb_redis_up says why.
    let fleet: Promise<SeenWorker[]> | undefined;
    const workers = () => (fleet ??= listKnownWorkers(sources.redis).finally(() => setImmediate(() => (fleet = undefined))));
    new Gauge({
      name: 'vmlb_redis_up',
      help: 'Whether the scheduler\'s Redis connection (queues, event streams, workers) is ready (1) or not (0).',
      registers,
      collect() {
        this.set(redisReady() ? 1 : 0);
      },
    });
    const poolOf = (w: SeenWorker) => w.pool ?? DEFAULT_POOL;
    const fleetGauges: Array<[name: string, help: string, value: (w: SeenWorker) => number]> = [
      ['vmlb_fleet_workers', 'Workers alive now (their heartbeat registration has not expired), by pool; 0 for a pool with none.', () => 1],
      ['vmlb_fleet_slots', 'Layer job slots of the live workers, by pool.', (w) => w.slots],
      ['vmlb_fleet_busy_slots', 'Jobs running on the live workers, by pool.', (w) => w.busy],
    ];
    for (const [name, help, value] of fleetGauges) {
      new Gauge({
        name,
        help,
        labelNames: ['pool'],
        registers,
        async collect() {
          if (!leading()) return this.reset();
          if (!redisReady()) return; // the last values read
          const live = (await workers()).filter((w) => w.live);
          const byPool = new Map<string, number>(sources.pools().map((p) => [p.pool, 0]));
          for (const w of live) byPool.set(poolOf(w), (byPool.get(poolOf(w)) ?? 0) + value(w));
          this.reset();
          for (const [pool, n] of byPool) this.set({ pool }, n);
        },
      });
    }
    new Gauge({
      name: 'vmlb_worker_last_heartbeat_timestamp_seconds',
      help: 'Unix time of each worker\'s last heartbeat, by worker and its pool, for workers seen within a day that did not stop cleanly.',
      labelNames: ['worker', 'pool'],
      registers,
      async collect() {
        this.reset();
        if (!leading() || !redisReady()) return;
        for (const w of await workers()) this.set({ worker: w.id, pool: poolOf(w) }, Date.parse(w.lastHeartbeat) / 1000);
      },
    });
    new Gauge({
      name: 'vmlb_shared_store_up',
      help: 'Whether the shared store (S3) answered the scheduler\'s latest probe (1) or not (0).',
      registers,
      async collect() {
        this.set((await sources.sharedStoreUp()) ? 1 : 0);
      },
    });
  }
}

/** Seconds since the oldest job waiting to run was queued, or null when none waits. */
export async function oldestQueuedAge(q: Queue, now = Date.now()): Promise<number | null> {
  let first = Infinity;
  for (const state of QUEUED_STATES) {
    // Waiting is a list in arrival order (asc: oldest first); delayed and prioritized are sorted
    // by due time and priority, not age, so their first few are looked at.
    const jobs = state === 'waiting' ? await q.getJobs([state], 0, 0, true) : await q.getJobs([state], 0, 49, true);
    for (const j of jobs) if (j?.timestamp) first = Math.min(first, j.timestamp);
  }
  return first === Infinity ? null : Math.max(0, (now - first) / 1000);
}

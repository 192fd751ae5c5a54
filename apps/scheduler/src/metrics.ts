import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { DURATION_BUCKETS, LAYER_CACHE_LOOKUPS, listKnownWorkers, type SeenWorker } from '@vmlb/fleet';

/** Jobs in these states are waiting to run (waiting-children wait on their parent layer instead). */
export const QUEUED_STATES = ['waiting', 'prioritized', 'delayed'] as const;
export const JOB_STATES = ['waiting', 'waiting-children', 'active', 'delayed', 'prioritized', 'completed', 'failed'] as const;

export interface MetricSources {
  /** By queue name. */
  queues: Record<string, Queue>;
  redis: Redis;
  activeBuilds: () => number;
  /** The shared store's latest probe: true when it answered. */
  sharedStoreUp: () => Promise<boolean>;
}

/**
 * The scheduler's Prometheus metrics, on a registry of its own (so two schedulers in one
 * process, as in tests, do not collide): prom-client's default process metrics, and the
 * fleet's own with the `vmlb_` prefix (the catalog is in docs/metrics.md). Queue depths, the
 * workers and the shared store's state are read when Prometheus scrapes.
 */
export class SchedulerMetrics {
  readonly registry = new Registry();
  readonly submitted: Counter<'team'>;
  /** Builds by final state. */
  readonly builds: Counter<'team' | 'state'>;
  readonly buildSeconds: Histogram<'state'>;
  /** Plan-time hits: layers the shared store had when the build was submitted (workers count the rest). */
  readonly lookups: Counter<'result' | 'source' | 'team'>;
  readonly uploadsRefused: Counter<'reason'>;
  readonly uploadBytes: Histogram;
  readonly httpDuration: Histogram<'method' | 'route' | 'status'>;

  /**
   * Creates the per-team series at 0, so that a team's first failed build or first hit after a
   * restart is an increase Prometheus sees (a series born at 1 has no increase()).
   */
  initTeams(teams: string[]): void {
    for (const team of teams) {
      this.submitted.inc({ team }, 0);
      for (const state of ['done', 'failed', 'cancelled']) this.builds.inc({ team, state }, 0);
      this.lookups.inc({ result: 'hit', source: 'shared', team }, 0);
    }
  }

  constructor(sources: MetricSources) {
    const redisReady = () => sources.redis.status === 'ready';
    collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.submitted = new Counter({ name: 'vmlb_builds_submitted_total', help: 'Builds accepted by the scheduler.', labelNames: ['team'], registers });
    this.builds = new Counter({ name: 'vmlb_builds_total', help: 'Builds that reached a final state (done, failed, cancelled).', labelNames: ['team', 'state'], registers });
    this.buildSeconds = new Histogram({
      name: 'vmlb_build_duration_seconds',
      help: 'Builds end to end, from submission to their final state.',
      labelNames: ['state'],
      buckets: [0.1, ...DURATION_BUCKETS],
      registers,
    });
    this.lookups = new Counter({ ...LAYER_CACHE_LOOKUPS, labelNames: [...LAYER_CACHE_LOOKUPS.labelNames], registers });
    this.uploadsRefused = new Counter({ name: 'vmlb_uploads_refused_total', help: 'Project uploads refused, by reason (error code).', labelNames: ['reason'], registers });
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
    new Gauge({
      name: 'vmlb_builds_active',
      help: 'Builds the scheduler is following (queued or building).',
      registers,
      collect() {
        this.set(sources.activeBuilds());
      },
    });
    new Gauge({
      name: 'vmlb_queue_jobs',
      help: 'Jobs in the fleet queues, by queue and state.',
      labelNames: ['queue', 'state'],
      registers,
      async collect() {
        this.reset();
        if (!redisReady()) return;
        const counts = await Promise.all(Object.entries(sources.queues).map(async ([name, q]) => [name, await q.getJobCounts(...JOB_STATES)] as const));
        this.reset();
        for (const [name, byState] of counts) for (const [state, n] of Object.entries(byState)) this.set({ queue: name, state }, n);
      },
    });
    new Gauge({
      name: 'vmlb_queue_oldest_job_age_seconds',
      help: 'Age of the oldest job waiting to run (waiting, prioritized or delayed), by queue; 0 when none waits.',
      labelNames: ['queue'],
      registers,
      async collect() {
        this.reset();
        if (!redisReady()) return;
        const ages = await Promise.all(Object.entries(sources.queues).map(async ([name, q]) => [name, await oldestQueuedAge(q)] as const));
        this.reset();
        for (const [name, age] of ages) this.set({ queue: name }, age ?? 0);
      },
    });
    // One read of the workers serves the fleet gauges and the heartbeats of a scrape.
    // While Redis is down a scrape must not wait for it to come back: the labelled gauges that
    // read it are left out, the unlabelled ones keep the last value read, and vmlb_redis_up says
    // why.
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
    const sum = (ws: SeenWorker[], field: 'slots' | 'busy') => ws.reduce((n, w) => n + w[field], 0);
    const fleetGauges: Array<[name: string, help: string, value: (live: SeenWorker[]) => number]> = [
      ['vmlb_fleet_workers', 'Workers alive now (their heartbeat registration has not expired).', (ws) => ws.length],
      ['vmlb_fleet_slots', 'Layer job slots of the live workers.', (ws) => sum(ws, 'slots')],
      ['vmlb_fleet_busy_slots', 'Jobs running on the live workers.', (ws) => sum(ws, 'busy')],
    ];
    for (const [name, help, value] of fleetGauges) {
      new Gauge({
        name,
        help,
        registers,
        async collect() {
          if (!redisReady()) return; // the last value read
          this.set(value((await workers()).filter((w) => w.live)));
        },
      });
    }
    new Gauge({
      name: 'vmlb_worker_last_heartbeat_timestamp_seconds',
      help: 'Unix time of each worker\'s last heartbeat, for workers seen within a day that did not stop cleanly.',
      labelNames: ['worker'],
      registers,
      async collect() {
        this.reset();
        if (!redisReady()) return;
        for (const w of await workers()) this.set({ worker: w.id }, Date.parse(w.lastHeartbeat) / 1000);
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

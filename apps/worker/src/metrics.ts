import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { DEFAULT_POOL, DROPPED_DEFAULT_METRICS, DURATION_BUCKETS, LAYER_CACHE_LOOKUPS, WORKER_LOOKUP_RESULTS } from '@vmlb/fleet';

/**
 * The worker's Prometheus metrics, on their own registry (a process may run two workers in
 * tests), every series labelled with the worker id and the pool it serves (VMLB_WORKER_POOL);
 * served on VMLB_WORKER_METRICS_PORT when it is set.
 */
export class WorkerMetrics {
  readonly registry = new Registry();
  /** Jobs finished, by queue (layer, flatten) and outcome (built, shared-hit, waited, failed, retried, handed-back, cancelled, delayed). */
  readonly jobs: Counter<'queue' | 'outcome'>;
  /**
   * The layer cache lookups this worker settles: a job's layer found in the shared store (built
   * meanwhile by another build: hit/shared) or in its own store (a `# noshare` layer: hit/local),
   * or built (miss; source is the store it was looked up in). Together with the scheduler's
   * plan-time hits, each layer of each build is counted once.
   */
  readonly lookups: Counter<'result' | 'source' | 'team' | 'pool'>;
  readonly layerSeconds: Histogram<'kind'>;
  readonly flattenSeconds: Histogram;
  readonly pushedBytes: Counter<'object'>;
  readonly pulledBytes: Counter<'object'>;
  readonly storeRetries: Counter;
  readonly slots: Gauge;
  readonly busy: Gauge;
  readonly cachedBytes: Gauge;
  private server: http.Server | undefined;
  private readonly teams = new Set<string>();

  /** Job outcomes by queue: their series start at 0. */
  static readonly OUTCOMES = {
    layer: ['built', 'shared-hit', 'waited', 'failed', 'retried', 'handed-back', 'cancelled', 'delayed'],
    flatten: ['built', 'reused', 'failed', 'retried', 'handed-back'],
  } as const;

  /**
   * Starts a team's lookup series at 0 (every result and source), so that its first lookup is
   * an increase Prometheus sees: called with the teams of the worker's pool (read from Redis at
   * start and at each heartbeat) and with a job's team when the job starts.
   */
  initTeams(teams: Iterable<string>): void {
    for (const team of teams) {
      if (this.teams.has(team)) continue;
      this.teams.add(team);
      for (const l of WORKER_LOOKUP_RESULTS) this.lookups.inc({ ...l, team, pool: this.pool }, 0);
    }
  }

  constructor(
    workerId: string,
    readonly pool: string = DEFAULT_POOL,
  ) {
    this.registry.setDefaultLabels({ worker: workerId, pool });
    const registers = [this.registry];
    this.jobs = new Counter({ name: 'vmlb_worker_jobs_total', help: 'Jobs this worker finished, by queue and outcome.', labelNames: ['queue', 'outcome'], registers });
    this.lookups = new Counter({ ...LAYER_CACHE_LOOKUPS, labelNames: [...LAYER_CACHE_LOOKUPS.labelNames], registers });
    this.layerSeconds = new Histogram({
      name: 'vmlb_layer_build_duration_seconds',
      help: 'Time to build one layer on a worker, by kind: fetching the project and the parent chain, attaching the disk, the script; not the upload.',
      labelNames: ['kind'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.flattenSeconds = new Histogram({
      name: 'vmlb_flatten_duration_seconds',
      help: 'Time to write a build\'s image: fetch the chain, qemu-img convert, upload.',
      buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800],
      registers,
    });
    this.pushedBytes = new Counter({ name: 'vmlb_shared_store_pushed_bytes_total', help: 'Bytes uploaded to the shared store, by object (layer, image).', labelNames: ['object'], registers });
    this.pulledBytes = new Counter({ name: 'vmlb_shared_store_pulled_bytes_total', help: 'Bytes fetched from the shared store, by object (layer).', labelNames: ['object'], registers });
    this.storeRetries = new Counter({ name: 'vmlb_shared_store_retries_total', help: 'Shared-store requests that failed and were tried again.', registers });
    this.slots = new Gauge({ name: 'vmlb_worker_slots', help: 'Layer jobs this worker runs at once.', registers });
    this.busy = new Gauge({ name: 'vmlb_worker_busy_slots', help: 'Jobs running now.', registers });
    this.cachedBytes = new Gauge({ name: 'vmlb_worker_cached_bytes', help: 'Bytes in the local store.', registers });
    for (const [queue, outcomes] of Object.entries(WorkerMetrics.OUTCOMES)) for (const outcome of outcomes) this.jobs.inc({ queue, outcome }, 0);
    this.pushedBytes.inc({ object: 'layer' }, 0);
    this.pushedBytes.inc({ object: 'image' }, 0);
    this.pulledBytes.inc({ object: 'layer' }, 0);
    collectDefaultMetrics({ register: this.registry });
    // prom-client's `nodejs_active_{handles,requests,resources}_total` are gauges with a counter's
    // suffix (`promtool check metrics` refuses them): their per-type gauges without it stay.
    for (const name of DROPPED_DEFAULT_METRICS) this.registry.removeSingleMetric(name);
  }

  /** Serves GET /metrics; returns the port (0 picks a free one). */
  async serve(port: number, host: string): Promise<number> {
    const server = http.createServer((req, res) => {
      if (req.method !== 'GET' || req.url?.split('?')[0] !== '/metrics') {
        res.writeHead(404).end('not found: GET /metrics\n');
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'Content-Type': this.registry.contentType }).end(text),
        (e: unknown) => res.writeHead(500).end(String((e as Error).message)),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    return (server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s) await new Promise((r) => s.close(r));
  }
}

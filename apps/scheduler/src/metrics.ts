import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { listWorkers } from '@vmlb/fleet';

/**
 * The scheduler's Prometheus metrics, on a registry of its own (so two schedulers in one
 * process, as in tests, do not collide): prom-client's default process metrics, and the
 * fleet's own with the `vmlb_` prefix. Queue depths and the worker count are read from Redis
 * when Prometheus scrapes.
 */
export class SchedulerMetrics {
  readonly registry = new Registry();
  readonly submitted: Counter<'team'>;
  readonly finished: Counter<'team' | 'state'>;
  readonly layersPlanned: Counter<'result'>;
  readonly uploadsRefused: Counter<'reason'>;
  readonly uploadBytes: Histogram;
  readonly httpDuration: Histogram<'method' | 'route' | 'status'>;

  constructor(sources: { queues: Record<string, Queue>; redis: Redis; activeBuilds: () => number }) {
    collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.submitted = new Counter({ name: 'vmlb_builds_submitted_total', help: 'Builds accepted by the scheduler.', labelNames: ['team'], registers });
    this.finished = new Counter({ name: 'vmlb_builds_finished_total', help: 'Builds that reached a final state.', labelNames: ['team', 'state'], registers });
    this.layersPlanned = new Counter({
      name: 'vmlb_layers_planned_total',
      help: 'Layers of submitted builds, by whether the shared store had them (hit) or a job was queued (miss).',
      labelNames: ['result'],
      registers,
    });
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
        for (const [name, q] of Object.entries(sources.queues)) {
          const counts = await q.getJobCounts('waiting', 'waiting-children', 'active', 'delayed', 'prioritized', 'completed', 'failed');
          for (const [state, n] of Object.entries(counts)) this.set({ queue: name, state }, n);
        }
      },
    });
    new Gauge({
      name: 'vmlb_workers',
      help: 'Workers registered (heartbeat younger than its TTL).',
      registers,
      async collect() {
        this.set((await listWorkers(sources.redis)).length);
      },
    });
  }
}

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * The worker's Prometheus metrics, on their own registry (a process may run two workers in
 * tests), labelled with the worker id; served on VMLB_WORKER_METRICS_PORT when it is set.
 */
export class WorkerMetrics {
  readonly registry = new Registry();
  /** Jobs finished, by queue (layer, flatten) and outcome (built, shared-hit, waited, failed, retried, handed-back, cancelled, delayed). */
  readonly jobs: Counter<'queue' | 'outcome'>;
  readonly layerSeconds: Histogram<'kind'>;
  readonly pushedBytes: Counter;
  readonly pulledLayers: Counter;
  readonly slots: Gauge;
  readonly busy: Gauge;
  readonly cachedBytes: Gauge;
  private server: http.Server | undefined;

  constructor(workerId: string) {
    this.registry.setDefaultLabels({ worker: workerId });
    const registers = [this.registry];
    this.jobs = new Counter({ name: 'vmlb_worker_jobs_total', help: 'Jobs this worker finished, by queue and outcome', labelNames: ['queue', 'outcome'], registers });
    this.layerSeconds = new Histogram({
      name: 'vmlb_worker_layer_build_seconds',
      help: 'Time to build one layer (script, disk attach, publish)',
      labelNames: ['kind'],
      buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600],
      registers,
    });
    this.pushedBytes = new Counter({ name: 'vmlb_worker_pushed_bytes_total', help: 'Layer blob bytes uploaded to the shared store', registers });
    this.pulledLayers = new Counter({ name: 'vmlb_worker_pulled_layers_total', help: 'Layers fetched from the shared store', registers });
    this.slots = new Gauge({ name: 'vmlb_worker_slots', help: 'Layer jobs this worker runs at once', registers });
    this.busy = new Gauge({ name: 'vmlb_worker_busy_slots', help: 'Jobs running now', registers });
    this.cachedBytes = new Gauge({ name: 'vmlb_worker_cached_bytes', help: 'Bytes in the local store', registers });
    collectDefaultMetrics({ register: this.registry, prefix: 'vmlb_worker_' });
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

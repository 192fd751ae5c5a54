/**
 * A real Prometheus for a test file (Debian's `prometheus`, TESTING.md: a plain process with
 * its own config, TSDB folder and loopback port), scraping the given targets every second and
 * evaluating rule files (deploy/prometheus/alerts.yml) every second; stopped by its pid.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../../libs/fleet/src/loopback-port.js';

/** 90 % of a scrape interval (`1s`, `250ms`), in milliseconds. */
function scrapeTimeout(interval: string): string {
  const m = /^(\d+)(ms|s)$/.exec(interval);
  if (!m) throw new Error(`scrape interval ${interval}: give it as NNNms or NNs`);
  return `${Math.floor(Number(m[1]) * (m[2] === 's' ? 1000 : 1) * 0.9)}ms`;
}

export interface PrometheusServer {
  url: string;
  /** An instant query: the result vector's samples. */
  query(expr: string): Promise<Array<{ metric: Record<string, string>; value: number }>>;
  /** Active alerts (pending or firing), as /api/v1/alerts lists them. */
  alerts(): Promise<Array<{ labels: Record<string, string>; state: 'pending' | 'firing'; value: string }>>;
  /** The scrape targets' health by job and instance. */
  targets(): Promise<Array<{ job: string; instance: string; health: string; lastError: string }>>;
  log(): string;
  close(): Promise<void>;
}

/** `scrapeInterval`: Prometheus' duration syntax (`250ms`); the scrape timeout is 90 % of it. @default 1s */
export async function startPrometheus(o: { jobs: Record<string, string[]>; ruleFiles?: string[]; scrapeInterval?: string }): Promise<PrometheusServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-prometheus-'));
  const port = await freePort();
  const config = {
    global: { scrape_interval: o.scrapeInterval ?? '1s', scrape_timeout: scrapeTimeout(o.scrapeInterval ?? '1s'), evaluation_interval: '1s' },
    rule_files: o.ruleFiles ?? [],
    scrape_configs: Object.entries(o.jobs).map(([job, targets]) => ({ job_name: job, static_configs: [{ targets }] })),
  };
  // JSON is YAML.
  await writeFile(path.join(dir, 'prometheus.yml'), JSON.stringify(config, null, 2));
  let log = '';
  const child: ResultPromise = execa(
    'prometheus',
    [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { reject: false, stdin: 'ignore', buffer: false, cleanup: true },
  );
  child.stderr!.on('data', (b: Buffer) => (log += b.toString()));
  child.stdout!.resume();
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (await fetch(`${url}/-/ready`).then((r) => r.ok, () => false)) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      await child;
      await rm(dir, { recursive: true, force: true });
      throw new Error(`prometheus did not start on ${port}:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const api = async <T>(route: string): Promise<T> => {
    const r = await fetch(`${url}${route}`);
    const body = (await r.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`prometheus ${route}: ${body.error}`);
    return body.data;
  };
  return {
    url,
    async query(expr) {
      const data = await api<{ resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> }>(`/api/v1/query?query=${encodeURIComponent(expr)}`);
      return data.result.map((s) => ({ metric: s.metric, value: Number(s.value[1]) }));
    },
    async alerts() {
      return (await api<{ alerts: Array<{ labels: Record<string, string>; state: 'pending' | 'firing'; value: string }> }>('/api/v1/alerts')).alerts;
    },
    async targets() {
      const data = await api<{ activeTargets: Array<{ labels: Record<string, string>; health: string; lastError: string }> }>('/api/v1/targets');
      return data.activeTargets.map((t) => ({ job: t.labels.job!, instance: t.labels.instance!, health: t.health, lastError: t.lastError }));
    },
    log: () => log,
    async close() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await child;
      await rm(dir, { recursive: true, force: true });
    },
  };
}

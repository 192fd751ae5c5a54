/**
 * One cache hit rate (docs/metrics.md, "Cache lookups"): a real scheduler (in this process) and a
 * real worker process, scraped by a real Prometheus (Debian's, on a private port) from before
 * the first build, take a known mix of builds — misses, a second team's plan-time hits, a
 * `# noshare` layer built (a local miss) and then found in the worker's own store (a local hit),
 * a failing layer with a layer after it that never runs — and every view gives the same hits
 * and lookups: the counters of /metrics, Prometheus over the deploy files' own ratio expressions
 * (read from deploy/prometheus/alerts.yml and the Grafana dashboard), GET /v1/stats/cache, the
 * build records' hit counts and `vmlb builds`. Also `promtool check metrics` on both /metrics.
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { packProject } from './helpers/fleet-submit.js';
import { TOKENS, apiFor, startScheduler, waitFor, type RunningScheduler } from './helpers/fleet-api.js';
import { startPrometheus, type PrometheusServer } from './helpers/prometheus-server.js';
import { metricValue } from './helpers/prom-text.js';
import { freePort } from './helpers/redis-server.js';
import { startFleetServices, type FleetServices } from './helpers/fleet-services.js';
import { startWorkerProcess, workerLogs, type WorkerProcess } from './helpers/worker-process.js';
import { BUSYBOX_BASE, REPO, leftovers, vmlb, writeProject, type LayerDef, type Sandbox } from './helpers/vmlb.js';

let services: FleetServices;
let sb: Sandbox;
let sched: RunningScheduler;
let worker: WorkerProcess;
let metricsPort: number;
let prom: PrometheusServer | undefined;
let promStarted = 0;
const api = apiFor(() => sched.url, TOKENS.web);

const P1: Record<string, LayerDef> = {
  '01_base': BUSYBOX_BASE,
  '02_a': { kind: 'build-layer', script: 'echo layer a; echo a > /a' },
  '03_b': { kind: 'build-layer', script: 'echo layer b; echo b > /b' },
};
/** The same first two layers, then one that stays on the worker that builds it. */
const SECRET: Record<string, LayerDef> = {
  '01_base': P1['01_base']!,
  '02_a': P1['02_a']!,
  '03_secret': { kind: 'build-layer', script: '# noshare\necho s3cret > /secret' },
};
/** P1, a layer that fails, and one after it that never runs (not a lookup). */
const FAILING: Record<string, LayerDef> = {
  ...P1,
  '04_fail': { kind: 'build-layer', script: 'echo about to fail; exit 3' },
  '05_after': { kind: 'build-layer', script: 'echo never' },
};

async function submit(name: string, layers: Record<string, LayerDef>, token: string): Promise<string> {
  const dir = await writeProject(path.join(sb.dir, name), layers);
  const tgz = path.join(sb.dir, `${name}-${randomBytes(3).toString('hex')}.tar.gz`);
  await packProject(dir, tgz);
  const r = await api.json('POST', '/v1/builds', { token, body: await readFile(tgz) });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.id as string;
}

async function finished(id: string, token: string): Promise<any> {
  return waitFor(
    `build ${id} to finish\n${workerLogs([worker])}`,
    async () => {
      const r = await api.json('GET', `/v1/builds/${id}`, { token });
      return ['done', 'failed', 'cancelled'].includes(r.body?.state) ? r.body : undefined;
    },
    120_000,
    200,
  );
}

const schedulerMetrics = async () => (await fetch(`${sched.url}/metrics`)).text();
const workerMetrics = async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
/** Hits and lookups in the two processes' counters together. */
async function counters(): Promise<{ hits: number; lookups: number }> {
  const [s, w] = [await schedulerMetrics(), await workerMetrics()];
  const m = (labels: Record<string, string> = {}) => metricValue(s, 'vmlb_layer_cache_lookups_total', labels) + metricValue(w, 'vmlb_layer_cache_lookups_total', labels);
  return { hits: m({ result: 'hit' }), lookups: m() };
}

/** The hit ratio of VmlbCacheHitRatioLow: its expression's first operand of `< 0.5`. */
async function alertRatioExpr(): Promise<string> {
  const rules = parseYaml(await readFile(path.join(REPO, 'deploy/prometheus/alerts.yml'), 'utf8')) as { groups: Array<{ rules: Array<{ alert?: string; expr: string }> }> };
  const rule = rules.groups.flatMap((g) => g.rules).find((r) => r.alert === 'VmlbCacheHitRatioLow');
  const ratio = /^\s*(\([\s\S]*?\))\s*<\s*0\.5/.exec(rule!.expr)?.[1];
  expect(ratio, rule!.expr).toMatch(/increase\(vmlb_layer_cache_lookups_total\{result="hit"\}\[1h\]\)/);
  return ratio!;
}

/** The Grafana dashboard's fleet-wide hit-ratio stat, with its variables set to everything. */
async function grafanaRatioExpr(): Promise<string> {
  const dash = JSON.parse(await readFile(path.join(REPO, 'deploy/grafana/dashboards/vmlb.json'), 'utf8')) as { panels: Array<{ targets?: Array<{ expr: string }> }> };
  const exprs = dash.panels.flatMap((p) => p.targets ?? []).map((t) => t.expr);
  const expr = exprs.find((e) => /^sum \(increase\(vmlb_layer_cache_lookups_total\{result="hit"/.test(e));
  expect(expr, exprs.join('\n')).toBeDefined();
  return expr!.replaceAll('$team', '.*').replaceAll('$pool', '.*');
}

beforeAll(async () => {
  services = await startFleetServices('hit-rate');
  sb = services.sb;
  sched = await startScheduler(services.env);
  metricsPort = await freePort();
  // Prometheus first: it sees every series from its birth (at 0), as a long-running one does.
  prom = await startPrometheus({
    jobs: { 'vmlb-scheduler': [new URL(sched.url).host], 'vmlb-worker': [`127.0.0.1:${metricsPort}`] },
    ruleFiles: [path.join(REPO, 'deploy/prometheus/alerts.yml')],
    // Short: increase() extrapolates each series by up to one interval past its last sample.
    scrapeInterval: '250ms',
  });
  worker = startWorkerProcess({
    name: 'hr',
    dir: sb.dir,
    redisUrl: services.redis.url,
    sharedUrl: services.sharedUrl,
    s3env: services.s3.env,
    env: { VMLB_WORKER_METRICS_PORT: String(metricsPort), VMLB_WORKER_METRICS_HOST: '127.0.0.1' },
  });
  await waitFor(`the worker's /metrics\n${workerLogs([worker])}`, () => fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.ok, () => false), 60_000);
  // Prometheus takes its targets from discovery after a few seconds: wait for samples of both.
  await waitFor(
    'samples of both targets in Prometheus',
    async () => (await prom!.query('count by (job) (vmlb_layer_cache_lookups_total)')).length === 2,
    30_000,
    200,
  );
  promStarted = Date.now();
});

afterAll(async () => {
  await prom?.close();
  if (worker && worker.child.exitCode === null && worker.child.signalCode === null) await worker.stop();
  await sched?.close();
  const left = sb ? await leftovers(sb) : [];
  await services?.close();
  expect(left).toEqual([]);
});

describe('one cache hit rate', () => {
  it('before any build, every lookup series of the worker is there at 0, for each team of its pool', async () => {
    const w = await workerMetrics();
    for (const team of ['web', 'data', 'ops']) {
      for (const [result, source] of [['hit', 'shared'], ['hit', 'local'], ['miss', 'shared'], ['miss', 'local']]) {
        expect(w, `${team} ${result}/${source}`).toMatch(new RegExp(`^vmlb_layer_cache_lookups_total\\{[^}]*result="${result}",source="${source}",team="${team}"[^}]*\\} 0$`, 'm'));
      }
    }
    expect(await counters()).toEqual({ hits: 0, lookups: 0 });
  });

  it('promtool check metrics passes on the scheduler\'s and the worker\'s /metrics', async () => {
    await promtoolPasses('before any build');
  });

  it('a known mix of builds: the counters, Prometheus (the alerts\' and Grafana\'s ratio), /v1/stats/cache, the records and vmlb builds agree', async () => {
    // [project, layers, team, expected hits, expected lookups]
    const mix: Array<[string, Record<string, LayerDef>, string, number, number]> = [
      ['p1', P1, TOKENS.web, 0, 3], // three misses, built on the worker
      ['p1-data', P1, TOKENS.data, 3, 3], // another team: three plan-time hits
      ['secret', SECRET, TOKENS.web, 2, 3], // two plan-time hits, the # noshare layer built (a local miss)
      ['secret-again', SECRET, TOKENS.web, 3, 3], // the # noshare layer found in the worker's store: a local hit
      ['failing', FAILING, TOKENS.web, 3, 4], // three plan-time hits, a failed layer (a miss), one never run
    ];
    const records: any[] = [];
    for (const [name, layers, token] of mix) records.push(await finished(await submit(name, layers, token), token));
    expect(records.map((r) => r.state)).toEqual(['done', 'done', 'done', 'done', 'failed']);
    expect(records[3].layers[2]).toMatchObject({ name: '03_secret', status: 'hit', source: 'local', worker: 'w-hr' });
    expect(records[2].layers[2]).toMatchObject({ name: '03_secret', status: 'done' });
    expect(records[4].layers.map((l: { status: string }) => l.status)).toEqual(['hit', 'hit', 'hit', 'failed', 'cancelled']);
    const hits = mix.reduce((n, m) => n + m[3], 0);
    const lookups = mix.reduce((n, m) => n + m[4], 0);
    expect({ hits, lookups }).toEqual({ hits: 11, lookups: 16 });

    // The counters (the worker counts a job as it ends, a moment after its last event).
    await waitFor('the counters to settle', async () => (await counters()).lookups >= lookups, 15_000, 200).catch(() => undefined);
    expect(await counters()).toEqual({ hits, lookups });
    const w = await workerMetrics();
    expect(metricValue(w, 'vmlb_layer_cache_lookups_total', { result: 'hit', source: 'local' })).toBe(1);
    expect(metricValue(w, 'vmlb_layer_cache_lookups_total', { result: 'miss', source: 'local' })).toBe(1);

    // The build records (the list's lines) and the dashboard's series.
    const listed = await api.json('GET', '/v1/builds?limit=50', { token: TOKENS.ops });
    const mine = (listed.body.builds as Array<{ id: string; hits: number; lookups: number }>).filter((b) => records.some((r) => r.id === b.id));
    expect(mine.length).toBe(5);
    expect(mine.reduce((n, b) => ({ hits: n.hits + b.hits, lookups: n.lookups + b.lookups }), { hits: 0, lookups: 0 })).toEqual({ hits, lookups });
    const byId = new Map(mine.map((b) => [b.id, b]));
    expect(records.map((r) => [byId.get(r.id)!.hits, byId.get(r.id)!.lookups])).toEqual(mix.map((m) => [m[3], m[4]]));
    const stats = await api.json('GET', '/v1/stats/cache?hours=1&bucketMinutes=60', { token: TOKENS.ops });
    expect(stats.status).toBe(200);
    const sum = (series: Array<{ lookups: number; hits: number }>) => series.reduce((n, x) => ({ hits: n.hits + x.hits, lookups: n.lookups + x.lookups }), { hits: 0, lookups: 0 });
    expect(sum(stats.body.overall)).toEqual({ hits, lookups });
    expect(sum(stats.body.teams.data)).toEqual({ hits: 3, lookups: 3 });
    expect(sum(stats.body.teams.web)).toEqual({ hits: hits - 3, lookups: lookups - 3 });

    // vmlb builds: its closing line, and --json.
    const env = { VMLB_SERVER: sched.url, VMLB_TOKEN: TOKENS.ops };
    const text = await vmlb(sb, ['builds', '--limit', '50'], env);
    expect(text.exitCode, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^cache: ${hits} hits of ${lookups} lookups \\(${((100 * hits) / lookups).toFixed(1)} %\\) in these 5 builds$`, 'm'));
    const json = await vmlb(sb, ['builds', '--json', '--limit', '50'], env);
    const jb = JSON.parse(json.stdout) as Array<{ hits: number; lookups: number }>;
    expect(jb.reduce((n, b) => ({ hits: n.hits + b.hits, lookups: n.lookups + b.lookups }), { hits: 0, lookups: 0 })).toEqual({ hits, lookups });

    // Prometheus, over the real scrapes: the raw sums at once, then the deploy files' ratios.
    // increase() extrapolates each series past its last sample to the query's time (by less
    // than a scrape interval, 250 ms): with 20 s of samples that is under 1.4 % of each count,
    // so the ratios are the exact one within 0.02; a worker series born holding its first
    // counts (the bug) was off by 0.15.
    await waitFor('Prometheus to scrape the last counts', async () => (await prom!.query('sum(vmlb_layer_cache_lookups_total)'))[0]?.value === lookups, 20_000, 250);
    expect((await prom!.query('sum(vmlb_layer_cache_lookups_total{result="hit"})'))[0]?.value).toBe(hits);
    const sampled = Date.now() - promStarted;
    if (sampled < 20_000) await new Promise((r) => setTimeout(r, 20_000 - sampled));
    const exact = hits / lookups;
    const alertRatio = await alertRatioExpr();
    const grafanaRatio = await grafanaRatioExpr();
    for (const expr of [alertRatio, grafanaRatio]) {
      const rows = await prom!.query(expr);
      expect(rows.length, expr).toBe(1);
      expect(Math.abs(rows[0]!.value - exact), `${expr} = ${rows[0]!.value}, not ${exact}`).toBeLessThan(0.02);
    }
    // The increases themselves round to the counts: no series' first counts were missed.
    const inc = async (sel: string) => (await prom!.query(`sum(increase(vmlb_layer_cache_lookups_total${sel}[1h]))`))[0]!.value;
    expect(Math.round(await inc('{result="hit"}'))).toBe(hits);
    expect(Math.round(await inc(''))).toBe(lookups);
    expect((await prom!.query(alertRatio))[0]!.metric.pool).toBe('default');
    // Every series is there now (histograms, each outcome's labels): still clean for promtool.
    await promtoolPasses('after the mix');
  });
});

async function promtoolPasses(when: string): Promise<void> {
  for (const [who, text] of [['scheduler', await schedulerMetrics()], ['worker', await workerMetrics()]] as const) {
    const r = await execa('promtool', ['check', 'metrics'], { input: text, reject: false });
    expect(r.exitCode, `${who}, ${when}: ${r.stdout}${r.stderr}`).toBe(0);
  }
}

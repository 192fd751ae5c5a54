/** metrics-scrape: GET /metrics of the scheduler with no build recorded vs with 1,000. */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { packProject } from '../test/helpers/fleet-submit.js';
import { TEAMS, submit, token, withScheduler, withWorker } from './api-fleet.js';
import { VMLB, progress, type BenchOptions, type Row } from './harness.js';
import { percentile } from './numbers.js';
import { busyboxBase, writeProject } from './project-files.js';
import { checkInterrupted, run } from './run-command.js';
import { withSandbox } from './sandbox.js';

async function scrapeTimes(url: string, n: number): Promise<{ p50: number; p99: number; bytes: number }> {
  const times: number[] = [];
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await fetch(`${url}/metrics`);
    const text = await r.text();
    times.push(performance.now() - t0);
    bytes = text.length;
  }
  return { p50: percentile(times, 50), p99: percentile(times, 99), bytes };
}

export async function metricsScrape(o: BenchOptions): Promise<Row[]> {
  const total = o.quick ? 200 : 1000;
  const scrapes = o.quick ? 30 : 100;
  return withSandbox('metrics-scrape', (sb) =>
    withScheduler(sb, async (f) => {
      // The project's layers go to the shared store once (a local build with --cache), so every
      // submission is planned (keys computed, the store asked) and finishes as all hits.
      const dir = await writeProject(path.join(sb.dir, 'project'), [
        ['01_base', busyboxBase('64M')],
        ['02_a', { kind: 'build-layer', script: 'echo a > /a' }],
      ]);
      await run([process.execPath, VMLB, 'build', dir, '--cache', f.sharedUrl], { env: { ...f.env, ...sb.env }, label: 'vmlb build --cache' });
      const tgz = path.join(sb.dir, 'project.tar.gz');
      await packProject(dir, tgz);
      const body = await readFile(tgz);
      // The first submission's image is flattened by a real worker; every later one is done at once.
      await withWorker(sb, f, async () => {
        const first = await submit(f.url, body, TEAMS[0]!);
        const deadline = Date.now() + 120_000;
        for (;;) {
          const r = (await (await fetch(`${f.url}/v1/builds/${first.id}`, { headers: { authorization: `Bearer ${token(TEAMS[0]!)}` } })).json()) as { state: string; error?: string };
          if (r.state === 'done') break;
          if (r.state === 'failed' || Date.now() > deadline) throw new Error(`metrics-scrape: the first build is ${r.state}${r.error ? `: ${r.error}` : ''}`);
          await new Promise((res) => setTimeout(res, 200));
        }
      });
      const before = await scrapeTimes(f.url, scrapes);
      progress(`metrics-scrape: submitting ${total} builds from ${TEAMS.length} teams`);
      const t0 = performance.now();
      for (let i = 0; i < total; i += 10) {
        if (i % 100 === 0) checkInterrupted();
        const batch = await Promise.all(TEAMS.map((team) => submit(f.url, body, team)));
        for (const b of batch) if (b.state !== 'done') throw new Error(`metrics-scrape: build ${b.id} is ${b.state}, not an all-hit build`);
      }
      const submitSeconds = (performance.now() - t0) / 1000;
      const after = await scrapeTimes(f.url, scrapes);
      const text = await (await fetch(`${f.url}/metrics`)).text();
      const recorded = [...text.matchAll(/^vmlb_builds_total\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
      // The first build (flattened by the worker) is recorded too.
      if (recorded !== total + 1) throw new Error(`metrics-scrape: /metrics counts ${recorded} builds, not ${total + 1}`);
      return [
        {
          benchmark: 'metrics-scrape',
          what: `GET /metrics of the scheduler process (default process metrics + fleet metrics; queue depths, workers and the store probe read at scrape time), ${scrapes} scrapes one after another, with no build recorded vs with ${total} builds from ${TEAMS.length} teams recorded (submitted through the API at ${(total / submitSeconds).toFixed(0)} builds/s)`,
          result: `p50 ${before.p50.toFixed(1)} → ${after.p50.toFixed(1)} ms, p99 ${before.p99.toFixed(1)} → ${after.p99.toFixed(1)} ms (${(after.bytes / 1024).toFixed(0)} KiB)`,
          target: 'p99 ≤ 100 ms',
          ratio: `${(after.p50 / before.p50).toFixed(2)}× the scrape with no build; p99 ${(after.p99 / 100).toFixed(2)}× the target`,
        },
      ];
    }),
  );
}

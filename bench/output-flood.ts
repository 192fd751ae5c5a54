/** output-flood: the scheduler's memory and Redis's growth while a build's layer prints 200 MiB vs 2 KB. */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Redis } from 'ioredis';
import { packProject } from '../test/helpers/fleet-submit.js';
import { TEAMS, submit, token, withScheduler, withWorker, type Fleet } from './api-fleet.js';
import { progress, type BenchOptions, type Row } from './harness.js';
import { secs } from './numbers.js';
import { busyboxBase, writeProject } from './project-files.js';
import { checkInterrupted } from './run-command.js';
import { withSandbox, type Sandbox } from './sandbox.js';

async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) * 1024;
}

async function usedMemory(redis: Redis): Promise<number> {
  return Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]);
}

/**
 * One build of `dir` through the scheduler and the worker, with one client following its
 * live event stream (as `vmlb submit` does): the scheduler's peak RSS (sampled every 100 ms)
 * over its RSS before, Redis's used_memory after over before, the build's stream, what the
 * follower received, and the wall time.
 */
async function floodRun(f: Fleet, sb: Sandbox, dir: string, redis: Redis) {
  const tgz = path.join(sb.dir, `${path.basename(dir)}.tar.gz`);
  await packProject(dir, tgz);
  const team = TEAMS[0]!;
  const before = { rss: await rssOf(f.pid), redis: await usedMemory(redis) };
  let peak = before.rss;
  const sampler = setInterval(() => void rssOf(f.pid).then((r) => (peak = Math.max(peak, r)), () => undefined), 100);
  const t0 = performance.now();
  try {
    const b = await submit(f.url, await readFile(tgz), team);
    // Five minutes at most (a worker that died would leave the build queued for good).
    const res = await fetch(`${f.url}/v1/builds/${b.id}/events`, { headers: { authorization: `Bearer ${token(team)}`, accept: 'text/event-stream' }, signal: AbortSignal.timeout(300_000) });
    let followed = 0;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      followed += chunk.length;
      checkInterrupted();
    }
    const r = (await (await fetch(`${f.url}/v1/builds/${b.id}`, { headers: { authorization: `Bearer ${token(team)}` } })).json()) as { state: string; error?: string };
    if (r.state !== 'done') throw new Error(`output-flood: build ${b.id} is ${r.state}${r.error ? `: ${r.error}` : ''}`);
    const seconds = (performance.now() - t0) / 1000;
    clearInterval(sampler);
    peak = Math.max(peak, await rssOf(f.pid));
    const stream = Number(await redis.memory('USAGE', `vmlb:events:${b.id}`, 'SAMPLES', '0'));
    const redisGrowth = (await usedMemory(redis)) - before.redis;
    // The layer's whole log, from the shared store through the scheduler (not in the peak above).
    const log = await fetch(`${f.url}/v1/builds/${b.id}/layers/1/log`, { headers: { authorization: `Bearer ${token(team)}` } }).then((x) => x.arrayBuffer());
    return { seconds, rssBefore: before.rss, peak, redisGrowth, stream, followed, log: log.byteLength };
  } finally {
    clearInterval(sampler);
  }
}

export async function outputFlood(o: BenchOptions): Promise<Row[]> {
  void o;
  const MiB = 1024 * 1024;
  const printer = (bytes: number) => `yes "$(head -c 200 /dev/zero | tr '\\0' x)" | head -c ${bytes}`;
  return withSandbox('output-flood', (sb) =>
    withScheduler(sb, (f) =>
      withWorker(sb, f, async () => {
        const redis = new Redis(f.redis.url);
        try {
          const project = (name: string, bytes: number) =>
            writeProject(path.join(sb.dir, name), [
              ['01_base', busyboxBase('64M')],
              ['02_print', { kind: 'build-layer', script: `# ${name}\n${printer(bytes)}` }],
            ]);
          // A first build makes the shared base layer and warms the worker up: not measured.
          progress('output-flood: a warm-up build (not measured)');
          await floodRun(f, sb, await project('warm', 2000), redis);
          checkInterrupted();
          progress('output-flood: a build whose layer prints 2 KB');
          const quiet = await floodRun(f, sb, await project('quiet', 2000), redis);
          checkInterrupted();
          progress('output-flood: a build whose layer prints 200 MiB');
          const flood = await floodRun(f, sb, await project('flood', 200 * MiB), redis);
          const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
          const signed = (n: number) => `${n < 0 ? '−' : '+'}${mib(Math.abs(n))}`;
          const side = (r: typeof quiet) =>
            `scheduler peak RSS ${mib(r.peak)} (${signed(r.peak - r.rssBefore)}), Redis ${signed(r.redisGrowth)} (stream ${mib(r.stream)}), follower got ${mib(r.followed)}, log in the store ${mib(r.log)}, ${secs(r.seconds)}`;
          return [
            {
              benchmark: 'output-flood',
              what: 'a build (busybox base from the shared store + one build-layer) through the scheduler process and a real worker over a private redis-server and s3rver, one client following its live event stream; the layer prints 200 MiB of 200-character lines vs 2 KB; scheduler RSS sampled every 100 ms, Redis INFO used_memory before and after, MEMORY USAGE of the build\'s stream; VMLB_LOG_MAX at its default (64 MiB)',
              result: `200 MiB: ${side(flood)}; 2 KB: ${side(quiet)}`,
              target: 'Redis +≤ 8 MiB; scheduler peak ≤ the quiet build\'s + 32 MiB',
              ratio: `Redis growth ${((100 * flood.redisGrowth) / (200 * MiB)).toFixed(1)}% of the output; scheduler peak ${(flood.peak / quiet.peak).toFixed(2)}× the quiet build's`,
            },
          ];
        } finally {
          redis.disconnect();
        }
      }),
    ),
  );
}

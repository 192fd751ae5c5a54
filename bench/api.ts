/**
 * The scheduler API's benchmarks (rows of the same table as bench/benchmarks.ts). The
 * scheduler runs as its own process (apps/scheduler/dist/main.js, as deployed) over a private
 * redis-server and s3rver; the load comes from this process over loopback.
 *
 *   api-load        200 concurrent clients polling GET /v1/builds/:id, alone and then each with
 *                   one live log stream (GET /v1/builds/:id/events) carrying worker output
 *   metrics-scrape  GET /metrics with no build recorded vs with 1,000 builds recorded
 *   output-flood    the scheduler's memory and Redis's growth while a build's layer prints
 *                   200 MiB, with a live log stream open, vs a build that prints 2 KB
 */
import { startPrivatePostgres } from '../apps/scheduler/src/private-postgres.js';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Redis } from 'ioredis';
import { appendEvent } from '../libs/fleet/src/event-stream.js';
import { sha256Hex } from '../apps/scheduler/src/teams.js';
import { packProject } from '../test/helpers/fleet-submit.js';
import { freePort, startRedis, type RedisServer } from '../test/helpers/redis-server.js';
import { startS3Server, type S3Server } from '../test/helpers/s3-server.js';
import { REPO, VMLB, busyboxBase, checkInterrupted, progress, run, secs, withSandbox, writeProject, type BenchOptions, type Row, type Sandbox } from './harness.js';

const SCHEDULER_MAIN = path.join(REPO, 'apps/scheduler/dist/main.js');
const TEAMS = Array.from({ length: 10 }, (_, i) => `team${i}`);
const token = (team: string) => `bench-token-${team}-0123456789`;
const ADMIN = 'bench-token-admin-0123456789';

interface Fleet {
  url: string;
  /** The scheduler process. */
  pid: number;
  redis: RedisServer;
  s3: S3Server;
  env: NodeJS.ProcessEnv;
  sharedUrl: string;
}

/** Redis, s3rver and a scheduler process, stopped whatever happens. */
async function withScheduler<T>(sb: Sandbox, fn: (f: Fleet) => Promise<T>): Promise<T> {
  const [redis, s3, pg] = await Promise.all([startRedis(), startS3Server(), startPrivatePostgres({ fast: true })]);
  let child: import('node:child_process').ChildProcess | undefined;
  const stderr: string[] = [];
  try {
    const teamsFile = path.join(sb.dir, 'teams.json');
    await writeFile(teamsFile, JSON.stringify([...TEAMS.map((t) => ({ team: t, tokenSha256: sha256Hex(token(t)) })), { team: 'ops', tokenSha256: sha256Hex(ADMIN), admin: true }]));
    const port = await freePort();
    const sharedUrl = `s3://vmlb-bench/api-${randomBytes(3).toString('hex')}`;
    const env = { ...process.env, ...s3.env, REDIS_URL: redis.url, VMLB_SHARED: sharedUrl, VMLB_DATABASE_URL: await pg.ensureDatabase('vmlb'), VMLB_TEAMS_FILE: teamsFile, VMLB_SCHEDULER_HOST: '127.0.0.1', VMLB_SCHEDULER_PORT: String(port) };
    const { SharedStore, s3ConfigFrom } = await import('../libs/layer-engine/src/index.js');
    const store = new SharedStore(s3ConfigFrom(sharedUrl, env));
    await store.ensureBucket();
    store.close();
    const { spawn } = await import('node:child_process');
    child = spawn(process.execPath, [SCHEDULER_MAIN], { cwd: REPO, env, stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (b: Buffer) => stderr.push(...b.toString().split('\n').filter(Boolean).slice(-20)));
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 30_000;
    for (;;) {
      const ok = await fetch(`${url}/healthz`).then((r) => r.ok, () => false);
      if (ok) break;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the scheduler did not start:\n${stderr.slice(-15).join('\n')}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    return await fn({ url, pid: child.pid!, redis, s3, env, sharedUrl });
  } finally {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child!.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    await Promise.allSettled([redis.close(), s3.close()]);
    await pg.close();
  }
}

/** A real worker process (apps/worker/dist/main.js) while fn runs. */
async function withWorker<T>(sb: Sandbox, f: Fleet, fn: () => Promise<T>): Promise<T> {
  const { spawn } = await import('node:child_process');
  const stderr: string[] = [];
  const child = spawn(process.execPath, [path.join(REPO, 'apps/worker/dist/main.js')], {
    cwd: REPO,
    env: { ...f.env, ...sb.env, VMLB_WORKER_ID: 'bench-worker', VMLB_WORKER_SLOTS: '2' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr!.on('data', (b: Buffer) => stderr.push(...b.toString().split('\n').filter(Boolean).slice(-20)));
  const exited = new Promise((r) => child.once('exit', r));
  try {
    return await fn();
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${stderr.slice(-10).join('\n')}`);
  } finally {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(t);
    }
  }
}

async function submit(url: string, tgz: Buffer, team: string): Promise<{ id: string; state: string }> {
  const r = await fetch(`${url}/v1/builds`, { method: 'POST', headers: { authorization: `Bearer ${token(team)}`, 'content-type': 'application/gzip' }, body: tgz });
  const body = (await r.json()) as { id: string; state: string };
  if (r.status !== 201) throw new Error(`submit: ${r.status} ${JSON.stringify(body)}`);
  return body;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

// ---------------------------------------------------------------------------------------
// api-load

interface LoadResult {
  requests: number;
  seconds: number;
  p50: number;
  p99: number;
  errors: number;
  events: number;
}

/**
 * `clients` closed-loop pollers (each its own keep-alive connection) for `seconds`, after a
 * warm-up; with `streams`, each also holds one SSE stream of its build open and counts its
 * events.
 */
async function load(
  url: string,
  builds: Array<{ id: string; team: string }>,
  o: { clients: number; seconds: number; warmSeconds: number; streams: boolean; onWindow?: (edge: 'start' | 'end') => void },
): Promise<LoadResult> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: o.clients * 2 + 10 });
  const { hostname, port } = new URL(url);
  const lat: number[] = [];
  let errors = 0;
  let events = 0;
  let measuring = false;
  let stop = false;
  const streams: http.ClientRequest[] = [];
  const get = (p: string, auth: string) =>
    new Promise<number>((resolve) => {
      const req = http.request({ host: hostname, port, path: p, agent, headers: { authorization: `Bearer ${auth}` } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', () => resolve(0));
      req.end();
    });
  const openStream = (b: { id: string; team: string }) => {
    const req = http.request({ host: hostname, port, path: `/v1/builds/${b.id}/events`, agent, headers: { authorization: `Bearer ${token(b.team)}`, accept: 'text/event-stream' } }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (measuring) events += chunk.split('\ndata: ').length - 1 + (chunk.startsWith('data: ') ? 1 : 0);
      });
    });
    req.on('error', () => undefined);
    req.end();
    streams.push(req);
  };
  const client = async (i: number) => {
    const b = builds[i % builds.length]!;
    if (o.streams) openStream(b);
    while (!stop) {
      const t0 = performance.now();
      const status = await get(`/v1/builds/${b.id}`, token(b.team));
      if (!measuring) continue;
      if (status !== 200) errors++;
      else lat.push(performance.now() - t0);
    }
  };
  const running = Array.from({ length: o.clients }, (_, i) => client(i));
  await new Promise((r) => setTimeout(r, o.warmSeconds * 1000));
  measuring = true;
  o.onWindow?.('start');
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, o.seconds * 1000));
  measuring = false;
  o.onWindow?.('end');
  const seconds = (performance.now() - t0) / 1000;
  stop = true;
  await Promise.all(running);
  for (const s of streams) s.destroy();
  agent.destroy();
  return { requests: lat.length, seconds, p50: percentile(lat, 50), p99: percentile(lat, 99), errors, events };
}

async function apiLoad(o: BenchOptions): Promise<Row[]> {
  const clients = 200;
  const seconds = o.quick ? 4 : 10;
  const nBuilds = 20;
  return withSandbox('api-load', (sb) =>
    withScheduler(sb, async (f) => {
      // Builds that stay queued (no worker runs here): one layer each that no other build has.
      const builds: Array<{ id: string; team: string }> = [];
      for (let i = 0; i < nBuilds; i++) {
        const dir = await writeProject(path.join(sb.dir, `p${i}`), [
          ['01_base', busyboxBase('64M')],
          ['02_mine', { kind: 'build-layer', script: `echo build ${i} ${randomBytes(4).toString('hex')}` }],
        ]);
        const tgz = path.join(sb.dir, `p${i}.tar.gz`);
        await packProject(dir, tgz);
        const team = TEAMS[i % TEAMS.length]!;
        builds.push({ id: (await submit(f.url, await readFile(tgz), team)).id, team });
      }
      checkInterrupted();
      progress(`api-load: ${clients} clients polling ${nBuilds} builds for ${seconds} s`);
      const polls = await load(f.url, builds, { clients, seconds, warmSeconds: 2, streams: false });
      checkInterrupted();

      // The log streams carry what a worker would write: layer-log chunks, 10 a second per build.
      const redis = new Redis(f.redis.url);
      let writing = true;
      let n = 0;
      const writer = (async () => {
        while (writing) {
          await Promise.all(
            builds.map((b) =>
              appendEvent(redis, b.id, { type: 'engine', at: Date.now(), index: 1, worker: 'bench', event: { type: 'layer-log', at: Date.now(), index: 1, name: '02_mine', chunk: `line ${n} of the build's output\n` } }),
            ),
          );
          n++;
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      progress(`api-load: the same with one log stream per client (${nBuilds} builds × 10 lines/s)`);
      let withStreams: LoadResult;
      // Log lines written during the measured window, each read by every stream of its build.
      const window = { start: 0, end: 0 };
      try {
        withStreams = await load(f.url, builds, { clients, seconds, warmSeconds: 3, streams: true, onWindow: (edge) => (window[edge] = n) });
      } finally {
        writing = false;
        await writer;
        redis.disconnect();
      }
      if (withStreams.events === 0) throw new Error('api-load: the log streams delivered no event');
      const rps = (r: LoadResult) => r.requests / r.seconds;
      const expectedEvents = (window.end - window.start) * clients;
      return [
        {
          benchmark: 'api-load',
          what: `${clients} concurrent clients (keep-alive, closed loop) polling GET /v1/builds/:id of ${nBuilds} queued builds for ${seconds} s, scheduler process on loopback; requests per second and latency`,
          result: `${rps(polls).toFixed(0)} req/s, p50 ${polls.p50.toFixed(1)} ms, p99 ${polls.p99.toFixed(1)} ms${polls.errors ? `, ${polls.errors} errors` : ''}`,
          target: 'p99 ≤ 250 ms',
          ratio: `p99 ${(polls.p99 / 250).toFixed(2)}× the target`,
        },
        {
          benchmark: 'api-load (with log streams)',
          what: `the same, each client also holding one live log stream (GET /v1/builds/:id/events) while every build gets about 10 worker log lines a second (appended to its Redis stream as a worker does): ${(withStreams.events / withStreams.seconds).toFixed(0)} events/s delivered to the clients, ${((100 * withStreams.events) / expectedEvents).toFixed(0)}% of the lines written × their readers in the window`,
          result: `${rps(withStreams).toFixed(0)} req/s, p50 ${withStreams.p50.toFixed(1)} ms, p99 ${withStreams.p99.toFixed(1)} ms${withStreams.errors ? `, ${withStreams.errors} errors` : ''}`,
          target: 'p99 ≤ 250 ms',
          ratio: `${(rps(withStreams) / rps(polls)).toFixed(2)}× the req/s without streams; p99 ${(withStreams.p99 / 250).toFixed(2)}× the target`,
        },
      ];
    }),
  );
}

// ---------------------------------------------------------------------------------------
// metrics-scrape

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

async function metricsScrape(o: BenchOptions): Promise<Row[]> {
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

// ---------------------------------------------------------------------------------------
// output-flood

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

async function outputFlood(o: BenchOptions): Promise<Row[]> {
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

export const API_BENCHMARKS = [
  { name: 'api-load', title: '200 concurrent clients polling build state, then each with a live log stream', run: apiLoad },
  { name: 'metrics-scrape', title: '/metrics scrape time: no build vs 1,000 builds recorded', run: metricsScrape },
  { name: 'output-flood', title: "scheduler memory and Redis growth while a build's layer prints 200 MiB vs 2 KB", run: outputFlood },
];

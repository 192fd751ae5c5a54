/** api-load: 200 concurrent clients polling a build's state, alone and then each with a live log stream. */
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Redis } from 'ioredis';
import { appendEvent } from '../libs/fleet/src/event-stream.js';
import { packProject } from '../test/helpers/fleet-submit.js';
import { TEAMS, submit, token, withScheduler } from './api-fleet.js';
import { progress, type BenchOptions, type Row } from './harness.js';
import { percentile } from './numbers.js';
import { busyboxBase, writeProject } from './project-files.js';
import { checkInterrupted } from './run-command.js';
import { withSandbox } from './sandbox.js';

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

export async function apiLoad(o: BenchOptions): Promise<Row[]> {
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

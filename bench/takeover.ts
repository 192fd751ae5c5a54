/**
 * scheduler-takeover: how long the fleet goes without a leading scheduler when the leader dies.
 * Two scheduler processes (apps/scheduler/dist/main.js, as deployed, test/helpers/
 * scheduler-process.ts) on one private redis-server, one s3rver and one private PostgreSQL, with
 * the lease as deploys run it (ttl 5000 ms, renewed and tried every 1000 ms: the defaults). A
 * build in flight whose events a fake worker appends to its Redis stream as a worker does (a
 * layer-log line every 50 ms, as bench/api.ts writes them), followed by two SSE clients: one on
 * the scheduler that does not lead, one on the leader that, when its stream breaks, reconnects at
 * once to the other with Last-Event-ID (what a load balancer and `vmlb submit` do, without the
 * CLI's 0.5 s back-off). Then kill -9 of the leader, and just after it the fake worker finishes the
 * build's layers; measured from the kill:
 *
 *   lease       the other scheduler's /healthz says leader: true
 *   event       the next event of the build reaches the client on the other scheduler
 *   reconnect   the next event reaches the client that was on the killed one, reconnected
 *   end         the build's end (done) reaches the client on the other scheduler: only a leader
 *               stores a final record, so this waits for the takeover
 *
 * Medians of 3 kills (1 with --quick); between two, the killed scheduler comes back on its port
 * (as the other's observer) and the next kill is of the new leader.
 */
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Redis } from 'ioredis';
import type { FleetEvent } from '../libs/fleet/src/build-record.js';
import { appendEvent } from '../libs/fleet/src/event-stream.js';
import { startPrivatePostgres } from '../apps/scheduler/src/private-postgres.js';
import { sha256Hex } from '../apps/scheduler/src/teams.js';
import { packProject } from '../test/helpers/fleet-submit.js';
import { startRedis } from '../test/helpers/redis-server.js';
import { startS3Server } from '../test/helpers/s3-server.js';
import { startSchedulerProcess, type SchedulerProcess } from '../test/helpers/scheduler-process.js';
import { progress, type BenchOptions, type Row } from './harness.js';
import { median, summary, times } from './numbers.js';
import { busyboxBase, writeProject } from './project-files.js';
import { checkInterrupted } from './run-command.js';
import { withSandbox, type Sandbox } from './sandbox.js';

/** The lease as main.ts runs it (leader-lease.ts's defaults). */
const TTL_MS = 5000;
const RENEW_MS = 1000;
const TOKEN = 'bench-token-takeover-0123456789';
const EVENT_EVERY_MS = 50;
const WORKER = 'bench-fake-worker';

interface Round {
  lease: number;
  event: number;
  reconnect: number;
  end: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** +0.05, −0.01 (rounded to 0.00: +0.00). */
const signed = (x: number) => (Number(x.toFixed(2)) < 0 ? `−${Math.abs(x).toFixed(2)}` : `+${Math.abs(x).toFixed(2)}`);

/**
 * An SSE client of GET /v1/builds/:id/events that notes when each message came
 * (performance.now()); with `reconnectTo`, a broken stream is opened again at once there, after
 * the last id seen.
 */
class Follower {
  readonly messages: Array<{ at: number; event: string; id?: string; data: string }> = [];
  private req: http.ClientRequest | undefined;
  private lastId: string | undefined;
  private stopped = false;
  broke: number | undefined;

  constructor(
    private url: string,
    private readonly build: string,
    private readonly reconnectTo?: () => string,
  ) {
    this.open();
  }

  private open(): void {
    const u = new URL(`${this.url}/v1/builds/${this.build}/events`);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, headers: { authorization: `Bearer ${TOKEN}`, accept: 'text/event-stream', ...(this.lastId ? { 'last-event-id': this.lastId } : {}) } }, (res) => {
      res.setEncoding('utf8');
      let buf = '';
      res.on('data', (chunk: string) => {
        const at = performance.now();
        buf += chunk;
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const lines = block.split('\n').filter((l) => l && !l.startsWith(':'));
          if (lines.length === 0) continue;
          const id = lines.find((l) => l.startsWith('id: '))?.slice(4);
          if (id) this.lastId = id;
          this.messages.push({ at, event: lines.find((l) => l.startsWith('event: '))?.slice(7) ?? 'message', id, data: lines.filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n') });
        }
      });
      res.on('end', () => this.lost());
      res.on('error', () => this.lost());
    });
    req.on('error', () => this.lost());
    req.end();
    this.req = req;
  }

  private lost(): void {
    if (this.stopped || this.messages.at(-1)?.event === 'end') return;
    this.req?.destroy();
    this.broke ??= performance.now();
    if (!this.reconnectTo) return;
    this.url = this.reconnectTo();
    this.open();
  }

  /** The first message after `t` (and its kind), waiting up to `timeoutMs`. */
  async firstAfter(t: number, event: string, timeoutMs = 60_000): Promise<number> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const m = this.messages.find((x) => x.at > t && x.event === event);
      if (m) return m.at;
      if (performance.now() > deadline) throw new Error(`scheduler-takeover: no "${event}" message of build ${this.build} within ${timeoutMs / 1000} s of the kill`);
      await sleep(2);
    }
  }

  close(): void {
    this.stopped = true;
    this.req?.destroy();
  }
}

async function health(s: SchedulerProcess): Promise<{ leader: boolean } | null> {
  return s.health(1000) as Promise<{ leader: boolean } | null>;
}

async function schedulerTakeover(o: BenchOptions): Promise<Row[]> {
  const rounds = o.quick ? 1 : 3;
  return withSandbox('scheduler-takeover', async (sb: Sandbox) => {
    const [redisServer, s3, pg] = await Promise.all([startRedis(), startS3Server(), startPrivatePostgres({ fast: true })]);
    const schedulers: Array<SchedulerProcess | undefined> = [];
    const redis = new Redis(redisServer.url, { maxRetriesPerRequest: null });
    const results: Round[] = [];
    try {
      const teamsFile = path.join(sb.dir, 'teams.json');
      await writeFile(teamsFile, JSON.stringify([{ team: 'bench', tokenSha256: sha256Hex(TOKEN) }]));
      const sharedUrl = `s3://vmlb-bench/takeover-${randomBytes(3).toString('hex')}`;
      const env = { ...s3.env, REDIS_URL: redisServer.url, VMLB_SHARED: sharedUrl, VMLB_DATABASE_URL: await pg.ensureDatabase('vmlb') };
      const { SharedStore, s3ConfigFrom } = await import('../libs/layer-engine/src/index.js');
      const store = new SharedStore(s3ConfigFrom(sharedUrl, env));
      await store.ensureBucket();
      store.close();
      // One after the other: the first takes the lease.
      for (const name of ['a', 'b']) schedulers.push(await startSchedulerProcess({ name, env, teamsFile, main: 'dist' }));

      for (let r = 0; r < rounds; r++) {
        checkInterrupted();
        const states = await Promise.all(schedulers.map((s) => health(s!)));
        const li = states.findIndex((h) => h?.leader);
        if (li < 0 || states.filter((h) => h?.leader).length !== 1) throw new Error(`scheduler-takeover: not exactly one leader: ${JSON.stringify(states)}`);
        const leader = schedulers[li]!;
        const other = schedulers[1 - li]!;

        // A build of its own (no layer in the shared store, no real worker: it stays in flight).
        const dir = await writeProject(path.join(sb.dir, `p${r}`), [
          ['01_base', busyboxBase('64M')],
          ['02_mine', { kind: 'build-layer', script: `echo takeover ${r} ${randomBytes(4).toString('hex')}` }],
        ]);
        const tgz = path.join(sb.dir, `p${r}.tar.gz`);
        await packProject(dir, tgz);
        const res = await fetch(`${leader.url}/v1/builds`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/gzip' }, body: await readFile(tgz) });
        const build = (await res.json()) as { id: string; layers: Array<{ index: number; name: string; status: string }> };
        if (res.status !== 201) throw new Error(`scheduler-takeover: submit: ${res.status} ${JSON.stringify(build)}`);
        const todo = build.layers.filter((l) => l.status !== 'hit');
        const append = (e: FleetEvent) => appendEvent(redis, build.id, e);
        for (const l of todo) await append({ type: 'job', at: Date.now(), index: l.index, status: 'building', worker: WORKER });

        const onOther = new Follower(other.url, build.id);
        const onLeader = new Follower(leader.url, build.id, () => other.url);
        let writing = true;
        let n = 0;
        const last = todo.at(-1)!;
        const writer = (async () => {
          while (writing) {
            await append({ type: 'engine', at: Date.now(), index: last.index, worker: WORKER, event: { type: 'layer-log', at: Date.now(), index: last.index, name: last.name, chunk: `line ${n++}\n` } });
            await sleep(EVENT_EVERY_MS);
          }
        })();
        try {
          // Both streams carry the build's events before the kill.
          const t0 = performance.now();
          await Promise.all([onOther.firstAfter(t0, 'message', 20_000), onLeader.firstAfter(t0, 'message', 20_000)]);
          await sleep(500);

          const killedAt = performance.now();
          process.kill(leader.pid, 'SIGKILL');
          // The worker finishes the build's layers just after the kill.
          const finishing = (async () => {
            await sleep(100);
            for (const l of todo) await append({ type: 'job', at: Date.now(), index: l.index, status: 'done', worker: WORKER, seconds: 1, bytes: 10 });
          })();
          const lease = (async () => {
            for (;;) {
              if ((await health(other))?.leader) return performance.now() - killedAt;
              if (performance.now() - killedAt > 60_000) throw new Error('scheduler-takeover: the other scheduler did not lead within 60 s');
              await sleep(20);
            }
          })();
          const [leaseMs, event, reconnect, end] = await Promise.all([lease, onOther.firstAfter(killedAt, 'message'), onLeader.firstAfter(killedAt, 'message'), onOther.firstAfter(killedAt, 'end'), finishing]);
          const endRecord = JSON.parse(onOther.messages.find((m) => m.event === 'end')!.data) as { state: string };
          if (endRecord.state !== 'done') throw new Error(`scheduler-takeover: the build ended ${endRecord.state}, not done`);
          const round = { lease: leaseMs, event: event - killedAt, reconnect: reconnect - killedAt, end: end - killedAt };
          results.push(round);
          progress(`scheduler-takeover ${r + 1}/${rounds}: the other led after ${Math.round(round.lease)} ms; next event on it after ${Math.round(round.event)} ms, on the reconnected stream after ${Math.round(round.reconnect)} ms; the build's end after ${Math.round(round.end)} ms`);
        } finally {
          writing = false;
          await writer.catch(() => undefined);
          onOther.close();
          onLeader.close();
        }
        await leader.exited;
        // The killed one comes back on its port, as the other's observer.
        schedulers[li] = undefined;
        schedulers[li] = await startSchedulerProcess({ name: leader.name, env, teamsFile, port: leader.port, main: 'dist' });
      }
    } finally {
      await Promise.allSettled(schedulers.map((s) => s?.stop()));
      redis.disconnect();
      await Promise.allSettled([redisServer.close(), s3.close()]);
      await pg.close();
    }
    const s = (k: keyof Round) => results.map((x) => x[k] / 1000);
    const med = (k: keyof Round) => median(s(k));
    const target = (TTL_MS + RENEW_MS) / 1000;
    const setup = `kill -9 of the leading scheduler of two (processes of apps/scheduler/dist/main.js on one Redis and one PostgreSQL, loopback; lease ttl ${TTL_MS} ms, tried every ${RENEW_MS} ms, the defaults); a build in flight, a fake worker appending a log line every ${EVENT_EVERY_MS} ms; ${times(rounds)}`;
    return [
      {
        benchmark: 'scheduler-takeover (lease)',
        what: `${setup}: the kill → the other scheduler's /healthz says leader: true`,
        result: summary(s('lease'), 2, 's'),
        target: `≤ ${target} s (ttl + one try)`,
        ratio: `${(med('lease') / (TTL_MS / 1000)).toFixed(2)}× the ttl`,
      },
      {
        benchmark: 'scheduler-takeover (event)',
        what: `${setup}: the kill → the build's next event reaches an SSE client on the other scheduler (observers serve streams with no leader)`,
        result: summary(s('event'), 3, 's'),
        target: `≤ ${(EVENT_EVERY_MS * 4) / 1000} s`,
        ratio: `${(med('event') / med('lease')).toFixed(3)}× the takeover`,
      },
      {
        benchmark: 'scheduler-takeover (reconnect)',
        what: `${setup}: the kill → the next event reaches the client whose stream was on the killed scheduler, reopened at once on the other with Last-Event-ID (vmlb submit waits 0.5 s first)`,
        result: summary(s('reconnect'), 3, 's'),
        target: '≤ 1 s',
        ratio: `${(med('reconnect') / med('lease')).toFixed(3)}× the takeover`,
      },
      {
        benchmark: 'scheduler-takeover (build end)',
        what: `${setup}: the build's layers done 0.1 s after the kill → its end (state done) reaches the client on the other scheduler (the final record is stored by a leader only)`,
        result: summary(s('end'), 2, 's'),
        target: `≤ ${target} s`,
        ratio: `${signed(med('end') - med('lease'))} s after the takeover`,
      },
    ];
  });
}

export const TAKEOVER_BENCHMARKS = [{ name: 'scheduler-takeover', title: 'kill -9 of the leading scheduler of two: the other takes the lease, a build\'s events and end reach its clients', run: schedulerTakeover }];

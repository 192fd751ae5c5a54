/**
 * sentinel-failover: how long the fleet's Redis is gone when its primary dies. A Sentinel set as
 * the tests run it (test/helpers/redis-sentinel.ts: a primary, two replicas, three sentinels on
 * loopback, down-after-milliseconds 1000, passwords on both), a BullMQ queue and worker (in this
 * process) on the fleet's own connections (redisConnection with the sentinels), a producer adding
 * a small job every 20 ms and a probe writing a key in a loop; then kill -9 of the primary, and:
 *
 *   promotion  the kill → a majority of the sentinels name a replica that says it is the primary
 *   client     the kill → the probe's next write completes (on the new primary)
 *   queue      the kill → the worker completes a job that was added after the kill
 *
 * Medians of 3 failovers (1 with --quick); between two, the killed node comes back as a replica
 * and the set is whole again.
 */
import { Queue, Worker } from 'bullmq';
import { redisConnection } from '../libs/fleet/src/redis.js';
import { startSentinelSet } from '../test/helpers/redis-sentinel.js';
import { progress, type BenchOptions, type Row } from './harness.js';
import { median, summary, times } from './numbers.js';
import { checkInterrupted } from './run-command.js';

const DOWN_AFTER_MS = 1000;
/** What a failover should take here: down-after, then the vote and the promotion. */
const TARGET_S = 5;

interface Round {
  promotion: number;
  client: number;
  queue: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function sentinelFailover(o: BenchOptions): Promise<Row[]> {
  const rounds = o.quick ? 1 : 3;
  const set = await startSentinelSet({ downAfterMs: DOWN_AFTER_MS });
  const probe = redisConnection(set.target, 'bench-probe');
  const producerConn = redisConnection(set.target, 'bench-producer');
  const workerConn = redisConnection(set.target, 'bench-worker');
  for (const c of [probe, producerConn, workerConn]) c.on('error', () => undefined);
  const queue = new Queue('bench-failover', { connection: producerConn });
  queue.on('error', () => undefined);
  /** Job id → when it was added (performance.now(), after queue.add returned). */
  const added = new Map<string, number>();
  const completed: Array<{ id: string; at: number }> = [];
  const worker = new Worker('bench-failover', async () => undefined, { connection: workerConn, concurrency: 4 });
  worker.on('error', () => undefined);
  worker.on('completed', (job) => completed.push({ id: String(job.id), at: performance.now() }));
  let producing = true;
  let n = 0;
  const producer = (async () => {
    while (producing) {
      const id = `j${n++}`;
      await queue.add('small', { n }, { jobId: id, removeOnComplete: true, removeOnFail: true });
      added.set(id, performance.now());
      await sleep(20);
    }
  })();
  const results: Round[] = [];
  try {
    await worker.waitUntilReady();
    for (let r = 0; r < rounds; r++) {
      checkInterrupted();
      await set.ready();
      // Jobs flow before the kill.
      const before = completed.length;
      while (completed.length < before + 10) await sleep(20);
      const kill = await set.killPrimary();
      const write = (async () => {
        await probe.set('vmlb:bench:failover', String(r));
        return performance.now() - kill.at;
      })();
      const jobAgain = (async () => {
        for (;;) {
          const c = completed.find((x) => x.at > kill.at && (added.get(x.id) ?? -Infinity) > kill.at);
          if (c) return c.at - kill.at;
          await sleep(5);
        }
      })();
      const failover = await set.waitForFailover();
      const round = { promotion: failover.ms, client: await write, queue: await jobAgain };
      results.push(round);
      progress(`sentinel-failover ${r + 1}/${rounds}: promoted in ${Math.round(round.promotion)} ms, a write again after ${Math.round(round.client)} ms, a job after ${Math.round(round.queue)} ms`);
      await set.restartKilled();
    }
  } finally {
    producing = false;
    await producer.catch(() => undefined);
    await worker.close().catch(() => undefined);
    await queue.close().catch(() => undefined);
    for (const c of [probe, producerConn, workerConn]) c.disconnect();
    await set.close();
  }
  const s = (k: keyof Round) => results.map((x) => x[k] / 1000);
  const med = (k: keyof Round) => median(s(k));
  const setup = `kill -9 of the primary (2 replicas, 3 sentinels, down-after-milliseconds ${DOWN_AFTER_MS}, on loopback); ${times(rounds)}`;
  return [
    {
      benchmark: 'sentinel-failover (promotion)',
      what: `${setup}: the kill → a majority of the sentinels name a replica that says role:master`,
      result: summary(s('promotion'), 2, 's'),
      target: `≤ ${TARGET_S} s`,
      ratio: `${(med('promotion') / TARGET_S).toFixed(2)}× the target`,
    },
    {
      benchmark: 'sentinel-failover (client)',
      what: `${setup}: the kill → the fleet's connection (redisConnection with REDIS_SENTINELS) completes a write again`,
      result: summary(s('client'), 2, 's'),
      target: `≤ ${TARGET_S} s`,
      ratio: `+${(med('client') - med('promotion')).toFixed(2)} s after the promotion`,
    },
    {
      benchmark: 'sentinel-failover (queue)',
      what: `${setup}: the kill → a BullMQ worker on it completes a job added after the kill (a producer adds one every 20 ms)`,
      result: summary(s('queue'), 2, 's'),
      target: `≤ ${TARGET_S} s`,
      ratio: `+${(med('queue') - med('promotion')).toFixed(2)} s after the promotion`,
    },
  ];
}

export const SENTINEL_BENCHMARKS = [{ name: 'sentinel-failover', title: 'Redis Sentinel failover: kill -9 of the primary → replica promoted, the fleet\'s client and a BullMQ worker working again', run: sentinelFailover }];

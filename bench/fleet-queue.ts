/**
 * The queue itself, without layers or disks: fleet-dispatch (job added → a BullMQ worker process
 * starts it) and fleet-throughput (1 s jobs through 1, 2 and 4 slots vs the ideal).
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { queueWorker, withServices } from './fleet-services.js';
import { progress, type BenchOptions, type Row } from './harness.js';
import { percentile, secs } from './numbers.js';
import { checkInterrupted } from './run-command.js';

const epochMs = () => performance.timeOrigin + performance.now();

// ---------------------------------------------------------------------------------------
// fleet-dispatch

export async function fleetDispatch(o: BenchOptions): Promise<Row[]> {
  const n = o.quick ? 100 : 200;
  const warm = 10;
  return withServices({ redis: true }, async ({ redis, procs }) => {
    const connection = new Redis(redis!.url, { maxRetriesPerRequest: null });
    const queue = new Queue('bench-dispatch', { connection });
    try {
      const w = queueWorker(procs, redis!.url, 'bench-dispatch', 1, 0);
      await w.waitFor((l) => l.e === 'ready', 'the BullMQ worker to start');
      const lat: number[] = [];
      for (let i = 0; i < warm + n; i++) {
        if (i % 50 === 0) checkInterrupted();
        const id = `j${i}`;
        const t0 = epochMs();
        await queue.add('noop', {}, { jobId: id, removeOnComplete: true });
        const s = await w.waitFor((l) => l.e === 'start' && l.id === id, `job ${id} to start`, 10_000);
        if (i >= warm) lat.push((s.t as number) - t0);
      }
      const p50 = percentile(lat, 50);
      const p99 = percentile(lat, 99);
      return [
        {
          benchmark: 'fleet-dispatch',
          what: `job added (before queue.add) → a BullMQ worker process (concurrency 1, no-op processor) starts it, on a private redis-server over loopback; ${n} jobs one at a time, each waited for (after ${warm} not counted); ms (min ${Math.min(...lat).toFixed(1)}, max ${Math.max(...lat).toFixed(1)})`,
          result: `p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms`,
          target: 'p50 ≤ 20 ms',
          ratio: `p50 ${(p50 / 20).toFixed(2)}× the target; p99/p50 ${(p99 / p50).toFixed(1)}×`,
        },
      ];
    } finally {
      await queue.close();
      connection.disconnect();
    }
  });
}

// ---------------------------------------------------------------------------------------
// fleet-throughput

export async function fleetThroughput(o: BenchOptions): Promise<Row[]> {
  const jobs = o.quick ? 12 : 40;
  const sleepMs = 1000;
  const slotsList = [1, 2, 4];
  return withServices({ redis: true }, async ({ redis, procs }) => {
    const connection = new Redis(redis!.url, { maxRetriesPerRequest: null });
    const results: Array<{ slots: number; s: number }> = [];
    try {
      for (const slots of slotsList) {
        checkInterrupted();
        const name = `bench-tp-${slots}`;
        const queue = new Queue(name, { connection });
        try {
          const w = queueWorker(procs, redis!.url, name, slots, sleepMs);
          await w.waitFor((l) => l.e === 'ready', 'the BullMQ worker to start');
          progress(`fleet-throughput: ${jobs} jobs of ${sleepMs} ms through ${slots} slot(s)`);
          const t0 = performance.now();
          await queue.addBulk(Array.from({ length: jobs }, (_, i) => ({ name: 'sleep', data: {}, opts: { jobId: `j${i}`, removeOnComplete: true } })));
          const doneIds = new Set<string>();
          await w.waitFor((l) => {
            if (l.e === 'done') doneIds.add(String(l.id));
            return doneIds.size === jobs;
          }, `${jobs} jobs to complete`, jobs * sleepMs + 60_000);
          results.push({ slots, s: (performance.now() - t0) / 1000 });
          await w.stop();
        } finally {
          await queue.close();
        }
      }
    } finally {
      connection.disconnect();
    }
    return results.map(({ slots, s }) => {
      const ideal = (jobs * sleepMs) / 1000 / slots;
      const base = results[0]!.s;
      return {
        benchmark: `fleet-throughput (${slots} slot${slots > 1 ? 's' : ''})`,
        what: `${jobs} queue-level BullMQ jobs (a processor that sleeps ${sleepMs / 1000} s: no layers, no disks) through one worker process with concurrency ${slots}; wall time from addBulk to the last completed`,
        result: `${secs(s)} (${(jobs / s).toFixed(2)} jobs/s)`,
        target: `ideal ${secs(ideal)} (${jobs} s / ${slots})`,
        ratio: `${(s / ideal).toFixed(3)}× the ideal; ${(base / s).toFixed(2)}× the speed of 1 slot`,
      };
    });
  });
}

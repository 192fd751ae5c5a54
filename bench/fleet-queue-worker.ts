/**
 * A bare BullMQ worker process for bench/fleet.ts (queue-level jobs, no layers, no disks):
 *
 *   REDIS_URL=… QUEUE=… CONCURRENCY=N SLEEP_MS=M node --import tsx bench/fleet-queue-worker.ts
 *
 * Its processor writes `{"e":"start","id":…,"t":EPOCH_MS}` on stdout the moment it is called
 * (epoch milliseconds with sub-millisecond precision: performance.timeOrigin + now()), sleeps
 * SLEEP_MS, and `{"e":"done",…}` once BullMQ has marked the job completed. `{"e":"ready"}` once
 * it listens. SIGTERM closes it (running jobs finish first).
 */
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';

const now = () => performance.timeOrigin + performance.now();
const say = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');

const connection = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null });
const sleepMs = Number(process.env.SLEEP_MS ?? 0);
const worker = new Worker(
  process.env.QUEUE ?? 'bench',
  async (job) => {
    say({ e: 'start', id: job.id, t: now() });
    if (sleepMs > 0) await new Promise((r) => setTimeout(r, sleepMs));
  },
  { connection, concurrency: Number(process.env.CONCURRENCY ?? 1) },
);
worker.on('completed', (job) => say({ e: 'done', id: job.id, t: now() }));
worker.on('error', (e) => process.stderr.write(`worker error: ${e.message}\n`));
await worker.waitUntilReady();
say({ e: 'ready' });

process.on('SIGTERM', () => {
  void worker.close().then(() => {
    connection.disconnect();
    process.exit(0);
  });
});

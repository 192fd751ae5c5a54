/**
 * The fleet's benchmarks (rows of the same table as bench/benchmarks.ts): each starts its own
 * private redis-server and/or s3rver (test/helpers), and stops them, its worker processes and
 * its temp dir whatever happens.
 *
 *   fleet-dispatch     job added → a real BullMQ worker process starts it (p50, p99)
 *   fleet-throughput   40 queue-level jobs of 1 s through 1, 2 and 4 slots vs the ideal
 *   store-transfer     SharedStore putFile/getFile of 512 MiB vs the bare minio client vs cp
 *   fleet-concurrent   three identical builds at once vs one, through two real workers
 *                      (VMLB_BENCH_TIMELINE=1 prints each build's events, timed from its submit)
 */
import { fleetDispatch, fleetThroughput } from './fleet-queue.js';
import { fleetConcurrent } from './fleet-concurrent.js';
import type { BenchOptions } from './harness.js';
import { storeTransfer } from './store-transfer.js';

export const FLEET_BENCHMARKS = [
  { name: 'fleet-dispatch', title: 'BullMQ dispatch latency: job added → worker process starts it (p50, p99)', run: fleetDispatch },
  { name: 'fleet-throughput', title: '40 queue-level 1 s jobs through 1, 2 and 4 slots vs the ideal', run: fleetThroughput },
  { name: 'store-transfer', title: 'shared-store push/pull of 512 MiB vs bare minio client vs cp', run: storeTransfer },
  { name: 'fleet-concurrent', title: 'three identical builds at once vs one, through two real workers', run: (o: BenchOptions) => fleetConcurrent(o) },
  { name: 'fleet-concurrent-pool', title: 'the same in a pool of its own (pools/a: its queues, its workers, its namespace)', run: (o: BenchOptions) => fleetConcurrent(o, 'a') },
];

import { defineConfig } from 'vitest/config';

/**
 * The fleet's test files: schedulers, workers, Redis, the dashboard. They run one at a time, as
 * the engine's files do, and `npm test` (scripts/test.sh) runs the two lanes side by side, as two
 * vitest processes (vitest runs one project of one-at-a-time files after the other). The lanes
 * share the host (loop devices, CPU), and every check of what a test left behind looks only at
 * its own (its sandbox folder, its own processes' descendants: test/helpers/vmlb.ts `leftovers`),
 * so neither sees the other's.
 */
// (pools, fleet-faults and sandbox-fleet run in the first lane: it evens the two out, about 7½
// minutes each here.)
const FLEET_FILES = [
  'dashboard',
  'dashboard-project',
  'dev-fleet',
  'fleet',
  'fleet-follow',
  'history',
  'hit-rate',
  'metrics',
  'redis-sentinel',
  'scheduler',
  'scheduler-ha',
  'scheduler-start',
  'worker',
].map((f) => `test/${f}.test.ts`);

const integration = {
  testTimeout: 180_000,
  hookTimeout: 180_000,
  fileParallelism: false,
  // The run's one Ceph cluster, started when a file first asks for a radosgw
  // (s3-transfer, pool-credentials; every S3 file with VMLB_TEST_S3=radosgw).
  // The run's one PostgreSQL, for the schedulers' build history (test/helpers/postgres.ts).
  globalSetup: ['test/helpers/ceph-broker.ts', 'test/helpers/postgres-broker.ts'],
};

// Three projects: `unit` (pure logic beside each module, fast, parallel), and two lanes of
// integration tests (real qemu-img chains, loop devices, mounts and chroots in test/), each one
// file at a time: `integration` (the engine, the CLI, stores, deploy/) and `integration-fleet`.
// `--project 'integration*'` picks both (one after the other, in one vitest process).
export default defineConfig({
  test: {
    reporters: ['default'],
    projects: [
      {
        test: {
          name: 'unit',
          include: ['libs/*/src/**/*.test.ts', 'apps/*/src/**/*.test.ts'],
          testTimeout: 20_000,
        },
      },
      {
        test: { name: 'integration', include: ['test/**/*.test.ts'], exclude: [...FLEET_FILES, '**/node_modules/**'], ...integration },
      },
      {
        test: { name: 'integration-fleet', include: FLEET_FILES, ...integration },
      },
    ],
  },
});

import { defineConfig } from 'vitest/config';

// Two projects: `unit` (pure logic beside each module, fast, parallel) and `integration`
// (real qemu-img chains, loop devices, mounts and chroots in test/; run one file at a time
// because they share the host's loop devices and CPU).
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
        test: {
          name: 'integration',
          include: ['test/**/*.test.ts'],
          testTimeout: 180_000,
          hookTimeout: 180_000,
          fileParallelism: false,
          // The run's one Ceph cluster, started when a file first asks for a radosgw
          // (s3-transfer, pool-credentials; every S3 file with VMLB_TEST_S3=radosgw).
          // The run's one PostgreSQL, for the schedulers' build history (test/helpers/postgres.ts).
          globalSetup: ['test/helpers/ceph-broker.ts', 'test/helpers/postgres-broker.ts'],
        },
      },
    ],
  },
});

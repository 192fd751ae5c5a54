import { defineConfig } from 'vitest/config';

// The tests that run inside the nbd test VM (guest.sh): one file at a time, long timeouts
// (the VM runs under software emulation here, several times slower than the host).
export default defineConfig({
  test: {
    include: ['test/nbd-vm/*.vmtest.ts'],
    testTimeout: 1_800_000,
    hookTimeout: 600_000,
    fileParallelism: false,
  },
});

import { describe, expect, it } from 'vitest';
import { missingChainIsSmall } from './chain-affinity.js';

const MiB = 1024 * 1024;
const k = (c: string) => c.repeat(64);

/** The shared store's blob sizes (a key absent: not shared, e.g. a # noshare layer). */
const sharedSizes = (sizes: Record<string, number>) => async (key: string) => (key in sizes ? { blob: { size: sizes[key]! } } : null);

describe('missingChainIsSmall', () => {
  it('adds up the blob sizes of the layers this worker lacks, against the limit', async () => {
    const sizes = sharedSizes({ [k('a')]: 600 * MiB, [k('b')]: 20 * MiB, [k('c')]: 10 * MiB });
    expect(await missingChainIsSmall([k('b'), k('c')], 32 * MiB, sizes)).toBe(true);
    expect(await missingChainIsSmall([k('a'), k('b'), k('c')], 32 * MiB, sizes)).toBe(false);
    expect(await missingChainIsSmall([k('b')], 20 * MiB, sizes)).toBe(true);
    expect(await missingChainIsSmall([k('b')], 20 * MiB - 1, sizes)).toBe(false);
  });

  it('is never small with a limit of 0, or when a missing layer is not in the shared store', async () => {
    expect(await missingChainIsSmall([k('b'), k('c')], 0, sharedSizes({ [k('b')]: 1, [k('c')]: 1 }))).toBe(false);
    expect(await missingChainIsSmall([k('b'), k('c')], 32 * MiB, sharedSizes({ [k('b')]: 1 }))).toBe(false);
    const failing = async () => Promise.reject(new Error('S3 down'));
    expect(await missingChainIsSmall([k('b'), k('c')], 32 * MiB, failing)).toBe(false);
  });
});

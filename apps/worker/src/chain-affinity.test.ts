import { describe, expect, it } from 'vitest';
import type { LocalStore } from '@vmlb/layer-engine';
import { missingChainIsSmall } from './chain-affinity.js';

const MiB = 1024 * 1024;
const k = (c: string) => c.repeat(64);

/** A local store holding `held` (only getManifest is asked). */
const storeWith = (held: string[]) => ({ getManifest: async (key: string) => (held.includes(key) ? { key } : null) }) as unknown as LocalStore;
/** The shared store's blob sizes (a key absent: not shared, e.g. a # noshare layer). */
const sharedSizes = (sizes: Record<string, number>) => async (key: string) => (key in sizes ? { blob: { size: sizes[key]! } } : null);

describe('missingChainIsSmall', () => {
  const chain = [k('a'), k('b'), k('c')];

  it('adds up the blob sizes of the layers this worker lacks, not of those it holds', async () => {
    const sizes = sharedSizes({ [k('a')]: 600 * MiB, [k('b')]: 20 * MiB, [k('c')]: 10 * MiB });
    expect(await missingChainIsSmall(storeWith([k('a')]), chain, 32 * MiB, sizes)).toBe(true);
    expect(await missingChainIsSmall(storeWith([]), chain, 32 * MiB, sizes)).toBe(false);
    expect(await missingChainIsSmall(storeWith([k('a'), k('c')]), chain, 20 * MiB, sizes)).toBe(true);
    expect(await missingChainIsSmall(storeWith([k('a'), k('c')]), chain, 20 * MiB - 1, sizes)).toBe(false);
  });

  it('is never small with a limit of 0, or when a missing layer is not in the shared store', async () => {
    expect(await missingChainIsSmall(storeWith([k('a')]), chain, 0, sharedSizes({ [k('b')]: 1, [k('c')]: 1 }))).toBe(false);
    expect(await missingChainIsSmall(storeWith([k('a')]), chain, 32 * MiB, sharedSizes({ [k('b')]: 1 }))).toBe(false);
    const failing = async () => Promise.reject(new Error('S3 down'));
    expect(await missingChainIsSmall(storeWith([k('a')]), chain, 32 * MiB, failing)).toBe(false);
  });
});

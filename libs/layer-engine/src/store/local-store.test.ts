import { mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalStore } from './local-store.js';

const MiB = 1 << 20;
const DAY = 86_400_000;
const NOW = Date.parse('2026-06-01T12:00:00Z');

/** A 64-hex key that reads as its layer's name in a failing test: `key('b')` is `bbbb…`. */
const key = (c: string) => c.repeat(64);

let root: string;
let store: LocalStore;
beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'vmlb-store-'));
  store = new LocalStore(root);
  await store.init();
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/**
 * A published layer as gc sees it: its manifest (only the fields the planning reads), last
 * used `daysAgo` (the manifest's mtime), holding `mib` MiB of blob.
 */
async function layer(c: string, o: { parent?: string; mib: number; daysAgo: number; cacheable?: boolean }): Promise<void> {
  const manifest = {
    version: 1,
    key: key(c),
    parent: o.parent ? key(o.parent) : null,
    name: `layer_${c}`,
    kind: o.parent ? 'build-layer' : 'create-disk',
    cacheable: o.cacheable ?? true,
    blob: { file: `${key(c)}.qcow2`, sha256: '0'.repeat(64), size: o.mib * MiB },
  };
  await writeFile(store.manifestPath(key(c)), JSON.stringify(manifest));
  const at = new Date(NOW - o.daysAgo * DAY);
  await utimes(store.manifestPath(key(c)), at, at);
}

/** The plan's layers as `name reason`, in the order they would be removed. */
async function plan(o: Parameters<LocalStore['planRemoval']>[0]): Promise<string[]> {
  return (await store.planRemoval({ now: NOW, ...o })).layers.map((l) => `${l.name} ${l.reason}`);
}

/**
 * a ← b ← c used a day ago, a ← d used 3 days ago, b ← e used 5 days ago: 10 MiB each. Using a
 * layer touches its whole chain, so no layer is older than one built on it.
 */
async function chainWithBranches(): Promise<void> {
  await layer('a', { mib: 10, daysAgo: 1 });
  await layer('b', { parent: 'a', mib: 10, daysAgo: 1 });
  await layer('c', { parent: 'b', mib: 10, daysAgo: 1 });
  await layer('d', { parent: 'a', mib: 10, daysAgo: 3 });
  await layer('e', { parent: 'b', mib: 10, daysAgo: 5 });
}

const EVERYTHING = ['layer_c', 'layer_e', 'layer_b', 'layer_d', 'layer_a'];

describe('LocalStore.planRemoval', () => {
  it('plans nothing without a limit, or under the cap, and counts the store', async () => {
    await chainWithBranches();
    expect(await store.planRemoval({ now: NOW })).toEqual({ layers: [], bytes: 0, before: { layers: 5, bytes: 50 * MiB }, protectedLayers: 0 });
    expect(await plan({ capBytes: 50 * MiB })).toEqual([]);
  });

  it('counts a layer log with its blob', async () => {
    await layer('a', { mib: 1, daysAgo: 1 });
    await writeFile(store.logPath(key('a')), 'x'.repeat(1000));
    const p = await store.planRemoval({ now: NOW, capBytes: 0 });
    expect([p.before.bytes, p.bytes, p.layers[0]?.bytes]).toEqual([MiB + 1000, MiB + 1000, MiB + 1000]);
  });

  it('removes the layers unused for longer than the age, descendants before ancestors', async () => {
    await chainWithBranches();
    expect(await plan({ olderThanMs: 2.5 * DAY })).toEqual(['layer_e age', 'layer_d age']);
    const all = await store.planRemoval({ now: NOW, olderThanMs: DAY / 2 });
    expect(all.layers.map((l) => l.name)).toEqual(EVERYTHING);
    expect(all.bytes).toBe(50 * MiB);
  });

  it('removes a layer with every layer built on it, even one used since', async () => {
    await layer('a', { mib: 10, daysAgo: 5 });
    await layer('b', { parent: 'a', mib: 10, daysAgo: 0 });
    expect(await plan({ olderThanMs: DAY })).toEqual(['layer_b age', 'layer_a age']);
  });

  it('removes the least recently used down to the cap, deeper layers first on a tie', async () => {
    await chainWithBranches();
    expect(await plan({ capBytes: 35 * MiB })).toEqual(['layer_e size', 'layer_d size']);
    // a, b and c were used together: c goes before b, b before a.
    expect(await plan({ capBytes: 15 * MiB })).toEqual(['layer_c size', 'layer_e size', 'layer_b size', 'layer_d size']);
    expect(await plan({ capBytes: 0 })).toEqual(EVERYTHING.map((n) => `${n} size`));
  });

  it('removes uncacheable layers first, however recently used', async () => {
    await chainWithBranches();
    await layer('f', { parent: 'c', mib: 10, daysAgo: 0, cacheable: false });
    expect(await plan({ capBytes: 50 * MiB })).toEqual(['layer_f size']);
  });

  it('keeps what the caller protects and its ancestors', async () => {
    await chainWithBranches();
    const p = await store.planRemoval({ now: NOW, capBytes: 0, protect: [key('c')] });
    expect(p.layers.map((l) => l.name)).toEqual(['layer_e', 'layer_d']);
    expect(p.protectedLayers).toBe(3);
  });

  it('keeps a chain an output on disk is pinned to, not one whose output is gone', async () => {
    await chainWithBranches();
    const output = path.join(root, 'image.qcow2');
    await writeFile(output, '');
    await store.pin(output, [key('a'), key('d')]);
    await store.pin(path.join(root, 'gone.qcow2'), [key('a'), key('b'), key('c')]);
    const p = await store.planRemoval({ now: NOW, capBytes: 0 });
    expect(p.layers.map((l) => l.name)).toEqual(['layer_c', 'layer_e', 'layer_b']);
    expect(p.protectedLayers).toBe(2);
  });

  it('keeps the chain of a build in progress until it is released', async () => {
    await chainWithBranches();
    const release = await store.markActive([key('a'), key('b')], 'a build');
    expect(await plan({ capBytes: 0 })).toEqual(['layer_c size', 'layer_e size', 'layer_d size']);
    await release();
    expect(await plan({ capBytes: 0 })).toEqual(EVERYTHING.map((n) => `${n} size`));
  });
});

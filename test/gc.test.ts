/**
 * vmlb gc: the local store by age and by size, never what an output on disk or a build in
 * progress needs; the shared store pruned of layers no recent build used. Each time, the
 * dry run lists exactly what the real run then removes.
 */
import { randomBytes } from 'node:crypto';
import { readdir, rm, utimes } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { s3ConfigFrom } from '../libs/layer-engine/src/store/s3-config.js';
import { SharedStore } from '../libs/layer-engine/src/store/shared-store.js';
import { startS3Server, type S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, buildJson, leftovers, planKeys, sandbox, spawnVmlb, vmlb, writeProject, type LayerDef, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
beforeAll(async () => {
  sb = await sandbox('gc');
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await sb?.cleanup();
});

const DAY = 86_400_000;

function projectLayers(tag: string, extra: Record<string, LayerDef> = {}): Record<string, LayerDef> {
  return {
    '01_base': { ...BUSYBOX_BASE, script: `${BUSYBOX_BASE.script}\necho ${tag} > etc/tag` },
    '02_app': { kind: 'build-layer', script: `echo ${tag} > /etc/app` },
    ...extra,
  };
}

async function storeKeys(store: string): Promise<string[]> {
  return (await readdir(path.join(store, 'layers'))).filter((f) => /^[0-9a-f]{64}\.json$/.test(f)).map((f) => f.slice(0, -5)).sort();
}

/** Makes a chain look last used `ms` ago (LRU is the manifests' mtimes). */
async function age(store: string, keys: string[], ms: number): Promise<void> {
  const t = new Date(Date.now() - ms);
  for (const k of keys) await utimes(path.join(store, 'layers', `${k}.json`), t, t);
}

type GcJson = { local: { layers: Array<{ key: string; reason: string }>; bytes: number; protectedLayers: number } };
const gcJson = (stdout: string) => JSON.parse(stdout) as GcJson;
const keysOf = (j: GcJson) => j.local.layers.map((l) => l.key).sort();

describe('vmlb gc (local store)', () => {
  it('--older-than: the dry run lists the old layers no output uses, and gc removes exactly those', async () => {
    const own = await sandbox('gc-age');
    try {
      const a = await writeProject(path.join(own.dir, 'a'), projectLayers('a'));
      const b = await writeProject(path.join(own.dir, 'b'), projectLayers('b'));
      const c = await writeProject(path.join(own.dir, 'c'), projectLayers('c'));
      const ka = planKeys(await buildJson(own, a));
      const kb = planKeys(await buildJson(own, b));
      const kc = planKeys(await buildJson(own, c));
      await rm(path.join(a, 'build'), { recursive: true }); // a's output is gone: nothing pins it
      await age(own.store, [...ka, ...kb], 40 * DAY); // b is old too, but its output is on disk

      const dry = await vmlb(own, ['gc', '--older-than', '30d', '--dry-run', '--json']);
      expect(dry.exitCode, dry.stderr).toBe(0);
      expect(keysOf(gcJson(dry.stdout))).toEqual([...ka].sort());
      expect(gcJson(dry.stdout).local.protectedLayers).toBe(4);
      expect(await storeKeys(own.store)).toEqual([...ka, ...kb, ...kc].sort()); // nothing removed

      const text = await vmlb(own, ['gc', '--older-than', '30d', '--dry-run']);
      expect(text.stdout).toMatch(/would remove 2 layers, .* \(kept 4 that outputs on disk or builds in progress need\):/);
      expect(text.stdout).toContain(ka[1]!.slice(0, 12));

      const real = await vmlb(own, ['gc', '--older-than', '30d', '--json']);
      expect(real.exitCode, real.stderr).toBe(0);
      expect(keysOf(gcJson(real.stdout))).toEqual(keysOf(gcJson(dry.stdout)));
      expect(gcJson(real.stdout).local.bytes).toBe(gcJson(dry.stdout).local.bytes);
      expect(await storeKeys(own.store)).toEqual([...kb, ...kc].sort());
    } finally {
      await own.cleanup();
    }
  });

  it('--keep-size: least recently used first, a layer with every layer built on it; dry run = real run', async () => {
    const own = await sandbox('gc-size');
    try {
      const p = await writeProject(path.join(own.dir, 'p'), projectLayers('p', { '03_more': { kind: 'build-layer', script: 'echo more > /etc/more' } }));
      const q = await writeProject(path.join(own.dir, 'q'), projectLayers('q'));
      const kp = planKeys(await buildJson(own, p));
      const kq = planKeys(await buildJson(own, q));
      await rm(path.join(p, 'build'), { recursive: true });
      await rm(path.join(q, 'build'), { recursive: true });
      await age(own.store, kp, 2 * DAY);
      await age(own.store, kq, 1 * DAY);
      // A cap of 1 byte: everything goes, in order: p's chain (older), then q's; deepest first.
      const dry = await vmlb(own, ['gc', '--keep-size', '1', '--dry-run', '--json']);
      const listed = gcJson(dry.stdout).local.layers.map((l) => l.key);
      expect(listed).toHaveLength(5);
      expect(listed.indexOf(kp[2]!)).toBeLessThan(listed.indexOf(kp[1]!));
      expect(listed.indexOf(kp[1]!)).toBeLessThan(listed.indexOf(kp[0]!));
      expect(gcJson(dry.stdout).local.layers.every((l) => l.reason === 'size')).toBe(true);
      // A cap that fits q's chain: only p's goes.
      const qBytes = (await vmlb(own, ['store', '--json'])).stdout;
      const total = JSON.parse(qBytes).bytes as number;
      const dryP = await vmlb(own, ['gc', '--keep-size', String(total - 1), '--dry-run', '--json']);
      const firstGone = keysOf(gcJson(dryP.stdout));
      expect(firstGone.every((k) => kp.includes(k))).toBe(true);
      const real = await vmlb(own, ['gc', '--keep-size', String(total - 1), '--json']);
      expect(keysOf(gcJson(real.stdout))).toEqual(firstGone);
      expect(await storeKeys(own.store)).toEqual([...kp, ...kq].filter((k) => !firstGone.includes(k)).sort());
    } finally {
      await own.cleanup();
    }
  });

  it('never removes the chain of a build in progress', async () => {
    const own = await sandbox('gc-active');
    try {
      const p = await writeProject(path.join(own.dir, 'p'), projectLayers('p'));
      const k = planKeys(await buildJson(own, p));
      await rm(path.join(p, 'build'), { recursive: true });
      await writeProject(p, { '03_slow': { kind: 'build-layer', script: 'sleep 4; echo slow > /etc/slow' } });
      const running = spawnVmlb(own, ['build', p, '--json']);
      const active = path.join(own.store, 'active');
      for (let i = 0; i < 100 && (await readdir(active).catch(() => [])).length === 0; i++) await sleep(50);
      expect((await readdir(active)).length).toBe(1);
      const gc = await vmlb(own, ['gc', '--keep-size', '1', '--older-than', '0s', '--json']);
      expect(gc.exitCode, gc.stderr).toBe(0);
      expect(gcJson(gc.stdout).local.layers).toEqual([]);
      expect(gcJson(gc.stdout).local.protectedLayers).toBe(2);
      const r = await running;
      expect(r.exitCode, String(r.stderr)).toBe(0);
      expect(await storeKeys(own.store)).toEqual(expect.arrayContaining(k));
      expect(await readdir(active)).toEqual([]); // released when the build ended
    } finally {
      await own.cleanup();
    }
  });

  it('asks what to collect when given nothing', async () => {
    const r = await vmlb(sb, ['gc']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('--keep-size');
  });
});

describe('vmlb gc --shared', () => {
  let s3: S3Server;
  beforeAll(async () => {
    s3 = await startS3Server();
    const store = new SharedStore(s3ConfigFrom('s3://vmlb-gc/x', s3.env));
    await store.ensureBucket();
    store.close();
  });
  afterAll(async () => {
    await s3?.close();
  });

  it('prunes layers no recent build used (dry run first, then exactly those), keeps the recently used chain', async () => {
    const url = `s3://vmlb-gc/t-${randomBytes(3).toString('hex')}`;
    const shared = new SharedStore(s3ConfigFrom(url, s3.env));
    try {
      const a = await writeProject(path.join(sb.dir, 'sa'), projectLayers('sa'));
      const b = await writeProject(path.join(sb.dir, 'sb'), projectLayers('sb'));
      const ka = planKeys(await vmlb(sb, ['build', a, '--json', '--cache', url], s3.env));
      const kb = planKeys(await vmlb(sb, ['build', b, '--json', '--cache', url], s3.env));
      expect((await shared.listLayers()).sort()).toEqual([...ka, ...kb].sort());
      expect((await shared.listRecords('uses/')).length).toBe(2);
      await sleep(5000);
      // a is used again (a no-op build records its use); b is not.
      expect((await vmlb(sb, ['build', a, '--json', '--cache', url], s3.env)).exitCode).toBe(0);

      const run = (extra: string[]) => vmlb(sb, ['gc', '--shared', url, '--unused-for', '3s', '--json', ...extra], s3.env);
      const dry = await run(['--dry-run']);
      expect(dry.exitCode, dry.stderr).toBe(0);
      const dj = JSON.parse(dry.stdout).shared as { layers: Array<{ key: string }>; staleRecords: string[]; bytes: number };
      expect(dj.layers.map((l) => l.key).sort()).toEqual([...kb].sort());
      expect(dj.staleRecords).toHaveLength(2);
      expect((await shared.listLayers()).length).toBe(4); // the dry run removed nothing

      const real = await run([]);
      expect(real.exitCode, real.stderr).toBe(0);
      const rj = JSON.parse(real.stdout).shared as typeof dj;
      expect(rj.layers.map((l) => l.key)).toEqual(dj.layers.map((l) => l.key));
      expect(rj.bytes).toBe(dj.bytes);
      expect((await shared.listLayers()).sort()).toEqual([...ka].sort());
      expect((await shared.listRecords('uses/')).length).toBe(1);
      // The text form says the same.
      const text = await vmlb(sb, ['gc', '--shared', url, '--unused-for', '3s', '--dry-run'], s3.env);
      expect(text.stdout).toMatch(/shared store s3:\/\/vmlb-gc\/t-\w+: 2 layers/);
    } finally {
      shared.close();
    }
  });
});

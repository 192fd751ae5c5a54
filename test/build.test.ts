/**
 * `vmlb build` end to end on real disks: qemu-img chains, the fuse backend (loop devices over
 * a qemu-storage-daemon FUSE export), mounts and chroots. One store for the file, so the
 * busybox base is built once and every later test starts from a cache hit.
 */
import { execa } from 'execa';
import { readFile, readdir, writeFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BUSYBOX_BASE, buildJson, builtNames, cachedNames, findEvent, layerLog, leftovers, planKeys, sandbox, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
beforeAll(async () => {
  sb = await sandbox('build');
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await sb?.cleanup();
});

async function qemuInfo(file: string): Promise<{ 'backing-filename'?: string; 'full-backing-filename'?: string; 'virtual-size': number; format: string; 'format-specific'?: { data?: { compat?: string } } }> {
  const r = await execa('qemu-img', ['info', '-U', '--output=json', file]);
  return JSON.parse(String(r.stdout));
}

const fourLayers = (marker: string) => ({
  '01_base': BUSYBOX_BASE,
  '02_two': { kind: 'build-layer' as const, script: `echo ${marker} > /etc/two; cp /mnt/data.txt /etc/data.txt`, files: { 'data.txt': 'two\n' } },
  '03_three': { kind: 'build-layer' as const, script: 'cat /etc/two > /etc/three' },
  '04_four': { kind: 'build-layer' as const, script: 'ls /etc > /etc/four' },
});

describe('the cache', () => {
  let project: string;
  beforeAll(async () => {
    project = await writeProject(path.join(sb.dir, 'p4'), fourLayers('v1'));
  });

  it('builds every layer the first time, each blob an overlay on its parent by relative path that qemu-img check passes', async () => {
    const run = await buildJson(sb, project);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(builtNames(run)).toEqual(['01_base', '02_two', '03_three', '04_four']);
    const keys = planKeys(run);
    for (const [i, key] of keys.entries()) {
      const blob = path.join(sb.store, 'layers', `${key}.qcow2`);
      const info = await qemuInfo(blob);
      expect(info['backing-filename']).toBe(i === 0 ? undefined : `${keys[i - 1]}.qcow2`);
      await execa('qemu-img', ['check', '-U', blob]);
      const manifest = JSON.parse(await readFile(path.join(sb.store, 'layers', `${key}.json`), 'utf8'));
      expect(manifest.key).toBe(key);
      expect(manifest.parent).toBe(i === 0 ? null : keys[i - 1]);
      expect(await readFile(path.join(sb.store, 'layers', `${key}.log`), 'utf8')).toBeTypeOf('string');
    }
    const out = path.join(project, 'build/image.qcow2');
    const outInfo = await qemuInfo(out);
    expect(outInfo['backing-filename']).toBe(path.join(sb.store, 'layers', `${keys[3]}.qcow2`));
    expect((await execa('qemu-img', ['info', '-U', '--backing-chain', out])).stdout).toContain(`${keys[0]}.qcow2`);
  });

  it('builds nothing the second time', async () => {
    const run = await buildJson(sb, project);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(builtNames(run)).toEqual([]);
    expect(cachedNames(run)).toEqual(['01_base', '02_two', '03_three', '04_four']);
  });

  it('rebuilds an edited layer and its descendants only, and says why', async () => {
    await writeFile(path.join(project, '02_two/data.txt'), 'two, edited\n');
    const explain = await vmlb(sb, ['explain', project, '--json']);
    expect(explain.exitCode, explain.stderr).toBe(0);
    const layers = JSON.parse(explain.stdout).layers as Array<{ name: string; status: string; changes?: Array<{ what: string; path?: string }> }>;
    expect(layers.map((l) => l.status)).toEqual(['hit', 'miss', 'miss', 'miss']);
    expect(layers[1]!.changes).toEqual([expect.objectContaining({ what: 'file-changed', path: 'data.txt' })]);
    expect(layers[2]!.changes).toEqual([expect.objectContaining({ what: 'parent' })]);

    const run = await buildJson(sb, project);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(builtNames(run)).toEqual(['02_two', '03_three', '04_four']);
    expect(cachedNames(run)).toEqual(['01_base']);
  });

  it('builds nothing after a revert (a branch switch back)', async () => {
    await writeFile(path.join(project, '02_two/data.txt'), 'two\n');
    const run = await buildJson(sb, project);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(builtNames(run)).toEqual([]);
  });

  it('reuses layers across projects at different paths (keys have no absolute paths)', async () => {
    const copy = await writeProject(path.join(sb.dir, 'p4-copy'), fourLayers('v1'));
    const run = await buildJson(sb, copy);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(builtNames(run)).toEqual([]);
  });

  it('--last stops at the named layer, and names the layers when it does not exist', async () => {
    const run = await buildJson(sb, project, ['--last', '02_two', '-o', path.join(sb.dir, 'last.qcow2')]);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(cachedNames(run)).toEqual(['01_base', '02_two']);
    const bad = await vmlb(sb, ['build', project, '--last', '09_nope']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain('09_nope');
    expect(bad.stderr).toContain('02_two');
  });
});

describe('# nocache', () => {
  it('rebuilds a nocache layer and its descendants every time, and caches what comes before', async () => {
    const project = await writeProject(path.join(sb.dir, 'nocache'), {
      '01_base': BUSYBOX_BASE,
      '02_before': { kind: 'build-layer', script: 'echo before > /etc/before' },
      '03_stamp': { kind: 'build-layer', script: '# nocache\ndate > /etc/stamp' },
      '04_after': { kind: 'build-layer', script: 'cat /etc/stamp > /etc/after' },
    });
    const first = await buildJson(sb, project);
    expect(first.exitCode, first.stderr).toBe(0);
    const second = await buildJson(sb, project);
    expect(second.exitCode, second.stderr).toBe(0);
    expect(cachedNames(second)).toEqual(['01_base', '02_before']);
    expect(builtNames(second)).toEqual(['03_stamp', '04_after']);
    // The first build's uncacheable layers are gone from the store once the output moved on.
    const firstKeys = planKeys(first);
    const files = await readdir(path.join(sb.store, 'layers'));
    expect(files).not.toContain(`${firstKeys[2]}.json`);
    expect(files).toContain(`${firstKeys[1]}.json`);
  });
});

describe('disks', () => {
  it('grows the disk in a modify-disk layer, visible inside the image afterwards', async () => {
    const project = await writeProject(path.join(sb.dir, 'grow'), {
      '01_base': BUSYBOX_BASE,
      '02_grow': {
        kind: 'modify-disk',
        script: `# disk-size 200M
set -eu
growpart "$VMLB_DEVICE" 1
p=$(vmlb-partition 1)
e2fsck -fy "$p" >/dev/null || [ $? -le 1 ]
resize2fs "$p"`,
      },
      '03_df': { kind: 'build-layer', script: 'df -k / | tail -1 > /etc/df; cat /etc/df' },
    });
    const run = await buildJson(sb, project);
    expect(run.exitCode, run.stderr).toBe(0);
    const log = layerLog(run, '03_df');
    const sizeKiB = Number(log.trim().split(/\s+/)[1]);
    expect(sizeKiB).toBeGreaterThan(150 * 1024); // was ~60 MiB before the grow
    const info = await qemuInfo(path.join(project, 'build/image.qcow2'));
    expect(info['virtual-size']).toBe(200 * 1024 * 1024);
  });

  it('--flatten writes one standalone qcow2 identical to the chain; --compat 0.10 too', async () => {
    const project = path.join(sb.dir, 'p4');
    const flat = path.join(sb.dir, 'flat.qcow2');
    const run = await buildJson(sb, project, ['--flatten', '-o', flat]);
    expect(run.exitCode, run.stderr).toBe(0);
    const info = await qemuInfo(flat);
    expect(info['backing-filename']).toBeUndefined();
    await execa('qemu-img', ['compare', '-U', flat, path.join(project, 'build/image.qcow2')]);
    const old = path.join(sb.dir, 'old.qcow2');
    const run010 = await buildJson(sb, project, ['--compat', '0.10', '-o', old]);
    expect(run010.exitCode, run010.stderr).toBe(0);
    expect((await qemuInfo(old))['format-specific']?.data?.compat).toBe('0.10');
    await execa('qemu-img', ['compare', '-U', old, flat]);
  });
});

describe('failures', () => {
  it('a failing script stops the build naming the layer, its exit code and log tail; earlier layers are kept', async () => {
    const project = await writeProject(path.join(sb.dir, 'fail'), {
      '01_base': BUSYBOX_BASE,
      '02_ok': { kind: 'build-layer', script: 'echo fine > /etc/ok' },
      '03_bad': { kind: 'build-layer', script: 'echo "about to fail: marker-7781"; exit 3' },
      '04_never': { kind: 'build-layer', script: 'echo never' },
    });
    const run = await vmlb(sb, ['build', project, '--plain']);
    expect(run.exitCode).toBe(1);
    expect(run.stdout + run.stderr).toContain('03_bad');
    expect(run.stdout + run.stderr).toContain('marker-7781');
    expect(run.stderr).toMatch(/exit code 3/);
    const again = await buildJson(sb, project);
    expect(again.exitCode).toBe(1);
    expect(cachedNames(again)).toEqual(['01_base', '02_ok']);
    const failed = findEvent(again, 'layer-failed')!;
    expect(failed.exitCode).toBe(3);
    expect(await readdir(path.join(sb.store, 'layers'))).not.toContain(`${failed.key}.json`);
    expect(await readFile(failed.logPath, 'utf8')).toContain('marker-7781');
  });

  it('a script past its # timeout is stopped with everything it started', async () => {
    const project = await writeProject(path.join(sb.dir, 'timeout'), {
      '01_base': BUSYBOX_BASE,
      '02_slow': { kind: 'build-layer', script: '# timeout 2s\nsleep 3171 &\necho started\nsleep 3171' },
    });
    const t0 = Date.now();
    const run = await buildJson(sb, project);
    expect(run.exitCode).toBe(1);
    expect(Date.now() - t0).toBeLessThan(60_000);
    const failed = findEvent(run, 'layer-failed');
    expect(failed).toMatchObject({ timedOut: true, name: '02_slow' });
    expect((await execa('pgrep', ['-f', 'sleep 3171'], { reject: false })).stdout).toBe('');
  });
});

describe('bad input', () => {
  it('refuses a malformed project before anything runs, naming every folder, exit 2', async () => {
    const project = await writeProject(path.join(sb.dir, 'bad'), {
      '01_base': BUSYBOX_BASE,
      '02_x': { kind: 'build-layer', script: 'true' },
    });
    await writeFile(path.join(project, '02_x/modify-disk'), '#!/bin/sh\n');
    await writeProject(path.join(sb.dir, 'bad'), { '03_base': { kind: 'base-image', script: 'source: /nope\nsha256: 00' } });
    const run = await vmlb(sb, ['build', project]);
    expect(run.exitCode).toBe(2);
    expect(run.stderr).toContain('02_x');
    expect(run.stderr).toContain('03_base');
    await rm(project, { recursive: true });
  });
});

describe('two builds of one project at once', () => {
  it('the second waits for the first to build each layer and takes it: every layer built once', async () => {
    const p = await writeProject(path.join(sb.dir, 'twice'), {
      // A base of its own (the others of this file are in the store already).
      '01_base': { ...BUSYBOX_BASE, script: `${BUSYBOX_BASE.script}\n# built twice at once` },
      '02_slow': { kind: 'build-layer', script: 'echo "slow built by $$"; sleep 2; echo slow > /etc/slow' },
      '03_after': { kind: 'build-layer', script: 'echo "after built by $$"; cat /etc/slow' },
    });
    const [a, b] = await Promise.all([buildJson(sb, p, ['-o', path.join(sb.dir, 'twice-a.qcow2')]), buildJson(sb, p, ['-o', path.join(sb.dir, 'twice-b.qcow2')])]);
    expect(a.exitCode, a.stderr).toBe(0);
    expect(b.exitCode, b.stderr).toBe(0);
    // Each layer was built by exactly one of the two; the other took it from the store.
    for (const name of ['01_base', '02_slow', '03_after']) {
      expect([...builtNames(a), ...builtNames(b)].filter((n) => n === name), name).toHaveLength(1);
      expect([...cachedNames(a), ...cachedNames(b)].filter((n) => n === name), name).toHaveLength(1);
    }
    const waited = [...a.events, ...b.events].filter((e) => e.type === 'notice' && /is building this layer; waiting to take it from the store/.test(e.message));
    expect(waited.length).toBeGreaterThanOrEqual(1);
    // Both say so in their summary: what each built, what it took.
    for (const r of [a, b]) {
      const done = findEvent(r, 'done')!;
      expect(done.built + done.cached).toBe(3);
      expect(done.built).toBe(builtNames(r).length);
    }
    expect(await readdir(path.join(sb.store, 'claims'))).toEqual([]);
  });
});

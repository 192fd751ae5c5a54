/** vmlb rollup: the chain up to a layer folded into a base-image layer; the image stays the same. */
import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BUSYBOX_BASE, buildJson, builtNames, cachedNames, leftovers, sandbox, sha256sum, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
beforeAll(async () => {
  sb = await sandbox('rollup');
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await sb?.cleanup();
});

const layers = {
  '01_base': BUSYBOX_BASE,
  '02_a': { kind: 'build-layer' as const, script: 'echo a > /etc/a && mkdir -p /opt/a && echo 1 > /opt/a/one' },
  '03_b': { kind: 'build-layer' as const, script: 'echo b > /etc/b && chmod 600 /etc/b && rm /opt/a/one' },
  '04_c': { kind: 'build-layer' as const, script: 'echo c > /etc/c && ln -s /etc/b /etc/c-link' },
};

describe('vmlb rollup', () => {
  it('folds 01..03 into a base-image layer; the layers after it build on it, and the image has the same files', async () => {
    const p = await writeProject(path.join(sb.dir, 'p'), layers);
    const before = path.join(sb.dir, 'before.qcow2');
    expect((await buildJson(sb, p, ['-o', before])).exitCode).toBe(0);

    const r = await vmlb(sb, ['rollup', '03_b', '-C', p, '--plain']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/rolled up 01_base … 03_b \(3 layers, chain top [0-9a-f]{12}\)/);
    expect(r.stdout).toContain('chain under 04_c: 3 overlays before, 1 now (the rolled-up base)');
    expect(r.stdout).toMatch(/04_c: \S+ on the 3-overlay chain; \S+ on the rolled-up base \(1 overlay\)/);

    // The project now: the base in 03_b's place, the folded folders under rolled/.
    expect((await readdir(p)).sort()).toEqual(['03_b', '04_c', 'build', 'rolled']);
    expect((await readdir(path.join(p, 'rolled/03_b.layers'))).sort()).toEqual(['01_base', '02_a', '03_b']);
    const baseImage = await readFile(path.join(p, '03_b/base-image'), 'utf8');
    const sha = await sha256sum(path.join(p, 'rolled/03_b.qcow2'));
    expect(baseImage).toContain('source: ../rolled/03_b.qcow2');
    expect(baseImage).toContain(`sha256: ${sha}`);

    // Same files as the un-rolled image.
    const d = await vmlb(sb, ['diff', before, path.join(p, 'build/image.qcow2'), '--checksum']);
    expect(d.exitCode, d.stderr).toBe(0);
    expect(d.stdout).toBe('');
    expect(d.stderr).toContain('no differences');

    // And it is cached like any layer.
    const again = await buildJson(sb, p);
    expect(builtNames(again)).toEqual([]);
    expect(cachedNames(again)).toEqual(['03_b', '04_c']);
  });

  it('--no-build writes the base only; --keep-local keeps rolled/*.qcow2 out of git', async () => {
    const p = await writeProject(path.join(sb.dir, 'q'), layers);
    const r = await vmlb(sb, ['rollup', '02_a', '-C', p, '--no-build', '--keep-local']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/03_b last built in .* on the 2-overlay chain; vmlb build rebuilds it on the new base/);
    expect(await readFile(path.join(p, '.gitignore'), 'utf8')).toContain('rolled/*.qcow2');
    await stat(path.join(p, 'rolled/02_a.qcow2'));
    expect((await readdir(p)).includes('build')).toBe(false);
    const b = await buildJson(sb, p);
    expect(b.exitCode, b.stderr).toBe(0);
    expect(builtNames(b)).toEqual(['02_a', '03_b', '04_c']);
  });

  it('--json gives the result as one object', async () => {
    // 04_c differs from the other tests' (else it is a hit on the same rolled-up base: the same rollup gives the same key).
    const p = await writeProject(path.join(sb.dir, 'j'), { ...layers, '04_c': { kind: 'build-layer', script: 'echo j > /etc/j' } });
    expect((await buildJson(sb, p)).exitCode).toBe(0);
    const r = await vmlb(sb, ['rollup', '03_b', '-C', p, '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ layer: '03_b', rolled: ['01_base', '02_a', '03_b'], chainBefore: 3, chainAfter: 1, next: { name: '04_c' } });
    expect(j.sha256).toBe(await sha256sum(path.join(p, 'rolled/03_b.qcow2')));
    expect(typeof j.next.secondsBefore).toBe('number');
    expect(typeof j.next.secondsAfter).toBe('number');
  });

  it('refuses a # nocache layer and an unknown one', async () => {
    const p = await writeProject(path.join(sb.dir, 'n'), { ...layers, '03_b': { kind: 'build-layer', script: '# nocache\ndate > /etc/stamp' } });
    const r = await vmlb(sb, ['rollup', '04_c', '-C', p]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('03_b is # nocache');
    const u = await vmlb(sb, ['rollup', '09_x', '-C', p]);
    expect(u.exitCode).toBe(2);
    expect(u.stderr).toContain('09_x: the project has no such layer');
    expect((await readdir(p)).includes('rolled')).toBe(false);
  });
});

import { chmod, cp, mkdir, mkdtemp, rm, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { computeKeys, layerInputs, layerKey, RECIPE_VERSION } from './cache-key.js';
import { loadProject } from './layer-project.js';
import type { ImageProject, LayerFile, LayerInputs, LayerSpec } from '../types.js';

const made: string[] = [];
afterEach(async () => {
  await Promise.all(made.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function tmp(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-key-'));
  made.push(dir);
  return dir;
}

/** A small real project: a base image, a build-layer with a file and a symlink, a modify-disk. */
async function sampleProject(): Promise<string> {
  const dir = path.join(await tmp(), 'project');
  await mkdir(path.join(dir, '01_base'), { recursive: true });
  await writeFile(path.join(dir, '01_base/base-image'), `source: ../images/debian.qcow2\nsha256: ${'c'.repeat(64)}\n`);
  await mkdir(path.join(dir, '02_pkgs/files'), { recursive: true });
  await writeFile(path.join(dir, '02_pkgs/build-layer'), '#!/bin/sh\napt-get install -y curl\n', { mode: 0o755 });
  await chmod(path.join(dir, '02_pkgs/build-layer'), 0o755);
  await writeFile(path.join(dir, '02_pkgs/files/motd'), 'hello\n');
  await symlink('motd', path.join(dir, '02_pkgs/files/issue'));
  await mkdir(path.join(dir, '03_grow'));
  await writeFile(path.join(dir, '03_grow/modify-disk'), '#!/bin/sh\n# disk-size 8G\n');
  await chmod(path.join(dir, '03_grow/modify-disk'), 0o755);
  return dir;
}

const keysOf = async (dir: string) => computeKeys(await loadProject(dir), { nonce: 'n1' }).map((k) => k.key);

function spec(over: Partial<LayerSpec> = {}): LayerSpec {
  return {
    name: '02_x',
    number: 2,
    dir: '/somewhere/02_x',
    kind: 'build-layer',
    entry: '/somewhere/02_x/build-layer',
    hints: { nocache: false, noshare: false, bindMounts: [], partitionMounts: [] },
    files: [{ path: 'build-layer', type: 'file', executable: true, digest: 'a'.repeat(64) }],
    ...over,
  };
}

const P = 'f'.repeat(64);
const file = (over: Partial<LayerFile> = {}): LayerFile => ({ path: 'build-layer', type: 'file', executable: true, digest: 'a'.repeat(64), ...over });
const inputs = (over: Partial<LayerInputs> = {}): LayerInputs => ({ recipe: RECIPE_VERSION, kind: 'build-layer', parent: P, files: [file()], ...over });

describe('layerInputs and layerKey', () => {
  it('takes the recipe, kind, parent and files, and no path of the host', () => {
    const i = layerInputs(spec(), P);
    expect(i).toEqual({ recipe: RECIPE_VERSION, kind: 'build-layer', parent: P, files: spec().files });
    expect('nonce' in i).toBe(false);
    expect(JSON.stringify(i)).not.toContain('/somewhere');
    expect(layerInputs(spec(), null, 'n').nonce).toBe('n');
  });

  it('is a sha256 hex, the same for the same inputs wherever the layer sits', () => {
    const a = layerKey(layerInputs(spec(), P));
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(layerKey(layerInputs(spec({ dir: '/elsewhere/02_x', name: '07_y', number: 7, entry: '/elsewhere/x' }), P))).toBe(a);
  });

  it('does not depend on the order files are given in', () => {
    const two = [file({ path: 'a' }), file({ path: 'b', digest: 'b'.repeat(64) })];
    expect(layerKey(inputs({ files: two }))).toBe(layerKey(inputs({ files: [...two].reverse() })));
  });

  it.each<[string, Partial<LayerInputs>]>([
    ['the content', { files: [file({ digest: 'b'.repeat(64) })] }],
    ['the executable bit', { files: [file({ executable: false })] }],
    ['a file becoming a symlink', { files: [file({ type: 'symlink' })] }],
    ['a renamed file', { files: [file({ path: 'build-layer2' })] }],
    ['an added file', { files: [file(), file({ path: 'z' })] }],
    ['the parent', { parent: 'e'.repeat(64) }],
    ['no parent', { parent: null }],
    ['the kind', { kind: 'modify-disk' }],
    ['the recipe', { recipe: RECIPE_VERSION + 1 }],
    ['a nonce', { nonce: 'x' }],
  ])('changes with %s', (_what, over) => {
    expect(layerKey(inputs(over))).not.toBe(layerKey(inputs()));
  });
});

describe('computeKeys on a real project', () => {
  it('chains parent keys in order', async () => {
    const keyed = computeKeys(await loadProject(await sampleProject()));
    expect(keyed.map((k) => k.spec.name)).toEqual(['01_base', '02_pkgs', '03_grow']);
    expect(keyed[0]!.inputs.parent).toBeNull();
    expect(keyed[1]!.inputs.parent).toBe(keyed[0]!.key);
    expect(keyed[2]!.inputs.parent).toBe(keyed[1]!.key);
    expect(keyed.every((k) => k.cacheable && k.inputs.nonce === undefined)).toBe(true);
    expect(keyed.map((k) => k.key)).toEqual(keyed.map((k) => layerKey(k.inputs)));
  });

  it('gives the same keys to a copy elsewhere with other mtimes', async () => {
    const a = await sampleProject();
    const b = path.join(await tmp(), 'somewhere', 'else');
    await cp(a, b, { recursive: true, verbatimSymlinks: true });
    await utimes(path.join(b, '02_pkgs/files/motd'), new Date(2001, 1, 1), new Date(2001, 1, 1));
    await utimes(path.join(b, '02_pkgs/build-layer'), new Date(), new Date(Date.now() + 86_400_000));
    expect(await keysOf(b)).toEqual(await keysOf(a));
  });

  it('ignores empty folders', async () => {
    const a = await sampleProject();
    const before = await keysOf(a);
    await mkdir(path.join(a, '02_pkgs/empty/deeper'), { recursive: true });
    expect(await keysOf(a)).toEqual(before);
  });

  it('changes a layer key and all after it, not the ones before, when its content changes', async () => {
    const a = await sampleProject();
    const [k1, k2, k3] = await keysOf(a);
    await writeFile(path.join(a, '02_pkgs/files/motd'), 'hello, world\n');
    const [n1, n2, n3] = await keysOf(a);
    expect(n1).toBe(k1);
    expect(n2).not.toBe(k2);
    expect(n3).not.toBe(k3);
  });

  it('changes with the executable bit', async () => {
    const a = await sampleProject();
    const before = await keysOf(a);
    await chmod(path.join(a, '02_pkgs/files/motd'), 0o755);
    expect((await keysOf(a))[1]).not.toBe(before[1]);
  });

  it('changes with a symlink target', async () => {
    const a = await sampleProject();
    const before = await keysOf(a);
    await unlink(path.join(a, '02_pkgs/files/issue'));
    await symlink('./motd', path.join(a, '02_pkgs/files/issue'));
    expect((await keysOf(a))[1]).not.toBe(before[1]);
  });
});

describe('computeKeys with # nocache', () => {
  const project = (nocache: boolean[]): ImageProject => ({
    dir: '/p',
    layers: nocache.map((nc, i) =>
      spec({
        name: `0${i + 1}_l`,
        number: i + 1,
        kind: i === 0 ? 'create-disk' : 'build-layer',
        hints: { nocache: nc, noshare: false, bindMounts: [], partitionMounts: [] },
        files: [file({ digest: String(i).repeat(64) })],
      }),
    ),
  });

  it('gives the nonce to the nocache layer only and makes it and every later layer uncacheable', () => {
    const keyed = computeKeys(project([false, true, false, false]), { nonce: 'build-42' });
    expect(keyed.map((k) => k.cacheable)).toEqual([true, false, false, false]);
    expect(keyed.map((k) => k.inputs.nonce)).toEqual([undefined, 'build-42', undefined, undefined]);
  });

  it('gives the nonce to every nocache layer', () => {
    const keyed = computeKeys(project([false, true, false, true]), { nonce: 'n' });
    expect(keyed.map((k) => k.inputs.nonce)).toEqual([undefined, 'n', undefined, 'n']);
    expect(keyed.map((k) => k.cacheable)).toEqual([true, false, false, false]);
  });

  it('makes new keys from the nocache layer on for each nonce, and keeps the ones before', () => {
    const a = computeKeys(project([false, true, false]), { nonce: 'one' }).map((k) => k.key);
    const b = computeKeys(project([false, true, false]), { nonce: 'two' }).map((k) => k.key);
    expect(b[0]).toBe(a[0]);
    expect(b[1]).not.toBe(a[1]);
    expect(b[2]).not.toBe(a[2]);
    expect(computeKeys(project([false, true, false]), { nonce: 'one' }).map((k) => k.key)).toEqual(a);
  });

  it('makes up a nonce when none is given', () => {
    const a = computeKeys(project([true, false]));
    const b = computeKeys(project([true, false]));
    expect(a[0]!.inputs.nonce).toEqual(expect.any(String));
    expect(a[0]!.key).not.toBe(b[0]!.key);
    // Without a nocache layer the keys stay put.
    expect(computeKeys(project([false, false]))[1]!.key).toBe(computeKeys(project([false, false]))[1]!.key);
  });
});

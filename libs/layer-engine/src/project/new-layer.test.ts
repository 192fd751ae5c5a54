import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { VmlbError } from '../errors.js';
import { parseHints } from './hints.js';
import { loadProject } from './layer-project.js';
import { scaffoldLayer } from './new-layer.js';

const made: string[] = [];
afterEach(async () => {
  await Promise.all(made.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function project(folders: string[] = []): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-new-'));
  made.push(dir);
  for (const f of folders) await mkdir(path.join(dir, f));
  return dir;
}

async function refusal(p: Promise<unknown>): Promise<VmlbError> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(VmlbError);
  return e as VmlbError;
}

describe('scaffoldLayer', () => {
  it('makes 01_NAME with a create-disk in an empty project', async () => {
    const dir = await project();
    const made = await scaffoldLayer(dir, 'base');
    expect(made).toEqual({ dir: path.join(dir, '01_base'), script: path.join(dir, '01_base', 'create-disk') });
    expect((await stat(made.script)).mode & 0o777).toBe(0o755);
  });

  it('numbers one past the highest layer, padded to the widest number', async () => {
    expect((await scaffoldLayer(await project(['01_base', '02_a', '07_b', 'docs', '3_bad']), 'next')).dir).toMatch(/\/08_next$/);
    expect((await scaffoldLayer(await project(['001_base', '02_a']), 'next')).dir).toMatch(/\/003_next$/);
    expect((await scaffoldLayer(await project(['01_base', '99_a']), 'next')).dir).toMatch(/\/100_next$/);
    expect((await scaffoldLayer(await project(['10_base']), 'x', { kind: 'modify-disk' })).script).toMatch(/\/11_x\/modify-disk$/);
  });

  it('writes a build-layer by default once the project has a layer', async () => {
    const dir = await project(['01_base']);
    const { script } = await scaffoldLayer(dir, 'packages');
    expect(path.basename(script)).toBe('build-layer');
    const text = await readFile(script, 'utf8');
    expect(text.startsWith('#!/bin/sh\n')).toBe(true);
    expect(text).toContain('\nset -eu\n');
    expect(text).toContain('echo "hello from packages"');
    expect(text).toMatch(/chroot-bind-mount SRC TARGET/);
  });

  it.each(['create-disk', 'build-layer', 'modify-disk'] as const)('names the hints of a %s without activating any', async (kind) => {
    const dir = await project(kind === 'create-disk' ? [] : ['01_base']);
    const { script } = await scaffoldLayer(dir, 'x', { kind });
    const text = await readFile(script, 'utf8');
    expect(text).toMatch(/timeout DURATION/);
    expect(text).toMatch(/nocache/);
    expect(parseHints(text, kind)).toEqual({ hints: { nocache: false, noshare: false, bindMounts: [], partitionMounts: [] }, problems: [] });
  });

  it('makes a project that loads', async () => {
    const dir = await project();
    await scaffoldLayer(dir, 'disk');
    await scaffoldLayer(dir, 'packages');
    await scaffoldLayer(dir, 'grow', { kind: 'modify-disk' });
    const p = await loadProject(dir);
    expect(p.layers.map((l) => `${l.name}/${l.kind}`)).toEqual(['01_disk/create-disk', '02_packages/build-layer', '03_grow/modify-disk']);
  });

  it.each(['', '-x', '.hidden', 'a b', 'a/b', '../up', 'ünï'])('refuses the name %j', async (name) => {
    const e = await refusal(scaffoldLayer(await project(), name));
    expect(e.code).toBe('INVALID_LAYER_NAME');
    expect(e.message).toContain(`"${name}"`);
  });

  it('refuses a name already used by a layer, naming its folder', async () => {
    const dir = await project(['01_base', '02_packages']);
    const e = await refusal(scaffoldLayer(dir, 'packages'));
    expect(e.code).toBe('LAYER_EXISTS');
    expect(e.message).toContain('02_packages');
  });

  it('refuses a create-disk after the first layer', async () => {
    const e = await refusal(scaffoldLayer(await project(['01_base']), 'disk', { kind: 'create-disk' }));
    expect(e.code).toBe('LAYER_NOT_FIRST');
    expect(e.message).toContain('01_base');
  });

  it('refuses a project folder that does not exist', async () => {
    const e = await refusal(scaffoldLayer(path.join(await project(), 'nope'), 'x'));
    expect(e.code).toBe('PROJECT_NOT_FOUND');
  });

  it('ignores plain files named like layers when numbering', async () => {
    const dir = await project(['01_base']);
    await writeFile(path.join(dir, '50_notes'), 'not a layer');
    expect((await scaffoldLayer(dir, 'next')).dir).toMatch(/\/02_next$/);
  });
});

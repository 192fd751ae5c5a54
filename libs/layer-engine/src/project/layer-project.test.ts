import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ProjectError, type ProjectProblem } from '../errors.js';
import { loadProject } from './layer-project.js';
import type { LayerSpec } from '../types.js';

const SHA = 'ab'.repeat(32);
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Files of a project: a string is a plain file (scripts get 0755 unless `mode` says otherwise). */
type Tree = Record<string, string | { text: string; mode?: number } | { symlink: string } | { dir: true } | { fifo: true }>;

const made: string[] = [];
afterEach(async () => {
  await Promise.all(made.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function project(tree: Tree): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-project-'));
  made.push(dir);
  for (const [rel, what] of Object.entries(tree)) {
    const abs = path.join(dir, rel);
    await mkdir(path.dirname(abs), { recursive: true });
    if (typeof what === 'string' || 'text' in what) {
      const text = typeof what === 'string' ? what : what.text;
      await writeFile(abs, text);
      const script = /\/(create-disk|build-layer|modify-disk)$/.test(rel);
      const mode = typeof what === 'object' && what.mode !== undefined ? what.mode : script ? 0o755 : 0o644;
      await chmod(abs, mode);
    } else if ('symlink' in what) await symlink(what.symlink, abs);
    else if ('dir' in what) await mkdir(abs, { recursive: true });
    else execFileSync('mkfifo', [abs]);
  }
  return dir;
}

async function problemsOf(dir: string): Promise<ProjectProblem[]> {
  const err = await loadProject(dir).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ProjectError);
  expect((err as ProjectError).code).toBe('PROJECT_INVALID');
  return (err as ProjectError).problems;
}

const base = { '01_base/base-image': `# the cloud image\nsource: images/debian.qcow2\nsha256: ${SHA}\n` };

describe('loadProject: a good project', () => {
  it('returns the layers sorted by number with kinds, hints and files', async () => {
    const dir = await project({
      ...base,
      '10_last/modify-disk': '#!/bin/sh\n# disk-size 8G\n',
      '02_packages/build-layer': '#!/bin/sh\n# timeout 10m\n# noshare\napt-get install -y curl\n',
      '02_packages/files/motd': 'hello\n',
      '02_packages/files/tool': { text: '#!/bin/sh\n', mode: 0o755 },
      '02_packages/files/link': { symlink: '../motd' },
      '02_packages/empty': { dir: true },
      '3_notes.txt': 'a plain file is ignored',
      'README.md': 'ignored',
      '.git/HEAD': 'ignored',
      'build/image.qcow2': 'output folder, ignored',
      'docs/x': 'a directory not starting with a digit is ignored',
    });
    const p = await loadProject(dir);
    expect(p.dir).toBe(dir);
    expect(p.layers.map((l) => [l.name, l.number, l.kind])).toEqual([
      ['01_base', 1, 'base-image'],
      ['02_packages', 2, 'build-layer'],
      ['10_last', 10, 'modify-disk'],
    ]);
    const [b, pk, last] = p.layers as [LayerSpec, LayerSpec, LayerSpec];
    expect(b.dir).toBe(path.join(dir, '01_base'));
    expect(b.entry).toBe(path.join(dir, '01_base', 'base-image'));
    expect(b.baseImage).toEqual({ location: path.join(dir, '01_base', 'images/debian.qcow2'), sha256: SHA });
    expect(pk.hints).toMatchObject({ noshare: true, nocache: false, timeoutMs: 600_000 });
    expect(last.hints.diskSize).toBe(8 * 1024 ** 3);
    expect(pk.files).toEqual([
      { path: 'build-layer', type: 'file', executable: true, digest: sha256('#!/bin/sh\n# timeout 10m\n# noshare\napt-get install -y curl\n') },
      { path: 'files/link', type: 'symlink', executable: false, digest: sha256('../motd') },
      { path: 'files/motd', type: 'file', executable: false, digest: sha256('hello\n') },
      { path: 'files/tool', type: 'file', executable: true, digest: sha256('#!/bin/sh\n') },
    ]);
  });

  it('keeps an http(s) source as written, an absolute path as is, and reads aliases and hints of a base-image', async () => {
    const dir = await project({
      '01_base/base-image': `# nocache\n\nurl: https://cloud.debian.org/x.qcow2\nsha256: ${SHA.toUpperCase()}\n`,
      '02_other/base-image': `path: /srv/img.raw\nsha256: ${SHA}\n`,
    });
    const problems = await problemsOf(dir);
    // Only the position problem: the second one is parsed fine otherwise.
    expect(problems).toEqual([{ where: '02_other', problem: expect.stringContaining('a base-image must be the first layer') }]);

    const ok = await project({ '01_base/base-image': `# nocache\nurl: https://cloud.debian.org/x.qcow2\nsha256: ${SHA.toUpperCase()}\n` });
    const [layer] = (await loadProject(ok)).layers;
    expect(layer!.baseImage).toEqual({ location: 'https://cloud.debian.org/x.qcow2', sha256: SHA });
    expect(layer!.hints.nocache).toBe(true);
    const abs = await project({ '01_base/base-image': `path: /srv/img.raw\nsha256: ${SHA}\n` });
    expect((await loadProject(abs)).layers[0]!.baseImage!.location).toBe('/srv/img.raw');
  });

  it('starts with a create-disk too, and accepts wide numbers', async () => {
    const dir = await project({ '001_disk/create-disk': '#!/bin/sh\n', '002_more/build-layer': '#!/bin/sh\n' });
    expect((await loadProject(dir)).layers.map((l) => l.number)).toEqual([1, 2]);
  });

  it('follows a symlinked layer folder', async () => {
    const shared = await project({ 'x/build-layer': '#!/bin/sh\n' });
    const dir = await project({ ...base, '02_shared': { symlink: path.join(shared, 'x') } });
    const p = await loadProject(dir);
    expect(p.layers[1]!.kind).toBe('build-layer');
    expect(p.layers[1]!.files.map((f) => f.path)).toEqual(['build-layer']);
  });

  it('hashes a big file in chunks to the same digest', async () => {
    const big = 'x'.repeat(3 * 1024 * 1024 + 17);
    const dir = await project({ ...base, '02_big/build-layer': '#!/bin/sh\n', '02_big/blob': big });
    const f = (await loadProject(dir)).layers[1]!.files.find((x) => x.path === 'blob');
    expect(f?.digest).toBe(sha256(big));
  });

  it('loads 20 small layers in a few milliseconds', async () => {
    const tree: Tree = { ...base };
    for (let i = 2; i <= 20; i++) {
      const n = String(i).padStart(2, '0');
      tree[`${n}_layer${i}/build-layer`] = `#!/bin/sh\necho ${i}\n`;
      tree[`${n}_layer${i}/files/a.conf`] = `a=${i}\n`;
      tree[`${n}_layer${i}/files/b.conf`] = `b=${i}\n`;
    }
    const dir = await project(tree);
    await loadProject(dir); // warm the module and the page cache
    const runs: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      const p = await loadProject(dir);
      runs.push(performance.now() - t);
      expect(p.layers).toHaveLength(20);
    }
    expect(Math.min(...runs)).toBeLessThan(50);
  });
});

describe('loadProject: a bad project is refused with every problem, each naming its folder', () => {
  it('refuses an empty project', async () => {
    const dir = await project({ 'README.md': 'x', 'build/out': 'x' });
    expect(await problemsOf(dir)).toEqual([{ where: '.', problem: expect.stringContaining('no layer folders') }]);
  });

  it('refuses a missing project folder', async () => {
    const dir = path.join(await project({}), 'nope');
    expect(await problemsOf(dir)).toEqual([{ where: '.', problem: expect.stringContaining('cannot read the project folder') }]);
  });

  it.each(['1_short', '01-dash', '01_', '01_-x', '2024 notes', '01_bad name'])('refuses a folder named %j', async (name) => {
    const dir = await project({ ...base, [`${name}/build-layer`]: '#!/bin/sh\n' });
    expect(await problemsOf(dir)).toEqual([
      { where: name, problem: expect.stringContaining('name out of pattern: layer folders are NN_name — two or more digits, an underscore, a name') },
    ]);
  });

  it('refuses two folders with the same number, naming both', async () => {
    const dir = await project({ ...base, '02_a/build-layer': '#!/bin/sh\n', '002_b/build-layer': '#!/bin/sh\n' });
    const problems = await problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(problems[0]!.where).toBe('002_b');
    expect(problems[0]!.problem).toMatch(/^layer number 2 is used by 002_b and 02_a; give each layer its own number$/);
  });

  it('refuses a folder without an entry script, listing the four names', async () => {
    const dir = await project({ ...base, '02_none/setup.sh': '#!/bin/sh\n', '03_ext/build-layer.sh': '#!/bin/sh\n' });
    expect(await problemsOf(dir)).toEqual([
      { where: '02_none', problem: 'no entry script: a layer folder holds exactly one of base-image, create-disk, build-layer, modify-disk' },
      { where: '03_ext', problem: expect.stringMatching(/no entry script: .*\(found build-layer\.sh: the entry has no extension\)/) },
    ]);
  });

  it('refuses a folder with two entry scripts, naming them', async () => {
    const dir = await project({ ...base, '02_two/build-layer': '#!/bin/sh\n', '02_two/modify-disk': '#!/bin/sh\n' });
    expect(await problemsOf(dir)).toEqual([
      { where: '02_two', problem: expect.stringMatching(/more than one entry script \((build-layer, modify-disk|modify-disk, build-layer)\)/) },
    ]);
  });

  it('refuses an entry that is a symlink or a folder', async () => {
    const dir = await project({
      ...base,
      '02_link/real': { text: '#!/bin/sh\n', mode: 0o755 },
      '02_link/build-layer': { symlink: 'real' },
      '03_dir/modify-disk/x': 'x',
    });
    expect(await problemsOf(dir)).toEqual([
      { where: '02_link/build-layer', problem: 'build-layer is a symlink: the entry script must be a regular file' },
      { where: '03_dir/modify-disk', problem: 'modify-disk is a folder: the entry script must be a regular file' },
    ]);
  });

  it('refuses a script that is not executable, saying how to fix it', async () => {
    const dir = await project({ '01_disk/create-disk': { text: '#!/bin/sh\n', mode: 0o644 }, '02_x/build-layer': { text: '#!/bin/sh\n', mode: 0o654 } });
    expect(await problemsOf(dir)).toEqual([
      { where: '01_disk/create-disk', problem: 'not executable: chmod +x 01_disk/create-disk' },
      { where: '02_x/build-layer', problem: 'not executable: chmod +x 02_x/build-layer' },
    ]);
  });

  it('accepts a base-image file that is not executable', async () => {
    const dir = await project(base);
    const p = await loadProject(dir);
    expect(p.layers.map((l) => [l.name, l.kind, l.baseImage])).toEqual([
      ['01_base', 'base-image', { location: path.join(dir, '01_base', 'images/debian.qcow2'), sha256: SHA }],
    ]);
  });

  it('refuses a first layer that makes no disk', async () => {
    const dir = await project({ '01_x/build-layer': '#!/bin/sh\n' });
    expect(await problemsOf(dir)).toEqual([
      { where: '01_x', problem: expect.stringContaining('the first layer must be a base-image or a create-disk (found build-layer') },
    ]);
  });

  it('refuses a base-image or create-disk that is not first', async () => {
    const dir = await project({ ...base, '02_disk/create-disk': '#!/bin/sh\n', '03_img/base-image': `source: x\nsha256: ${SHA}\n` });
    expect(await problemsOf(dir)).toEqual([
      { where: '02_disk', problem: 'a create-disk must be the first layer (it makes the disk), but 01_base comes before it' },
      { where: '03_img', problem: 'a base-image must be the first layer (it makes the disk), but 01_base comes before it' },
    ]);
  });

  it.each([
    ['', [/source: is missing/, /sha256: is missing/]],
    [`sha256: ${SHA}`, [/source: is missing; add "source: PATH_OR_URL"/]],
    ['source: x.qcow2', [/sha256: is missing/]],
    [`source: x\nsha256: 1234`, [/line 2: sha256: expected 64 hex digits .*found "1234"/]],
    [
      `source: https://images.example/base.qcow2\nsha256: TODO the image could not be downloaded`,
      [/^line 2: sha256: is still a TODO; replace the line with "sha256: HEX", the 64 hex digits sha256sum prints of https:\/\/images\.example\/base\.qcow2$/],
    ],
    [`source: x\nurl: y\nsha256: ${SHA}`, [/line 2: url: given twice \(first as source: on line 1\)/]],
    [`source: x\nsha256: ${SHA}\nsha256: ${SHA}`, [/line 3: sha256: given twice/]],
    [`source: s3://bucket/x\nsha256: ${SHA}`, [/line 1: source: "s3:\/\/bucket\/x" is neither a path nor an http\(s\) URL/]],
    [`source:\nsha256: ${SHA}`, [/line 1: source: is empty/]],
    [`source: x\nchecksum: 12\nsha256: ${SHA}`, [/line 2: unknown field "checksum:"/]],
    [`source x\nsha256: ${SHA}`, [/line 1: expected "field: value"/, /source: is missing/]],
    [`# timeout 5m\nsource: x\nsha256: ${SHA}`, [/line 1: # timeout: does not apply to a base-image file/]],
  ])('refuses the base-image %j', async (text, expected) => {
    const dir = await project({ '01_base/base-image': text });
    const problems = await problemsOf(dir);
    expect(problems).toHaveLength(expected.length);
    problems.forEach((p, i) => {
      expect(p.where).toBe('01_base/base-image');
      expect(p.problem).toMatch(expected[i]!);
    });
  });

  it('reports bad hints with the script and the line', async () => {
    const dir = await project({ ...base, '02_x/build-layer': '#!/bin/sh\n# disk-size 4G\n' });
    expect(await problemsOf(dir)).toEqual([
      { where: '02_x/build-layer', problem: 'line 2: # disk-size: does not apply to a build-layer layer; it is for create-disk, modify-disk only' },
    ]);
  });

  it('refuses a fifo in a layer folder', async () => {
    const dir = await project({ ...base, '02_x/build-layer': '#!/bin/sh\n', '02_x/sub/pipe': { fifo: true } });
    expect(await problemsOf(dir)).toEqual([
      { where: '02_x/sub/pipe', problem: 'is a fifo: a layer folder may hold only files, symlinks and folders' },
    ]);
  });

  it('reports every problem of the project at once', async () => {
    const dir = await project({
      '01_x/build-layer': { text: '#!/bin/sh\n# timeout never\n', mode: 0o644 },
      '02_two/build-layer': '#!/bin/sh\n',
      '02_two/modify-disk': '#!/bin/sh\n',
      '03_none/readme': 'x',
      '4_bad/build-layer': '#!/bin/sh\n',
      '05_a/build-layer': '#!/bin/sh\n',
      '005_b/build-layer': '#!/bin/sh\n',
      '06_img/base-image': 'source: x\n',
      '07_p/build-layer': '#!/bin/sh\n',
      '07_p/fifo': { fifo: true },
    });
    const problems = await problemsOf(dir);
    expect(problems.map((p) => p.where)).toEqual([
      '005_b',
      '01_x',
      '01_x/build-layer',
      '01_x/build-layer',
      '02_two',
      '03_none',
      '06_img',
      '06_img/base-image',
      '07_p/fifo',
      '4_bad',
    ]);
    const err = (await loadProject(dir).catch((e: unknown) => e)) as ProjectError;
    expect(err.message).toContain(`the image project ${dir} has 10 problems:`);
    expect(err.message).toContain('  01_x/build-layer: not executable: chmod +x 01_x/build-layer');
  });
});

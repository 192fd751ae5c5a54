import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ProjectError, VmlbError, loadProject } from '@vmlb/layer-engine';
import { migrateProject } from './project.js';
import { formatReport } from './report.js';
import { MIGRATE_USAGE } from './usage-error.js';

/** A modify-disk written to the original tool's contract, as its users wrote them. */
const ORIGINAL_GROW = await readFile(new URL('./fixtures/original-modify-disk.sh', import.meta.url), 'utf8');

/** What vmlb migrate makes of it. */
const REWRITTEN_GROW = await readFile(new URL('./fixtures/rewritten-modify-disk.sh', import.meta.url), 'utf8');

describe('migrateProject', () => {
  const dirs: string[] = [];
  const IMAGE = Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), Buffer.alloc(4096, 7)]);
  const md5 = createHash('md5').update(IMAGE).digest('hex');
  const sha256 = createHash('sha256').update(IMAGE).digest('hex');
  let server: http.Server;
  let base: string;

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      if (req.url === '/img.qcow2') res.writeHead(200).end(IMAGE);
      else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => server?.close());
  afterEach(async () => {
    await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
  });

  async function original(url: string, extra: Record<string, string> = {}): Promise<string> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-migrate-'));
    dirs.push(dir);
    const files: Record<string, string> = {
      SConstruct: `def download_base_image():\n    md5sum = '${md5}'\n    env.Command('build/base.qcow2', '/bin/true', "curl -o build/base.qcow2 ${url}")\n`,
      '05_grow/modify-disk': ORIGINAL_GROW,
      '10_app/build-layer': '#!/bin/sh\n# nocache (never cache this layer)\necho app > /etc/app\n',
      'bin/new-layer': '#!/bin/bash\n',
      'site_scons/s3_cache.py': '# s3\n',
      'build/05_grow.qcow2': 'old output\n',
      ...extra,
    };
    for (const [rel, text] of Object.entries(files)) {
      await mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
      await writeFile(path.join(dir, rel), text);
      if (/(build-layer|modify-disk|bin\/.*)$/.test(rel)) await chmod(path.join(dir, rel), 0o755);
    }
    return dir;
  }

  it('migrates in place: base image with its sha256, modify-disk, hints; a second run changes nothing', async () => {
    const dir = await original(`${base}/img.qcow2`);
    const r = await migrateProject({ dir });
    expect(r.todo).toEqual([]);
    expect(r.changed).toBe(true);
    expect(r.done.map((d) => d.where)).toEqual(['05_grow/modify-disk', '10_app/build-layer', '00_base/base-image']);
    expect(await readFile(path.join(dir, '00_base/base-image'), 'utf8')).toContain(`source: ${base}/img.qcow2\nsha256: ${sha256}\n`);
    expect(await readFile(path.join(dir, '05_grow/modify-disk'), 'utf8')).toBe(REWRITTEN_GROW);
    expect((await stat(path.join(dir, '05_grow/modify-disk'))).mode & 0o111).toBe(0o111);
    expect(await readFile(path.join(dir, '10_app/build-layer'), 'utf8')).toBe('#!/bin/sh\n# nocache\n# (never cache this layer)\necho app > /etc/app\n');
    expect(r.left.map((l) => l.where)).toEqual(['SConstruct', 'bin/new-layer', 'build/', 'site_scons/']);
    const project = await loadProject(dir);
    expect(project.layers.map((l) => `${l.name}:${l.kind}`)).toEqual(['00_base:base-image', '05_grow:modify-disk', '10_app:build-layer']);

    const again = await migrateProject({ dir });
    expect(again).toMatchObject({ changed: false, done: [], todo: [] });
    expect(formatReport(again).at(-1)).toMatch(/^nothing changed: the project is in vmlb's form already; nothing left to do by hand/);
  });

  it('leaves a TODO sha256 that vmlb build refuses when the URL does not answer, and into --out only', async () => {
    const dir = await original(`${base}/missing.qcow2`);
    const out = path.join(dir, '..', `${path.basename(dir)}-out`);
    dirs.push(out);
    const r = await migrateProject({ dir, out });
    expect(r.target).toBe(out);
    expect(r.todo).toHaveLength(1);
    expect(r.todo[0]).toMatchObject({ where: '00_base/base-image', what: /^line 4: sha256: is a TODO: downloading .*missing\.qcow2 failed: HTTP 404/ });
    expect(r.blocksBuild).toBe(true);
    expect(formatReport(r).at(-1)).toBe("1 thing left to do by hand (the todo lines); the project will not build until they are done");
    expect(r.left.find((l) => l.where === 'build/')?.what).toMatch(/not copied/);
    // The original is as it was; the copy has no build/.
    expect((await readdir(dir)).sort()).toEqual(['05_grow', '10_app', 'SConstruct', 'bin', 'build', 'site_scons']);
    expect(await readFile(path.join(dir, '05_grow/modify-disk'), 'utf8')).toBe(ORIGINAL_GROW);
    expect((await readdir(out)).sort()).toEqual(['00_base', '05_grow', '10_app', 'SConstruct', 'bin', 'site_scons']);
    const err = await loadProject(out).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProjectError);
    expect((err as ProjectError).problems).toEqual([
      { where: '00_base/base-image', problem: `line 4: sha256: is still a TODO; replace the line with "sha256: HEX", the 64 hex digits sha256sum prints of ${base}/missing.qcow2` },
    ]);
    const again = await migrateProject({ dir: out });
    expect(again.changed).toBe(false);
    expect(again.todo.map((t) => t.where)).toEqual(['00_base/base-image']);
  });

  it('says what it cannot do: a modify-disk that does more, a compressed image, a taken 00', async () => {
    const more = ORIGINAL_GROW.replace('sleep 1', 'sleep 1\nmount "${device}p1" /mnt/img');
    const dir = await original('https://images.example.org/base.qcow2.xz', { '05_grow/modify-disk': more });
    const r = await migrateProject({ dir });
    expect(r.todo.map((t) => t.where)).toEqual(['05_grow/modify-disk', '00_base/base-image']);
    expect(r.todo[0]!.what).toMatch(/^left alone: line 19 does not fit the original's grow-the-disk pattern \(mount is not one of its steps\): mount "\$\{device\}p1" \/mnt\/img — rewrite it by hand/);
    expect(r.todo[1]!.what).toMatch(/compressed \(xz\).*qcow2 or raw image as it is/);
    expect(await readFile(path.join(dir, '05_grow/modify-disk'), 'utf8')).toBe(more);

    const taken = await original(`${base}/img.qcow2`, { '00_first/build-layer': '#!/bin/sh\n' });
    const t = await migrateProject({ dir: taken });
    expect(t.todo.map((x) => x.where)).toEqual(['00_first']);
    expect(t.todo[0]!.what).toMatch(/renumber 00_first \(e\.g\. to 01_first\)/);
  });

  it('refuses a folder with no layer folders and an --out that is not empty (usage)', async () => {
    const empty = await mkdtemp(path.join(os.tmpdir(), 'vmlb-migrate-'));
    dirs.push(empty);
    await expect(migrateProject({ dir: empty })).rejects.toMatchObject({ code: MIGRATE_USAGE, message: expect.stringContaining(`${empty} has no layer folders`) });
    const dir = await original(`${base}/img.qcow2`);
    await writeFile(path.join(empty, 'x'), '');
    const e = await migrateProject({ dir, out: empty }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VmlbError);
    expect((e as VmlbError).message).toBe(`--out ${empty} exists and is not empty: name a new or empty folder`);
    await expect(migrateProject({ dir, out: path.join(dir, 'sub') })).rejects.toMatchObject({ code: MIGRATE_USAGE });
  });
});

/**
 * Projects written for the original vm-layer-builder (scons + qemu-nbd): a SConstruct that
 * downloads the base image by URL and md5, a modify-disk of the original's "source target
 * device" contract that grows the disk, a build-layer with the original's hint prose that
 * copies a folder into the image. `vmlb migrate` turns them into this tool's form, and the
 * result builds into an image with the grown filesystem and the files.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BUSYBOX_BASE, buildJson, builtNames, leftovers, readImageFiles, sandbox, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';
import { COPY, GROW, withArgsHint } from './helpers/original-tool.js';

let sb: Sandbox;
let baseFile: string;
let baseMd5: string;
let baseSha: string;
let server: http.Server;
let url: string;
/** A port nothing listens on. */
let deadUrl: string;

const MiB = 1024 ** 2;

beforeAll(async () => {
  sb = await sandbox('original-tool');
  // The original's base image: a 64 MiB busybox disk, built with vmlb and flattened.
  const seed = await writeProject(path.join(sb.dir, 'seed'), { '01_base': BUSYBOX_BASE });
  baseFile = path.join(sb.dir, 'busybox.qcow2');
  const r = await buildJson(sb, seed, ['--flatten', '-o', baseFile]);
  expect(r.exitCode, r.stderr).toBe(0);
  const bytes = await readFile(baseFile);
  baseMd5 = createHash('md5').update(bytes).digest('hex');
  baseSha = createHash('sha256').update(bytes).digest('hex');
  server = http.createServer(async (req, res) => {
    if (req.url !== '/images/busybox.qcow2') return void res.writeHead(404).end();
    res.writeHead(200, { 'content-length': String((await stat(baseFile)).size) });
    createReadStream(baseFile).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/images/busybox.qcow2`;
  const closed = http.createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  deadUrl = `http://127.0.0.1:${(closed.address() as AddressInfo).port}/images/busybox.qcow2`;
  await new Promise((resolve) => closed.close(resolve));
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  server?.close();
  await sb?.cleanup();
});

/** An image project as the original tool's users wrote them, its base image at `imageUrl`. */
async function originalProject(dir: string, imageUrl: string, modifyDisk = GROW): Promise<string> {
  const files: Record<string, string> = {
    SConstruct: `from os import listdir
CacheDir('build_cache')

AddOption('--nbd', type='string', metavar='DEVICE', help='nbd device to use for mounting images')


def download_base_image():
    base_name = '${path.basename(new URL(imageUrl).pathname)}'
    image = 'build/%s' % base_name
    md5sum = '${baseMd5}'

    dl_env = Environment()
    dl_env.Decider(lambda dependency, target, prev_ni: target.get_csig() != md5sum)
    dl_env.Command(image, '/bin/true', """
cd build && \\
curl --silent -O ${imageUrl.replace(/[^/]+$/, '{0}')}
""".format(base_name))
    NoCache(image)
    return image
`,
    '05_resize/modify-disk': modifyDisk,
    '10_files/build-layer': COPY,
    '10_files/files/etc/migrated-motd': 'copied the way of the original tool\n',
    '10_files/files/opt/app/hello': '#!/bin/sh\necho hello from the app\n',
    'bin/new-layer': '#!/bin/bash\nmkdir "$1"\n',
    'bin/test-boot': '#!/bin/bash\nqemu-system-x86_64 -snapshot -drive file=build/image.qcow2\n',
    'bin/compare-layers': '#!/bin/bash\n',
    'site_scons/s3_cache.py': '# the shared cache on S3\n',
    'build/05_resize.qcow2': 'the old output\n',
  };
  for (const [rel, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await writeFile(path.join(dir, rel), text);
    if (/(modify-disk|build-layer|opt\/app\/hello|^bin\/.*)$/.test(rel)) await chmod(path.join(dir, rel), 0o755);
  }
  return dir;
}

/** Every file under a folder: path, mode and content hash, to tell whether anything was written. */
async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const rel of (await readdir(dir, { recursive: true })).sort()) {
    const abs = path.join(dir, rel);
    const st = await stat(abs);
    out[rel] = st.isDirectory() ? 'dir' : `${(st.mode & 0o777).toString(8)} ${createHash('sha256').update(await readFile(abs)).digest('hex')}`;
  }
  return out;
}

/** Partition 1 of an image and the ext4 filesystem on it, in bytes, read through the engine's fuse backend. */
async function rootSizes(image: string): Promise<{ disk: number; partition: number; filesystem: number }> {
  const { fuseBackend } = await import('../libs/layer-engine/src/disk/attach-fuse.js');
  const { FuseDaemon } = await import('../libs/layer-engine/src/disk/fuse-daemon.js');
  const scratch = path.join(sb.dir, `inspect-${Date.now()}.qcow2`);
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.resolve(image), '-F', 'qcow2', scratch]);
  const info = JSON.parse(String((await execa('qemu-img', ['info', '-U', '--output=json', scratch])).stdout)) as { 'virtual-size': number };
  const prev = process.env.VMLB_RUN_DIR;
  process.env.VMLB_RUN_DIR = sb.runDir;
  const disk = await fuseBackend.attach(scratch, { purpose: 'test inspection' });
  try {
    const part = (await disk.partitionTable()).partitions.find((p) => p.number === 1)!;
    const dump = String((await execa('dumpe2fs', ['-h', await disk.rangeDevice(part)])).stdout);
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(dump)?.[1]);
    return { disk: info['virtual-size'], partition: part.size, filesystem: field('Block count') * field('Block size') };
  } finally {
    await disk.release();
    await FuseDaemon.shutdown();
    if (prev === undefined) delete process.env.VMLB_RUN_DIR;
    else process.env.VMLB_RUN_DIR = prev;
    await execa('rm', ['-f', scratch]);
  }
}

describe('vmlb migrate', () => {
  it('migrates an original project into --out, and the result builds with the grown filesystem and the files', async () => {
    const orig = await originalProject(path.join(sb.dir, 'orig'), url);
    const before = await tree(orig);
    const out = path.join(sb.dir, 'migrated');
    const m = await vmlb(sb, ['migrate', orig, '--out', out]);
    expect(m.exitCode, `${m.stdout}\n${m.stderr}`).toBe(0);
    const lines = m.stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('done  ')).map((l) => l.split(':')[0])).toEqual([
      'done  project',
      'done  05_resize/modify-disk',
      'done  10_files/build-layer',
      'done  00_base/base-image',
    ]);
    expect(lines.filter((l) => l.startsWith('todo  '))).toEqual([]);
    expect(m.stdout).toMatch(/^left {2}bin\/compare-layers: vmlb diff/m);
    expect(m.stdout).toMatch(/^left {2}bin\/new-layer: vmlb new-layer/m);
    expect(m.stdout).toMatch(/^left {2}bin\/test-boot: vmlb test-boot/m);
    expect(m.stdout).toMatch(/^left {2}site_scons\/: s3_cache\.py: .*--cache s3:\/\//m);
    expect(m.stdout).toMatch(/^left {2}SConstruct: /m);
    expect(m.stdout).toMatch(/^left {2}build\/: the original's output .*not copied/m);
    expect(lines.at(-1)).toBe(`nothing left to do by hand: vmlb build ${path.relative(process.cwd(), out)} builds it`);

    // Nothing of the original changed; the copy has the base image, the rewritten scripts, no build/.
    expect(await tree(orig)).toEqual(before);
    expect(await readFile(path.join(out, '00_base/base-image'), 'utf8')).toContain(`source: ${url}\nsha256: ${baseSha}\n`);
    const grow = await readFile(path.join(out, '05_resize/modify-disk'), 'utf8');
    expect(grow).toMatch(/^#!\/bin\/bash\n/);
    expect(grow).toContain('\n# disk-size 128M\n');
    expect(grow).toContain('growpart "$VMLB_DEVICE" 1');
    expect(grow).not.toContain('qemu-nbd');
    expect((await stat(path.join(out, '05_resize/modify-disk'))).mode & 0o111).toBe(0o111);
    expect(await readFile(path.join(out, '10_files/build-layer'), 'utf8')).toBe(
      '#!/bin/sh\n# nocache\n# (this hint tells vm-layer-builder to not cache the layer)\ncp -a /mnt/files/. /\n',
    );
    expect((await readdir(out)).sort()).toEqual(['00_base', '05_resize', '10_files', 'SConstruct', 'bin', 'site_scons']);

    const b = await buildJson(sb, out);
    expect(b.exitCode, b.stderr).toBe(0);
    expect(builtNames(b)).toEqual(['00_base', '05_resize', '10_files']);
    const image = path.join(out, 'build/image.qcow2');
    const sizes = await rootSizes(image);
    expect(sizes.disk).toBe(128 * MiB);
    expect(sizes.partition).toBeGreaterThan(120 * MiB);
    // resize2fs grew the filesystem to the partition's end (to a whole 4 KiB block).
    expect(sizes.filesystem).toBeLessThanOrEqual(sizes.partition);
    expect(sizes.filesystem).toBeGreaterThan(sizes.partition - 4096);
    const base = await rootSizes(baseFile);
    expect(base.filesystem).toBeLessThan(64 * MiB);
    const files = await readImageFiles(sb, image, 1, ['/etc/migrated-motd', '/opt/app/hello']);
    // (debugfs's output, as execa gives it: without the last newline)
    expect(files['/etc/migrated-motd']).toBe('copied the way of the original tool');
    expect(files['/opt/app/hello']).toBe('#!/bin/sh\necho hello from the app');

    // A second run, in place on the result, changes nothing and says so.
    const snapshot = await tree(out);
    const again = await vmlb(sb, ['migrate', out]);
    expect(again.exitCode, again.stdout).toBe(0);
    expect(again.stdout).not.toMatch(/^(done|todo) /m);
    expect(again.stdout.trim().split('\n').at(-1)).toMatch(/^nothing changed: the project is in vmlb's form already; nothing left to do by hand/);
    expect(await tree(out)).toEqual(snapshot);
  });

  it('leaves a TODO sha256 when the base image cannot be downloaded, and vmlb build refuses it in one line', async () => {
    const dir = await originalProject(path.join(sb.dir, 'unreachable'), deadUrl);
    const m = await vmlb(sb, ['migrate', dir]);
    expect(m.exitCode, m.stdout).toBe(1);
    const todos = m.stdout.split('\n').filter((l) => l.startsWith('todo  '));
    expect(todos).toHaveLength(1);
    expect(todos[0]).toMatch(/^todo {2}00_base\/base-image: line 4: sha256: is a TODO: downloading .* failed: .*ECONNREFUSED/);
    expect(m.stdout.trim().split('\n').at(-1)).toBe('1 thing left to do by hand (the todo lines); the project will not build until they are done');
    const text = await readFile(path.join(dir, '00_base/base-image'), 'utf8');
    expect(text.split('\n')[3]).toMatch(/^sha256: TODO /);

    const b = await vmlb(sb, ['build', dir]);
    expect(b.exitCode).toBe(2);
    const said = b.stderr.split('\n').filter((l) => l.includes('TODO'));
    expect(said).toEqual([
      `  00_base/base-image: line 4: sha256: is still a TODO; replace the line with "sha256: HEX", the 64 hex digits sha256sum prints of ${deadUrl}`,
    ]);

    // Again: the URL still does not answer, so nothing changes.
    const snapshot = await tree(dir);
    const again = await vmlb(sb, ['migrate', dir, '--json']);
    expect(again.exitCode).toBe(1);
    const j = JSON.parse(again.stdout) as { changed: boolean; done: unknown[]; todo: { where: string }[]; left: { where: string }[]; summary: string };
    expect(j.changed).toBe(false);
    expect(j.done).toEqual([]);
    expect(j.todo.map((t) => t.where)).toEqual(['00_base/base-image']);
    expect(j.left.map((l) => l.where)).toEqual(['SConstruct', 'bin/compare-layers', 'bin/new-layer', 'bin/test-boot', 'build/', 'site_scons/']);
    expect(j.summary).toMatch(/^nothing changed: what vmlb migrate can do is done; 1 thing left to do by hand/);
    expect(await tree(dir)).toEqual(snapshot);
  });

  it('leaves alone a modify-disk that does more than grow the disk, and lists it with its first line that does not fit', async () => {
    const more = GROW.replace('sleep 1\n', 'sleep 1\nmount "${device}p1" /mnt/image\ncp /etc/hosts /mnt/image/etc/hosts\numount /mnt/image\n');
    const dir = await originalProject(path.join(sb.dir, 'more'), url, more);
    const m = await vmlb(sb, ['migrate', dir, '--json']);
    expect(m.exitCode, m.stdout).toBe(1);
    const j = JSON.parse(m.stdout) as { todo: { where: string; what: string }[]; blocksBuild: boolean };
    expect(j.todo).toHaveLength(1);
    expect(j.todo[0]!.where).toBe('05_resize/modify-disk');
    expect(j.todo[0]!.what).toMatch(/^left alone: line 19 does not fit the original's grow-the-disk pattern \(mount is not one of its steps\): mount "\$\{device\}p1" \/mnt\/image — /);
    expect(j.blocksBuild).toBe(true);
    expect(await readFile(path.join(dir, '05_resize/modify-disk'), 'utf8')).toBe(more);
    // The rest is migrated all the same.
    expect(await readFile(path.join(dir, '00_base/base-image'), 'utf8')).toContain(`sha256: ${baseSha}`);
  });

  it('refuses a folder with no layer folders and an --out that is not empty (exit 2)', async () => {
    const empty = path.join(sb.dir, 'no-layers');
    await mkdir(path.join(empty, 'docs'), { recursive: true });
    const r = await vmlb(sb, ['migrate', empty]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain(`${empty} has no layer folders`);
    const dir = await originalProject(path.join(sb.dir, 'busy-out'), url);
    const o = await vmlb(sb, ['migrate', dir, '--out', empty]);
    expect(o.exitCode).toBe(2);
    expect(o.stderr).toBe(`vmlb: migrate: --out ${empty} exists and is not empty: name a new or empty folder`);
  });
});

describe('the original\'s layers as they are', () => {
  it('a build-layer with the original\'s hint prose builds unchanged, and its # nocache holds', async () => {
    const p = await writeProject(path.join(sb.dir, 'as-is'), { '01_base': BUSYBOX_BASE });
    await mkdir(path.join(p, '10_files/files/etc'), { recursive: true });
    await writeFile(path.join(p, '10_files/build-layer'), COPY, { mode: 0o755 });
    await writeFile(path.join(p, '10_files/files/etc/migrated-motd'), 'as it was\n');
    const first = await buildJson(sb, p);
    expect(first.exitCode, first.stderr).toBe(0);
    expect(builtNames(first)).toContain('10_files');
    const again = await buildJson(sb, p);
    expect(again.exitCode, again.stderr).toBe(0);
    // Never cached: built again, its parent a hit.
    expect(builtNames(again)).toEqual(['10_files']);
    const files = await readImageFiles(sb, path.join(p, 'build/image.qcow2'), 1, ['/etc/migrated-motd']);
    expect(files['/etc/migrated-motd']).toBe('as it was');
  });

  it('a modify-disk of the original\'s "source target device" contract fails with its usage line, and the one-line failure says what a modify-disk gets here', async () => {
    const p = await writeProject(path.join(sb.dir, 'old-contract'), { '01_base': BUSYBOX_BASE });
    await mkdir(path.join(p, '05_resize'));
    await writeFile(path.join(p, '05_resize/modify-disk'), GROW, { mode: 0o755 });
    const b = await vmlb(sb, ['build', p]);
    expect(b.exitCode).toBe(1);
    // The display's error line, and the one line on stderr.
    const hint = /it printed a usage line: a modify-disk gets no arguments here: the disk is \$VMLB_DEVICE .*vmlb migrate rewrites it/;
    expect(b.stdout).toMatch(new RegExp(`^error: layer 05_resize exited with status 1; ${hint.source}$`, 'm'));
    expect(b.stdout).toContain('Usage: ./modify-disk <source> <target> <device>');
    const line = b.stderr.trim().split('\n');
    expect(line, b.stderr).toHaveLength(1);
    expect(line[0]).toMatch(new RegExp(`^vmlb: layer 05_resize failed with exit code 1; ${hint.source}; full log: `));
  });

  it('one that says "# args source target device" is refused on this host (fuse) in one line, before anything builds, pointing to vmlb migrate', async () => {
    const p = await writeProject(path.join(sb.dir, 'old-contract-declared'), { '01_base': BUSYBOX_BASE });
    await mkdir(path.join(p, '05_resize'));
    await writeFile(path.join(p, '05_resize/modify-disk'), withArgsHint(GROW), { mode: 0o755 });
    const b = await vmlb(sb, ['build', p, '--backend', 'fuse']);
    expect(b.exitCode, b.stderr).toBe(2);
    expect(b.stderr.trim().split('\n')).toEqual([
      'vmlb: 05_resize: "# args source target device" is the original tool\'s modify-disk contract, which needs the nbd backend (this host attaches disks with fuse); `vmlb migrate` rewrites it for any host',
    ]);
    // Refused before the base was built, and nothing of it is in the store.
    const again = await buildJson(sb, p, ['--backend', 'fuse']);
    expect(again.exitCode).toBe(2);
    expect(builtNames(again)).toEqual([]);
  });
});

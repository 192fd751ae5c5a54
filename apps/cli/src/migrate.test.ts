import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ProjectError, VmlbError, loadProject } from '@vmlb/layer-engine';
import { MIGRATE_USAGE, classifyModifyDisk, compressionOf, formatReport, migrateProject, normaliseHints, readSConstruct } from './migrate.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));

/** A modify-disk written to the original tool's contract, as its users wrote them. */
const ORIGINAL_GROW = `#!/bin/bash
# grow the disk for the packages that follow

set -e

if [ "$#" -ne 3 ]; then
    echo >&2 "Usage: $0 <source> <target> <device>"
    exit 1
fi

source="$1"
target="$2"
device="$3"

qemu-img create -f qcow2 -b "$source" -o compat=0.10 "$target" 30G
qemu-nbd --connect="$device" "$target"
trap "qemu-nbd --disconnect $device" EXIT
sleep 1
growpart "$device" 1
e2fsck -y -f "\${device}p1"
resize2fs -f "\${device}p1"
`;

const REWRITTEN_GROW = `#!/bin/bash
# grow the disk for the packages that follow
# Runs on the host with the whole disk as $VMLB_DEVICE: the engine made the overlay and grew
# the virtual disk to the size below first (vmlb migrate rewrote the original's
# "modify-disk SOURCE TARGET DEVICE" for this); grow the partition and its filesystem into it.
# disk-size 30G
set -eu
growpart "$VMLB_DEVICE" 1 || [ $? -eq 1 ]     # exit 1 means "nothing to grow"
p=$(vmlb-partition 1)
e2fsck -fy "$p" || [ $? -le 1 ]
resize2fs "$p"
`;

describe('classifyModifyDisk', () => {
  it('rewrites the original grow-the-disk pattern to # disk-size and $VMLB_DEVICE', () => {
    const r = classifyModifyDisk(ORIGINAL_GROW);
    expect(r).toMatchObject({ form: 'original', size: '30G', partition: 1 });
    expect(r.form === 'original' && r.rewritten).toBe(REWRITTEN_GROW);
    // The result is this tool's form: a second run leaves it alone.
    expect(classifyModifyDisk(REWRITTEN_GROW)).toEqual({ form: 'vmlb' });
  });

  it.each([
    ['positional arguments, -c, no argument check', 'qemu-img create -f qcow2 -b "$1" "$2" 8g\nqemu-nbd -c "$3" "$2"\ngrowpart "$3" 2\ne2fsck -fy "${3}p2"\nresize2fs "${3}p2"\nqemu-nbd -d "$3"\nsync\n', '8G', 2],
    [
      'a size variable, sudo, tolerated failures, a one-line check, continuation lines',
      'set -eu\n[ $# -eq 3 ] || { echo "usage: $0 src dst dev" >&2; exit 2; }\nsrc=$1; dst=$2; dev=$3\nsize=512M\nqemu-img create -f qcow2 \\\n  -b "$src" -F qcow2 "$dst" "$size"\nsudo qemu-nbd --connect "$dev" "$dst" && sleep 1\ngrowpart "$dev" 1 || true\ne2fsck -p "$dev"p1 >/dev/null 2>&1 || [ $? -le 1 ]\nresize2fs "${dev}p1"  # to the end\nudevadm settle\n',
      '512M',
      1,
    ],
    ['no size: the overlay keeps its size', 'qemu-img create -f qcow2 -b "$1" "$2"\nqemu-nbd --connect="$3" "$2"\ngrowpart "$3" 1\nresize2fs "${3}p1"\n', undefined, 1],
  ])('recognises %s', (_what, body, size, partition) => {
    const r = classifyModifyDisk(`#!/bin/sh\n${body}`);
    expect(r).toMatchObject({ form: 'original', size, partition });
    if (r.form !== 'original') return;
    expect(r.rewritten.startsWith('#!/bin/sh\n')).toBe(true);
    expect(r.rewritten).toContain(`p=$(vmlb-partition ${partition})`);
    expect(r.rewritten.includes('# disk-size')).toBe(size !== undefined);
  });

  it.each([
    ['a step the pattern does not have', ORIGINAL_GROW.replace('sleep 1', 'sleep 1\nmount "${device}p1" /mnt/img'), 19, 'mount "${device}p1" /mnt/img', /mount is not one of its steps/],
    ['a redirection to a file', ORIGINAL_GROW.replace('growpart "$device" 1', 'growpart "$device" 1 > /tmp/log'), 19, 'growpart "$device" 1 > /tmp/log', /redirects/],
    ['a usage block that does more', ORIGINAL_GROW.replace('    exit 1', '    rm -rf /tmp/x\n    exit 1'), 8, 'rm -rf /tmp/x', /argument check/],
    ['another format', ORIGINAL_GROW.replace('-f qcow2', '-f raw'), 15, 'qemu-img create -f raw -b "$source" -o compat=0.10 "$target" 30G', /format/],
  ])('leaves alone %s, naming the first line that does not fit', (_what, script, line, text, why) => {
    const r = classifyModifyDisk(script);
    expect(r).toMatchObject({ form: 'other', line, text });
    expect(r.form === 'other' && r.why).toMatch(why);
  });

  it('leaves alone a script that lacks a step or mixes partitions', () => {
    expect(classifyModifyDisk(ORIGINAL_GROW.replace(/^resize2fs.*$/m, ''))).toMatchObject({ form: 'other', line: 0, why: 'it has no resize2fs of the grown partition' });
    expect(classifyModifyDisk(ORIGINAL_GROW.replace('resize2fs -f "${device}p1"', 'resize2fs -f "${device}p2"'))).toMatchObject({ form: 'other', why: /different partitions \(1, 2\)/ });
  });

  it("takes the repository's own modify-disk examples as this tool's form", async () => {
    for (const f of ['examples/debian/03_grow/modify-disk', 'examples/hello/03_grow/modify-disk']) {
      expect(classifyModifyDisk(await readFile(path.join(REPO, f), 'utf8'))).toEqual({ form: 'vmlb' });
    }
  });
});

describe('normaliseHints', () => {
  it('splits a hint from its prose, keeping the prose as a comment line after it', () => {
    const script = '#!/bin/sh\n# nocache (this hint tells vm-layer-builder to not cache the layer)\n# timeout 10m because apt is slow\necho hi\n';
    const r = normaliseHints(script, 'build-layer');
    expect(r.text).toBe('#!/bin/sh\n# nocache\n# (this hint tells vm-layer-builder to not cache the layer)\n# timeout 10m\n# because apt is slow\necho hi\n');
    expect(r.changes.map((c) => [c.line, c.hint])).toEqual([
      [2, '# nocache'],
      [3, '# timeout 10m'],
    ]);
    expect(normaliseHints(r.text, 'build-layer')).toEqual({ text: r.text, changes: [] });
  });

  it('leaves a malformed hint for vmlb build to name, and keeps prose from reading as a hint', () => {
    expect(normaliseHints('#!/bin/sh\n# disk-size 4 G\n', 'modify-disk').changes).toEqual([]);
    const r = normaliseHints('#!/bin/sh\n# noshare noshare as well\n', 'build-layer');
    expect(r.text).toBe('#!/bin/sh\n# noshare\n# (noshare as well)\n');
  });
});

describe('readSConstruct', () => {
  const SCONS = `import re
CacheDir('scons_cache')

def fetch_base():
    name = 'Rocky-9-GenericCloud.qcow2'
    checksum = '0123456789abcdef0123456789abcdef'
    env = Environment()
    env.Command('build/%s' % name, '/bin/true', """
cd build && curl -sO https://images.example.org/rocky/{0}.xz && unxz {0}.xz
""".format(name))
`;

  it('finds the URL, filling in its placeholders, the md5 next to it and the cache folder', () => {
    expect(readSConstruct(SCONS)).toEqual({
      url: 'https://images.example.org/rocky/Rocky-9-GenericCloud.qcow2.xz',
      urls: ['https://images.example.org/rocky/Rocky-9-GenericCloud.qcow2.xz'],
      unresolved: undefined,
      md5: '0123456789abcdef0123456789abcdef',
      cacheDir: 'scons_cache',
    });
    expect(compressionOf('https://images.example.org/rocky/Rocky-9-GenericCloud.qcow2.xz')).toBe('xz');
    expect(compressionOf('https://x/a.qcow2?sig=1.gz')).toBe(null);
  });

  it('says when there are several URLs, one it cannot fill in, or none', () => {
    const two = readSConstruct(`A = "http://a.example/one.qcow2"\nB = "http://b.example/two.img"\n# "http://c.example/commented.qcow2"\n`);
    expect(two.url).toBeUndefined();
    expect(two.urls).toEqual(['http://a.example/one.qcow2', 'http://b.example/two.img']);
    expect(readSConstruct(`url = "http://a.example/%s" % os.environ['IMG']\n`)).toMatchObject({ url: undefined, unresolved: 'http://a.example/%s' });
    expect(readSConstruct(`CacheDir('c')\n`)).toMatchObject({ url: undefined, urls: [] });
  });

  it('fills in %s from the variable after %', () => {
    expect(readSConstruct(`img = 'deb.qcow2'\ncmd = "curl -O http://mirror.example/%s" % img\n`).url).toBe('http://mirror.example/deb.qcow2');
  });
});

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

/**
 * examples/hello — the README's first build — end to end: every layer kind but base-image
 * and every hint, checked inside the resulting image.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildJson, builtNames, cachedNames, findEvent, layerLog, leftovers, readImageFiles, sandbox, type Sandbox, type VmlbRun, copyExample } from './helpers/vmlb.js';

let sb: Sandbox;
let project: string;
let first: VmlbRun;
beforeAll(async () => {
  sb = await sandbox('hello');
  project = path.join(sb.dir, 'hello');
  await copyExample('hello', project);
  first = await buildJson(sb, project);
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await sb?.cleanup();
});

const image = () => path.join(project, 'build/image.qcow2');

describe('examples/hello', () => {
  it('builds all six layers', () => {
    expect(first.exitCode, first.stderr).toBe(0);
    expect(builtNames(first)).toEqual(['01_base', '02_motd', '03_grow', '04_data', '05_app', '06_stamp']);
  });

  it('has what each layer wrote, on the grown disk with its new data partition', async () => {
    const info = JSON.parse(String((await execa('qemu-img', ['info', '-U', '--output=json', image()])).stdout));
    expect(info['virtual-size']).toBe(256 * 1024 * 1024);
    const root = await readImageFiles(sb, image(), 1, ['/etc/motd', '/etc/issue', '/usr/local/bin/hello', '/etc/build-info', '/etc/hostname']);
    expect(root['/etc/motd']).toContain('Welcome to the vm-layer-builder hello image.');
    expect(root['/etc/issue']).toContain('vmlb hello'); // copied through # chroot-bind-mount
    expect(root['/usr/local/bin/hello']).toContain('hello from');
    expect(root['/etc/build-info']).toMatch(/^built \d{4}-/);
    const data = await readImageFiles(sb, image(), 2, ['/hello.txt']); // written through # chroot-mount 2 /data
    expect(data['/hello.txt']).toBe('data written by 04_data');
  });

  it('marks # noshare layers in their manifest', async () => {
    const plan = findEvent(first, 'plan')!;
    const key = plan.layers.find((l) => l.name === '05_app')!.key;
    const manifest = JSON.parse(await readFile(path.join(sb.store, 'layers', `${key}.json`), 'utf8'));
    expect(manifest.share).toBe(false);
    const other = JSON.parse(await readFile(path.join(sb.store, 'layers', `${plan.layers[1]!.key}.json`), 'utf8'));
    expect(other.share).toBe(true);
  });

  it('rebuilds only the # nocache stamp the second time', async () => {
    const again = await buildJson(sb, project);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(cachedNames(again)).toEqual(['01_base', '02_motd', '03_grow', '04_data', '05_app']);
    expect(builtNames(again)).toEqual(['06_stamp']);
  });
});

describe('the chroot', () => {
  it('gives a build-layer a read-only /mnt, its own pid namespace and only the documented environment', async () => {
    const { writeProject, BUSYBOX_BASE } = await import('./helpers/vmlb.js');
    const p = await writeProject(path.join(sb.dir, 'chroot'), {
      '01_base': BUSYBOX_BASE,
      '02_probe': {
        kind: 'build-layer',
        script: `echo "cwd=$(pwd)"
if touch /mnt/x 2>/dev/null; then echo "mnt=rw"; else echo "mnt=ro"; fi
echo "pid=$$"
echo "procs=$(ls /proc | grep -c '^[0-9]')"
env | sort | sed 's/^/env:/'
grep -q ' /tmp tmpfs' /proc/mounts && echo tmp=tmpfs`,
      },
    });
    const r = await buildJson(sb, p);
    expect(r.exitCode, r.stderr).toBe(0);
    const log = layerLog(r, '02_probe');
    expect(log).toContain('cwd=/mnt');
    expect(log).toContain('mnt=ro');
    expect(log).toContain('tmp=tmpfs');
    expect(Number(/procs=(\d+)/.exec(log)![1])).toBeLessThan(10); // its own pid namespace
    const envNames = [...log.matchAll(/^env:([A-Z_a-z0-9]+)=/gm)].map((m) => m[1]).sort();
    expect(envNames).toEqual(expect.arrayContaining(['DEBIAN_FRONTEND', 'HOME', 'PATH', 'VMLB_KEY', 'VMLB_LAYER']));
    expect(envNames.filter((n) => n!.startsWith('VMLB_'))).toEqual(['VMLB_KEY', 'VMLB_LAYER']);
  });

  it('names the layer and hint when a # chroot-mount partition does not exist', async () => {
    const { writeProject, BUSYBOX_BASE, vmlb } = await import('./helpers/vmlb.js');
    const p = await writeProject(path.join(sb.dir, 'nopart'), {
      '01_base': BUSYBOX_BASE,
      '02_mount': { kind: 'build-layer', script: '# chroot-mount 7 /boot/efi\ntrue' },
    });
    const r = await vmlb(sb, ['build', p]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('02_mount');
    expect(r.stderr).toContain('chroot-mount 7');
  });
});

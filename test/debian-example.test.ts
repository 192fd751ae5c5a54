/**
 * examples/debian end to end: a real Debian (mmdebstrap, kernel, systemd) built into layers,
 * sandboxed, edited and rebuilt, booted under qemu until the console shows what a layer wrote,
 * compared layer to layer and with the same project built unsandboxed, and rolled up into a
 * base that gives the same files.
 *
 * The Debian layers are kept in a fixed store between runs (VMLB_DEBIAN_STORE, default
 * /var/tmp/vmlb-test-debian-store), so only the first run pays for mmdebstrap (2–3 minutes
 * here); later runs take their hits from it.
 */
import { randomBytes } from 'node:crypto';
import { appendFile, cp } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { REPO, buildJson, builtNames, cachedNames, leftovers, sandbox, vmlb, type Sandbox, type VmlbRun } from './helpers/vmlb.js';

const STORE = process.env.VMLB_DEBIAN_STORE || '/var/tmp/vmlb-test-debian-store';
const ALL = ['01_base', '02_packages', '03_grow', '04_user', '05_config', '06_stamp'];

let sb: Sandbox;
let project: string;
let first: VmlbRun;
const marker = `vmlb-e2e-${randomBytes(4).toString('hex')}`;
beforeAll(async () => {
  sb = await sandbox('debian');
  sb.env.VMLB_STORE = STORE;
  project = path.join(sb.dir, 'debian');
  await cp(path.join(REPO, 'examples/debian'), project, { recursive: true, filter: (src) => path.basename(src) !== 'build' });
  first = await buildJson(sb, project);
}, 20 * 60_000);
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  // Keep the Debian chain for the next run; let go of this run's stamps and rolled-up base
  // once the store grows past a few GiB.
  await vmlb(sb, ['gc', '--keep-size', '4G']).catch(() => undefined);
  await sb?.cleanup();
});

const image = () => path.join(project, 'build/image.qcow2');

describe('examples/debian', () => {
  it('builds (from the store after the first run); the # nocache stamp is always rebuilt', () => {
    expect(first.exitCode, first.stderr).toBe(0);
    expect([...cachedNames(first), ...builtNames(first)].sort()).toEqual(ALL);
    expect(builtNames(first)).toContain('06_stamp');
  });

  it('rebuilds only the edited last cached layer and the stamp', async () => {
    await appendFile(path.join(project, '05_config/files/issue'), `${marker}: edited by the end-to-end test\n\n`);
    const r = await buildJson(sb, project);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(cachedNames(r)).toEqual(['01_base', '02_packages', '03_grow', '04_user']);
    expect(builtNames(r)).toEqual(['05_config', '06_stamp']);
  });

  it('test-boot --expect sees on the console what a layer wrote (/etc/issue), then stops the VM', async () => {
    const before = (await execa('sha256sum', [image()])).stdout;
    const r = await vmlb(sb, ['test-boot', '-C', project, '--expect', `${marker}: edited`, '--timeout', '6m']);
    expect(r.exitCode, `${r.stderr}\n${r.stdout.slice(-3000)}`).toBe(0);
    expect(r.stderr).toMatch(/accelerator: (kvm|tcg \(software emulation\))/);
    expect(r.stderr).toContain('direct kernel boot');
    expect(r.stdout).toMatch(/vmlb-debian: ready \(built \S+ on 06_stamp/); // the unit 05_config enabled ran
    expect(r.stdout).toMatch(/Debian GNU\/Linux \d+ \(\w+\) built by vm-layer-builder/);
    expect((await execa('sha256sum', [image()])).stdout).toBe(before); // -snapshot: the image is unchanged
    const qemus = await execa('pgrep', ['-f', `qemu-system-x86_64.*${sb.dir}`], { reject: false });
    expect(String(qemus.stdout)).toBe('');
  }, 8 * 60_000);

  it('diff between two layers lists exactly the files the layer script changed', async () => {
    const r = await vmlb(sb, ['diff', '04_user', '05_config', '-C', project]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual([
      'M /etc/issue (content)',
      'A /etc/ssh/sshd_config.d/keys-only.conf',
      'A /etc/systemd/network/20-wired.network',
      'A /etc/systemd/system/dbus-org.freedesktop.network1.service',
      'A /etc/systemd/system/multi-user.target.wants/systemd-networkd.service',
      'A /etc/systemd/system/multi-user.target.wants/vmlb-ready.service',
      'A /etc/systemd/system/network-online.target.wants',
      'A /etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service',
      'A /etc/systemd/system/sockets.target.wants',
      'A /etc/systemd/system/sockets.target.wants/systemd-networkd.socket',
      'A /etc/systemd/system/sysinit.target.wants/systemd-network-generator.service',
      'A /etc/systemd/system/vmlb-ready.service',
    ]);
  });

  it('is the same image as built unsandboxed (--no-sandbox), but for what differs between any two builds', async () => {
    // Unsandboxed into a store of its own (kept between runs like the sandboxed one).
    const unsandboxed = path.join(sb.dir, 'unsandboxed.qcow2');
    const plain = await vmlb(sb, ['build', project, '--json', '--no-sandbox', '-o', unsandboxed], { VMLB_STORE: `${STORE}-unsandboxed` });
    expect(plain.exitCode, plain.stderr).toBe(0);
    // Random host keys, dated logs and caches, the initramfs (file times inside), the stamp:
    // these differ between any two builds of the project, sandboxed or not. Nothing else may:
    // no owner, mode, type, link or other content (vmlb diff compares all of them).
    const noise = ['/etc/vmlb-build-info', '/etc/ssh/ssh_host_*', '/boot/initrd.img-*', '/var/log', '/var/cache/ldconfig/aux-cache'];
    const d = await vmlb(sb, ['diff', unsandboxed, image(), ...noise.flatMap((n) => ['--exclude', n])], { VMLB_STORE: STORE });
    expect(d.exitCode, d.stderr).toBe(0);
    expect(d.stdout).toBe('');
    expect(d.stderr).toContain('no differences');
    await vmlb(sb, ['gc', '--keep-size', '4G'], { VMLB_STORE: `${STORE}-unsandboxed` }).catch(() => undefined);
  }, 10 * 60_000);

  it('rollup 04_user, then build: the image has the same files as the un-rolled one', async () => {
    const before = path.join(sb.dir, 'before.qcow2');
    expect((await buildJson(sb, project, ['-o', before])).exitCode).toBe(0);
    const r = await vmlb(sb, ['rollup', '04_user', '-C', project, '--plain']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('chain under 05_config: 4 overlays before, 1 now (the rolled-up base)');
    expect(r.stdout).toMatch(/05_config: \S+ on the 4-overlay chain; \S+ on the rolled-up base \(1 overlay\)/);
    // The stamp says when it was built: the one file that differs between two builds.
    const d = await vmlb(sb, ['diff', before, image(), '--exclude', '/etc/vmlb-build-info']);
    expect(d.exitCode, d.stderr).toBe(0);
    expect(d.stdout).toBe('');
    expect(d.stderr).toContain('no differences');
  }, 10 * 60_000);
});

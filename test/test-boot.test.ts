/**
 * vmlb test-boot against a stand-in qemu (test/fixtures/fake-qemu): the accelerator choice and
 * the KVM fall-back, --expect and --timeout, the VM always ending (also on Ctrl-C), the
 * cloud-init seed, and the kernel read from the image's own /boot. The real boot of a Debian
 * image is in debian-example.test.ts.
 */
import { execa } from 'execa';
import { chmod, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BUSYBOX_BASE, REPO, buildJson, leftovers, sandbox, spawnVmlb, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
let fake: string; // the folder of the fake qemu: behaviour in, traces out
let disk: string;
beforeAll(async () => {
  sb = await sandbox('test-boot');
  disk = path.join(sb.dir, 'disk.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M']);
});
let n = 0;
beforeEach(async () => {
  fake = path.join(sb.dir, `qemu-${++n}`);
  await mkdir(fake, { recursive: true });
  await copyFile(path.join(REPO, 'test/fixtures/fake-qemu'), path.join(fake, 'qemu'));
  await chmod(path.join(fake, 'qemu'), 0o755);
});
afterEach(async () => {
  expect(await aliveFakes()).toEqual([]);
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await sb?.cleanup();
});

async function behave(kvm: string, tcg: string): Promise<void> {
  await writeFile(path.join(fake, 'behaviour'), `kvm=${kvm}\ntcg=${tcg}\n`);
}

/** Every fake qemu this test started that is still running (the VM must always end). */
async function aliveFakes(): Promise<number[]> {
  const pids = (await readFile(path.join(fake, 'pids'), 'utf8').catch(() => '')).split('\n').filter(Boolean).map(Number);
  return pids.filter((pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  });
}

const argvLines = async () => (await readFile(path.join(fake, 'argv'), 'utf8')).trim().split('\n');
const env = (kvmDevice = '/nonexistent/kvm') => ({ VMLB_QEMU: path.join(fake, 'qemu'), VMLB_KVM_DEVICE: kvmDevice });

describe('vmlb test-boot (stand-in qemu)', () => {
  it('--expect: exits 0 as soon as the console shows the pattern, says the accelerator, and stops the VM', async () => {
    await behave('abort', 'ready');
    const r = await vmlb(sb, ['test-boot', disk, '--boot', 'disk', '--expect', 'vmlb-fake: re[a-z]+', '--timeout', '60s'], env());
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('Linux version 6.1.0-fake'); // the console is copied to the terminal
    expect(r.stderr).toMatch(/accelerator: tcg \(software emulation\): \/nonexistent\/kvm does not exist/);
    expect(r.stderr).toContain('the console showed "vmlb-fake: ready"');
    const [argv] = await argvLines();
    expect(argv).toContain('-snapshot');
    expect(argv).toContain('-accel tcg');
    expect(argv).toContain(`file=${disk},format=qcow2,if=virtio`);
    expect(argv).toMatch(/-netdev user,id=net0,hostfwd=tcp:127\.0\.0\.1:\d+-:22/);
    expect(argv).toContain('-serial stdio');
  });

  it('--timeout: fails with the console\'s last lines, and the VM ends', async () => {
    await behave('abort', 'silent');
    const started = Date.now();
    const r = await vmlb(sb, ['test-boot', disk, '--boot', 'disk', '--expect', 'login:', '--timeout', '2s'], env());
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('did not show /login:/ within 2 s');
    expect(r.stderr).toContain('last lines of the console');
    expect(r.stderr).toContain('Probing EDD');
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  it('fails when the VM ends before the pattern shows', async () => {
    await behave('abort', 'exit');
    const r = await vmlb(sb, ['test-boot', disk, '--boot', 'disk', '--expect', 'login:', '--timeout', '30s'], env());
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('the VM exited with 0 before the console showed /login:/');
    expect(r.stderr).toContain('reboot: Power down');
  });

  it('falls back to software emulation when KVM opens but qemu aborts under it', async () => {
    await behave('abort', 'ready');
    const r = await vmlb(sb, ['test-boot', disk, '--boot', 'disk', '--expect', 'vmlb-fake: ready', '--timeout', '60s'], env('/dev/null'));
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toContain('KVM did not boot the guest (qemu exited with 1: qemu-system-x86_64: error: failed to set MSR 0x10a');
    expect(r.stderr).toMatch(/accelerator tcg \(software emulation\): a KVM boot failed here/);
    const argv = await argvLines();
    expect(argv).toHaveLength(2);
    expect(argv[0]).toContain('-accel kvm -cpu host');
    expect(argv[1]).toContain('-accel tcg');
  });

  it('falls back when the console stays silent under KVM past the probe', async () => {
    await behave('silent', 'ready');
    const r = await vmlb(sb, ['test-boot', disk, '--boot', 'disk', '--expect', 'vmlb-fake: ready', '--kvm-probe', '1s', '--timeout', '60s'], env('/dev/null'));
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toContain('the console showed no kernel output within 1 s');
    expect(await argvLines()).toHaveLength(2);
  });

  it('keeps KVM when the guest boots under it', async () => {
    await behave('ready', 'abort');
    const r = await vmlb(sb, ['test-boot', disk, '--boot', 'disk', '--expect', 'vmlb-fake: ready', '--kvm-probe', '20s', '--timeout', '60s'], env('/dev/null'));
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/the console showed "vmlb-fake: ready" after .* \(accelerator kvm: \/dev\/null opens\)/);
    expect(await argvLines()).toHaveLength(1);
  });

  it('Ctrl-C stops the VM and exits 130', async () => {
    await behave('abort', 'silent');
    const child = spawnVmlb(sb, ['test-boot', disk, '--boot', 'disk', '--expect', 'login:', '--timeout', '60s'], env());
    for (let i = 0; i < 100 && (await aliveFakes()).length === 0; i++) await sleep(100);
    expect(await aliveFakes()).toHaveLength(1);
    child.kill('SIGINT');
    const r = await child;
    expect(r.exitCode).toBe(130);
  });

  it('gives the guest a cloud-init NoCloud seed (vfat, label CIDATA) from --user-data and --meta-data', async () => {
    await behave('abort', 'ready');
    const ud = path.join(sb.dir, 'user-data');
    await writeFile(ud, '#cloud-config\nhostname: seeded\n');
    const r = await vmlb(sb, ['test-boot', disk, '--boot', 'disk', '--user-data', ud, '--expect', 'ready', '--timeout', '60s'], env());
    expect(r.exitCode, r.stderr).toBe(0);
    const [argv] = await argvLines();
    expect(argv).toMatch(/-drive file=\S+seed\.img,format=raw,if=virtio,readonly=on/);
    const seed = path.join(fake, 'seed.img');
    const label = await execa('fatlabel', [seed]);
    expect(String(label.stdout).trim()).toBe('CIDATA');
    const mt = (f: string) => execa('mtype', ['-i', seed, `::${f}`], { env: { MTOOLS_SKIP_CHECK: '1' } }).then((x) => String(x.stdout));
    expect(await mt('user-data')).toContain('hostname: seeded');
    expect(await mt('meta-data')).toMatch(/^instance-id: vmlb-[0-9a-f]+$/m);
  });

  it('--no-network and --no-seed leave them out; --bridge uses the bridge', async () => {
    await behave('abort', 'ready');
    const r = await vmlb(sb, ['test-boot', disk, '--boot', 'disk', '--no-network', '--no-seed', '--expect', 'ready', '--timeout', '60s'], env());
    expect(r.exitCode, r.stderr).toBe(0);
    const r2 = await vmlb(sb, ['test-boot', disk, '--boot', 'disk', '--bridge', 'br9', '--expect', 'ready', '--timeout', '60s'], env());
    expect(r2.exitCode, r2.stderr).toBe(0);
    const [a, b] = await argvLines();
    expect(a).not.toContain('-netdev');
    expect(a).not.toContain('seed.img');
    expect(b).toContain('-netdev bridge,id=net0,br=br9');
  });

  it('boots an image without a boot loader from the kernel in its own /boot, and names a missing image', async () => {
    await behave('abort', 'ready');
    const p = await writeProject(path.join(sb.dir, 'kernel'), {
      '01_base': BUSYBOX_BASE,
      '02_kernel': {
        kind: 'build-layer',
        script: 'mkdir -p /boot && echo old > /boot/vmlinuz-6.1.0-9-x && echo new-kernel > /boot/vmlinuz-6.1.0-10-x && echo initrd > /boot/initrd.img-6.1.0-10-x && ln -s vmlinuz-6.1.0-9-x /boot/vmlinuz',
      },
    });
    expect((await buildJson(sb, p)).exitCode).toBe(0);
    const r = await vmlb(sb, ['test-boot', '-C', p, '--expect', 'ready', '--timeout', '60s'], env());
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toContain('direct kernel boot (the image has no boot loader: kernel 6.1.0-10-x from its /boot)');
    const [argv] = await argvLines();
    expect(argv).toMatch(/-kernel \S+vmlinuz-6\.1\.0-10-x -initrd \S+initrd\.img-6\.1\.0-10-x -append root=\/dev\/vda1 ro console=ttyS0/);
    expect(await readFile(path.join(fake, 'kernel'), 'utf8')).toBe('new-kernel\n');
    // A layer name resolves through the project's last build.
    const byLayer = await vmlb(sb, ['test-boot', '02_kernel', '-C', p, '--expect', 'ready', '--timeout', '60s'], env());
    expect(byLayer.exitCode, byLayer.stderr).toBe(0);
    expect(byLayer.stderr).toMatch(/booting 02_kernel \([0-9a-f]{12}\)/);
    const missing = await vmlb(sb, ['test-boot', path.join(sb.dir, 'nope.qcow2')], env());
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toContain('nope.qcow2: no such image file');
  });
});

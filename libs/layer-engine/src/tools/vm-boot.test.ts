import { describe, expect, it } from 'vitest';
import { consoleText, describeAccel, kernelCommandLine, qemuArgv, type VmSpec } from './vm-boot.js';

const kernelBoot: VmSpec = {
  image: '/x/image,1.qcow2',
  format: 'qcow2',
  boot: { mode: 'kernel', why: '', kernel: '/t/vmlinuz', initrd: '/t/initrd', version: '6.1', rootPartition: 1 },
  seed: '/t/seed.img',
};

describe('the qemu command line', () => {
  it('boots a snapshot of the image, its kernel on the serial console, user networking and the seed', () => {
    const argv = qemuArgv(kernelBoot, 'tcg').join(' ');
    expect(argv).toMatch(/^qemu-system-x86_64 -nodefaults .*-snapshot/);
    expect(argv).toContain('-accel tcg -m 1024 -smp 2');
    expect(argv).not.toContain('-cpu host');
    expect(argv).toContain('-drive file=/x/image,,1.qcow2,format=qcow2,if=virtio'); // commas doubled
    expect(argv).toContain('-drive file=/t/seed.img,format=raw,if=virtio,readonly=on');
    expect(argv).toContain('-kernel /t/vmlinuz -initrd /t/initrd');
    expect(qemuArgv(kernelBoot, 'tcg')).toContain('root=/dev/vda1 ro console=ttyS0,115200');
    expect(argv).toContain('-netdev user,id=net0 -device virtio-net-pci,netdev=net0');
    expect(argv).toMatch(/-serial stdio$/);
  });

  it('uses the host CPU under KVM, the monitor on the terminal when interactive, and the other networks', () => {
    const argv = qemuArgv({ ...kernelBoot, boot: { mode: 'disk', why: '' }, interactive: true, network: { type: 'bridge', bridge: 'br0' }, memoryMiB: 2048, cpus: 4 }, 'kvm').join(' ');
    expect(argv).toContain('-accel kvm -cpu host -m 2048 -smp 4');
    expect(argv).not.toContain('-kernel');
    expect(argv).toContain('-netdev bridge,id=net0,br=br0');
    expect(argv).toMatch(/-serial mon:stdio$/);
    expect(qemuArgv({ ...kernelBoot, network: { type: 'none' } }, 'tcg').join(' ')).not.toContain('-netdev');
    expect(qemuArgv({ ...kernelBoot, network: { type: 'user', sshPort: 2222 } }, 'tcg').join(' ')).toContain('hostfwd=tcp:127.0.0.1:2222-:22');
  });

  it('writes a writable extra disk for real, every other disk through a snapshot', () => {
    const ro = qemuArgv({ ...kernelBoot, extraDrives: [{ file: '/t/data.img', format: 'raw' }] }, 'tcg').join(' ');
    expect(ro).toContain(' -snapshot ');
    expect(ro).toContain('-drive file=/t/data.img,format=raw,if=virtio ');
    const rw = qemuArgv({ ...kernelBoot, extraDrives: [{ file: '/t/results.img', format: 'raw', writable: true }, { file: '/t/more.img', format: 'raw' }] }, 'tcg').join(' ');
    // -snapshot would win over a drive's snapshot=off: with a writable disk it is per drive.
    expect(rw).not.toContain(' -snapshot ');
    expect(rw).toContain('-drive file=/x/image,,1.qcow2,format=qcow2,if=virtio,snapshot=on');
    expect(rw).toContain('-drive file=/t/results.img,format=raw,if=virtio ');
    expect(rw).toContain('-drive file=/t/more.img,format=raw,if=virtio,snapshot=on');
  });

  it('builds the kernel command line from the root partition', () => {
    expect(kernelCommandLine(2, 'quiet')).toBe('root=/dev/vda2 ro console=ttyS0,115200 quiet');
    expect(kernelCommandLine(0)).toBe('root=/dev/vda ro console=ttyS0,115200');
  });

  it('strips escape sequences from the console for matching, and names the accelerator', () => {
    expect(consoleText('[\x1b[0;32m  OK  \x1b[0m] Started\r\n')).toBe('[  OK  ] Started\n');
    expect(describeAccel('tcg', '/dev/kvm does not exist')).toBe('tcg (software emulation): /dev/kvm does not exist');
  });
});

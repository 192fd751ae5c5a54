import { describe, expect, it } from 'vitest';
import { compareKernelVersions, parseDebugfsLs, pickKernel } from './boot-media.js';

const LS = `/8199/040755/0/0/.//
/2/040755/0/0/..//
/7819/100644/0/0/config-6.1.0-56-cloud-amd64/123137/
/7820/100644/0/0/vmlinuz-6.1.0-56-cloud-amd64/14186432/
/7821/100644/0/0/vmlinuz-6.1.0-9-cloud-amd64/14000000/
/9276/100644/0/0/initrd.img-6.1.0-56-cloud-amd64/13340693/
/12/120777/0/0/vmlinuz/28/
`;

describe('reading /boot', () => {
  it('parses debugfs ls -p, leaving out . and ..', () => {
    const e = parseDebugfsLs(LS);
    expect(e.map((x) => x.name)).toEqual(['config-6.1.0-56-cloud-amd64', 'vmlinuz-6.1.0-56-cloud-amd64', 'vmlinuz-6.1.0-9-cloud-amd64', 'initrd.img-6.1.0-56-cloud-amd64', 'vmlinuz']);
    expect(e[1]).toEqual({ name: 'vmlinuz-6.1.0-56-cloud-amd64', mode: 0o100644, size: 14186432 });
  });

  it('picks the newest kernel (numeric order) and its initramfs, never a symlink', () => {
    expect(compareKernelVersions('6.1.0-56-cloud-amd64', '6.1.0-9-cloud-amd64')).toBeGreaterThan(0);
    expect(pickKernel(parseDebugfsLs(LS))).toEqual({ kernel: 'vmlinuz-6.1.0-56-cloud-amd64', initrd: 'initrd.img-6.1.0-56-cloud-amd64', version: '6.1.0-56-cloud-amd64' });
    expect(pickKernel(parseDebugfsLs('/12/120777/0/0/vmlinuz/28/\n'))).toBeNull();
    expect(pickKernel(parseDebugfsLs('/7/100644/0/0/vmlinuz-5.10/100/\n'))).toEqual({ kernel: 'vmlinuz-5.10', initrd: undefined, version: '5.10' });
  });
});

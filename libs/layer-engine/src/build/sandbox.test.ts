import { describe, expect, it } from 'vitest';
import { cacheMountDir, inCidr, pickUidBase, resolvConfFor, sandboxArgs, SANDBOX_ID_COUNT } from './sandbox.js';

describe('the sandbox, its pure parts', () => {
  it('picks uid ranges of 65536 above the host’s own ids', () => {
    for (let i = 0; i < 200; i++) {
      const base = pickUidBase();
      expect(base % SANDBOX_ID_COUNT).toBe(0);
      expect(base).toBeGreaterThanOrEqual(0x100000);
      expect(base + SANDBOX_ID_COUNT).toBeLessThanOrEqual(0x70000000);
    }
  });

  it('matches IPv4 addresses against CIDR ranges, IPv6 only exactly', () => {
    expect(inCidr('10.255.255.53', '10.0.0.0/8')).toBe(true);
    expect(inCidr('10.255.255.53', '10.255.255.53/32')).toBe(true);
    expect(inCidr('11.0.0.1', '10.0.0.0/8')).toBe(false);
    expect(inCidr('192.168.1.7', '0.0.0.0/0')).toBe(true);
    expect(inCidr('169.254.169.254', '169.254.0.0/16')).toBe(true);
    expect(inCidr('fd00::1', 'fd00::1/128')).toBe(true);
    expect(inCidr('fd00::1', 'fd00::/8')).toBe(false);
    expect(inCidr('not-an-ip', '10.0.0.0/8')).toBe(false);
  });

  it("gives a layer the host's resolv.conf when its resolvers are reachable, else slirp4netns' forwarder", () => {
    const host = 'search corp.example\nnameserver 10.255.255.53\noptions edns0\n';
    expect(resolvConfFor(host, ['route add prohibit 169.254.0.0/16'])).toBeNull();
    const denied = resolvConfFor(host, ['route add prohibit 10.0.0.0/8']);
    expect(denied).toBe("# vm-layer-builder sandbox: the host's resolvers through slirp4netns\nnameserver 10.0.2.3\nsearch corp.example\n");
    expect(resolvConfFor('nameserver 127.0.0.53\n', [])).toMatch(/^nameserver 10\.0\.2\.3$/m);
    expect(resolvConfFor('', [])).toMatch(/^nameserver 10\.0\.2\.3$/m);
  });

  it('names a cache mount folder after its target, one folder per target', () => {
    expect(cacheMountDir('/s/cache-mounts', '/var/cache/apt')).toMatch(/^\/s\/cache-mounts\/var_cache_apt-[0-9a-f]{8}$/);
    expect(cacheMountDir('/s', '/var/cache/apt/')).toBe(cacheMountDir('/s', '/var/cache/apt'));
    expect(cacheMountDir('/s', '/a b')).not.toBe(cacheMountDir('/s', '/a_b'));
  });

  it("builds bwrap's options: the chroot's mounts, or the host's tools, the disk's devices at their paths", async () => {
    const chroot = await sandboxArgs({ mode: 'chroot', layerDir: '/p/02_x', hostRoot: false, engineBinDir: '/e/bin', readOnlyFiles: [], devices: [], env: { A: 'x y', B: '' } });
    expect(chroot.join(' ')).toContain('--bind /run/vmlb-sandbox/root / --proc /proc --dev /dev --perms 1777 --tmpfs /dev/shm --perms 1777 --tmpfs /tmp --chdir /mnt');
    expect(chroot.slice(-7)).toEqual(['--clearenv', '--setenv', 'A', 'x y', '--setenv', 'B', '']);
    const host = await sandboxArgs({ mode: 'host', layerDir: '/p/03_y', hostRoot: true, engineBinDir: '/e/bin', readOnlyFiles: ['/s/x.qcow2'], devices: ['/dev/loop7'], env: {} });
    const h = host.join(' ');
    expect(h).toContain('--ro-bind /usr /usr');
    expect(h).toContain('--ro-bind /etc /etc --ro-bind /run/vmlb-sandbox/resolv.conf /etc/resolv.conf');
    expect(h).toContain('--dev-bind /run/vmlb-sandbox/dev /dev/vmlb --dev-bind /run/vmlb-sandbox/dev/loop7 /dev/loop7');
    expect(h).toContain('--ro-bind /run/vmlb-sandbox/file0 /s/x.qcow2');
    expect(h).toContain('--dev-bind /run/vmlb-sandbox/root /run/vmlb-sandbox/root');
    expect(h).toContain('--ro-bind /run/vmlb-sandbox/layer /p/03_y --chdir /p/03_y');
    expect(h).not.toMatch(/--(ro-)?bind \/ \//);
  });
});

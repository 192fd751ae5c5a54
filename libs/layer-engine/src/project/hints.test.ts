import { describe, expect, it } from 'vitest';
import { DEFAULT_DISK_SIZE, emptyHints, parseHints } from './hints.js';

const script = (...lines: string[]) => ['#!/bin/sh', ...lines, 'set -eu', 'true'].join('\n');

describe('parseHints', () => {
  it('reads every hint of a build-layer', () => {
    const { hints, problems } = parseHints(
      script(
        '# nocache',
        '  #noshare',
        '# chroot-bind-mount ../cache /var/cache/apt',
        '# chroot-bind-mount /srv/data /mnt/data',
        '# chroot-mount 2 /boot/efi',
        '# timeout 1h30m',
      ),
      'build-layer',
    );
    expect(problems).toEqual([]);
    expect(hints).toEqual({
      nocache: true,
      noshare: true,
      bindMounts: [
        { source: '../cache', target: '/var/cache/apt' },
        { source: '/srv/data', target: '/mnt/data' },
      ],
      partitionMounts: [{ partition: 2, target: '/boot/efi' }],
      timeoutMs: 5_400_000,
    });
  });

  it('reads disk-size in create-disk and modify-disk, and leaves the default to the runner', () => {
    expect(parseHints(script('# disk-size 4G'), 'create-disk').hints.diskSize).toBe(4 * 1024 ** 3);
    expect(parseHints(script('# disk-size 20GiB   '), 'modify-disk').hints.diskSize).toBe(20 * 1024 ** 3);
    expect(parseHints(script(), 'create-disk').hints.diskSize).toBeUndefined();
    expect(DEFAULT_DISK_SIZE).toBe(2 * 1024 ** 3);
  });

  it('ignores the shebang, ordinary comments, prose and lookalikes', () => {
    const { hints, problems } = parseHints(
      [
        '#!/usr/bin/env nocache',
        '# hints: timeout DURATION, nocache',
        '# this layer has nocache semantics',
        '# nocache-please',
        '# timeouts are long here',
        'echo "# nocache"',
        'x=1 # timeout 5m',
      ].join('\n'),
      'build-layer',
    );
    expect(problems).toEqual([]);
    expect(hints).toEqual({ nocache: false, noshare: false, bindMounts: [], partitionMounts: [] });
  });

  it('handles CRLF line ends', () => {
    const { hints, problems } = parseHints('#!/bin/sh\r\n# timeout 10m\r\n# nocache\r\n', 'build-layer');
    expect(problems).toEqual([]);
    expect(hints.timeoutMs).toBe(600_000);
    expect(hints.nocache).toBe(true);
  });

  it('refuses hints where they do not apply, naming the hint and where it belongs', () => {
    const { problems } = parseHints(script('# disk-size 4G', '# timeout 5m'), 'build-layer');
    expect(problems).toEqual([expect.stringMatching(/^line 2: # disk-size: does not apply to a build-layer layer; it is for create-disk, modify-disk only$/)]);

    const modify = parseHints(script('# chroot-mount 1 /boot', '# chroot-bind-mount /a /b'), 'modify-disk').problems;
    expect(modify).toHaveLength(2);
    expect(modify[0]).toContain('# chroot-mount: does not apply to a modify-disk layer; it is for build-layer only');
    expect(modify[1]).toContain('# chroot-bind-mount: does not apply');

    expect(parseHints(script('# chroot-mount 1 /boot'), 'create-disk').problems[0]).toContain('# chroot-mount: does not apply to a create-disk');
  });

  it('accepts only nocache and noshare in a base-image file', () => {
    const text = ['# nocache', '# noshare', '# timeout 5m', '# disk-size 4G', 'source: x.qcow2'].join('\n');
    const { hints, problems } = parseHints(text, 'base-image');
    expect(hints.nocache && hints.noshare).toBe(true);
    expect(hints.timeoutMs).toBeUndefined();
    expect(problems).toHaveLength(2);
    expect(problems[0]).toMatch(/line 3: # timeout: does not apply to a base-image file/);
    expect(problems[1]).toMatch(/line 4: # disk-size: does not apply to a base-image file/);
  });

  it.each([
    ['# disk-size 4G 8G', 'create-disk', /# disk-size: expects one SIZE.*found "4G 8G"/],
    ['# disk-size 4 GB of space', 'create-disk', /# disk-size: expects one SIZE/],
    ['# timeout 10 minutes', 'build-layer', /# timeout: expects one DURATION/],
    ['# network none please', 'build-layer', /# network: the only setting is "# network none" \(found "none please"\)/],
    ['# cache-mount /a /b', 'build-layer', /# cache-mount: expects one TARGET/],
    ['# disk-size for the kernel', 'create-disk', /# disk-size: not a size: "for"/],
    ['# disk-size', 'create-disk', /# disk-size: expects one SIZE, e.g. "# disk-size 4G" \(found none\)/],
    ['# disk-size 4 G', 'create-disk', /# disk-size: expects one SIZE/],
    ['# disk-size huge', 'create-disk', /not a size: "huge"/],
    ['# disk-size 0', 'modify-disk', /# disk-size: must be more than zero/],
    ['# timeout', 'build-layer', /# timeout: expects one DURATION/],
    ['# timeout forever', 'build-layer', /# timeout: not a duration: "forever"/],
    ['# timeout 0s', 'build-layer', /# timeout: must be more than zero/],
    ['# chroot-bind-mount /a', 'build-layer', /# chroot-bind-mount: expects SRC TARGET/],
    ['# chroot-bind-mount', 'build-layer', /# chroot-bind-mount: expects SRC TARGET.*found nothing/],
    ['# chroot-bind-mount /a b/c', 'build-layer', /# chroot-bind-mount: TARGET must be an absolute path.*"b\/c"/],
    ['# chroot-bind-mount /a /b/../../etc', 'build-layer', /TARGET must not contain "\.\."/],
    ['# chroot-bind-mount /a /', 'build-layer', /TARGET cannot be \//],
    ['# chroot-mount 0 /boot', 'build-layer', /# chroot-mount: PARTITION must be a partition number .*"0"/],
    ['# chroot-mount p1 /boot', 'build-layer', /PARTITION must be a partition number .*"p1"/],
    ['# chroot-mount 1 boot', 'build-layer', /# chroot-mount: TARGET must be an absolute path/],
    ['# chroot-mount 1 /boot extra', 'build-layer', /# chroot-mount: expects PARTITION TARGET/],
  ] as const)('%s in a %s is a problem', (line, kind, message) => {
    const { problems } = parseHints(script(line), kind);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^line 2: /);
    expect(problems[0]).toMatch(message);
  });

  it('refuses a repeated disk-size or timeout, and two mounts on one target', () => {
    const { hints, problems } = parseHints(
      script('# timeout 5m', '# timeout 10m', '# chroot-mount 1 /boot', '# chroot-bind-mount /x /boot/'),
      'build-layer',
    );
    expect(problems).toEqual([
      'line 3: # timeout: given twice (first on line 2); keep one',
      'line 5: # chroot-bind-mount: TARGET /boot/ is already mounted by line 4; one mount per TARGET',
    ]);
    expect(hints.timeoutMs).toBe(300_000);
    expect(parseHints(script('# disk-size 4G', '# disk-size 8G'), 'create-disk').problems).toEqual([
      'line 3: # disk-size: given twice (first on line 2); keep one',
    ]);
  });

  it('reads # nocache and # noshare as the original tool does: that hint, whatever follows', () => {
    for (const line of ['# nocache (this hint tells vm-layer-builder to not cache the layer)', '# nocache please', '#nocache: it downloads the latest release', '# nocache(always)']) {
      const r = parseHints(script(line), 'build-layer');
      expect(r, line).toEqual({ hints: { ...emptyHints(), nocache: true }, problems: [] });
    }
    expect(parseHints(script('# noshare - holds the team\'s signing key'), 'create-disk').hints.noshare).toBe(true);
    // Another word that only starts like a hint is an ordinary comment.
    expect(parseHints(script('# nocaches are silly', '# noshare-later'), 'build-layer')).toEqual({ hints: emptyHints(), problems: [] });
  });

  it('takes prose after a hint\'s arguments, and only prose', () => {
    const r = parseHints(
      script('# timeout 10m because apt is slow here', '# network none (it needs nothing)', '# cache-mount /var/cache/apt -- kept between builds', '# chroot-mount 1 /boot/efi - the ESP'),
      'build-layer',
    );
    expect(r.problems).toEqual([]);
    expect(r.hints).toMatchObject({ timeoutMs: 600_000, network: 'none', cacheMounts: [{ target: '/var/cache/apt' }], partitionMounts: [{ partition: 1, target: '/boot/efi' }] });
    const d = parseHints(script('# disk-size 20G (the original grew it with qemu-img create … 20G)'), 'modify-disk');
    expect(d).toMatchObject({ problems: [], hints: { diskSize: 20 * 1024 ** 3 } });
    expect(parseHints(script('# chroot-bind-mount ../cache /var/cache/apt # the apt cache'), 'build-layer').hints.bindMounts).toEqual([{ source: '../cache', target: '/var/cache/apt' }]);
  });

  it('reads "# args source target device" in a modify-disk as the original\'s contract, and any other "# args" as a comment', () => {
    expect(parseHints(script('# args source target device'), 'modify-disk')).toEqual({ hints: { ...emptyHints(), legacyArgs: true }, problems: [] });
    expect(parseHints(script('# args source target device (as the original called it)'), 'modify-disk').hints.legacyArgs).toBe(true);
    // A comment that only starts with the word is no hint, in any kind.
    expect(parseHints(script('# args are read below', '# args: none'), 'build-layer')).toEqual({ hints: emptyHints(), problems: [] });
    expect(parseHints(script('# args source target'), 'modify-disk')).toEqual({ hints: emptyHints(), problems: [] });
    expect(parseHints(script('# args source target device extra'), 'modify-disk').problems).toEqual([
      'line 2: # args: the only contract is "# args source target device" (found "source target device extra")',
    ]);
    expect(parseHints(script('# args source target device'), 'build-layer').problems).toEqual(['line 2: # args: does not apply to a build-layer layer; it is for modify-disk only']);
    // The script makes and sizes its overlay itself.
    expect(parseHints(script('# args source target device', '# disk-size 4G'), 'modify-disk').problems).toEqual([
      'line 3: # disk-size: does not apply with # args source target device (line 2): the script makes and sizes its overlay itself',
    ]);
  });

  it('allows a repeated nocache', () => {
    expect(parseHints(script('# nocache', '# nocache'), 'build-layer').problems).toEqual([]);
  });
});

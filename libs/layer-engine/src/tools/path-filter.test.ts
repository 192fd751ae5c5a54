import { describe, expect, it } from 'vitest';
import { pathFilter } from './path-filter.js';

describe('pathFilter', () => {
  it('keeps everything without patterns', () => {
    const f = pathFilter();
    expect(f.keep('/etc/hostname')).toBe(true);
    expect(f.descend('/usr')).toBe(true);
  });

  it('anchors patterns with a slash at the root, and a folder matches what it holds', () => {
    const f = pathFilter({ include: ['/etc/ssh'] });
    expect(f.keep('/etc/ssh')).toBe(true);
    expect(f.keep('/etc/ssh/sshd_config.d/x.conf')).toBe(true);
    expect(f.keep('/etc/sshd')).toBe(false);
    expect(f.keep('/usr/etc/ssh')).toBe(false);
    expect(pathFilter({ include: ['etc/*.conf'] }).keep('/etc/a.conf')).toBe(true);
    expect(pathFilter({ include: ['etc/*.conf'] }).keep('/etc/x/a.conf')).toBe(false);
  });

  it('matches a pattern without a slash against any one name', () => {
    const f = pathFilter({ exclude: ['*.pyc', '__pycache__'] });
    expect(f.keep('/usr/lib/python3/a.pyc')).toBe(false);
    expect(f.keep('/usr/lib/python3/__pycache__/b.py')).toBe(false);
    expect(f.keep('/usr/lib/python3/a.py')).toBe(true);
    expect(f.descend('/usr/lib/python3/__pycache__')).toBe(false);
  });

  it('lets ** cross folders, also none, and ? and [] stay in one name', () => {
    const f = pathFilter({ include: ['/usr/**/doc'] });
    expect(f.keep('/usr/doc/x')).toBe(true);
    expect(f.keep('/usr/share/a/doc')).toBe(true);
    expect(f.keep('/usr/share/docs')).toBe(false);
    expect(pathFilter({ include: ['/etc/rc?.d'] }).keep('/etc/rc3.d/S01x')).toBe(true);
    expect(pathFilter({ include: ['/etc/rc[0-2].d'] }).keep('/etc/rc3.d')).toBe(false);
    expect(pathFilter({ include: ['/etc/rc[!0-2].d'] }).keep('/etc/rc3.d')).toBe(true);
  });

  it('applies excludes after includes, and never descends into an excluded folder', () => {
    const f = pathFilter({ include: ['/etc'], exclude: ['/etc/ssh'] });
    expect(f.keep('/etc/hostname')).toBe(true);
    expect(f.keep('/etc/ssh/x')).toBe(false);
    expect(f.keep('/var/x')).toBe(false);
    expect(f.descend('/etc/ssh')).toBe(false);
    expect(f.descend('/var')).toBe(true);
  });
});

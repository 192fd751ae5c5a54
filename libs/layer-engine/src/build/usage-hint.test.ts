import { describe, expect, it } from 'vitest';
import { usageHint } from './entry-script.js';

describe('usageHint', () => {
  it('names what the kind gets here when a script failed at once after printing a usage line', () => {
    const h = usageHint('modify-disk', { seconds: 0.4, logTail: 'Usage: modify-disk <source> <target> <device>\n' });
    expect(h).toMatch(/^it printed a usage line: a modify-disk gets no arguments here: the disk is \$VMLB_DEVICE .*vmlb migrate rewrites it$/);
    expect(h).not.toMatch(/\n/);
    expect(usageHint('build-layer', { seconds: 1.9, logTail: 'starting\nusage: setup.sh HOST\n' })).toMatch(/a build-layer gets no arguments here: it runs inside the image's root filesystem, its folder at \/mnt$/);
    expect(usageHint('create-disk', { seconds: 1, logTail: '  USAGE: mkroot DIR' })).toMatch(/\$VMLB_ROOT/);
  });

  it('says nothing for a slow failure, a log without a usage line, or a base-image', () => {
    expect(usageHint('modify-disk', { seconds: 30, logTail: 'usage: x\n' })).toBeUndefined();
    expect(usageHint('modify-disk', { seconds: 0.2, logTail: 'e2fsck: the usage of this disk is high\n' })).toBeUndefined();
    expect(usageHint('base-image', { seconds: 0.1, logTail: 'usage: x' })).toBeUndefined();
  });
});

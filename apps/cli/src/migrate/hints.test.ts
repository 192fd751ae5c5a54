import { describe, expect, it } from 'vitest';
import { normaliseHints } from './hints.js';

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

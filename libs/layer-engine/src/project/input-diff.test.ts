import { describe, expect, it } from 'vitest';
import { describeChange, diffInputs } from './input-diff.js';
import type { LayerFile, LayerInputs } from '../types.js';

const f = (path: string, over: Partial<LayerFile> = {}): LayerFile => ({ path, type: 'file', executable: false, digest: 'a'.repeat(64), ...over });
const A = '3f2a9c1d'.padEnd(64, '0');
const B = '77ab0e12'.padEnd(64, '1');
const inputs = (over: Partial<LayerInputs> = {}): LayerInputs => ({
  recipe: 1,
  kind: 'build-layer',
  parent: A,
  files: [f('build-layer', { executable: true }), f('files/motd')],
  ...over,
});

describe('diffInputs', () => {
  it('finds nothing when the inputs are the same', () => {
    expect(diffInputs(inputs(), inputs())).toEqual([]);
  });

  it('says new when the layer was never built', () => {
    expect(diffInputs(undefined, inputs())).toEqual([{ what: 'new', detail: 'no earlier build of this layer' }]);
  });

  it('says why a nocache layer and its descendants are rebuilt', () => {
    expect(diffInputs(inputs({ nonce: 'old' }), inputs({ nonce: 'new' }))).toEqual([
      { what: 'nocache', detail: '# nocache: rebuilt on every build' },
    ]);
    expect(diffInputs(undefined, inputs({ nonce: 'n' }))).toEqual([
      { what: 'new', detail: 'no earlier build of this layer' },
      { what: 'nocache', detail: '# nocache: rebuilt on every build' },
    ]);
    // A descendant: its parent is new every build, so that is not reported on its own.
    expect(diffInputs(inputs(), inputs({ parent: B }), { uncacheable: true })).toEqual([
      { what: 'nocache', detail: 'follows a # nocache layer' },
    ]);
  });

  it('reports recipe, kind and parent changes', () => {
    expect(diffInputs(inputs(), inputs({ recipe: 2 }))).toEqual([{ what: 'recipe', detail: 'engine recipe changed: v1 → v2' }]);
    expect(diffInputs(inputs(), inputs({ kind: 'modify-disk' }))).toEqual([
      { what: 'kind', detail: 'kind changed: build-layer → modify-disk' },
    ]);
    expect(diffInputs(inputs(), inputs({ parent: B }))).toEqual([{ what: 'parent', detail: 'parent changed: 3f2a9c1d → 77ab0e12' }]);
    expect(diffInputs(inputs({ parent: null }), inputs())).toEqual([{ what: 'parent', detail: 'parent changed: none → 3f2a9c1d' }]);
  });

  it('reports files added, removed and changed, in path order', () => {
    const prev = inputs({ files: [f('a'), f('b'), f('c'), f('d', { type: 'symlink' }), f('e'), f('g', { type: 'symlink' })] });
    const cur = inputs({
      files: [
        f('0-new', { executable: true }),
        f('a'),
        f('c', { digest: 'c'.repeat(64) }),
        f('d', { type: 'symlink', digest: 'd'.repeat(64) }),
        f('e', { type: 'symlink' }),
        f('g', { type: 'file', executable: true }),
        f('h', { type: 'symlink' }),
      ],
    });
    expect(diffInputs(prev, cur)).toEqual([
      { what: 'file-added', path: '0-new', detail: 'added (executable)' },
      { what: 'file-removed', path: 'b', detail: 'removed' },
      { what: 'file-changed', path: 'c', detail: 'content changed' },
      { what: 'file-changed', path: 'd', detail: 'symlink target changed' },
      { what: 'file-changed', path: 'e', detail: 'changed from file to symlink' },
      { what: 'file-changed', path: 'g', detail: 'changed from symlink to file' },
      { what: 'file-added', path: 'h', detail: 'added (symlink)' },
    ]);
  });

  it('reports the executable bit apart from the content', () => {
    const prev = inputs({ files: [f('x'), f('y', { executable: true })] });
    const cur = inputs({ files: [f('x', { executable: true, digest: 'b'.repeat(64) }), f('y')] });
    expect(diffInputs(prev, cur)).toEqual([
      { what: 'file-changed', path: 'x', detail: 'content changed' },
      { what: 'mode-changed', path: 'x', detail: 'became executable' },
      { what: 'mode-changed', path: 'y', detail: 'no longer executable' },
    ]);
  });

  it('lists several kinds of change together', () => {
    const changes = diffInputs(inputs(), inputs({ recipe: 2, parent: B, files: [f('build-layer', { executable: true })] }));
    expect(changes.map((c) => c.what)).toEqual(['recipe', 'parent', 'file-removed']);
  });
});

describe('describeChange', () => {
  it('makes one readable line', () => {
    expect(describeChange({ what: 'parent', detail: 'parent changed: 3f2a9c1d → 77ab0e12' })).toBe('parent changed: 3f2a9c1d → 77ab0e12');
    expect(describeChange({ what: 'file-changed', path: 'files/motd', detail: 'content changed' })).toBe('files/motd: content changed');
    expect(describeChange({ what: 'mode-changed', path: 'build-layer', detail: 'became executable' })).toBe('build-layer: became executable');
  });
});

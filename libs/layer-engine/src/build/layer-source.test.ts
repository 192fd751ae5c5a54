import { describe, expect, it } from 'vitest';
import type { LayerManifest } from '../store/layer-manifest.js';
import { chooseLayerSource } from './layer-source.js';

const sha = (c: string) => c.repeat(64);
const layer = (key: string, blob: string, parentSha256?: string) =>
  ({ key, blob: { file: `${key}.qcow2`, sha256: sha(blob), size: 1 }, ...(parentSha256 ? { parentSha256: sha(parentSha256) } : {}) }) as LayerManifest;

describe('chooseLayerSource', () => {
  const parent = layer('p', 'a');
  it('takes a local copy with the shared bytes, and the shared copy when there is no local one', () => {
    expect(chooseLayerSource(layer('k', 'b'), layer('k', 'b', 'a'), parent)).toMatchObject({ from: 'local' });
    expect(chooseLayerSource(null, layer('k', 'b', 'a'), parent)).toMatchObject({ from: 'shared', replacesLocal: false });
  });
  it('replaces a local copy whose bytes differ from the shared one', () => {
    expect(chooseLayerSource(layer('k', 'c'), layer('k', 'b', 'a'), parent)).toMatchObject({ from: 'shared', replacesLocal: true, manifest: { blob: { sha256: sha('b') } } });
    expect(chooseLayerSource(layer('k', 'c'), layer('k', 'b'), null)).toMatchObject({ from: 'shared', replacesLocal: true });
  });
  it('never uses a shared copy written on other parent bytes, or on a parent still to be built', () => {
    expect(chooseLayerSource(layer('k', 'c'), layer('k', 'b', 'f'), parent)).toMatchObject({ from: 'local', manifest: { blob: { sha256: sha('c') } } });
    expect(chooseLayerSource(null, layer('k', 'b', 'f'), parent)).toEqual({ from: 'build' });
    expect(chooseLayerSource(null, layer('k', 'b', 'a'), undefined)).toEqual({ from: 'build' });
  });
  it('builds what neither store has', () => {
    expect(chooseLayerSource(null, null, null)).toEqual({ from: 'build' });
  });
});

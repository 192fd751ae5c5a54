import type { LayerManifest } from './layer-manifest.js';
import type { LayerKind } from '../types.js';

/** A layer as the store lists it: its manifest, when it was last used (LRU) and its bytes (blob and log). */
export interface StoreEntry {
  manifest: LayerManifest;
  lastUsed: number;
  bytes: number;
}

/** A layer that gc or eviction would remove, and why. */
export interface RemovalCandidate {
  key: string;
  name: string;
  kind: LayerKind;
  cacheable: boolean;
  /** Blob and log. */
  bytes: number;
  lastUsed: number;
  reason: 'age' | 'size';
}

export interface RemovalPlan {
  /** Descendants before their ancestors, the order they are removed in. */
  layers: RemovalCandidate[];
  bytes: number;
  /** The store before: layers and bytes. */
  before: { layers: number; bytes: number };
  /** Layers kept because an output on disk or a build in progress needs them. */
  protectedLayers: number;
}

export interface RemovalLimits {
  capBytes?: number;
  olderThanMs?: number;
  now?: number;
}

/** The given layers and every layer built on them (they cannot be used without them). */
export function withDescendants(keys: Iterable<string>, all: Array<{ manifest: LayerManifest }>): Set<string> {
  const children = new Map<string, string[]>();
  for (const { manifest: m } of all) {
    if (m.parent) children.set(m.parent, [...(children.get(m.parent) ?? []), m.key]);
  }
  const out = new Set<string>();
  const visit = (k: string) => {
    if (out.has(k)) return;
    out.add(k);
    for (const c of children.get(k) ?? []) visit(c);
  };
  for (const k of keys) visit(k);
  return out;
}

/** `keys` and every ancestor of them in the store. */
export function withAncestors(keys: Iterable<string>, byKey: Map<string, { manifest: LayerManifest }>): Set<string> {
  const out = new Set<string>();
  for (const k of keys) {
    for (let cur: string | null | undefined = k; cur && !out.has(cur); cur = byKey.get(cur)?.manifest.parent) out.add(cur);
  }
  return out;
}

/** Whether the limits can remove anything from a store holding `totalBytes`. */
export function removalWanted(totalBytes: number, o: RemovalLimits): boolean {
  return (o.capBytes !== undefined && totalBytes > o.capBytes) || o.olderThanMs !== undefined;
}

/**
 * What gc (or eviction) would remove of `all`: layers last used before `olderThanMs` ago, then
 * least-recently-used layers until the store holds at most `capBytes` (uncacheable layers
 * first; on a tie, deeper layers first). A layer goes with every layer built on it; never one
 * of `keepRoots` (outputs' pins, builds in progress, what the caller protects) or their ancestors.
 */
export function planRemovalOf(all: StoreEntry[], keepRoots: Iterable<string>, o: RemovalLimits): RemovalPlan {
  const totalBefore = all.reduce((s, l) => s + l.bytes, 0);
  const plan: RemovalPlan = { layers: [], bytes: 0, before: { layers: all.length, bytes: totalBefore }, protectedLayers: 0 };
  if (!removalWanted(totalBefore, o)) return plan;
  const byKey = new Map(all.map((l) => [l.manifest.key, l]));
  const keep = withAncestors(keepRoots, byKey);
  plan.protectedLayers = all.filter((l) => keep.has(l.manifest.key)).length;
  const depth = (k: string): number => {
    let d = 0;
    for (let m = byKey.get(k)?.manifest; m?.parent; m = byKey.get(m.parent)?.manifest) d++;
    return d;
  };
  const doomed = new Map<string, RemovalCandidate>();
  let total = totalBefore;
  const take = (k: string, reason: RemovalCandidate['reason']): boolean => {
    // A layer under a kept one stays (a kept layer's chain is kept whole).
    const group = withDescendants([k], all);
    if ([...group].some((g) => keep.has(g))) return false;
    for (const g of group) {
      const l = byKey.get(g);
      if (!l || doomed.has(g)) continue;
      doomed.set(g, { key: g, name: l.manifest.name, kind: l.manifest.kind, cacheable: l.manifest.cacheable, bytes: l.bytes, lastUsed: l.lastUsed, reason });
      total -= l.bytes;
    }
    return true;
  };
  if (o.olderThanMs !== undefined) {
    const cutoff = (o.now ?? Date.now()) - o.olderThanMs;
    for (const l of all) if (l.lastUsed < cutoff && !doomed.has(l.manifest.key)) take(l.manifest.key, 'age');
  }
  if (o.capBytes !== undefined && total > o.capBytes) {
    // A chain is touched as a whole when used, so a parent is never older than its
    // children; on a tie, deeper layers go first.
    const candidates = all
      .filter((l) => !keep.has(l.manifest.key))
      .sort((a, b) => Number(a.manifest.cacheable) - Number(b.manifest.cacheable) || a.lastUsed - b.lastUsed || depth(b.manifest.key) - depth(a.manifest.key));
    for (const c of candidates) {
      if (total <= o.capBytes) break;
      if (!doomed.has(c.manifest.key)) take(c.manifest.key, 'size');
    }
  }
  plan.layers = [...doomed.values()].sort((a, b) => depth(b.key) - depth(a.key) || a.key.localeCompare(b.key));
  plan.bytes = plan.layers.reduce((s, l) => s + l.bytes, 0);
  return plan;
}

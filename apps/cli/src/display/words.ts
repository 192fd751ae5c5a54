import { isAbsolute, relative } from 'node:path';
import { formatBytes, type BuildEvent, type InputChange, type PlannedLayer } from '@vmlb/layer-engine';
import { formatSeconds } from './durations.js';
import { oneLine } from './line-buffer.js';

/** The words every display mode shares: a plan, a change, a cached layer, the image, the summary. */

/** One readable line for why a layer is rebuilt, e.g. `changed: build-layer`. */
export function describeChange(c: InputChange): string {
  switch (c.what) {
    case 'new':
      return `new: ${shortKeys(c.detail)}`;
    // The engine's detail is already the whole phrase (`parent changed: 3f2a… → 77ab…`).
    case 'parent':
    case 'kind':
    case 'recipe':
    case 'nocache':
      return shortKeys(c.detail);
    case 'file-added':
      return `added: ${c.path}`;
    case 'file-removed':
      return `removed: ${c.path}`;
    case 'file-changed':
      return `changed: ${c.path}`;
    case 'mode-changed':
      return c.detail ? `mode changed: ${c.path} (${c.detail})` : `mode changed: ${c.path}`;
  }
}

/** The plan as a table (what `vmlb explain` prints): layer, kind, key, hit or miss, and why. */
export function formatPlan(layers: PlannedLayer[]): string {
  const rows = layers.map((l) => [l.name, l.kind, shortKey(l.key), cacheColumn(l)] as const);
  const header = ['LAYER', 'KIND', 'KEY', 'CACHE'] as const;
  const widths = [0, 1, 2].map((i) => Math.max(header[i]!.length, ...rows.map((r) => r[i]!.length)));
  const row = (cells: readonly string[]) =>
    cells.map((cell, i) => (i < widths.length ? cell.padEnd(widths[i]!) : cell)).join('  ').trimEnd();
  const lines = [row(header)];
  layers.forEach((l, i) => {
    lines.push(row(rows[i]!));
    if (l.status === 'miss') for (const c of l.changes ?? []) lines.push(`    ${describeChange(c)}`);
  });
  return lines.join('\n');
}

function cacheColumn(l: PlannedLayer): string {
  if (l.status === 'hit') return l.source ? `HIT (${l.source})` : 'HIT';
  return 'MISS';
}

const KEY_CHARS = 12;
const shortKey = (key: string) => key.slice(0, KEY_CHARS);
/** Full sha256 keys in a change's detail are cut like the key column. */
const shortKeys = (text: string) => text.replace(/\b[0-9a-f]{40,}\b/g, shortKey);

export function planSummary(layers: PlannedLayer[]): string {
  const hits = layers.filter((l) => l.status === 'hit').length;
  return `${layers.length} layers: ${hits} cached, ${layers.length - hits} to build`;
}

export function cachedWords(e: Extract<BuildEvent, { type: 'layer-cached' }>): string {
  if (e.source === 'shared' && e.pool) return `CACHED (shared: ${e.pool}, ${formatBytes(e.bytes)})`;
  return e.source === 'shared' ? `CACHED (shared, ${formatBytes(e.bytes)})` : 'CACHED';
}

export function outputWords(e: Extract<BuildEvent, { type: 'output' }>): string {
  const how = e.flattened
    ? `flattened, ${formatBytes(e.bytes)}, ${formatSeconds(e.seconds)}`
    : `thin overlay on the chain, ${formatBytes(e.bytes)}`;
  return `image: ${displayPath(e.path)} (${how})`;
}

export const summaryWords = (e: Extract<BuildEvent, { type: 'done' }>) =>
  `built ${e.built}, cached ${e.cached} in ${formatSeconds(e.seconds)}`;

/** A path under the current directory is shown relative to it, as the user typed it. */
function displayPath(p: string): string {
  if (!isAbsolute(p)) return p;
  const rel = relative(process.cwd(), p);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : p;
}


export function failureWords(e: Extract<BuildEvent, { type: 'layer-failed' }>): string {
  const after = formatSeconds(e.seconds);
  if (e.timedOut) return `timed out after ${after}`;
  if (e.exitCode !== undefined) return `failed after ${after} (exit ${e.exitCode})`;
  return `failed after ${after}: ${oneLine(e.message)}`;
}

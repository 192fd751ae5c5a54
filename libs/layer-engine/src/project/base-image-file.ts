import path from 'node:path';
import type { BaseImageSource } from '../types.js';

const BASE_IMAGE_KEYS: Record<string, 'source' | 'sha256'> = { source: 'source', url: 'source', path: 'source', sha256: 'sha256' };

/**
 * A `base-image` file: `source: PATH_OR_URL` (or `url:`, `path:`) and `sha256: HEX`, each once;
 * `#` comments and blank lines are ignored. A relative path is resolved against the layer
 * folder; an http(s) URL is kept as written. `sha256: TODO …` (what `vmlb migrate` writes
 * when it cannot fetch the image to hash it) is refused, saying what to put there.
 */
export function parseBaseImage(text: string, layerDir: string): { source?: BaseImageSource; problems: string[] } {
  const problems: string[] = [];
  const found: Partial<Record<'source' | 'sha256', { value: string; line: number; as: string }>> = {};
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^([A-Za-z0-9_-]+)\s*:\s*(.*)$/.exec(line);
    if (!m) {
      problems.push(`line ${i + 1}: expected "field: value" (source: PATH_OR_URL or sha256: HEX), found "${line}"`);
      return;
    }
    const as = m[1]!.toLowerCase();
    const field = BASE_IMAGE_KEYS[as];
    if (!field) {
      problems.push(`line ${i + 1}: unknown field "${m[1]}:"; a base-image file has source: (or url:, path:) and sha256:`);
      return;
    }
    const value = unquote(m[2]!.trim());
    const previous = found[field];
    if (previous) {
      problems.push(`line ${i + 1}: ${as}: given twice (first as ${previous.as}: on line ${previous.line}); keep one`);
      return;
    }
    found[field] = { value, line: i + 1, as };
  });

  const src = found.source;
  const sum = found.sha256;
  let location: string | undefined;
  if (!src) problems.push('source: is missing; add "source: PATH_OR_URL" (a path relative to this folder, or an http(s) URL)');
  else if (src.value === '') problems.push(`line ${src.line}: ${src.as}: is empty; expected a path or an http(s) URL`);
  else if (/^https?:\/\//i.test(src.value)) location = src.value;
  else if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(src.value)) {
    problems.push(`line ${src.line}: ${src.as}: "${src.value}" is neither a path nor an http(s) URL`);
  } else location = path.resolve(layerDir, src.value);

  let sha256: string | undefined;
  if (!sum) problems.push('sha256: is missing; add "sha256: HEX" (64 hex digits, as printed by sha256sum)');
  else if (/^TODO\b/i.test(sum.value)) {
    const of = src && src.value !== '' ? ` of ${src.value}` : ' of the image source: names';
    problems.push(`line ${sum.line}: sha256: is still a TODO; replace the line with "sha256: HEX", the 64 hex digits sha256sum prints${of}`);
  } else if (!/^[0-9a-fA-F]{64}$/.test(sum.value)) {
    problems.push(`line ${sum.line}: sha256: expected 64 hex digits (as printed by sha256sum), found "${sum.value}"`);
  } else sha256 = sum.value.toLowerCase();

  return location !== undefined && sha256 !== undefined ? { source: { location, sha256 }, problems } : { problems };
}

/** A value written in matching quotes, without them. */
function unquote(v: string): string {
  return v.length >= 2 && (v[0] === '"' || v[0] === "'") && v.at(-1) === v[0] ? v.slice(1, -1) : v;
}

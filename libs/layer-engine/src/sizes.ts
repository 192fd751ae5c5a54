/**
 * Sizes and durations as people write them in hints (`# disk-size 4G`, `# timeout 1h30m`) and
 * as the engine prints them back.
 */
import { VmlbError } from './errors.js';

const KiB = 1024;

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: KiB,
  m: KiB ** 2,
  g: KiB ** 3,
  t: KiB ** 4,
  p: KiB ** 5,
};

/**
 * Parse a size into bytes. A plain integer is bytes; a suffix K, M, G, T, P (alone, or followed
 * by `iB` or `B`, any case) multiplies by a power of **1024**: `4G`, `4GiB` and `4GB` are all
 * 4 × 2³⁰ bytes. Disk tools (qemu-img, truncate) read `4G` that way, and a disk that came out
 * 7% smaller than its `4GB` hint would surprise more people than the unit's strict meaning
 * would. A fraction is allowed (`1.5G`) and rounded to a whole byte.
 *
 * @throws VmlbError BAD_SIZE naming the text when it is not a size.
 */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(i?b)?\s*$/i.exec(text);
  if (!m || (m[2] === '' && m[3] !== undefined && m[3].toLowerCase() !== 'b')) {
    throw new VmlbError('BAD_SIZE', `not a size: "${text}" (expected bytes or a number with K, M, G or T, e.g. 4G or 512MiB)`);
  }
  const unit = SIZE_UNITS[(m[2] ?? '').toLowerCase()] ?? 1;
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new VmlbError('BAD_SIZE', `size too large: "${text}"`);
  return bytes;
}

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * Parse a duration into milliseconds: a plain number is seconds (`90`); otherwise one or more
 * number-unit pairs with units ms, s, m (minutes), h, d: `500ms`, `90s`, `5m`, `1h30m`,
 * `1.5h`. Rounded to a whole millisecond.
 *
 * @throws VmlbError BAD_DURATION naming the text when it is not a duration.
 */
export function parseDuration(text: string): number {
  const t = text.trim().toLowerCase();
  const bad = () => new VmlbError('BAD_DURATION', `not a duration: "${text}" (expected seconds or e.g. 500ms, 90s, 5m, 1h30m)`);
  if (/^(\d+(\.\d+)?|\.\d+)$/.test(t)) return Math.round(Number(t) * 1000);
  if (t === '') throw bad();
  const part = /(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)/y;
  let ms = 0;
  while (part.lastIndex < t.length) {
    const m = part.exec(t);
    if (!m) throw bad();
    ms += Number(m[1]) * (DURATION_UNITS[m[2] ?? ''] ?? Number.NaN);
  }
  const rounded = Math.round(ms);
  if (!Number.isSafeInteger(rounded)) throw bad();
  return rounded;
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/** A byte count for people: `512 B`, `312 KiB`, `1.5 GiB`, `20 GiB` (binary units, ≤ 3 significant digits). */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (n < 0) return `-${formatBytes(-n)}`;
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${Math.round(value)} B`;
  let shown = value >= 100 ? String(Math.round(value)) : trimZero(value.toFixed(1));
  // 1023.7 KiB would round to "1024 KiB": say "1 MiB" instead.
  if (Number(shown) >= 1024 && unit < BYTE_UNITS.length - 1) {
    unit++;
    shown = '1';
  }
  return `${shown} ${BYTE_UNITS[unit]}`;
}

/** A duration in seconds for people: `0.12s`, `12.3s`, `2m03s`, `1h02m03s`. */
export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return `${s}s`;
  if (s < 0) return `-${formatSeconds(-s)}`;
  if (s < 1 && s.toFixed(2) !== '1.00') return `${s.toFixed(2)}s`;
  if (s < 60 && (Math.round(s * 10) / 10) < 60) return `${s.toFixed(1)}s`;
  const total = Math.round(s);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  const mm = String(m).padStart(2, '0');
  const ss = String(sec).padStart(2, '0');
  return h > 0 ? `${h}h${mm}m${ss}s` : `${m}m${ss}s`;
}

function trimZero(fixed: string): string {
  return fixed.endsWith('.0') ? fixed.slice(0, -2) : fixed;
}

/** The numbers of the table: medians, percentiles, and how they are written. */

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function secs(x: number): string {
  return x < 10 ? `${x.toFixed(2)} s` : `${x.toFixed(1)} s`;
}

export function ratio(a: number, b: number): string {
  return `${(a / b).toFixed(2)}×`;
}

/**
 * The median with its unit, and the range when there is more than one value:
 * summary([0.51, 0.49, 0.55], 2, 's') → "0.51 s (0.49–0.55)".
 */
export function summary(xs: number[], digits: number, unit: string): string {
  const f = (x: number) => x.toFixed(digits);
  const m = `${f(median(xs))} ${unit}`;
  return xs.length < 2 ? m : `${m} (${f(Math.min(...xs))}–${f(Math.max(...xs))})`;
}

/** "n=5" etc. for the what-is-measured column. */
export function times(n: number): string {
  return n === 1 ? 'one run' : `median of ${n}`;
}

/** The p-th percentile (nearest rank) of xs. */
export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

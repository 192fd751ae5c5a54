/**
 * Durations as the display shows them. Not the engine's formatSeconds: a duration the display
 * cannot know (not finite, or negative) shows as `?`, and the running layer's clock ticks in
 * tenths.
 */

/** `0.12s`, `4.2s`, `42.0s`, `2m03s`, `1h02m03s`. */
export function formatSeconds(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  if (s < 0.995) return `${s.toFixed(2)}s`;
  if (s < 59.95) return `${s.toFixed(1)}s`;
  const total = Math.round(s);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = String(total % 60).padStart(2, '0');
  return h ? `${h}h${String(m).padStart(2, '0')}m${sec}s` : `${m}m${sec}s`;
}

/** The ticking clock of a running layer: tenths only, so it does not jitter. */
export function formatElapsed(ms: number): string {
  const s = Math.floor(Math.max(0, ms) / 100) / 10;
  return s < 60 ? `${s.toFixed(1)}s` : formatSeconds(Math.floor(s));
}

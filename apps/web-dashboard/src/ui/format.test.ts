import { describe, expect, it } from 'vitest';
import { elapsed, formatAgo, formatBytes, formatPercent, formatSeconds } from './format';
import { cleanLog } from './log-text';

describe('formatting', () => {
  it('prints sizes and durations as the CLI does', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(576 * 1024)).toBe('576 KiB');
    expect(formatBytes(3.44 * 1024 * 1024)).toBe('3.44 MiB');
    expect(formatBytes(645 * 1024 ** 2)).toBe('645 MiB');
    expect(formatBytes(undefined)).toBe('—');
    expect(formatSeconds(2.5)).toBe('2.50s');
    expect(formatSeconds(23.44)).toBe('23.4s');
    expect(formatSeconds(130)).toBe('2m10s');
    expect(formatSeconds(3 * 3600 + 5 * 60)).toBe('3h05m');
    expect(formatPercent(0.5)).toBe('50.0%');
    expect(formatPercent(null)).toBe('—');
  });

  it('counts time from ISO stamps', () => {
    const now = Date.parse('2026-01-01T00:10:00Z');
    expect(formatAgo('2026-01-01T00:09:58Z', now)).toBe('2 s ago');
    expect(formatAgo('2026-01-01T00:00:00Z', now)).toBe('10 min ago');
    expect(elapsed('2026-01-01T00:09:00Z', undefined, now)).toBe(60);
    expect(elapsed('2026-01-01T00:09:00Z', '2026-01-01T00:09:30Z', now)).toBe(30);
  });

  it('shows a log as a terminal would: no colour codes, progress redraws folded', () => {
    expect(cleanLog('\x1b[32mok\x1b[0m\n')).toBe('ok\n');
    expect(cleanLog('10%\r50%\r100%\ndone\r\n')).toBe('100%\ndone\n');
  });
});

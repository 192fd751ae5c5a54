import { describe, expect, it } from 'vitest';
import { formatBytes, formatSeconds, parseDuration, parseSize } from './sizes.js';

const GiB = 1024 ** 3;

describe('parseSize', () => {
  it.each([
    ['4096', 4096],
    ['512B', 512],
    ['4K', 4096],
    ['4k', 4096],
    ['4KiB', 4096],
    ['4KB', 4096],
    ['20M', 20 * 1024 ** 2],
    ['4G', 4 * GiB],
    ['4GiB', 4 * GiB],
    ['4GB', 4 * GiB],
    ['4gib', 4 * GiB],
    ['1.5G', 1.5 * GiB],
    ['2T', 2 * 1024 ** 4],
    [' 8 G ', 8 * GiB],
    ['0', 0],
  ])('%s is %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['', 'G', '4X', '-1G', '4 G B', '4iB', 'four', '1e3', '4GiBs'])('refuses %j, naming it', (text) => {
    expect(() => parseSize(text)).toThrow(`"${text}"`);
  });

  it('throws a VmlbError BAD_SIZE, for a size that is too large too', () => {
    expect(() => parseSize('four')).toThrow(expect.objectContaining({ name: 'VmlbError', code: 'BAD_SIZE', message: expect.stringMatching(/^not a size: "four"/) }));
    expect(() => parseSize('9P')).toThrow(expect.objectContaining({ code: 'BAD_SIZE', message: 'size too large: "9P"' }));
  });
});

describe('parseDuration', () => {
  it.each([
    ['90', 90_000],
    ['0.5', 500],
    ['90s', 90_000],
    ['500ms', 500],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['1h30m', 5_400_000],
    ['1h30m15s', 5_415_000],
    ['1.5h', 5_400_000],
    ['2d', 172_800_000],
    ['10M', 600_000],
  ])('%s is %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['', 'm', '5x', '5 m', '-5s', '1h30', 'soon', '5mins'])('refuses %j, naming it', (text) => {
    expect(() => parseDuration(text)).toThrow(`"${text}"`);
  });

  it('throws a VmlbError BAD_DURATION', () => {
    expect(() => parseDuration('soon')).toThrow(expect.objectContaining({ name: 'VmlbError', code: 'BAD_DURATION', message: expect.stringMatching(/^not a duration: "soon"/) }));
  });
});

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [512, '512 B'],
    [1536, '1.5 KiB'],
    [312 * 1024, '312 KiB'],
    [1.5 * GiB, '1.5 GiB'],
    [2 * GiB, '2 GiB'],
    [20 * GiB, '20 GiB'],
    [10.25 * 1024 ** 2, '10.3 MiB'],
    [1024 * 1024 - 1, '1 MiB'],
  ])('%d is %s', (n, text) => {
    expect(formatBytes(n)).toBe(text);
  });
});

describe('formatSeconds', () => {
  it.each([
    [0.123, '0.12s'],
    [0, '0.00s'],
    [12.34, '12.3s'],
    [59.99, '1m00s'],
    [123, '2m03s'],
    [3723, '1h02m03s'],
  ])('%d is %s', (s, text) => {
    expect(formatSeconds(s)).toBe(text);
  });
});

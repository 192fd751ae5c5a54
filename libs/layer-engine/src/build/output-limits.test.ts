import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CappedLogFile, OutputLimiter, logMaxFromEnv, LOG_MAX_DEFAULT } from './output-limits.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function tmpFile(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'vmlb-caplog-'));
  dirs.push(d);
  return path.join(d, 'x.log');
}

async function writeLines(log: CappedLogFile, from: number, to: number, perChunk = 100): Promise<void> {
  for (let i = from; i < to; i += perChunk) {
    let s = '';
    for (let j = i; j < Math.min(to, i + perChunk); j++) s += `line ${j}\n`;
    if (!log.write(Buffer.from(s))) await new Promise<void>((r) => log.onDrain(r));
  }
}

describe('CappedLogFile', () => {
  it('keeps a small log as it is', async () => {
    const f = await tmpFile();
    const log = await CappedLogFile.open(f, 1 << 20);
    await writeLines(log, 0, 1000);
    expect(await log.close()).toEqual({ cutBytes: 0, cutLines: 0 });
    const text = await readFile(f, 'utf8');
    expect(text.startsWith('line 0\n')).toBe(true);
    expect(text.endsWith('line 999\n')).toBe(true);
  });

  it('keeps the tail, at most max bytes, from a line start, under a line that says what was cut', async () => {
    const f = await tmpFile();
    const max = 64 * 1024;
    const log = await CappedLogFile.open(f, max);
    const n = 200_000;
    await writeLines(log, 0, n);
    const cut = await log.close();
    const text = await readFile(f, 'utf8');
    expect((await stat(f)).size).toBeLessThanOrEqual(max);
    expect((await stat(f)).size).toBeGreaterThan(max - 200);
    const lines = text.split('\n');
    expect(lines[0]).toMatch(/^… [\d.]+ (KiB|MiB) \(\d+ lines\) of output cut here: this log keeps its last 64 KiB \(VMLB_LOG_MAX\) *$/);
    expect(lines[1]).toMatch(/^line \d+$/);
    expect(text.endsWith(`line ${n - 1}\n`)).toBe(true);
    const first = Number(/^line (\d+)$/.exec(lines[1]!)![1]);
    // Every line after the first kept one, in order.
    expect(lines.slice(1, -1).map((l) => Number(l.slice(5)))).toEqual(Array.from({ length: n - first }, (_, i) => first + i));
    expect(cut.cutLines).toBe(first);
    expect(lines[0]).toContain(`(${first} lines)`);
  });
});

describe('OutputLimiter', () => {
  it('cuts a long line at lineMax and says how much was cut', () => {
    const l = new OutputLimiter({ lineMax: 10, totalMax: Infinity, ratePerSec: Infinity, burst: Infinity });
    expect(l.feed('short\n' + 'x'.repeat(25) + '\nnext')).toBe('short\n' + 'x'.repeat(10) + ' … [line cut at 10 B: 15 more characters]\nnext');
    expect(l.end()).toBe('\n');
  });

  it('drops lines past the total and counts them in a marker', () => {
    const l = new OutputLimiter({ lineMax: 100, totalMax: 20, ratePerSec: Infinity, burst: Infinity });
    let out = '';
    for (let i = 0; i < 10; i++) out += l.feed(`line ${i}\n`);
    out += l.end();
    expect(out).toBe('line 0\nline 1\nline 2\n… output past 20 B is not shown here, full log in the store\n… 7 lines dropped (past 20 B of output), full log in the store\n');
  });

  it('drops lines over the rate and says so before the next line that passes', () => {
    let now = 0;
    const l = new OutputLimiter({ lineMax: 100, totalMax: Infinity, ratePerSec: 10, burst: 10 }, () => now);
    let out = l.feed('0123456789\n'); // takes the whole burst
    out += l.feed('a\nb\nc\n');
    now = 2000; // 20 characters' worth, capped at the burst
    out += l.feed('next\n');
    expect(out).toBe('0123456789\n… 3 lines dropped (over 10 B/s), full log in the store\nnext\n');
    expect(l.end()).toBe('');
  });

  it('passes a partial line at once (progress output stays live)', () => {
    const l = new OutputLimiter({ lineMax: 100, totalMax: Infinity, ratePerSec: Infinity, burst: Infinity });
    expect(l.feed('50%')).toBe('50%');
    expect(l.feed('\r60%')).toBe('\r60%');
  });
});

describe('VMLB_LOG_MAX', () => {
  it('is a size, 64 MiB by default, at least 4K', () => {
    expect(logMaxFromEnv({})).toBe(LOG_MAX_DEFAULT);
    expect(logMaxFromEnv({ VMLB_LOG_MAX: '1M' })).toBe(1 << 20);
    expect(() => logMaxFromEnv({ VMLB_LOG_MAX: 'lots' })).toThrow(/^VMLB_LOG_MAX must be a size of at least 4K \(e\.g\. 64M, the default\), not "lots"$/);
    expect(() => logMaxFromEnv({ VMLB_LOG_MAX: '100' })).toThrow(/at least 4K/);
  });
});

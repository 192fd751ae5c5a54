import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { VmlbError } from '../errors.js';
import { formatBytes, parseSize } from '../sizes.js';

/**
 * What a layer script prints is bounded, however much it prints:
 *
 * - the log kept in the store (`layers/<key>.log`, pushed to the shared store with the layer)
 *   holds at most VMLB_LOG_MAX bytes: past that the *tail* is kept, under a first line that
 *   says how much was cut (CappedLogFile);
 * - what goes on as `layer-log` events (the terminal display, `--json`, a fleet worker's
 *   event stream in Redis) is limited per line, per layer and in rate; lines past a limit are
 *   dropped and counted, and a marker line says so (OutputLimiter).
 *
 * Memory stays flat: the log is written as it comes, with back-pressure on the script's pipes
 * while the disk catches up, and nothing holds more than one chunk and one line of it.
 */

/** The default VMLB_LOG_MAX: 64 MiB of a layer's log are kept. */
export const LOG_MAX_DEFAULT = 64 * 1024 * 1024;
/** The smallest VMLB_LOG_MAX accepted. */
export const LOG_MAX_MIN = 4096;

/**
 * VMLB_LOG_MAX (a size: `64M`, `1G`, bytes), the most of a layer's log the store keeps.
 * @throws VmlbError BAD_SETTING naming the value when it is not a size of at least 4K.
 */
export function logMaxFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const text = env.VMLB_LOG_MAX;
  if (text === undefined || text.trim() === '') return LOG_MAX_DEFAULT;
  let n: number;
  try {
    n = parseSize(text);
  } catch {
    n = NaN;
  }
  if (!(n >= LOG_MAX_MIN)) throw new VmlbError('BAD_SETTING', `VMLB_LOG_MAX must be a size of at least 4K (e.g. 64M, the default), not "${text}"`);
  return n;
}

/** The reserved first line of a log that was cut (padded to this length, newline included). */
const HEADER_BYTES = 160;
/** Bytes queued for the file beyond which write() asks the writer to wait for 'drain'. */
const HIGH_WATER = 1 << 20;
const COPY_CHUNK = 1 << 20;

/**
 * A log file that keeps at most `max` bytes: once it has reached twice that, its last part is
 * moved to the front (at a line's start) and the file truncated, so the disk never holds more
 * than 2 × max of it; at close it is cut to at most `max` and, when anything was cut, its
 * first line says how much:
 *
 *   … 136.0 MiB (712345 lines) of output cut here: this log keeps its last 64.0 MiB (VMLB_LOG_MAX)
 *
 * write() follows a stream's convention: false means wait for onDrain before writing more.
 */
export class CappedLogFile {
  private fh: FileHandle | undefined;
  private size = 0;
  /** Where the kept output starts (0, or HEADER_BYTES once something was cut). */
  private start = 0;
  private cutBytes = 0;
  private totalLines = 0;
  /** Newlines in [start, size). */
  private keptLines = 0;
  private queue: Buffer[] = [];
  private queued = 0;
  private writing: Promise<void> | undefined;
  private error: Error | undefined;
  private drainWaiters: Array<() => void> = [];

  private constructor(
    readonly file: string,
    readonly max: number,
  ) {}

  /** Opens (appends to) `file`. */
  static async open(file: string, max: number): Promise<CappedLogFile> {
    const log = new CappedLogFile(file, Math.max(max, LOG_MAX_MIN));
    // Not O_APPEND: the compaction writes at offsets (which Linux ignores on an append-mode file).
    log.fh = await open(file, constants.O_RDWR | constants.O_CREAT, 0o644);
    log.size = (await log.fh.stat()).size;
    return log;
  }

  /** Queues a chunk; false when the caller should wait for onDrain (the disk is behind). */
  write(buf: Buffer): boolean {
    if (this.error) return true; // reported by close()
    this.totalLines += countNewlines(buf);
    this.queue.push(buf);
    this.queued += buf.length;
    this.writing ??= this.drainQueue();
    return this.queued < HIGH_WATER;
  }

  onDrain(cb: () => void): void {
    if (this.queued < HIGH_WATER) cb();
    else this.drainWaiters.push(cb);
  }

  /** Writes what is queued, cuts the file to at most `max`, and closes it. */
  async close(): Promise<{ cutBytes: number; cutLines: number }> {
    await this.writing;
    const fh = this.fh!;
    try {
      if (!this.error && this.size > this.max) await this.compact(this.max);
      if (!this.error && this.cutBytes > 0) await fh.write(this.header(), 0, HEADER_BYTES, 0);
    } catch (e) {
      this.error ??= e as Error;
    } finally {
      await fh.close();
    }
    if (this.error) throw this.error;
    return { cutBytes: this.cutBytes, cutLines: this.totalLines - this.keptLines };
  }

  private async drainQueue(): Promise<void> {
    try {
      while (this.queue.length && !this.error) {
        const bufs = this.queue;
        this.queue = [];
        const data = bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs);
        await writeAll(this.fh!, data, this.size);
        this.size += data.length;
        this.keptLines += countNewlines(data);
        this.queued -= data.length;
        if (this.size >= 2 * this.max) await this.compact(this.max);
        if (this.queued < HIGH_WATER) for (const w of this.drainWaiters.splice(0)) w();
      }
    } catch (e) {
      this.error = e as Error;
      this.queue = [];
      this.queued = 0;
    } finally {
      this.writing = undefined;
      for (const w of this.drainWaiters.splice(0)) w();
    }
  }

  /** Keeps the last (total - HEADER_BYTES) bytes, from a line's start when there is one near, after the header's room. */
  private async compact(total: number): Promise<void> {
    const fh = this.fh!;
    const keep = total - HEADER_BYTES;
    let from = this.size - keep;
    // Start at a line's start when one is within the first 64 KiB of what is kept.
    const probe = Buffer.alloc(Math.min(64 * 1024, keep));
    const { bytesRead } = await fh.read(probe, 0, probe.length, from - 1);
    const nl = probe.subarray(0, bytesRead).indexOf(0x0a);
    if (nl >= 0 && nl + 1 < bytesRead) from += nl;
    const dropped = from - this.start;
    // Forward copy to a lower offset: safe even where the two ranges overlap.
    const buf = Buffer.alloc(COPY_CHUNK);
    let to = HEADER_BYTES;
    let kept = 0;
    for (let at = from; at < this.size; ) {
      const { bytesRead: n } = await fh.read(buf, 0, Math.min(COPY_CHUNK, this.size - at), at);
      if (n === 0) break;
      await writeAll(fh, buf.subarray(0, n), to);
      kept += countNewlines(buf.subarray(0, n));
      at += n;
      to += n;
    }
    await fh.truncate(to);
    if (this.start === 0) await fh.write(Buffer.alloc(HEADER_BYTES, 0x20), 0, HEADER_BYTES, 0);
    this.cutBytes += dropped;
    this.start = HEADER_BYTES;
    this.size = to;
    this.keptLines = kept;
  }

  private header(): Buffer {
    const lines = this.totalLines - this.keptLines;
    const text = `… ${formatBytes(this.cutBytes)} (${lines} line${lines === 1 ? '' : 's'}) of output cut here: this log keeps its last ${formatBytes(this.max)} (VMLB_LOG_MAX)`;
    const b = Buffer.alloc(HEADER_BYTES, 0x20);
    b.write(text.slice(0, HEADER_BYTES - 1), 0, 'utf8');
    b[HEADER_BYTES - 1] = 0x0a;
    return b;
  }
}

async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  for (let off = 0; off < data.length; ) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    off += bytesWritten;
  }
}

function countNewlines(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(0x0a); i >= 0; i = b.indexOf(0x0a, i + 1)) n++;
  return n;
}

/** How a layer's output is limited on its way to events; see OutputLimiter. */
export interface OutputLimits {
  /** A line longer than this (in characters) is cut, with a marker at its end. */
  lineMax: number;
  /** At most this many characters pass in all; later lines are dropped. */
  totalMax: number;
  /** The average rate (characters a second) lines may pass at; Infinity: any. */
  ratePerSec: number;
  /** How much may pass at once above the rate (a token bucket's size). */
  burst: number;
}

/**
 * The limits of the engine's own `layer-log` events (the local display and `--json`): a line
 * is cut at 4 KiB, a layer shows at most 8 MiB of output, at any rate. A fleet worker sends
 * its build's event stream stricter ones (see apps/worker/src/job-events.ts).
 */
export const ENGINE_OUTPUT_LIMITS: OutputLimits = { lineMax: 4096, totalMax: 8 * 1024 * 1024, ratePerSec: Infinity, burst: Infinity };

/** The marker that says lines were dropped (the store's log has them, up to VMLB_LOG_MAX). */
export function droppedMarker(lines: number, why = ''): string {
  return `… ${lines} line${lines === 1 ? '' : 's'} dropped${why ? ` (${why})` : ''}, full log in the store\n`;
}

/**
 * Limits a script's output as it streams (per line, in all, in rate), passing text on as it
 * comes (a partial line is not held back, so progress output stays live). Whether a line
 * passes is decided when it starts (after `\n`, or `\r`, which rewrites it): a passing line
 * counts against the budget as it goes, up to lineMax. Dropped lines are counted; a marker
 * (droppedMarker) goes out before the next line that passes and at end(). Once over the rate,
 * lines are dropped until the bucket has refilled halfway (half a second's worth at most), so
 * a flood gives a marker now and then, not one between every two lines.
 */
export class OutputLimiter {
  private passed = 0;
  private tokens: number;
  private lastRefill: number;
  /** The current line: passing or dropped, and how much of it has been seen. */
  private lineOpen = false;
  private lineDropped = false;
  private lineLength = 0;
  private dropped = 0;
  private droppedWhy = '';
  private announcedTotal = false;
  /** Over the rate: lines are dropped until the bucket holds `resume` again (drops come in stretches, not line by line). */
  private rateDropping = false;

  readonly limits: OutputLimits;

  constructor(
    limits: OutputLimits,
    private readonly now: () => number = Date.now,
  ) {
    this.limits = { ...limits };
    this.tokens = limits.burst;
    this.lastRefill = now();
  }

  /** Returns what of `chunk` passes (possibly with markers), '' when nothing does. */
  feed(chunk: string): string {
    let out = '';
    let i = 0;
    let nextLf = chunk.indexOf('\n');
    let nextCr = chunk.indexOf('\r');
    while (i < chunk.length) {
      if (!this.lineOpen) out += this.startLine();
      // The rest of this line, up to its \n or \r (j: that character's index, or the chunk's end).
      if (nextLf >= 0 && nextLf < i) nextLf = chunk.indexOf('\n', i);
      if (nextCr >= 0 && nextCr < i) nextCr = chunk.indexOf('\r', i);
      const j = nextLf < 0 ? (nextCr < 0 ? chunk.length : nextCr) : nextCr < 0 ? nextLf : Math.min(nextLf, nextCr);
      const ends = j < chunk.length;
      if (!this.lineDropped) {
        const room = Math.max(0, this.limits.lineMax - this.lineLength);
        const shown = chunk.slice(i, Math.min(j, i + room));
        out += shown;
        this.count(shown.length);
      }
      this.lineLength += j - i;
      if (ends) {
        const eol = chunk[j]!;
        if (!this.lineDropped) {
          if (this.lineLength > this.limits.lineMax) out += this.cutNote();
          out += eol;
          this.count(1);
        } else if (eol === '\n') {
          this.dropped++;
        }
        this.lineOpen = false;
        i = j + 1;
      } else {
        i = j;
      }
    }
    return out;
  }

  private cutNote(): string {
    return ` … [line cut at ${formatBytes(this.limits.lineMax)}: ${this.lineLength - this.limits.lineMax} more characters]`;
  }

  /** The end of the output: a cut line's marker and the dropped-lines marker, if any. */
  end(): string {
    let out = '';
    if (this.lineOpen) {
      if (this.lineDropped) this.dropped++;
      else if (this.lineLength > this.limits.lineMax) out += `${this.cutNote()}\n`;
      else if (this.lineLength > 0) out += '\n';
      this.lineOpen = false;
    }
    if (this.dropped > 0) out += droppedMarker(this.dropped, this.droppedWhy);
    this.dropped = 0;
    return out;
  }

  private count(n: number): void {
    this.passed += n;
    this.tokens -= n;
  }

  /** Decides whether the line starting now passes; returns the marker owed before it. */
  private startLine(): string {
    this.lineOpen = true;
    this.lineLength = 0;
    const t = this.now();
    const { ratePerSec, burst } = this.limits;
    if (Number.isFinite(ratePerSec)) {
      this.tokens = Math.min(burst, this.tokens + ((t - this.lastRefill) / 1000) * ratePerSec);
    }
    this.lastRefill = t;
    if (this.passed >= this.limits.totalMax) {
      this.lineDropped = true;
      this.droppedWhy = `past ${formatBytes(this.limits.totalMax)} of output`;
      if (!this.announcedTotal) {
        this.announcedTotal = true;
        // Said at once, so that a silent display is not taken for a hung script.
        return `… output past ${formatBytes(this.limits.totalMax)} is not shown here, full log in the store\n`;
      }
      return '';
    }
    if (this.tokens <= 0 || (this.rateDropping && this.tokens < Math.min(burst, ratePerSec) / 2)) {
      this.lineDropped = true;
      this.rateDropping = true;
      this.droppedWhy = `over ${formatBytes(ratePerSec)}/s`;
      return '';
    }
    this.lineDropped = false;
    this.rateDropping = false;
    if (this.dropped > 0) {
      const m = droppedMarker(this.dropped, this.droppedWhy);
      this.dropped = 0;
      this.count(m.length);
      return m;
    }
    return '';
  }
}

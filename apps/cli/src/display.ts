import { isAbsolute, relative } from 'node:path';
import type { Writable } from 'node:stream';
import { createLogUpdate } from 'log-update';
import pc from 'picocolors';
import type { BuildEvent, InputChange, PlannedLayer } from '@vmlb/layer-engine';

/**
 * How `vmlb build` shows a build: `tty` (a live region like BuildKit's, permanent lines above
 * it), `plain` (append-only lines for CI logs, `#N` prefixes like `--progress=plain`) or
 * `json` (the BuildEvents themselves, one per line).
 */
export type DisplayMode = 'tty' | 'plain' | 'json';

export interface Display {
  onEvent(e: BuildEvent): void;
  /** Stops the timer and leaves the terminal clean; safe to call twice. */
  close(): void;
}

export interface DisplayOptions {
  /** `--explain`: print the plan with each layer's key and why each miss is rebuilt. @default false */
  verbose?: boolean;
  /** Colors in tty mode (plain and json never have any). @default true unless NO_COLOR is set */
  color?: boolean;
}

type Out = NodeJS.WriteStream | Writable;

export function createDisplay(mode: DisplayMode, out: Out, opts: DisplayOptions = {}): Display {
  switch (mode) {
    case 'json':
      return new JsonDisplay(out);
    case 'plain':
      return new PlainDisplay(out, opts.verbose ?? false);
    case 'tty':
      return new TtyDisplay(out, opts.verbose ?? false, opts.color ?? !process.env.NO_COLOR);
  }
}

/** json when asked; plain when asked or when the output is no terminal (a file, a pipe, CI); else tty. */
export function chooseMode(
  flags: { json?: boolean; plain?: boolean },
  stdout: { isTTY?: boolean },
  env: NodeJS.ProcessEnv = process.env,
): DisplayMode {
  if (flags.json) return 'json';
  const ci = env.CI !== undefined && env.CI !== '' && env.CI !== 'false' && env.CI !== '0';
  if (flags.plain || !stdout.isTTY || env.TERM === 'dumb' || ci) return 'plain';
  return 'tty';
}

// ---------------------------------------------------------------------------------------------
// Words shared by every mode

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

function planSummary(layers: PlannedLayer[]): string {
  const hits = layers.filter((l) => l.status === 'hit').length;
  return `${layers.length} layers: ${hits} cached, ${layers.length - hits} to build`;
}

function cachedWords(e: Extract<BuildEvent, { type: 'layer-cached' }>): string {
  if (e.source === 'shared' && e.pool) return `CACHED (shared: ${e.pool}, ${formatBytes(e.bytes)})`;
  return e.source === 'shared' ? `CACHED (shared, ${formatBytes(e.bytes)})` : 'CACHED';
}

function outputWords(e: Extract<BuildEvent, { type: 'output' }>): string {
  const how = e.flattened
    ? `flattened, ${formatBytes(e.bytes)}, ${formatSeconds(e.seconds)}`
    : `thin overlay on the chain, ${formatBytes(e.bytes)}`;
  return `image: ${displayPath(e.path)} (${how})`;
}

const summaryWords = (e: Extract<BuildEvent, { type: 'done' }>) =>
  `built ${e.built}, cached ${e.cached} in ${formatSeconds(e.seconds)}`;

/** A path under the current directory is shown relative to it, as the user typed it. */
function displayPath(p: string): string {
  if (!isAbsolute(p)) return p;
  const rel = relative(process.cwd(), p);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : p;
}

/** Where each layer sits in the plan: `[3/5]`, and column widths so names and kinds line up. */
class PlanIndex {
  private readonly layers = new Map<string, { pos: number; kind: string }>();
  private total = 0;
  namePad = 0;
  kindPad = 0;

  set(layers: PlannedLayer[], total: number): void {
    this.layers.clear();
    layers.forEach((l, i) => this.layers.set(l.name, { pos: i + 1, kind: l.kind }));
    this.total = layers.length || total;
    this.namePad = Math.max(0, ...layers.map((l) => l.name.length));
    this.kindPad = Math.max(0, ...layers.map((l) => l.kind.length));
  }

  /** Looked up by name, so it holds whether the engine's `index` counts from 0 or 1. */
  pos(index: number, name: string): number {
    return this.layers.get(name)?.pos ?? index + 1;
  }

  tag(index: number, name: string): string {
    return `[${this.pos(index, name)}/${this.total || '?'}]`;
  }

  kind(name: string): string {
    return this.layers.get(name)?.kind ?? '';
  }
}

// ---------------------------------------------------------------------------------------------
// Sizes and durations

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** `512 B`, `312 KiB`, `12.4 MiB`, `1.2 GiB`, `4 GiB`. */
function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return '?';
  if (n < 1024) return `${Math.round(n)} B`;
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  let text = v < 100 ? v.toFixed(1) : String(Math.round(v));
  if (Number(text) >= 1024 && u < UNITS.length - 1) {
    u++;
    text = (v / 1024).toFixed(1);
  }
  return `${text.replace(/\.0$/, '')} ${UNITS[u]}`;
}

/** `0.12s`, `4.2s`, `42.0s`, `2m03s`, `1h02m03s`. */
function formatSeconds(s: number): string {
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
function formatElapsed(ms: number): string {
  const s = Math.floor(Math.max(0, ms) / 100) / 10;
  return s < 60 ? `${s.toFixed(1)}s` : formatSeconds(Math.floor(s));
}

function failureWords(e: Extract<BuildEvent, { type: 'layer-failed' }>): string {
  const after = formatSeconds(e.seconds);
  if (e.timedOut) return `timed out after ${after}`;
  if (e.exitCode !== undefined) return `failed after ${after} (exit ${e.exitCode})`;
  return `failed after ${after}: ${oneLine(e.message)}`;
}

// ---------------------------------------------------------------------------------------------
// A script's output as lines

const MAX_LINE = 4096;

/**
 * Turns a script's raw output into the lines a terminal would end up showing: escape sequences
 * (colors, cursor moves, titles) are dropped, even when split across chunks; a line rewritten
 * with a bare `\r` (progress bars) keeps only its latest text; backspaces and tabs are applied.
 */
class LineBuffer {
  private line = '';
  private cr = false;
  private state: 'text' | 'esc' | 'csi' | 'str' | 'str-esc' | 'esc-inter' = 'text';

  get partial(): string {
    return this.line;
  }

  /** Returns the lines completed by this chunk. */
  feed(chunk: string): string[] {
    const done: string[] = [];
    for (const ch of chunk) {
      const code = ch.codePointAt(0)!;
      switch (this.state) {
        case 'esc':
          if (ch === '[') this.state = 'csi';
          else if (ch === ']' || ch === 'P' || ch === 'X' || ch === '^' || ch === '_') this.state = 'str';
          else if (code >= 0x20 && code <= 0x2f) this.state = 'esc-inter';
          else this.state = 'text';
          continue;
        case 'esc-inter':
          if (code < 0x20 || code > 0x2f) this.state = 'text';
          continue;
        case 'csi':
          if (code >= 0x20 && code <= 0x3f) continue;
          this.state = 'text';
          if (code >= 0x40 && code <= 0x7e) continue;
          break; // a control character cut the sequence short: handle it as text
        case 'str':
          if (ch === '\x07') this.state = 'text';
          else if (ch === '\x1b') this.state = 'str-esc';
          continue;
        case 'str-esc':
          this.state = ch === '\\' ? 'text' : 'str';
          continue;
        case 'text':
          break;
      }
      if (ch === '\n') {
        done.push(this.line);
        this.line = '';
        this.cr = false;
      } else if (ch === '\r') {
        this.cr = true; // cleared only when new text arrives, so `50%\r` still shows 50%
      } else if (ch === '\x1b') {
        this.state = 'esc';
      } else if (ch === '\x9b') {
        this.state = 'csi';
      } else if (ch === '\b') {
        this.line = this.line.slice(0, -1);
      } else if (ch === '\t') {
        this.append(' '.repeat(8 - (this.line.length % 8)));
      } else if (code >= 0x20 && code !== 0x7f && !(code >= 0x80 && code < 0xa0)) {
        this.append(ch);
      }
    }
    return done;
  }

  /** The unfinished line, if any, as a last line (at the layer's end). */
  flush(): string | null {
    const rest = this.line;
    this.line = '';
    this.cr = false;
    this.state = 'text';
    return rest === '' ? null : rest;
  }

  private append(text: string): void {
    if (this.cr) {
      this.line = '';
      this.cr = false;
    }
    if (this.line.length < MAX_LINE) this.line += text;
  }
}

function textLines(text: string): string[] {
  const buf = new LineBuffer();
  const lines = buf.feed(text);
  const rest = buf.flush();
  if (rest !== null) lines.push(rest);
  while (lines.length && lines[lines.length - 1]!.trim() === '') lines.pop();
  return lines;
}

const oneLine = (text: string) => textLines(text).join(' ').trim();

/** A new kind of event fails to compile here; at run time (a newer engine) it is skipped. */
function unhandled(_e: never): void {}

// ---------------------------------------------------------------------------------------------
// json

class JsonDisplay implements Display {
  constructor(private readonly out: Out) {}

  onEvent(e: BuildEvent): void {
    this.out.write(`${JSON.stringify(e)}\n`);
  }

  close(): void {}
}

// ---------------------------------------------------------------------------------------------
// plain

class PlainDisplay implements Display {
  private readonly plan = new PlanIndex();
  private readonly logs = new Map<string, { index: number; buf: LineBuffer; lines: number }>();

  constructor(
    private readonly out: Out,
    private readonly verbose: boolean,
  ) {}

  onEvent(e: BuildEvent): void {
    switch (e.type) {
      case 'plan':
        this.plan.set(e.layers, e.total);
        this.line(`project ${e.project}`);
        this.line(planSummary(e.layers));
        if (this.verbose) this.line(formatPlan(e.layers));
        return;
      case 'layer-cached':
        this.line(`${this.id(e)} ${this.plan.tag(e.index, e.name)} ${e.name} ${cachedWords(e)}`);
        return;
      case 'layer-start':
        this.logs.set(e.name, { index: e.index, buf: new LineBuffer(), lines: 0 });
        this.line(`${this.id(e)} ${this.plan.tag(e.index, e.name)} ${e.name} ${e.kind} building`);
        return;
      case 'layer-log': {
        const log = this.log(e);
        for (const l of log.buf.feed(e.chunk)) this.logLine(e, l);
        return;
      }
      case 'layer-step':
        this.line(`${this.id(e)} -- ${oneLine(e.step)}`);
        return;
      case 'layer-done':
        this.flushLog(e);
        this.line(`${this.id(e)} DONE ${formatSeconds(e.seconds)} ${formatBytes(e.bytes)}`);
        return;
      case 'layer-failed': {
        const streamed = this.flushLog(e);
        const id = this.id(e);
        if (e.timedOut) this.line(`${id} ERROR timed out after ${formatSeconds(e.seconds)}`);
        else if (e.exitCode !== undefined) this.line(`${id} ERROR exit ${e.exitCode} after ${formatSeconds(e.seconds)}`);
        else this.line(`${id} ERROR after ${formatSeconds(e.seconds)}: ${oneLine(e.message)}`);
        // The script's output was already printed line by line; repeat the tail only if not.
        if (!streamed) for (const l of textLines(e.logTail)) this.line(`${id} ${l}`.trimEnd());
        if (e.logPath) this.line(`${id} log: ${e.logPath}`);
        return;
      }
      case 'output':
        this.line(outputWords(e));
        return;
      case 'done':
        this.line(summaryWords(e));
        return;
      case 'failed':
        this.line(`error: ${e.message}`);
        return;
      case 'notice':
        this.line(e.message);
        return;
      default:
        unhandled(e);
    }
  }

  close(): void {
    for (const [name, log] of this.logs) {
      const rest = log.buf.flush();
      if (rest !== null) this.logLine({ index: log.index, name }, rest);
    }
    this.logs.clear();
  }

  private id(e: { index: number; name: string }): string {
    return `#${this.plan.pos(e.index, e.name)}`;
  }

  private log(e: { index: number; name: string }): { index: number; buf: LineBuffer; lines: number } {
    let log = this.logs.get(e.name);
    if (!log) this.logs.set(e.name, (log = { index: e.index, buf: new LineBuffer(), lines: 0 }));
    return log;
  }

  private logLine(e: { index: number; name: string }, text: string): void {
    this.log(e).lines++;
    this.line(`${this.id(e)} ${text}`.trimEnd());
  }

  /** Prints a partial last line; says whether the layer printed anything at all. */
  private flushLog(e: { index: number; name: string }): boolean {
    const log = this.logs.get(e.name);
    if (!log) return false;
    const rest = log.buf.flush();
    if (rest !== null) this.logLine(e, rest);
    this.logs.delete(e.name);
    return log.lines > 0;
  }

  private line(text: string): void {
    this.out.write(`${text}\n`);
  }
}

// ---------------------------------------------------------------------------------------------
// tty

const SPINNER = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const TICK_MS = 100;
const TAIL_LINES = 8;
const FAILURE_TAIL_LINES = 40;
const INDENT = '    ';
// Synchronized output (DEC mode 2026): the terminal paints a frame whole, never half-erased.
// Terminals that do not know the mode ignore it.
const BEGIN_FRAME = '\x1b[?2026h';
const END_FRAME = '\x1b[?2026l';

type Paint = (text: string) => string;
type Segment = readonly [text: string, paint?: Paint];

interface Running {
  index: number;
  name: string;
  kind: string;
  startedMs: number;
  step: string;
  buf: LineBuffer;
  tail: string[];
}

/**
 * A permanent line per layer, like `docker build`, and below them a live region (log-update)
 * with the running layer, its ticking clock and the last lines of its script. Permanent lines
 * are written above the live region in the same write as its redraw, so they never flicker or
 * repeat; the live region is redrawn on each tick (not on each chunk of output), so a chatty
 * script costs at most ten redraws a second.
 */
class TtyDisplay implements Display {
  private readonly c: ReturnType<typeof pc.createColors>;
  private readonly live: ReturnType<typeof createLogUpdate>;
  private readonly plan = new PlanIndex();
  private readonly running = new Map<string, Running>();
  /** A step outside a running layer (fetching a shared layer, flattening). */
  private activity: { text: string; startedMs: number } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private shown: string | null = null;
  private closed = false;

  constructor(
    private readonly out: Out,
    private readonly verbose: boolean,
    color: boolean,
  ) {
    this.c = pc.createColors(color);
    this.live = createLogUpdate(out);
  }

  onEvent(e: BuildEvent): void {
    if (this.closed) return;
    const c = this.c;
    switch (e.type) {
      case 'plan': {
        this.plan.set(e.layers, e.total);
        const lines = [`${c.dim('project')} ${e.project}`, c.bold(planSummary(e.layers))];
        if (this.verbose) lines.push(c.dim(formatPlan(e.layers)));
        this.print(lines);
        return;
      }
      case 'layer-cached':
        this.activity = null;
        this.print([c.dim(`  ${this.label(e)}  ${cachedWords(e)}`)]);
        return;
      case 'layer-start':
        this.activity = null;
        this.running.set(e.name, this.newRunning(e));
        this.update();
        return;
      case 'layer-log': {
        const r = this.running.get(e.name) ?? this.startImplicitly(e);
        const done = r.buf.feed(e.chunk);
        if (done.length) r.tail = [...r.tail, ...done].slice(-TAIL_LINES);
        return; // the next tick shows it
      }
      case 'layer-step': {
        const r = this.running.get(e.name);
        if (r) r.step = oneLine(e.step);
        else this.activity = { text: `${this.label(e)}  ${oneLine(e.step)}`, startedMs: Date.now() };
        this.update();
        return;
      }
      case 'layer-done':
        this.running.delete(e.name);
        this.print([
          `${c.green('✔')} ${this.label(e)}  ${formatSeconds(e.seconds)}  ${c.dim(formatBytes(e.bytes))}`,
        ]);
        return;
      case 'layer-failed': {
        this.running.delete(e.name);
        const lines = [c.red(`✘ ${this.label(e)}  ${failureWords(e)}`)];
        for (const l of textLines(e.logTail).slice(-FAILURE_TAIL_LINES)) lines.push(`${INDENT}${l}`.trimEnd());
        if (e.logPath) lines.push(c.dim(`${INDENT}log: ${e.logPath}`));
        this.print(lines);
        return;
      }
      case 'output':
        this.activity = null;
        this.print([outputWords(e)]);
        return;
      case 'done':
        this.activity = null;
        this.print([c.bold(summaryWords(e))]);
        return;
      case 'failed':
        this.activity = null;
        this.print([...this.stopAll(), `${c.red(c.bold('error:'))} ${e.message}`]);
        return;
      case 'notice':
        this.print([c.yellow(e.message)]);
        return;
      default:
        unhandled(e);
    }
  }

  close(): void {
    if (this.closed) return;
    this.activity = null;
    const stopped = this.stopAll();
    if (stopped.length) this.print(stopped);
    this.closed = true;
    this.stopTimer();
    if (this.shown !== null) {
      this.frame(() => this.live.clear());
      this.shown = null;
    }
    this.live.done();
  }

  /** `[3/5] 03_users     build-layer` in the columns of the plan. */
  private label(e: { index: number; name: string }, kind = this.plan.kind(e.name)): string {
    const tag = this.plan.tag(e.index, e.name);
    return kind ? `${tag} ${e.name.padEnd(this.plan.namePad)}  ${kind.padEnd(this.plan.kindPad)}` : `${tag} ${e.name}`;
  }

  private newRunning(e: { index: number; name: string; kind?: string }): Running {
    return {
      index: e.index,
      name: e.name,
      kind: e.kind ?? this.plan.kind(e.name),
      startedMs: Date.now(),
      step: '',
      buf: new LineBuffer(),
      tail: [],
    };
  }

  private startImplicitly(e: { index: number; name: string }): Running {
    const r = this.newRunning(e);
    this.running.set(e.name, r);
    this.update();
    return r;
  }

  /** Layers still running when the build stops without saying how they ended (Ctrl-C). */
  private stopAll(): string[] {
    const lines: string[] = [];
    for (const r of this.running.values()) {
      lines.push(this.c.yellow(`- ${this.label(r, r.kind)}  stopped after ${formatSeconds((Date.now() - r.startedMs) / 1000)}`));
      for (const l of this.tailOf(r)) lines.push(this.c.dim(`${INDENT}${l}`.trimEnd()));
    }
    this.running.clear();
    return lines;
  }

  private tailOf(r: Running): string[] {
    return r.buf.partial === '' ? r.tail : [...r.tail, r.buf.partial].slice(-TAIL_LINES);
  }

  private print(lines: string[]): void {
    this.frame(() => {
      if (this.shown !== null) this.live.clear();
      this.shown = null;
      this.out.write(`${lines.join('\n')}\n`);
      this.render();
    });
    this.syncTimer();
  }

  private update(): void {
    this.frame(() => this.render());
    this.syncTimer();
  }

  private render(): void {
    const text = this.liveText();
    if (text === this.shown) return;
    if (text === null) this.live.clear();
    else this.live(text);
    this.shown = text;
  }

  private liveText(): string | null {
    if (this.closed) return null;
    const c = this.c;
    const width = Math.max(20, this.columns() - 1); // never the last column: no pending wrap
    const now = Date.now();
    const spinner = SPINNER[Math.floor(now / TICK_MS) % SPINNER.length]!;
    const lines: string[] = [];
    const tailRoom = Math.max(0, Math.min(TAIL_LINES, this.rows() - 2 - this.running.size));
    for (const r of this.running.values()) {
      lines.push(
        fit(
          [
            [spinner, c.cyan],
            [` ${this.label(r, r.kind)}  `],
            [formatElapsed(now - r.startedMs), c.bold],
            [r.step ? `  ${r.step}` : '', c.dim],
          ],
          width,
        ),
      );
      for (const l of this.tailOf(r).slice(-tailRoom)) lines.push(fit([[`${INDENT}${l}`, c.dim]], width));
    }
    if (this.activity) {
      const a = this.activity;
      lines.push(fit([[spinner, c.cyan], [` ${a.text}  `], [formatElapsed(now - a.startedMs), c.bold]], width));
    }
    return lines.length ? lines.join('\n') : null;
  }

  /** Everything written for one event or tick goes out as one write, painted as one frame. */
  private frame(draw: () => void): void {
    const out = this.out;
    out.cork();
    out.write(BEGIN_FRAME);
    draw();
    out.write(END_FRAME);
    out.uncork();
  }

  private syncTimer(): void {
    const busy = !this.closed && (this.running.size > 0 || this.activity !== null);
    if (busy && !this.timer) {
      this.timer = setInterval(() => this.frame(() => this.render()), TICK_MS);
      this.timer.unref();
    } else if (!busy) {
      this.stopTimer();
    }
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private columns(): number {
    const cols = (this.out as { columns?: number }).columns;
    return cols && cols > 0 ? cols : 80;
  }

  private rows(): number {
    const rows = (this.out as { rows?: number }).rows;
    return rows && rows > 0 ? rows : 24;
  }
}

/** Joins painted segments, cut with `…` to `width` terminal columns. */
function fit(segments: readonly Segment[], width: number): string {
  const paint = (text: string, p?: Paint) => (p && text ? p(text) : text);
  if (segments.reduce((n, [t]) => n + textWidth(t), 0) <= width) {
    return segments.map(([t, p]) => paint(t, p)).join('');
  }
  let room = width - 1;
  let out = '';
  for (const [t, p] of segments) {
    let piece = '';
    for (const ch of t) {
      const w = charWidth(ch.codePointAt(0)!);
      if (w > room) return out + paint(`${piece}…`, p);
      room -= w;
      piece += ch;
    }
    out += paint(piece, p);
  }
  return out;
}

function textWidth(text: string): number {
  let n = 0;
  for (const ch of text) n += charWidth(ch.codePointAt(0)!);
  return n;
}

/** Terminal columns of a printable code point: 0 for combining marks, 2 for wide CJK and emoji. */
function charWidth(cp: number): number {
  if (cp < 0x300) return 1;
  if ((cp >= 0x300 && cp <= 0x36f) || (cp >= 0x200b && cp <= 0x200f) || (cp >= 0xfe00 && cp <= 0xfe0f) || cp === 0xfeff) {
    return 0;
  }
  if (
    (cp >= 0x1100 && cp <= 0x115f) ||
    (cp >= 0x2e80 && cp <= 0xa4cf && cp !== 0x303f) ||
    (cp >= 0xac00 && cp <= 0xd7a3) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0xfe30 && cp <= 0xfe4f) ||
    (cp >= 0xff00 && cp <= 0xff60) ||
    (cp >= 0xffe0 && cp <= 0xffe6) ||
    (cp >= 0x1f300 && cp <= 0x1f64f) ||
    (cp >= 0x1f900 && cp <= 0x1f9ff) ||
    (cp >= 0x20000 && cp <= 0x3fffd)
  ) {
    return 2;
  }
  return 1;
}

import { createLogUpdate } from 'log-update';
import pc from 'picocolors';
import { formatBytes, type BuildEvent } from '@vmlb/layer-engine';
import { unhandled, type Display, type Out } from './display.js';
import { formatElapsed, formatSeconds } from './durations.js';
import { LineBuffer, oneLine, textLines } from './line-buffer.js';
import { PlanIndex } from './plan-index.js';
import { fit } from './terminal-width.js';
import { cachedWords, failureWords, formatPlan, outputWords, planSummary, summaryWords } from './words.js';

const SPINNER = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const TICK_MS = 100;
const TAIL_LINES = 8;
const FAILURE_TAIL_LINES = 40;
const INDENT = '    ';
// Synchronized output (DEC mode 2026): the terminal paints a frame whole, never half-erased.
// Terminals that do not know the mode ignore it.
const BEGIN_FRAME = '\x1b[?2026h';
const END_FRAME = '\x1b[?2026l';

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
export class TtyDisplay implements Display {
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

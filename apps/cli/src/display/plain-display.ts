import { formatBytes, type BuildEvent } from '@vmlb/layer-engine';
import { unhandled, type Display, type Out } from './display.js';
import { formatSeconds } from './durations.js';
import { LineBuffer, oneLine, textLines } from './line-buffer.js';
import { PlanIndex } from './plan-index.js';
import { cachedWords, formatPlan, outputWords, planSummary, summaryWords } from './words.js';

/**
 * Append-only lines for CI logs and pipes, `#N` prefixes like `docker build --progress=plain`:
 * each line of a script's output as it completes, nothing redrawn.
 */
export class PlainDisplay implements Display {
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

/**
 * How vmlb shows a build as it runs (build, submit, watch, rollup): the mode chosen from the
 * flags and the terminal, and its renderer (json-display.ts, plain-display.ts, tty-display.ts)
 * over the words every mode shares (words.ts).
 */
import type { Display, DisplayMode, DisplayOptions, Out } from './display.js';
import { JsonDisplay } from './json-display.js';
import { PlainDisplay } from './plain-display.js';
import { TtyDisplay } from './tty-display.js';

export type { Display, DisplayMode, DisplayOptions } from './display.js';
export { describeChange, formatPlan } from './words.js';

/** The display of `mode` on `out`: one per build, closed when the build ends. */

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

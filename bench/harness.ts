/**
 * What every benchmark shares: where things are, the table's row, the progress line. The rest
 * of the harness is one module each: run-command.ts (child processes that stop on Ctrl-C),
 * sandbox.ts (a temporary store and run dir per benchmark, checked for leftovers),
 * project-files.ts (image projects from a few lines), vmlb-run.ts (`vmlb build --json` run and
 * parsed) and numbers.ts (medians and how they are written).
 *
 * Nothing here asserts a time: a benchmark fails only when something it runs fails, or when
 * a build did not build (or hit) what the benchmark meant to measure.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../', import.meta.url));
export const BENCH_DIR = fileURLToPath(new URL('./', import.meta.url));
export const VMLB = path.join(REPO, 'apps/cli/bin/vmlb.js');
/** Where the temporary stores go: disk-backed by default (the 1 GiB layers need room). */
export const TMP_ROOT = process.env.VMLB_BENCH_TMP || '/var/tmp';

/** One line of the table. */
export interface Row {
  benchmark: string;
  what: string;
  result: string;
  target: string;
  ratio: string;
}

export interface BenchOptions {
  quick: boolean;
}

export function progress(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

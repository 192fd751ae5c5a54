/**
 * Child processes of the benchmarks: each run to its end and timed, stdin closed, output
 * captured; on Ctrl-C (or SIGTERM) the running one is asked to stop and clean up, and nothing
 * more is started.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { progress } from './harness.js';

export class Interrupted extends Error {
  constructor() {
    super('interrupted');
  }
}

let interruptedBy: NodeJS.Signals | null = null;
/** Children running now, each with the signal that asks it to stop and clean up. */
const live = new Map<ChildProcess, NodeJS.Signals>();

export function interrupted(): boolean {
  return interruptedBy !== null;
}

export function checkInterrupted(): void {
  if (interruptedBy) throw new Interrupted();
}

/**
 * Ctrl-C / SIGTERM: ask the running child to stop (vmlb releases what it attached on SIGINT;
 * the shell helpers trap it), let the benchmark's cleanup run, and run nothing more. Children
 * have their own process group, so the terminal's Ctrl-C reaches them only through here.
 */
export function installSignalHandlers(): void {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (interruptedBy) {
        progress('still cleaning up (temp dirs are removed once the running child has exited)');
        return;
      }
      interruptedBy = sig;
      progress(`${sig}: stopping the running benchmark and cleaning up…`);
      for (const [child, stop] of live) child.kill(stop);
    });
  }
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall milliseconds from spawning to the process's exit. */
  ms: number;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** The signal that asks this child to stop and clean up. @default SIGTERM */
  stopSignal?: NodeJS.Signals;
  /** Throw when the exit status is not 0. @default true */
  check?: boolean;
  /** Run even after an interrupt (the leftover checks and the cleanup). @default false */
  always?: boolean;
  /** How to name the command in an error. @default the argv */
  label?: string;
}

export class CommandFailed extends Error {}

function lastLines(s: string, n: number): string {
  return s.trimEnd().split('\n').slice(-n).join('\n');
}

/** Runs a command to its end and times it; stdin closed, output captured. */
export async function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  if (!opts.always) checkInterrupted();
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error('run: empty command');
  const r = await new Promise<RunResult>((resolve, reject) => {
    const started = performance.now();
    let exitedAt: number | undefined;
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    live.set(child, opts.stopSignal ?? 'SIGTERM');
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      live.delete(child);
      reject(e);
    });
    // The wall time is the process's: what a shell waiting for it would see.
    child.on('exit', () => {
      exitedAt = performance.now();
    });
    child.on('close', (code, signal) => {
      live.delete(child);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        ms: (exitedAt ?? performance.now()) - started,
      });
    });
  });
  if (interruptedBy && !opts.always) throw new Interrupted();
  if ((opts.check ?? true) && r.code !== 0) {
    const how = r.code === null ? `was killed by ${r.signal}` : `exited with status ${r.code}`;
    const detail = lastLines(r.stderr || r.stdout, 15);
    throw new CommandFailed(`${opts.label ?? argv.join(' ')} ${how}${detail ? `:\n${detail}` : ''}`);
  }
  return r;
}

import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type Options, type ResultPromise } from 'execa';
import { ExecError, tail } from '../errors.js';
import { debug } from '../debug.js';

/**
 * The one way the engine runs an external command: an explicit environment (PATH and LANG
 * only, plus what the caller adds), stdin closed, the argv traced, a typed ExecError carrying
 * the exit code and the tail of stderr, and on abort SIGTERM, then SIGKILL after a grace
 * period, always reaped.
 */
export interface ExecOptions {
  /** Added to the minimal environment. */
  env?: Record<string, string>;
  cwd?: string;
  signal?: AbortSignal;
  /** Milliseconds between SIGTERM and SIGKILL on abort. @default 3000 */
  killGraceMs?: number;
  /** Do not throw on a non-zero exit: return the result. @default false */
  reject?: boolean;
  /** Text written to the command's stdin (otherwise stdin is closed). */
  input?: string;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number | undefined;
  signal: string | undefined;
}

export const HOST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export function baseEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { PATH: HOST_PATH, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8', ...extra };
}

function execaOptions(opts: ExecOptions): Options {
  return {
    env: baseEnv(opts.env),
    extendEnv: false,
    cwd: opts.cwd,
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: 'ignore' as const }),
    cancelSignal: opts.signal,
    forceKillAfterDelay: opts.killGraceMs ?? 3000,
    reject: false,
    stripFinalNewline: false,
  };
}

export async function exec(argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const [file, ...args] = argv;
  if (!file) throw new TypeError('exec: empty argv');
  const started = performance.now();
  const r = await execa(file, args, execaOptions(opts));
  const exitCode = typeof r.exitCode === 'number' ? r.exitCode : undefined;
  const signal = r.signal ?? undefined;
  const stdout = String(r.stdout ?? '');
  const stderr = String(r.stderr ?? '');
  debug(`${argv.join(' ')} -> ${signal ?? exitCode} in ${(performance.now() - started).toFixed(1)} ms`);
  if (r.isCanceled || (opts.signal?.aborted ?? false)) {
    throw new ExecError(argv, exitCode, signal ?? 'abort', tail(stderr, 10));
  }
  if ((exitCode !== 0 || signal) && opts.reject !== false) {
    throw new ExecError(argv, exitCode, signal, tail(stderr || (r.message ?? ''), 10));
  }
  return { stdout, stderr, exitCode, signal };
}

/**
 * Start a long-running child (a daemon the engine awaits, a VM, a user's script) and hand back
 * the execa process; the caller owns reaping it (stopChild). Same environment discipline as
 * exec(). The child gets its own process group unless `detached: false`, so a Ctrl-C at the
 * terminal reaches only the engine, which then stops its children in the right order (unmount
 * before the daemon dies).
 */
type ChildOutput = 'pipe' | 'ignore' | { file: string };

export interface SpawnOptions extends ExecOptions {
  stdout?: ChildOutput;
  stderr?: ChildOutput;
  /** `pipe` for a child the caller talks to, `inherit` for one on the user's terminal. @default closed (or `input`) */
  stdin?: 'pipe' | 'inherit' | 'ignore';
  /** @default true */
  detached?: boolean;
  /** What the debug trace shows instead of the argv (which may hold a long inline script). */
  describe?: string;
}

export function spawnChild(argv: string[], opts: SpawnOptions = {}): ResultPromise {
  const [file, ...args] = argv;
  if (!file) throw new TypeError('spawnChild: empty argv');
  debug(`spawn ${opts.describe ?? argv.join(' ')}`);
  return execa(file, args, {
    ...execaOptions(opts),
    ...(opts.stdin ? { stdin: opts.stdin } : {}),
    stdout: opts.stdout ?? 'pipe',
    stderr: opts.stderr ?? 'pipe',
    buffer: false,
    detached: opts.detached ?? true,
  });
}

/** A child's end as a promise that never rejects (execa rejects on a failed start even with reject: false). */
export function settled(child: ResultPromise): Promise<unknown> {
  return child.then(
    (r) => r,
    (e: unknown) => e,
  );
}

/** Resolves true once `exited` settles, false after `ms` (its timer cleared either way, so it never keeps the process alive). */
async function exitsWithin(exited: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const done = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
  clearTimeout(timer);
  return done;
}

/**
 * Stop a child the engine started and reap it: each way of asking it to end in turn (by
 * default SIGTERM; a daemon may first be asked its own way, a holder by closing its stdin),
 * `graceMs` apart, then SIGKILL. A child that has ended already is only reaped. Resolves once
 * it has exited, with true when it ended before the SIGKILL.
 */
export async function stopChild(
  child: ResultPromise,
  opts: { exited?: Promise<unknown>; ask?: Array<NodeJS.Signals | (() => unknown)>; graceMs?: number } = {},
): Promise<boolean> {
  const exited = opts.exited ?? settled(child);
  if (child.exitCode !== null || child.signalCode !== null) {
    await exited;
    return true;
  }
  for (const ask of opts.ask ?? ['SIGTERM']) {
    if (typeof ask === 'string') child.kill(ask);
    else await ask();
    if (await exitsWithin(exited, opts.graceMs ?? 3000)) return true;
  }
  child.kill('SIGKILL');
  await exited;
  return false;
}

/** Whether an executable `name` is on the PATH the engine runs commands with (for unavailableReason()). */
export async function commandOnPath(name: string): Promise<boolean> {
  for (const dir of HOST_PATH.split(':')) {
    try {
      await access(join(dir, name), constants.X_OK);
      return true;
    } catch {
      // not in this dir
    }
  }
  return false;
}

/** Why a backend cannot run here for want of a command: the first of `commands` not on the PATH, with the Debian package that has it; null when all are there. */
export async function missingCommand(commands: ReadonlyArray<readonly [command: string, debianPackage: string]>): Promise<string | null> {
  for (const [cmd, pkg] of commands) {
    if (!(await commandOnPath(cmd))) return `${cmd} is not installed (Debian package ${pkg})`;
  }
  return null;
}

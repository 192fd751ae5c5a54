import { execa, type Options, type ResultPromise } from 'execa';
import { ExecError, tail } from './errors.js';
import { debug } from './debug.js';

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
 * Start a long-running child (a daemon the engine awaits, or a user's script) and hand back
 * the execa process; the caller owns reaping it. Same environment discipline as exec().
 * The child gets its own process group, so a Ctrl-C at the terminal reaches only the engine,
 * which then stops its children in the right order (unmount before the daemon dies).
 */
type ChildOutput = 'pipe' | 'ignore' | { file: string };

export function spawnChild(argv: string[], opts: ExecOptions & { stdout?: ChildOutput; stderr?: ChildOutput } = {}): ResultPromise {
  const [file, ...args] = argv;
  if (!file) throw new TypeError('spawnChild: empty argv');
  debug(`spawn ${argv.join(' ')}`);
  return execa(file, args, {
    ...execaOptions(opts),
    stdout: opts.stdout ?? 'pipe',
    stderr: opts.stderr ?? 'pipe',
    buffer: false,
    detached: true,
  });
}

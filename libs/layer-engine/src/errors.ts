import type { ErrorCode } from './error-codes.js';

/**
 * Every error the engine throws is a VmlbError with a stable `code` (classified in
 * error-codes.ts), a message that names the thing that is wrong, and `retryable` telling a
 * caller (the fleet worker) whether trying again can help. Libraries throw; only the apps'
 * entry points print errors and choose exit codes.
 */
export class VmlbError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  constructor(code: ErrorCode, message: string, opts: { retryable?: boolean; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = opts.retryable ?? false;
  }
}

/** One problem found in an image project; a ProjectError carries all of them at once. */
export interface ProjectProblem {
  /** The layer folder (or file) the problem is about, relative to the project. */
  where: string;
  problem: string;
}

export class ProjectError extends VmlbError {
  readonly problems: ProjectProblem[];
  constructor(projectDir: string, problems: ProjectProblem[]) {
    const lines = problems.map((p) => `  ${p.where}: ${p.problem}`);
    super(
      'PROJECT_INVALID',
      `the image project ${projectDir} has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n${lines.join('\n')}`,
    );
    this.problems = problems;
  }
}

/** A command the engine ran failed (not a user's layer script: see LayerFailedError). */
export class ExecError extends VmlbError {
  readonly argv: string[];
  readonly exitCode: number | undefined;
  readonly signal: string | undefined;
  readonly stderrTail: string;
  constructor(argv: string[], exitCode: number | undefined, signal: string | undefined, stderrTail: string) {
    const how = signal ? `was killed by ${signal}` : `exited with ${exitCode}`;
    super('EXEC_FAILED', `${argv.join(' ')} ${how}${stderrTail ? `:\n${indent(stderrTail)}` : ''}`);
    this.argv = argv;
    this.exitCode = exitCode;
    this.signal = signal;
    this.stderrTail = stderrTail;
  }
}

/**
 * A user's layer script failed or passed its timeout. Not retryable: the same inputs fail again.
 * Its message is one line (`layer 02_app exited with status 3`); `logTail` and `logPath` say the rest.
 */
export class LayerFailedError extends VmlbError {
  readonly layer: string;
  readonly exitCode: number | undefined;
  readonly timedOut: boolean;
  readonly logTail: string;
  readonly logPath: string;
  /** Why the script may have failed, when the engine can tell (a usage line: see usageHint in layer-builder.ts). */
  readonly hint: string | undefined;
  /** Where a local build kept the layer's half-built overlay (`vmlb shell --failed` opens it), if it did. */
  keptOverlay?: string;
  constructor(args: { layer: string; exitCode?: number; timedOut?: boolean; signal?: string; logTail: string; logPath: string; hint?: string }) {
    const why = args.timedOut
      ? 'passed its # timeout and was stopped'
      : args.signal
        ? `was killed by ${args.signal}`
        : `exited with status ${args.exitCode}`;
    // One line: what happened. Its log's tail and where the full log is are fields, shown by
    // whoever reports it (the CLI's display prints the tail; the fleet keeps it as the layer's
    // log): a message that carried them was repeated, and put a worker's local path in front
    // of users of the fleet.
    super('LAYER_FAILED', `layer ${args.layer} ${why}${args.hint ? `; ${args.hint}` : ''}`);
    this.hint = args.hint;
    this.layer = args.layer;
    this.exitCode = args.exitCode;
    this.timedOut = args.timedOut ?? false;
    this.logTail = args.logTail;
    this.logPath = args.logPath;
  }
}

export class StoreError extends VmlbError {
  constructor(message: string, opts: { retryable?: boolean; cause?: unknown } = {}) {
    super('STORE_ERROR', message, opts);
  }
}

/** The user (Ctrl-C, SIGTERM) or a caller's AbortSignal stopped the build. */
export class AbortedError extends VmlbError {
  constructor(reason = 'the build was interrupted') {
    super('ABORTED', reason);
  }
}

/** A host requirement is missing (a command, a device, root). */
export class HostError extends VmlbError {
  constructor(message: string) {
    super('HOST_UNSUITABLE', message);
  }
}

export function indent(text: string, by = '  '): string {
  return text
    .split('\n')
    .map((l) => by + l)
    .join('\n');
}

/** The last `lines` lines of a text, for error messages. */
export function tail(text: string, lines = 20): string {
  const all = text.replace(/\s+$/, '').split('\n');
  return all.slice(-lines).join('\n');
}

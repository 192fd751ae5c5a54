/**
 * vmlb's exit statuses, and how a command ends with one of its own. Commands never set
 * process.exitCode: they throw, and main.ts (exitCodeFor) turns what they threw into the status,
 * as it does for a library's errors.
 */

export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
/** The scheduler (or the shared store behind it) cannot be reached: an outage, not a failed build. */
export const EXIT_UNREACHABLE = 3;
/** What a shell answers for a command it cannot find or run. */
export const EXIT_NOT_STARTED = 127;
export const EXIT_INTERRUPTED = 130;

/**
 * A command's end with the status it chose: its answer (`diff --exit-code` found differences, a
 * command run in a layer exited 3, `migrate` left work to do) rather than a failure. main.ts
 * prints `vmlb: MESSAGE` when there is one (none: the command has said what it had to).
 */
export class CommandExit extends Error {
  constructor(
    readonly exitCode: number,
    message = '',
  ) {
    super(message);
    this.name = 'CommandExit';
  }
}

/** A bad argument found by a command (an image that is not there, options that exclude each other): exit 2, like commander's own usage errors. */
export class UsageError extends CommandExit {
  constructor(message: string) {
    super(EXIT_USAGE, message);
    this.name = 'UsageError';
  }
}

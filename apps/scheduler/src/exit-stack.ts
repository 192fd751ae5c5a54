/**
 * The releases of a setup made of many acquisitions (connections, pools, folders, timers), kept
 * as it goes: each acquisition pushes its release the moment it is made, so that a failure at
 * any later step undoes exactly what was done, last first, and one `close()` undoes all of it.
 * Without it, every step's error path has to know what the steps before it opened.
 */
export class ExitStack {
  private readonly releases: Array<() => unknown> = [];
  private closing: Promise<void> | undefined;

  /** Registers a release, run by `close()` before those pushed earlier. */
  push(release: () => unknown): void {
    // A release pushed after the unwinding began would never run: a bug in the setup, said at once.
    if (this.closing) throw new Error('ExitStack: a release was pushed after close()');
    this.releases.push(release);
  }

  /** `value`, its release registered: `const redis = stack.use(connect(), (c) => c.disconnect())`. */
  use<T>(value: T, release: (value: T) => unknown): T {
    this.push(() => release(value));
    return value;
  }

  /**
   * Runs the releases, last pushed first, each awaited before the next. One that throws does not
   * stop the others: the first error is thrown once all have run. Safe to call twice: a later
   * call waits for the same unwinding.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      let failure: { error: unknown } | undefined;
      for (let release = this.releases.pop(); release; release = this.releases.pop()) {
        try {
          await release();
        } catch (e) {
          failure ??= { error: e };
        }
      }
      if (failure) throw failure.error;
    })();
    return this.closing;
  }

  /**
   * Runs `setup` with a new stack. Should it throw, what it had acquired is released and its own
   * error thrown (not a release's, which would hide why the setup failed); otherwise its result
   * keeps the stack, to close it later.
   */
  static async build<T>(setup: (stack: ExitStack) => Promise<T>): Promise<T> {
    const stack = new ExitStack();
    try {
      return await setup(stack);
    } catch (e) {
      await stack.close().catch(() => undefined);
      throw e;
    }
  }
}

/**
 * Releases what a failed step held and returns the step's error for the caller to throw. A
 * release that fails too is noted in that error's message, never thrown in its place: the
 * caller is to see why the step failed (a failing script stays a LayerFailedError, not a
 * retryable DISK_RELEASE_FAILED a worker would run again), and still learn that something may
 * be left attached.
 */
export async function releaseOnFailure(error: unknown, release: () => Promise<void>): Promise<unknown> {
  try {
    await release();
  } catch (releaseError) {
    if (error instanceof Error) error.message += `\n(and releasing what was attached failed too: ${(releaseError as Error).message})`;
  }
  return error;
}

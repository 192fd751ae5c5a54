/**
 * Debug tracing for the engine: every external command's argv and timing, enabled with
 * VMLB_DEBUG=1. Kept to a bare stderr writer so that the CLI's start-up stays fast.
 */
const enabled = process.env.VMLB_DEBUG === '1' || process.env.VMLB_DEBUG === 'true';

export function debug(msg: string): void {
  if (enabled) process.stderr.write(`[vmlb ${new Date().toISOString().slice(11, 23)}] ${msg}\n`);
}

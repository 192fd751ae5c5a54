/**
 * Where the engine keeps its run-time state: one folder (`$VMLB_RUN_DIR`, else `/run/vmlb`),
 * read on each call so that a test or a worker can point one process at its own. The sweep
 * trusts only what sits in these folders as the engine's own.
 */
import { join } from 'node:path';

export function runDir(): string {
  return process.env.VMLB_RUN_DIR || '/run/vmlb';
}

/** The attach records (attach-record.ts), one JSON file per attachment. */
export function attachStateDir(): string {
  return join(runDir(), 'attach');
}

/** Where the fuse backend puts its export files (and its daemon's socket, pid and log files). */
export function fuseDir(): string {
  return join(runDir(), 'fuse');
}

/** Lock files that reserve /dev/nbdN between choosing it and connecting it. */
export function nbdLockDir(): string {
  return join(runDir(), 'nbd');
}

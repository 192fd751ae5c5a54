import type { BuildRecord } from '@vmlb/fleet';
import type { StoredRecord } from './build-records.js';

/** A record as the API shows it: without the scheduler's own bookkeeping. */
export function publicRecord(r: StoredRecord): BuildRecord {
  const { cursor: _cursor, ...rest } = r;
  return rest;
}

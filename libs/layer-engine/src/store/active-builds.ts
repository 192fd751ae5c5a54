import { randomBytes } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { processIdentity, isRunning, type ProcessIdentity } from '../host/process-identity.js';
import { writeJsonAtomic } from './atomic-json.js';
import { StoreError } from '../errors.js';

/**
 * A build in progress (`active/<pid>-<rand>.json`): its owner (pid and start time, so a reused
 * pid is not taken for it) and the keys it uses, which gc and eviction leave alone.
 */
interface ActiveRecord {
  owner: ProcessIdentity;
  what: string;
  keys: string[];
  at: string;
}

/**
 * Records that a build in progress uses `keys` (its whole chain): until the returned
 * release is called, or its process is gone, gc and eviction keep them and their ancestors.
 */
export async function markActive(root: string, keys: string[], what: string): Promise<() => Promise<void>> {
  const owner = await processIdentity(process.pid);
  if (!owner) throw new StoreError(`cannot read this process's identity (/proc/${process.pid}/stat)`);
  const file = path.join(root, 'active', `${process.pid}-${randomBytes(4).toString('hex')}.json`);
  await writeJsonAtomic(file, { owner, what, keys, at: new Date().toISOString() } satisfies ActiveRecord);
  return () => rm(file, { force: true });
}

/** The keys of the builds in progress (records of processes that are gone are removed). */
export async function activeKeys(root: string): Promise<Set<string>> {
  const keys = new Set<string>();
  const dir = path.join(root, 'active');
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    if (!f.endsWith('.json')) continue;
    const file = path.join(dir, f);
    try {
      const r = JSON.parse(await readFile(file, 'utf8')) as ActiveRecord;
      if (await isRunning(r.owner)) for (const k of r.keys) keys.add(k);
      else await rm(file, { force: true });
    } catch {
      /* being written or removed right now */
    }
  }
  return keys;
}

import path from 'node:path';
import { readLockOwner, tryLock, unlock } from '../disk/lock-files.js';
import { AbortedError } from '../errors.js';
import type { BuildEvent } from './events.js';
import type { LocalStore } from '../store/local-store.js';

/** How often a build waiting for another build's claim on a layer looks again. */
const CLAIM_POLL_MS = 200;

/**
 * Takes this store's claim on a layer key (`claims/<key>.lock`, naming this process; a dead
 * holder's claim is taken over), waiting while another build holds it, and says so once.
 * Returns the release.
 */
export async function claimLayer(store: LocalStore, l: { name: string; key: string }, signal: AbortSignal | undefined, emit: (e: BuildEvent) => void): Promise<() => Promise<void>> {
  const file = path.join(store.root, 'claims', `${l.key}.lock`);
  let said = false;
  while (!(await tryLock(file))) {
    if (signal?.aborted) throw new AbortedError();
    if (!said) {
      const holder = await readLockOwner(file);
      emit({ type: 'notice', at: Date.now(), message: `${l.name}: another build${holder ? ` (pid ${holder.pid})` : ''} is building this layer; waiting to take it from the store` });
      said = true;
    }
    await new Promise((r) => setTimeout(r, CLAIM_POLL_MS));
  }
  return () => unlock(file);
}

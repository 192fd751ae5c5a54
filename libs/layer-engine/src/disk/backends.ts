import { fuseBackend } from './attach-fuse.js';
import { nbdBackend } from './attach-nbd.js';
import type { DiskBackend } from './disk-backend.js';
import { HostError } from '../errors.js';

export type BackendPreference = 'auto' | 'fuse' | 'nbd';

export const BACKENDS: Record<'fuse' | 'nbd', DiskBackend> = { fuse: fuseBackend, nbd: nbdBackend };

/**
 * The disk backend to use: `auto` takes nbd where the nbd module is loaded (/dev/nbd0), else
 * fuse; a backend asked for by name must be usable here, or this says why it is not.
 */
export async function chooseBackend(pref: BackendPreference): Promise<DiskBackend> {
  const candidates = pref === 'auto' ? [nbdBackend, fuseBackend] : [BACKENDS[pref]];
  const reasons: string[] = [];
  for (const backend of candidates) {
    const reason = await backend.unavailableReason();
    if (reason === null) return backend;
    reasons.push(`${backend.name}: ${reason}`);
  }
  const asked = pref === 'auto' ? 'no disk backend is usable here' : `the ${pref} disk backend is not usable here`;
  throw new HostError(`${asked}:\n  ${reasons.join('\n  ')}`);
}

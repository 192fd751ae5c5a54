import { describeSweep, sweep } from '../disk/sweep.js';
import { removeShellOrphans } from '../tools/layer-shell.js';
import type { LocalStore } from '../store/local-store.js';
import { formatBytes } from '../sizes.js';

/** Releases what a killed earlier run left attached, and its half-built blobs. */
export async function startupSweep(store: LocalStore): Promise<string | null> {
  const report = await sweep();
  const tmp = await store.sweepTemp();
  const orphans = await store.sweepOrphans();
  const sessions = await removeShellOrphans();
  const parts = [
    describeSweep(report),
    tmp ? `removed ${tmp} half-built blob${tmp === 1 ? '' : 's'}` : null,
    sessions ? `removed ${sessions} vmlb shell session folder${sessions === 1 ? '' : 's'}` : null,
    orphans.files ? `removed ${orphans.files} file${orphans.files === 1 ? '' : 's'} no layer owns (${formatBytes(orphans.bytes)})` : null,
  ].filter(Boolean);
  return parts.length ? `cleaned up after an interrupted run: ${parts.join('; ')}` : null;
}

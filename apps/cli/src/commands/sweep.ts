import type { Command } from 'commander';
import { formatBytes, startupSweep, sweepFailedLayers, type LocalStore } from '@vmlb/layer-engine';
import { storeFrom, storeOption } from '../cli-options.js';
import { short } from '../session-state.js';

/** `vmlb sweep --failed`: removes every failed layer's kept overlay; the line to print. */
async function sweepFailedLine(store: LocalStore): Promise<string> {
  const gone = await sweepFailedLayers(store);
  if (gone.length === 0) return 'no failed layer overlays kept';
  const bytes = gone.reduce((s, f) => s + f.bytes, 0);
  return `removed ${gone.length} failed layer overlay${gone.length === 1 ? '' : 's'} (${formatBytes(bytes)}): ${gone.map((f) => `${f.name} (${short(f.key)})`).join(', ')}`;
}

/** `vmlb sweep`: releases what a killed run left (vmlb build does this first); --failed also the failed layers' kept overlays. */
export function registerSweep(program: Command): void {
  program
    .command('sweep')
    .description('release loop devices, FUSE exports, daemons and half-built blobs left by a killed run (vmlb build does this first)')
    .addOption(storeOption())
    .option('--failed', "also remove the half-built overlays kept of failed layers (vmlb shell --failed)")
    .action(async (o: { store?: string; failed?: boolean }) => {
      const store = storeFrom(o);
      await store.init();
      const msg = await startupSweep(store);
      process.stdout.write((msg ?? 'nothing to clean up') + '\n');
      if (o.failed) process.stdout.write((await sweepFailedLine(store)) + '\n');
    });
}

import type { Command } from 'commander';
import { formatBytes } from '@vmlb/layer-engine';
import { storeFrom, storeOption } from '../cli-options.js';

/** `vmlb store`: where the local store is, how many layers, how many bytes, and what no layer owns. */
export function registerStore(program: Command): void {
  program
    .command('store')
    .description('show the local store: where it is, how many layers, how many bytes')
    .addOption(storeOption())
    .option('--json', 'print as JSON')
    .action(async (o: { store?: string; json?: boolean }) => {
      const store = storeFrom(o);
      const u = await store.usage();
      const orphans = await store.orphans();
      const orphanBytes = orphans.reduce((s, x) => s + x.bytes, 0);
      if (o.json) process.stdout.write(JSON.stringify({ root: store.root, ...u, orphans: { files: orphans.length, bytes: orphanBytes } }) + '\n');
      else {
        const debris = orphans.length ? `; ${orphans.length} file${orphans.length === 1 ? '' : 's'} no layer owns, ${formatBytes(orphanBytes)} (vmlb sweep removes them)` : '';
        process.stdout.write(`${store.root}: ${u.layers} layers, ${formatBytes(u.bytes)}${debris}\n`);
      }
    });
}

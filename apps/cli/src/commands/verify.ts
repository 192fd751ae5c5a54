import type { Command } from 'commander';
import { formatBytes } from '@vmlb/layer-engine';
import { storeFrom, storeOption } from '../cli-options.js';
import { CommandExit, EXIT_FAILED } from '../command-exit.js';

/** `vmlb verify`: every layer's blob against its manifest's sha256; a corrupt one is removed with the layers built on it. */
export function registerVerify(program: Command): void {
  program
    .command('verify')
    .description("check every layer's blob in the local store against its manifest's sha256; a corrupt layer is removed with the layers built on it (the next build makes them again)")
    .addOption(storeOption())
    .option('--dry-run', 'report corrupt layers without removing them')
    .option('--json', 'print as JSON')
    .action(async (o) => {
      const store = storeFrom(o);
      await store.init();
      const r = await store.verifyAll({ dryRun: o.dryRun === true });
      if (o.json) process.stdout.write(JSON.stringify({ root: store.root, ...r }, null, 2) + '\n');
      else {
        const lines = [`${store.root}: checked ${r.checked} layer${r.checked === 1 ? '' : 's'}, ${formatBytes(r.bytes)}: ${r.corrupt.length ? `${r.corrupt.length} corrupt` : 'all match their manifests'}`];
        for (const c of r.corrupt) {
          const more = c.removed.length - 1;
          lines.push(`  ${c.key.slice(0, 12)}  ${c.name}: ${c.reason}${o.dryRun ? '' : `; removed${more > 0 ? ` with the ${more} layer${more === 1 ? '' : 's'} built on it` : ''}`}`);
        }
        process.stdout.write(lines.join('\n') + '\n');
      }
      if (r.corrupt.length) throw new CommandExit(EXIT_FAILED);
    });
}

import type { Command } from 'commander';
import path from 'node:path';
import { build, formatBytes, formatSeconds, rollup } from '@vmlb/layer-engine';
import { backendOption, failsAsInterrupted, interruptSignal, layerRunFromEnv, projectOption, storeFrom, storeOption } from '../cli-options.js';
import { chooseMode, createDisplay } from '../display/index.js';

/**
 * `vmlb rollup LAYER`: folds the chain up to LAYER into a new base, then builds the project on
 * it and says what the layer after it took before and after.
 */
export function registerRollup(program: Command): void {
  program
    .command('rollup')
    .description('fold the chain up to LAYER into a new base (a base-image layer over the flattened chain), so the layers after it build on a short chain')
    .argument('<layer>', 'the last layer to fold in (its folder name, e.g. 04_user)')
    .addOption(projectOption())
    .addOption(storeOption())
    .option('--no-build', 'only write the new base; do not build the project on it')
    .option('--keep-local', 'add rolled/*.qcow2 to the project\'s .gitignore (the image stays on this machine)')
    .option('--plain', 'plain line output for the build, no live redraw')
    .option('--json', 'print the result as one JSON object (the build shows nothing)')
    .addOption(backendOption())
    .action(
      failsAsInterrupted(async (layer: string, o) => {
        const store = storeFrom(o);
        const signal = interruptSignal({ doing: 'stopping the rollup' });
        const projectDir = path.resolve(o.project);
        const lines: string[] = [];
        const out = (line: string) => (o.json ? lines.push(line) : process.stdout.write(line + '\n'));
        const rel = (p: string) => path.relative(process.cwd(), p) || p;
        const layerRun = layerRunFromEnv();
        const r = await rollup({ projectDir, layer, store, backend: o.backend, keepLocal: o.keepLocal, signal, layerRun });
        const names = r.rolled.length > 2 ? `${r.rolled[0]} … ${r.rolled.at(-1)}` : r.rolled.join(', ');
        out(`rolled up ${names} (${r.rolled.length} layers, chain top ${r.fromKey.slice(0, 12)}) in ${formatSeconds(r.seconds)}`);
        out(`  ${rel(r.image)}: ${formatBytes(r.bytes)}, sha256 ${r.sha256}`);
        out(`  ${rel(r.baseImageFile)}: source: ../rolled/${path.basename(r.image)}`);
        out(`  the folded layer folders: ${rel(r.movedTo)}/`);
        out(`  chain under ${r.next?.name ?? 'the next layer'}: ${r.chainBefore} overlay${r.chainBefore === 1 ? '' : 's'} before, ${r.chainAfter} now (the rolled-up base)`);
        const json = (after?: number) => {
          if (o.json) process.stdout.write(JSON.stringify({ ...r, next: r.next && { ...r.next, secondsAfter: after } }, null, 2) + '\n');
        };
        if (!r.next) return json();
        const before = r.next.secondsBefore;
        if (o.build === false) {
          json();
          out(`${r.next.name} last built in ${before === undefined ? '(never)' : formatSeconds(before)} on the ${r.chainBefore}-overlay chain; vmlb build rebuilds it on the new base`);
          return;
        }
        out('building the project on the new base:');
        const display = o.json ? { onEvent: () => {}, close: () => {} } : createDisplay(chooseMode({ plain: o.plain }, process.stdout), process.stdout);
        let after: number | undefined;
        try {
          await build({
            projectDir,
            store,
            backend: o.backend,
            signal,
            ...layerRun,
            onEvent: (e) => {
              if (e.type === 'layer-done' && e.name === r.next!.name) after = e.seconds;
              display.onEvent(e);
            },
          });
        } finally {
          display.close();
        }
        const was = before === undefined ? 'never built before' : `${formatSeconds(before)} on the ${r.chainBefore}-overlay chain`;
        out(`${r.next.name}: ${was}; ${after === undefined ? 'cached' : formatSeconds(after)} on the rolled-up base (1 overlay)`);
        json(after);
      }),
    );
}

import type { Command } from 'commander';
import path from 'node:path';
import { planBuild } from '@vmlb/layer-engine';
import { cacheOption, sharedFrom, storeFrom, storeOption } from '../cli-options.js';
import { formatPlan } from '../display/index.js';

/** `vmlb explain [DIR]`: each layer's key, whether it is cached, and what changed since its last build; builds nothing. */
export function registerExplain(program: Command): void {
  program
    .command('explain')
    .description('say for each layer its key, whether it is cached, and what changed since it was last built; builds nothing')
    .argument('[dir]', 'the image project', '.')
    .option('--last <layer>', 'stop after this layer')
    .addOption(storeOption())
    .addOption(cacheOption())
    .option('--json', 'print the plan as JSON')
    .action(async (dir: string, o) => {
      const store = storeFrom(o);
      const shared = sharedFrom(o);
      const plan = await planBuild({ projectDir: path.resolve(dir), store, shared, last: o.last }).finally(() => shared?.close());
      if (plan.sharedProblem) process.stderr.write(`vmlb: ${plan.sharedProblem}\n`);
      for (const p of plan.problems) process.stderr.write(`vmlb: ${p}\n`);
      if (o.json) process.stdout.write(JSON.stringify({ project: plan.project.dir, layers: plan.layers }, null, 2) + '\n');
      else process.stdout.write(formatPlan(plan.layers) + '\n');
    });
}

import type { Command } from 'commander';
import { LAYER_DIR_PATTERN } from '@vmlb/layer-engine';
import { backendOption, projectOption, storeOption } from '../cli-options.js';
import { UsageError } from '../command-exit.js';
import { exitWithStatus, session } from '../layer-session.js';

/** `vmlb run LAYER -- CMD ARGS…`: CMD in a layer's root filesystem as `vmlb shell` opens it, not interactive; vmlb exits with its status. */
export function registerRun(program: Command): void {
  program
    .command('run')
    .description("run CMD in a layer's root filesystem as its build-layer saw it (the same as vmlb shell, not interactive): its output streams here, and vmlb exits with its status")
    .argument('<layer-and-command...>', 'LAYER -- CMD ARGS… (LAYER as for vmlb shell; none with --before LAYER, and optional with --failed)')
    .usage('[options] LAYER -- CMD [ARGS...]')
    .addOption(projectOption())
    .addOption(storeOption())
    .option('--before <layer>', 'the state before LAYER ran (its parent), LAYER\'s folder at /mnt')
    .option('--failed', "a failed layer's half-built overlay (vmlb shell --failed)")
    .option('--keep <file>', 'keep what CMD changed: a qcow2 overlay at FILE on the state it ran in')
    .option('--compare <image>', 'mount another image read-only at /compare')
    .option('--no-sandbox', 'run unconfined, as root of this host (also VMLB_SANDBOX=0)')
    .addOption(backendOption())
    .action(async (words: string[], o, cmd: Command) => {
      let ref: string | undefined;
      let command = words;
      if (o.before === undefined && (!o.failed || (words.length > 1 && LAYER_DIR_PATTERN.test(words[0]!)))) {
        ref = words[0];
        command = words.slice(1);
      }
      if (command.length === 0) throw new UsageError('run: say what to run: vmlb run LAYER -- CMD [ARGS...]');
      const projectGiven = cmd.getOptionValueSource('project') === 'cli';
      const { r } = await session(ref, command, { ...o, projectGiven }, 'run');
      exitWithStatus(r);
    });
}

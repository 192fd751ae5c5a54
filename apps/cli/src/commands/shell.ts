import type { Command } from 'commander';
import { backendOption, projectOption, storeOption } from '../cli-options.js';
import { UsageError } from '../command-exit.js';
import { exitWithStatus, jsonResult, session } from '../layer-session.js';

/**
 * `vmlb shell [LAYER]`: a shell in a layer's root filesystem as its build-layer saw it, on a
 * throw-away overlay (layer-session.ts); vmlb exits with the shell's status.
 */
export function registerShell(program: Command): void {
  program
    .command('shell')
    .description(
      "open a shell (the image's /bin/bash, else /bin/sh) in a layer's root filesystem as its build-layer saw it — same sandbox, environment and mounts, its folder read-only at /mnt — on a throw-away overlay: nothing you do changes the store",
    )
    .argument('[layer]', "a layer name (NN_name: its last build in the project), a layer key or an image file (default: the project's last layer); with --failed, which failed layer")
    .addOption(projectOption())
    .addOption(storeOption())
    .option('--before <layer>', "the state before LAYER ran (its parent's result), LAYER's folder at /mnt: to try its script by hand")
    .option('--failed', "a failed layer's half-built overlay, as vmlb build kept it (the project's last failure), the failing script's folder at /mnt")
    .option('--keep <file>', 'keep what you changed: a qcow2 overlay at FILE whose backing file is the state you opened')
    .option('--compare <image>', 'mount another image (layer name, key or file) read-only at /compare')
    .option('--no-sandbox', 'run unconfined, as root of this host (as vmlb build --no-sandbox; also VMLB_SANDBOX=0)')
    .option('--json', 'after the session, print what was opened, its exit status and what was kept as one JSON object (no banner)')
    .addOption(backendOption())
    .action(async (ref: string | undefined, o, cmd: Command) => {
      if (ref !== undefined && o.before !== undefined) throw new UsageError('shell: give LAYER or --before LAYER, not both');
      if (o.failed && o.before !== undefined) throw new UsageError('shell: --failed and --before do not go together');
      const projectGiven = cmd.getOptionValueSource('project') === 'cli';
      const { r, resolved } = await session(ref, undefined, { ...o, projectGiven }, 'shell');
      if (o.json) process.stdout.write(jsonResult('shell', resolved, r));
      exitWithStatus(r);
    });
}

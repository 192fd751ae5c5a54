import { type Command, Option } from 'commander';
import path from 'node:path';
import { LayerFailedError, build } from '@vmlb/layer-engine';
import { cacheOption, interruptSignal, layerRunFromEnv, sandboxDenyFromEnv, sandboxFrom, sharedFrom, sizeArg, storeFrom, storeOption } from '../cli-options.js';
import { chooseMode, createDisplay } from '../display/index.js';
import { shellOnFailure } from '../layer-session.js';

/**
 * `vmlb build [DIR]`: builds the project into DIR/build/image.qcow2, showing the build as it
 * runs. Ctrl-C stops it and releases everything it attached.
 */
export function registerBuild(program: Command): void {
  program
    .command('build')
    .description('build the image project in DIR (default: the current folder) into DIR/build/image.qcow2')
    .argument('[dir]', 'the image project', '.')
    .option('--flatten', 'write one standalone qcow2 instead of a thin overlay on the cached chain')
    .option('--last <layer>', 'stop after this layer (its folder name, e.g. 03_users)')
    .addOption(new Option('--compat <version>', 'qcow2 compatibility of the output (0.10 implies --flatten)').choices(['0.10', '1.1']))
    .option('-o, --output <file>', 'where to write the image (default: DIR/build/image.qcow2)')
    .option('--explain', 'print each layer\'s key, hit or miss, and what changed since its last build')
    .addOption(new Option('--backend <name>', 'how disks are attached').choices(['auto', 'fuse', 'nbd']).default('auto').env('VMLB_BACKEND'))
    .addOption(storeOption())
    .addOption(cacheOption())
    .addOption(new Option('--store-cap <size>', 'evict least-recently-used layers above this size').argParser(sizeArg).env('VMLB_STORE_CAP'))
    .option('--no-sandbox', 'run layer scripts unconfined, as root of this host, for debugging (also VMLB_SANDBOX=0); VMLB_SANDBOX_DENY=ADDR,… adds addresses layers may not reach')
    .option('--json', 'print build events as JSON lines (for machines)')
    .option('--plain', 'plain line output, no live redraw (the default when stdout is not a terminal)')
    .option('--shell-on-failure', "when a layer fails, open a shell in its kept half-built overlay at once (on a terminal; as vmlb shell --failed)")
    .action(async (dir: string, o) => {
      const sandboxed = sandboxFrom(o);
      const layerRun = layerRunFromEnv(); // a bad VMLB_LOG_MAX is a usage error before anything runs
      const shared = sharedFrom(o);
      const display = createDisplay(chooseMode({ json: o.json, plain: o.plain }, process.stdout), process.stdout, { verbose: o.explain });
      try {
        await build({
          projectDir: path.resolve(dir),
          store: storeFrom(o),
          shared,
          backend: o.backend,
          output: o.output ? path.resolve(o.output) : undefined,
          flatten: o.flatten,
          compat: o.compat,
          last: o.last,
          storeCapBytes: o.storeCap,
          sandbox: { enabled: sandboxed, deny: sandboxDenyFromEnv() },
          ...layerRun,
          signal: interruptSignal({ doing: 'stopping and releasing what the build attached', again: 'still cleaning up; a forced stop (SIGKILL) leaves debris the next run sweeps' }),
          onEvent: (e) => display.onEvent(e),
        });
      } catch (e) {
        if (o.shellOnFailure && e instanceof LayerFailedError) {
          display.close();
          await shellOnFailure(e, { projectDir: path.resolve(dir), store: o.store, backend: o.backend, sandbox: sandboxed });
        }
        throw e;
      } finally {
        display.close();
        shared?.close();
      }
    });
}

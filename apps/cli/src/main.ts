import { Command, Option } from 'commander';
import path from 'node:path';
import {
  AbortedError,
  build,
  LayerFailedError,
  ProjectError,
  SharedStore,
  VmlbError,
  s3ConfigFrom,

  planBuild,
  scaffoldLayer,
  startupSweep,

  formatBytes,
  logMaxFromEnv,
} from '@vmlb/layer-engine';
import { sandboxDenyFromEnv, sandboxFrom, sizeArg, storeFrom, storeOption } from './cli-options.js';
import { chooseMode, createDisplay, formatPlan } from './display.js';
import { FLEET_OUTAGE_CODES, FLEET_USAGE_CODES, registerFleetCommands } from './fleet-commands.js';
import { registerFollowCommands } from './follow-commands.js';
import { registerImageCommands } from './image-commands.js';
import { failedOverlayHint, registerShellCommands, shellOnFailure, sweepFailedLine } from './shell-commands.js';
import { registerMigrateCommand } from './migrate-command.js';
import { VERSION } from './version.js';

/**
 * The `vmlb` command. Libraries throw; this is the one place that prints errors and picks exit
 * codes: 0 success, 1 a build or command failed, 2 bad input (usage, project), 3 the scheduler
 * (or the shared store behind it) cannot be reached, 130 interrupted.
 */

const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
/** The scheduler (or the shared store behind it) cannot be reached: an outage, not a failed build. */
const EXIT_UNREACHABLE = 3;
const EXIT_INTERRUPTED = 130;

/** An AbortSignal fired by Ctrl-C or SIGTERM; the build then releases everything it attached. */
function interruptSignal(): AbortSignal {
  const ac = new AbortController();
  let count = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    count++;
    if (count === 1) {
      process.stderr.write(`\nvmlb: ${sig === 'SIGINT' ? 'interrupted' : sig}: stopping and releasing what the build attached…\n`);
      ac.abort(new AbortedError());
    } else {
      process.stderr.write('vmlb: still cleaning up; a forced stop (SIGKILL) leaves debris the next run sweeps\n');
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  return ac.signal;
}

/** The shared store named by --cache (or VMLB_CACHE), configured from the environment. */
function sharedFrom(opts: { cache?: string }): SharedStore | undefined {
  if (opts.cache === undefined) return undefined;
  return new SharedStore(s3ConfigFrom(opts.cache, process.env, { urlName: '--cache (VMLB_CACHE)' }));
}

const program = new Command();
program
  .name('vmlb')
  .description('Build VM disk images out of cached qcow2 layers, like docker build.')
  .version(VERSION)
  .showHelpAfterError('(run with --help for usage)')
  // An unknown command or flag, a missing argument: usage (exit 2); --help and --version: 0.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE))
  .configureOutput({ outputError: (s, write) => write(`vmlb: ${s.replace(/^error: /, '')}`) });

const cacheOption = () =>
  new Option('--cache <s3-url>', 'a shared store, s3://BUCKET/PREFIX: pull layers missing here, push new ones (S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION)').env('VMLB_CACHE');

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
    logMaxFromEnv(); // a bad VMLB_LOG_MAX is a usage error before anything runs
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
        signal: interruptSignal(),
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

program
  .command('new-layer')
  .description('scaffold the next layer folder NN_NAME with an executable script')
  .argument('<name>', 'the layer name, e.g. users')
  .option('-C, --project <dir>', 'the image project', '.')
  .addOption(new Option('--kind <kind>', 'the script to create').choices(['build-layer', 'modify-disk', 'create-disk']))
  .action(async (name: string, o) => {
    const r = await scaffoldLayer(path.resolve(o.project), name, { kind: o.kind });
    process.stdout.write(`created ${path.relative(process.cwd(), r.script) || r.script}\n`);
  });

program
  .command('sweep')
  .description('release loop devices, FUSE exports, daemons and half-built blobs left by a killed run (vmlb build does this first)')
  .addOption(storeOption())
  .option('--failed', "also remove the half-built overlays kept of failed layers (vmlb shell --failed)")
  .action(async (o) => {
    const store = storeFrom(o);
    await store.init();
    const msg = await startupSweep(store);
    process.stdout.write((msg ?? 'nothing to clean up') + '\n');
    if (o.failed) process.stdout.write((await sweepFailedLine(store)) + '\n');
  });

program
  .command('store')
  .description('show the local store: where it is, how many layers, how many bytes')
  .addOption(storeOption())
  .option('--json', 'print as JSON')
  .action(async (o) => {
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
    if (r.corrupt.length) process.exitCode = 1;
  });

registerFleetCommands(program);
registerFollowCommands(program);
registerImageCommands(program);
registerShellCommands(program);
registerMigrateCommand(program);

function exitCodeFor(e: unknown): number {
  if (e instanceof AbortedError) return EXIT_INTERRUPTED;
  if (e instanceof ProjectError) return EXIT_USAGE;
  if (e instanceof VmlbError && ['NO_SUCH_LAYER', 'INVALID_LAYER_NAME', 'LAYER_EXISTS', 'LAYER_NOT_FIRST', 'PROJECT_NOT_FOUND', 'S3_CONFIG', 'BAD_SETTING', 'SANDBOX_UNAVAILABLE', 'NEEDS_ROOT', 'NEEDS_NBD'].includes(e.code)) return EXIT_USAGE;
  if (e instanceof VmlbError && FLEET_USAGE_CODES.includes(e.code)) return EXIT_USAGE;
  if (e instanceof VmlbError && FLEET_OUTAGE_CODES.includes(e.code)) return EXIT_UNREACHABLE;
  return EXIT_FAILED;
}

// `vmlb build | head` closes stdout early: that is not an error worth a stack trace.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

/**
 * The commands that attach disks (loop devices, FUSE exports, mounts) and make namespaces: they
 * need root, and say so in one line before anything is touched.
 */
const NEEDS_ROOT = new Set(['build', 'sweep', 'diff', 'rollup', 'test-boot']);
program.hook('preAction', (_program, action) => {
  const name = action.name();
  if (NEEDS_ROOT.has(name) && process.getuid?.() !== 0) {
    throw new VmlbError(
      'NEEDS_ROOT',
      `${name} needs root: it attaches disks (loop devices, FUSE, mounts) and makes namespaces for the layer sandbox; run it as root (e.g. sudo vmlb ${name} …)`,
    );
  }
});

/** A system call that failed on a path, as node reports it (EACCES, ENOSPC, …), in one line. */
function errnoLine(e: unknown): string | null {
  const x = e as NodeJS.ErrnoException;
  if (!(x instanceof Error) || typeof x.code !== 'string' || !/^E[A-Z]+$/.test(x.code)) return null;
  const what = x.message.replace(/^E[A-Z]+: /, '').replace(/, \w+ '.*'$/, '');
  return `${x.syscall ?? 'a system call'}${x.path ? ` ${x.path}` : ''}: ${what} (${x.code})`;
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  // A build's display has already shown its failure; repeat only the one-line cause on stderr.
  const err = e as Error;
  if (e instanceof LayerFailedError) {
    process.stderr.write(`vmlb: layer ${e.layer} failed${e.timedOut ? ' (timeout)' : ` with exit code ${e.exitCode}`}${e.hint ? `; ${e.hint}` : ''}; full log: ${e.logPath}${failedOverlayHint(e)}\n`);
  } else if (e instanceof VmlbError) {
    process.stderr.write(`vmlb: ${err.message}\n`);
  } else if (errnoLine(e)) {
    process.stderr.write(`vmlb: ${errnoLine(e)}\n`);
  } else {
    process.stderr.write(`vmlb: unexpected error: ${err.stack ?? err.message}\n`);
  }
  process.exitCode = exitCodeFor(e);
}

import { Command } from 'commander';
import { AbortedError, LayerFailedError, OUTAGE_CODES, ProjectError, USAGE_CODES, VmlbError } from '@vmlb/layer-engine';
import { CommandExit, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_UNREACHABLE, EXIT_USAGE } from './command-exit.js';
import { registerBuild } from './commands/build.js';
import { registerBuilds } from './commands/builds.js';
import { registerCancel } from './commands/cancel.js';
import { registerDiff } from './commands/diff.js';
import { registerExplain } from './commands/explain.js';
import { registerGc } from './commands/gc.js';
import { registerLogs } from './commands/logs.js';
import { registerMigrate } from './commands/migrate.js';
import { registerNewLayer } from './commands/new-layer.js';
import { registerPull } from './commands/pull.js';
import { registerRollup } from './commands/rollup.js';
import { registerRun } from './commands/run.js';
import { registerShell } from './commands/shell.js';
import { registerStore } from './commands/store.js';
import { registerSubmit } from './commands/submit.js';
import { registerSweep } from './commands/sweep.js';
import { registerTestBoot } from './commands/test-boot.js';
import { registerVerify } from './commands/verify.js';
import { registerWatch } from './commands/watch.js';
import { failedOverlayHint } from './layer-session.js';
import { needsRoot } from './needs-root.js';
import { VERSION } from './version.js';

/**
 * The `vmlb` command. Libraries throw; this is the one place that prints errors and picks exit
 * codes: 0 success, 1 a build or command failed, 2 bad input (usage, project), 3 the scheduler
 * (or the shared store behind it) cannot be reached, 130 interrupted. A command that ends with a
 * status of its own (diff --exit-code, a command run in a layer) throws a CommandExit.
 */

const program = new Command();
program
  .name('vmlb')
  .description('Build VM disk images out of cached qcow2 layers, like docker build.')
  .version(VERSION)
  .showHelpAfterError('(run with --help for usage)')
  // An unknown command or flag, a missing argument: usage (exit 2); --help and --version: 0.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE))
  .configureOutput({ outputError: (s, write) => write(`vmlb: ${s.replace(/^error: /, '')}`) });

// One file per command (commands/), registered in the order `vmlb --help` lists them.
for (const register of [
  registerBuild,
  registerExplain,
  registerNewLayer,
  registerSweep,
  registerStore,
  registerVerify,
  registerSubmit,
  registerBuilds,
  registerPull,
  registerCancel,
  registerWatch,
  registerLogs,
  registerTestBoot,
  registerDiff,
  registerRollup,
  registerGc,
  registerShell,
  registerRun,
  registerMigrate,
]) {
  register(program);
}

function exitCodeFor(e: unknown): number {
  if (e instanceof CommandExit) return e.exitCode;
  if (e instanceof AbortedError) return EXIT_INTERRUPTED;
  if (e instanceof ProjectError) return EXIT_USAGE;
  // Which codes are the user's to fix (2) or an outage (3) is the engine's table (error-codes.ts).
  if (e instanceof VmlbError && USAGE_CODES.has(e.code)) return EXIT_USAGE;
  if (e instanceof VmlbError && OUTAGE_CODES.has(e.code)) return EXIT_UNREACHABLE;
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
  if (NEEDS_ROOT.has(name)) needsRoot(name);
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
  } else if (e instanceof CommandExit) {
    if (err.message) process.stderr.write(`vmlb: ${err.message}\n`);
  } else if (errnoLine(e)) {
    process.stderr.write(`vmlb: ${errnoLine(e)}\n`);
  } else {
    process.stderr.write(`vmlb: unexpected error: ${err.stack ?? err.message}\n`);
  }
  process.exitCode = exitCodeFor(e);
}

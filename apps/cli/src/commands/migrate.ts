/**
 * `vmlb migrate [DIR] [--out DIR] [--json]`: an image project of the original vm-layer-builder
 * (scons + qemu-nbd) turned into this tool's form (see migrate/). Exit status: 0 when nothing is
 * left to do by hand, 1 when something is, 2 for a bad DIR or --out (a usage error).
 */
import type { Command } from 'commander';
import path from 'node:path';
import { VmlbError } from '@vmlb/layer-engine';
import { CommandExit, EXIT_FAILED, UsageError } from '../command-exit.js';
import { MIGRATE_USAGE, formatReport, migrateProject, summaryLine } from '../migrate/index.js';

export function registerMigrate(program: Command): void {
  program
    .command('migrate')
    .description(
      "turn a project of the original vm-layer-builder (scons + qemu-nbd) into this tool's form, in place or into --out: modify-disk scripts, the SConstruct's base image, hints; says what it did and what is left to do by hand",
    )
    .argument('[dir]', 'the original project', '.')
    .option('--out <dir>', 'copy the project into this new or empty folder and migrate the copy (the project is not changed)')
    .option('--json', 'print the result as one JSON object (done, todo, left)')
    .action(async (dir: string, o: { out?: string; json?: boolean }) => {
      let report;
      try {
        report = await migrateProject({
          dir: path.resolve(dir),
          out: o.out === undefined ? undefined : path.resolve(o.out),
          onProgress: (line) => process.stderr.write(`vmlb migrate: ${line}\n`),
        });
      } catch (e) {
        if (e instanceof VmlbError && e.code === MIGRATE_USAGE) throw new UsageError(`migrate: ${e.message}`);
        throw e;
      }
      if (o.json) {
        const { project, target, changed, done, todo, left, blocksBuild } = report;
        process.stdout.write(JSON.stringify({ project, target, changed, done, todo, left, blocksBuild, summary: summaryLine(report) }, null, 2) + '\n');
      } else {
        process.stdout.write(formatReport(report).join('\n') + '\n');
      }
      // Something is left to do by hand: the report says what.
      if (report.todo.length > 0) throw new CommandExit(EXIT_FAILED);
    });
}

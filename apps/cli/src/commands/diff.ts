import { type Command, Option } from 'commander';
import { diffImages, formatChange, formatSeconds } from '@vmlb/layer-engine';
import { backendOption, failsAsInterrupted, interruptSignal, projectOption, storeFrom, storeOption } from '../cli-options.js';
import { CommandExit, EXIT_FAILED } from '../command-exit.js';
import { resolveImageArg } from '../image-arg.js';
import { sweepFirst } from '../sweep-first.js';

/** A repeatable option: each use adds one value. */
function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

/** `vmlb diff A B`: the files added, removed and changed from image A to image B. */
export function registerDiff(program: Command): void {
  program
    .command('diff')
    .description('list the files added (A), removed (D) and changed (M: content, mode, owner, symlink target) from image A to image B')
    .argument('<a>', 'an image file, a layer name (NN_name, its last build in the project) or a layer key')
    .argument('<b>', 'the same, for the other side')
    .addOption(projectOption())
    .addOption(storeOption())
    .addOption(new Option('--include <glob>', 'only paths that match (repeatable; /etc, etc/**/*.conf, *.service)').argParser(collect))
    .addOption(new Option('--exclude <glob>', 'leave out paths that match (repeatable; an excluded folder is not read)').argParser(collect))
    .option('--checksum', 'hash every pair of same-size files, even ones that are plainly the same inode')
    .option('--exit-code', 'exit 1 when there are differences (as git diff --exit-code)')
    .option('--json', 'print the changes as JSON')
    .addOption(backendOption())
    .action(async (refA: string, refB: string, o) => {
      // Differences found are the answer (--exit-code), decided outside: not a failure Ctrl-C caused.
      const differs = await failsAsInterrupted(async () => {
        const store = storeFrom(o);
        const [a, b] = [await resolveImageArg(refA, { projectDir: o.project, store }), await resolveImageArg(refB, { projectDir: o.project, store })];
        const signal = interruptSignal({ doing: 'releasing the images' });
        await sweepFirst();
        const r = await diffImages(a.file, b.file, { include: o.include, exclude: o.exclude, checksum: o.checksum, backend: o.backend, signal });
        if (o.json) {
          const out = { a: { ref: a.ref, file: a.file, key: a.manifest?.key }, b: { ref: b.ref, file: b.file, key: b.manifest?.key }, added: r.added, removed: r.removed, modified: r.modified, seconds: r.seconds, changes: r.changes };
          process.stdout.write(JSON.stringify(out, null, 2) + '\n');
        } else {
          const lines = r.changes.map(formatChange);
          if (lines.length) process.stdout.write(lines.join('\n') + '\n');
          const total = r.changes.length;
          process.stderr.write(
            total === 0
              ? `no differences between ${a.label} and ${b.label} (${formatSeconds(r.seconds)})\n`
              : `${r.added} added, ${r.removed} removed, ${r.modified} changed from ${a.label} to ${b.label} (${formatSeconds(r.seconds)})\n`,
          );
        }
        return r.changes.length > 0;
      })();
      if (o.exitCode && differs) throw new CommandExit(EXIT_FAILED);
    });
}

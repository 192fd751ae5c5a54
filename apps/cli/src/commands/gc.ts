import { type Command, Option } from 'commander';
import { DEFAULT_UPLOADS_OLDER_THAN_MS, SharedStore, compressionFrom, formatBytes, planSharedPrune, pruneShared, s3ConfigFrom } from '@vmlb/layer-engine';
import { durationArg, failsAsInterrupted, sizeArg, storeFrom, storeOption } from '../cli-options.js';
import { UsageError } from '../command-exit.js';

/**
 * `vmlb gc`: removes layers from the local store by age or down to a size, and prunes a shared
 * store of layers no recent build used; never a layer an output on disk or a build in progress
 * needs.
 */
export function registerGc(program: Command): void {
  program
    .command('gc')
    .description(
      'remove layers from the local store by age or down to a size, and prune a shared store of layers no recent build used; never a layer that an output on disk or a build in progress needs',
    )
    .addOption(new Option('--keep-size <size>', 'evict least-recently-used layers until the local store holds at most this (e.g. 10G)').argParser(sizeArg))
    .addOption(new Option('--older-than <duration>', 'remove local layers last used longer ago than this (e.g. 30d, 12h)').argParser(durationArg))
    .addOption(new Option('--shared <s3-url>', 'also prune this shared store, s3://BUCKET/PREFIX (S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION)'))
    .addOption(new Option('--unused-for <duration>', 'with --shared: prune layers no build used (and none uploaded) for this long').argParser(durationArg).default(30 * 86_400_000, '30d'))
    .addOption(
      new Option('--uploads-older-than <duration>', 'with --shared: abort incomplete multipart uploads (interrupted pushes) started longer ago than this')
        .argParser(durationArg)
        .default(DEFAULT_UPLOADS_OLDER_THAN_MS, '1d'),
    )
    .option('-n, --dry-run', 'list what would be removed and how many bytes; remove nothing')
    .option('--json', 'print the result as JSON')
    .addOption(storeOption())
    .action(
      failsAsInterrupted(async (o) => {
        if (o.keepSize === undefined && o.olderThan === undefined && o.shared === undefined) {
          throw new UsageError('gc: say what to collect: --keep-size SIZE and/or --older-than DURATION (local store), --shared s3://… (shared store)');
        }
        const dry = o.dryRun === true;
        const verb = dry ? 'would remove' : 'removed';
        const out: string[] = [];
        const json: Record<string, unknown> = { dryRun: dry };
        const when = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
        if (o.keepSize !== undefined || o.olderThan !== undefined) {
          const store = storeFrom(o);
          await store.init();
          const plan = await store.planRemoval({ capBytes: o.keepSize, olderThanMs: o.olderThan });
          const done = dry ? undefined : await store.removePlanned(plan);
          const gone = done ? new Set(done.removed) : undefined;
          const layers = plan.layers.filter((l) => !gone || gone.has(l.key));
          const bytes = layers.reduce((s, l) => s + l.bytes, 0);
          const after = await store.usage();
          json.local = { store: store.root, before: plan.before, after, protectedLayers: plan.protectedLayers, bytes, layers };
          out.push(`local store ${store.root}: ${plan.before.layers} layers, ${formatBytes(plan.before.bytes)}`);
          out.push(`${verb} ${layers.length} layer${layers.length === 1 ? '' : 's'}, ${formatBytes(bytes)}${plan.protectedLayers ? ` (kept ${plan.protectedLayers} that outputs on disk or builds in progress need)` : ''}${layers.length ? ':' : ''}`);
          for (const l of layers) {
            out.push(`  ${l.key.slice(0, 12)}  ${l.name.padEnd(16)} ${l.kind.padEnd(11)} ${formatBytes(l.bytes).padStart(9)}  last used ${when(l.lastUsed)}  (${l.reason === 'age' ? 'older than --older-than' : 'over --keep-size'})`);
          }
          if (!dry) {
            const debris = await store.sweepTemp();
            if (debris) out.push(`removed ${debris} half-built blob${debris === 1 ? '' : 's'} of killed builds`);
            const orphans = await store.sweepOrphans();
            if (orphans.files) out.push(`removed ${orphans.files} file${orphans.files === 1 ? '' : 's'} no layer owns (${formatBytes(orphans.bytes)})`);
            out.push(`the local store now holds ${after.layers} layers, ${formatBytes(after.bytes)}`);
          }
        }
        if (o.shared !== undefined) {
          const shared = new SharedStore(s3ConfigFrom(o.shared, process.env, { urlName: '--shared' }), compressionFrom(process.env));
          try {
            const plan = await planSharedPrune(shared, { unusedForMs: o.unusedFor, uploadsOlderThanMs: o.uploadsOlderThan });
            const done = dry ? undefined : await pruneShared(shared, plan);
            const gone = done ? new Set(done.removed) : undefined;
            const layers = plan.layers.filter((l) => !gone || gone.has(l.key));
            const bytes = layers.reduce((s, l) => s + l.bytes, 0);
            json.shared = { store: shared.url, cutoff: plan.cutoff, total: plan.total, kept: plan.total - layers.length, recentlyUsed: plan.recentlyUsed, bytes, layers, staleRecords: plan.staleRecords, uploadsCutoff: plan.uploadsCutoff, incompleteUploads: plan.incompleteUploads };
            out.push(`shared store ${shared.url}: ${plan.total} layers; ${plan.recentlyUsed} keys used by builds since ${plan.cutoff.replace(/\.\d+Z$/, 'Z')}`);
            out.push(`${verb} ${layers.length} layer${layers.length === 1 ? '' : 's'} no build used since then, ${formatBytes(bytes)}${layers.length ? ':' : ''}`);
            for (const l of layers) out.push(`  ${l.key.slice(0, 12)}  ${l.name.padEnd(16)} ${l.kind.padEnd(11)} ${formatBytes(l.bytes).padStart(9)}  uploaded ${l.uploadedAt.replace(/\.\d+Z$/, 'Z')}`);
            if (plan.staleRecords.length) out.push(`${dry ? 'would remove' : 'removed'} ${plan.staleRecords.length} use record${plan.staleRecords.length === 1 ? '' : 's'} older than that`);
            const ups = plan.incompleteUploads;
            out.push(`${dry ? 'would abort' : 'aborted'} ${ups.length} incomplete upload${ups.length === 1 ? '' : 's'} started before ${plan.uploadsCutoff.replace(/\.\d+Z$/, 'Z')}${ups.length ? ':' : ''}`);
            for (const u of ups) out.push(`  ${u.object}  started ${u.initiated.replace(/\.\d+Z$/, 'Z')}  (upload ${u.uploadId})`);
          } finally {
            shared.close();
          }
        }
        process.stdout.write(o.json ? JSON.stringify(json, null, 2) + '\n' : out.join('\n') + '\n');
      }),
    );
}

/**
 * The commands that work on built images and on the store: test-boot, diff, rollup, gc.
 * Registered on the program by main.ts (one line); errors are thrown to main.ts, which prints
 * them and picks the exit code, except bad arguments found here (exit 2, like a usage error).
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  AbortedError,
  FuseDaemon,
  SharedStore,
  VmlbError,
  bootVm,
  build,
  chooseBootMode,
  describeAccel,
  describeSweep,
  diffImages,
  formatBytes,
  formatChange,
  formatSeconds,
  imageInfo,
  makeSeedImage,
  planSharedPrune,
  DEFAULT_UPLOADS_OLDER_THAN_MS,
  pruneShared,
  resolveImage,
  rollup,
  s3ConfigFrom,
  seedFromFiles,
  sweep,
  type VmNetwork,
} from '@vmlb/layer-engine';
import { backendOption, durationArg, projectOption, sizeArg, storeFrom, storeOption } from './cli-options.js';
import { chooseMode, createDisplay } from './display.js';

const EXIT_USAGE = 2;

/** A bad argument: printed here with exit status 2, like commander's own usage errors. */
class UsageError extends Error {}

function intArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`not a whole number: "${v}"`);
  return n;
}

function regexArg(v: string): RegExp {
  try {
    return new RegExp(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

/** A repeatable option: each use adds one value. */
function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

/**
 * Ctrl-C, SIGTERM and SIGHUP abort the command (which stops its VM and releases its disks).
 * The same as the build's, but main.ts keeps its own private.
 */
let interrupted = false;

function interruptSignal(what: string): AbortSignal {
  const ac = new AbortController();
  let count = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (++count === 1) {
      interrupted = true;
      process.stderr.write(`\nvmlb: ${sig === 'SIGINT' ? 'interrupted' : sig}: ${what}…\n`);
      ac.abort(new AbortedError());
    }
  };
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, onSignal);
  return ac.signal;
}

/** Runs an action; a UsageError becomes `vmlb: message` and exit status 2. */
function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (e) {
      // Whatever failed after Ctrl-C failed because of it: exit 130, like a build.
      if (interrupted && !(e instanceof AbortedError)) throw new AbortedError();
      if (!(e instanceof UsageError)) throw e;
      process.stderr.write(`vmlb: ${e.message}\n`);
      process.exitCode = EXIT_USAGE;
    }
  };
}

/** Image references that cannot be found are the user's input, not a failure: exit 2. */
async function resolveOrUsage(...args: Parameters<typeof resolveImage>) {
  try {
    return await resolveImage(...args);
  } catch (e) {
    if (e instanceof VmlbError && e.code === 'IMAGE_NOT_FOUND') throw new UsageError(e.message);
    throw e;
  }
}

async function sweepFirst(): Promise<void> {
  const line = describeSweep(await sweep());
  if (line) process.stderr.write(`vmlb: cleaned up after an interrupted run: ${line}\n`);
}

/** A TCP port free on 127.0.0.1 right now, for the guest's ssh. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export function registerImageCommands(program: Command): void {
  registerTestBoot(program);
  registerDiff(program);
  registerRollup(program);
  registerGc(program);
}

// ---------------------------------------------------------------------------------------------
// test-boot

function registerTestBoot(program: Command): void {
  program
    .command('test-boot')
    .description(
      'boot an image in qemu without changing it (-snapshot), its serial console on the terminal; with --expect, a smoke test that ends as soon as the console shows REGEX',
    )
    .argument('[image]', 'an image file, a layer name (NN_name, its last build in the project) or a layer key (default: the project\'s build/image.qcow2)')
    .addOption(projectOption())
    .addOption(storeOption())
    .addOption(new Option('--expect <regex>', 'exit 0 as soon as the console shows this (a JavaScript regular expression)').argParser(regexArg))
    .addOption(new Option('--timeout <duration>', 'stop the VM after this long (with --expect: fail, printing the console\'s last lines)').argParser(durationArg))
    .addOption(new Option('--accel <name>', 'auto: KVM when it boots a guest here, else software emulation').choices(['auto', 'kvm', 'tcg']).default('auto').env('VMLB_ACCEL'))
    .addOption(new Option('--kvm-probe <duration>', 'how long a KVM boot may show no kernel output before falling back to tcg').argParser(durationArg).default(15_000, '15s'))
    .addOption(new Option('--boot <how>', 'disk: the image\'s boot loader; kernel: the kernel and initramfs in its /boot; auto: disk when it has a boot loader').choices(['auto', 'disk', 'kernel']).default('auto'))
    .option('--append <args>', 'more kernel command line for a kernel boot (after root=/dev/vdaN ro console=ttyS0)')
    .option('--user-data <file>', 'cloud-init user-data for the NoCloud seed (default: an empty #cloud-config)')
    .option('--meta-data <file>', 'cloud-init meta-data for the seed (default: a fresh instance-id)')
    .option('--network-config <file>', 'cloud-init network-config for the seed')
    .option('--no-seed', 'attach no cloud-init seed disk')
    .option('--bridge <name>', 'connect the VM to this host bridge (qemu-bridge-helper) instead of user-mode networking')
    .option('--no-network', 'no network device')
    .addOption(new Option('--ssh-port <port>', 'forward this 127.0.0.1 port to the guest\'s port 22 (user-mode networking; default: a free one)').argParser(intArg))
    .addOption(new Option('--memory <size>', 'guest memory').argParser(sizeArg).default(1024 ** 3, '1G'))
    .addOption(new Option('--cpus <n>', 'virtual CPUs').argParser(intArg).default(2))
    .option('-q, --quiet', 'do not copy the console to the terminal')
    .addOption(backendOption())
    .action(
      action(async (ref: string | undefined, o) => {
        const store = storeFrom(o);
        const img = await resolveOrUsage(ref, { projectDir: o.project, store });
        const signal = interruptSignal('stopping the VM');
        const say = (m: string) => process.stderr.write(`test-boot: ${m}\n`);
        const scratch = await mkdtemp(path.join(os.tmpdir(), 'vmlb-boot-'));
        try {
          await sweepFirst();
          const info = await imageInfo(img.file, { signal });
          const boot = await chooseBootMode(img.file, { boot: o.boot, scratch, backend: o.backend, signal }).finally(() => FuseDaemon.shutdown());
          say(`booting ${img.label} — ${boot.mode === 'disk' ? 'from its boot loader' : 'direct kernel boot'} (${boot.why})`);
          let seed: string | undefined;
          if (o.seed !== false) {
            seed = path.join(scratch, 'seed.img');
            await makeSeedImage(seed, await seedFromFiles({ userData: o.userData, metaData: o.metaData, networkConfig: o.networkConfig }), { signal });
          }
          let network: VmNetwork;
          if (o.network === false) network = { type: 'none' };
          else if (o.bridge) network = { type: 'bridge', bridge: o.bridge };
          else {
            network = { type: 'user', sshPort: o.sshPort ?? (await freePort()) };
            say(`user-mode networking; the guest's ssh is at 127.0.0.1:${network.sshPort}`);
          }
          const interactive = !o.expect && process.stdin.isTTY === true && !o.quiet;
          if (interactive) say('the console is this terminal: Ctrl-A X stops the VM, Ctrl-A C is qemu\'s monitor');
          const r = await bootVm({
            spec: {
              image: img.file,
              format: info.format,
              boot,
              append: o.append,
              seed,
              memoryMiB: Math.max(64, Math.round(o.memory / 1024 ** 2)),
              cpus: Math.max(1, o.cpus),
              network,
              interactive,
            },
            accel: o.accel,
            expect: o.expect,
            timeoutMs: o.timeout ?? (o.expect ? 5 * 60_000 : undefined),
            kvmProbeMs: o.kvmProbe,
            onConsole: o.quiet ? undefined : (c) => process.stdout.write(c),
            onQemuStderr: (c) => process.stderr.write(c),
            onNotice: say,
            signal,
          });
          if (!o.quiet) process.stdout.write('\n');
          const accel = `accelerator ${describeAccel(r.accel, r.accelWhy)}`;
          if (r.outcome === 'matched') say(`the console showed ${JSON.stringify(r.match)} after ${formatSeconds(r.seconds)} (${accel})`);
          else if (r.outcome === 'stopped') say(`stopped the VM after ${formatSeconds(r.seconds)} (${accel})`);
          else say(`the VM ended after ${formatSeconds(r.seconds)} (${accel})`);
        } finally {
          await rm(scratch, { recursive: true, force: true });
        }
      }),
    );
}

// ---------------------------------------------------------------------------------------------
// diff

function registerDiff(program: Command): void {
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
    .action(
      action(async (refA: string, refB: string, o) => {
        const store = storeFrom(o);
        const [a, b] = [await resolveOrUsage(refA, { projectDir: o.project, store }), await resolveOrUsage(refB, { projectDir: o.project, store })];
        const signal = interruptSignal('releasing the images');
        await sweepFirst();
        const r = await diffImages(a.file, b.file, { include: o.include, exclude: o.exclude, checksum: o.checksum, backend: o.backend, signal }).finally(() =>
          FuseDaemon.shutdown(),
        );
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
        if (o.exitCode && r.changes.length > 0) process.exitCode = 1;
      }),
    );
}

// ---------------------------------------------------------------------------------------------
// rollup

function registerRollup(program: Command): void {
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
      action(async (layer: string, o) => {
        const store = storeFrom(o);
        const signal = interruptSignal('stopping the rollup');
        const projectDir = path.resolve(o.project);
        const lines: string[] = [];
        const out = (line: string) => (o.json ? lines.push(line) : process.stdout.write(line + '\n'));
        const rel = (p: string) => path.relative(process.cwd(), p) || p;
        const r = await rollup({ projectDir, layer, store, backend: o.backend, keepLocal: o.keepLocal, signal });
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

// ---------------------------------------------------------------------------------------------
// gc

function registerGc(program: Command): void {
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
      action(async (o) => {
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
          const shared = new SharedStore(s3ConfigFrom(o.shared, process.env, { urlName: '--shared' }));
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

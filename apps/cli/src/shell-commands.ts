/**
 * `vmlb shell [LAYER]` and `vmlb run LAYER -- CMD ARGS…`: a shell or a command in a layer's
 * root filesystem as its build-layer script saw it (the engine's runInLayer: same runner,
 * sandbox, environment and mounts, on a throw-away overlay), and a failed layer's kept
 * overlay (`--failed`, `vmlb build --shell-on-failure`). Registered by main.ts; errors are
 * thrown to main.ts (exit codes there), except usage errors found here (exit 2).
 */
import { type Command } from 'commander';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  AbortedError,
  FuseDaemon,
  LAYER_DIR_PATTERN,
  LocalStore,
  VmlbError,
  formatBytes,
  layerSandbox,
  listFailedLayers,
  loadProject,
  resolveImage,
  runInLayer,
  startupSweep,
  sweepFailedLayers,
  type BackendPreference,
  type FailedLayer,
  type LayerFailedError,
  type LayerShellResult,
  type LayerSpec,
  type ShellState,
} from '@vmlb/layer-engine';
import { backendOption, projectOption, sandboxDenyFromEnv, sandboxFrom, storeFrom, storeOption } from './cli-options.js';

const EXIT_USAGE = 2;
const EXIT_INTERRUPTED = 130;
/** What a shell answers for a command it cannot find or run. */
const EXIT_NOT_STARTED = 127;

class UsageError extends Error {}

/** Ctrl-C, SIGTERM and SIGHUP (a closed terminal) end the session and release what it attached. */
function interruptSignal(): AbortSignal {
  const ac = new AbortController();
  const onSignal = () => ac.abort(new AbortedError());
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, onSignal);
  return ac.signal;
}

function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (e) {
      // A command that is not in the image (or cannot be run): the shell's status for it.
      if (e instanceof VmlbError && e.code === 'COMMAND_NOT_STARTED') {
        process.stderr.write(`vmlb: ${e.message}\n`);
        process.exitCode = EXIT_NOT_STARTED;
        return;
      }
      if (!(e instanceof UsageError)) throw e;
      process.stderr.write(`vmlb: ${e.message}\n`);
      process.exitCode = EXIT_USAGE;
    }
  };
}

function needsRoot(what: string): void {
  if (process.getuid?.() !== 0) {
    throw new VmlbError('NEEDS_ROOT', `${what} needs root: it attaches disks (loop devices, FUSE, mounts) and makes namespaces for the layer sandbox; run it as root (e.g. sudo vmlb ${what} …)`);
  }
}

/** The project's layers, or none when the folder is no (valid) project and none is needed. */
async function projectLayers(projectDir: string, required: boolean): Promise<LayerSpec[]> {
  try {
    return (await loadProject(projectDir)).layers;
  } catch (e) {
    if (required) throw e;
    return [];
  }
}

async function resolveOrUsage(ref: string, projectDir: string, store: LocalStore) {
  try {
    return await resolveImage(ref, { projectDir, store });
  } catch (e) {
    if (e instanceof VmlbError && e.code === 'IMAGE_NOT_FOUND') throw new UsageError(e.message);
    throw e;
  }
}

interface Resolved {
  state: ShellState;
  /** Keys gc must leave alone meanwhile (the state's chain). */
  keys: string[];
  /** What /mnt is, for the banner. */
  mnt: string;
}

const short = (key: string) => key.slice(0, 12);

/**
 * The state a session opens: LAYER (a layer name, a key, an image file; default: the
 * project's last layer), the state before LAYER ran (`before`), or a failed layer's overlay.
 */
async function resolveState(o: { ref?: string; before?: string; failed?: boolean; projectDir: string; projectGiven: boolean; store: LocalStore }): Promise<Resolved> {
  const { store, projectDir } = o;
  if (o.failed) return resolveFailed(o.ref, projectDir, o.projectGiven, store);
  if (o.before !== undefined) {
    const layers = await projectLayers(projectDir, LAYER_DIR_PATTERN.test(o.before));
    const at = layers.findIndex((l) => l.name === o.before);
    const spec = layers[at];
    let parentKey: string | undefined;
    const built = LAYER_DIR_PATTERN.test(o.before) || !spec ? await resolveImage(o.before, { projectDir, store }).catch(() => null) : null;
    if (built?.manifest) {
      if (!built.manifest.parent) throw new UsageError(`--before ${o.before}: ${built.manifest.name} is the first layer: there is no state before it`);
      parentKey = built.manifest.parent;
    } else if (spec) {
      // Never built (or its last build failed): the state it would be built on, the previous layer's last build.
      if (at === 0) throw new UsageError(`--before ${o.before}: it is the project's first layer: there is no state before it`);
      const prev = layers[at - 1]!;
      parentKey = await store.lastBuiltKey(projectDir, prev.name);
      if (!parentKey) throw new UsageError(`--before ${o.before}: the layer before it, ${prev.name}, has not been built in this store (${store.root}); build the project first (vmlb build --last ${prev.name})`);
    } else {
      throw new UsageError(`--before ${o.before}: not a layer of the project ${projectDir} nor a layer in the store ${store.root}`);
    }
    const parent = await store.getManifest(parentKey);
    if (!parent) throw new UsageError(`--before ${o.before}: its parent layer ${short(parentKey)} is no longer in the store (evicted); build the project again`);
    const mine = spec ?? layers.find((l) => l.name === built?.manifest?.name);
    return {
      state: { image: store.blobPath(parent.key), label: `${parent.name} (${short(parent.key)}), before ${o.before}`, key: parent.key, root: parent.root, partitions: parent.partitions, spec: mine },
      keys: [parent.key],
      mnt: mine ? `${mine.name}'s folder` : 'an empty folder',
    };
  }
  const layers = await projectLayers(projectDir, o.ref === undefined);
  const ref = o.ref ?? layers.at(-1)?.name;
  if (!ref) throw new UsageError(`the project ${projectDir} has no layers; name a layer, a key or an image file`);
  const img = await resolveOrUsage(ref, projectDir, store);
  const m = img.manifest;
  const spec = m ? layers.find((l) => l.name === m.name) : undefined;
  return {
    state: { image: img.file, label: img.label, key: m?.key, root: m?.root, partitions: m?.partitions, spec },
    keys: m ? [m.key] : [],
    mnt: spec ? `${spec.name}'s folder` : 'an empty folder',
  };
}

async function resolveFailed(name: string | undefined, projectDir: string, projectGiven: boolean, store: LocalStore): Promise<Resolved> {
  const all = await listFailedLayers(store);
  const named = name === undefined ? all : all.filter((f) => f.name === name || f.key.startsWith(name));
  const mine = named.filter((f) => f.project === projectDir);
  // In a project: its failures; elsewhere (no -C, no project here): the newest of any project.
  const pick: FailedLayer | undefined = mine[0] ?? (projectGiven || existsSync(path.join(projectDir, named[0]?.name ?? '\0')) ? undefined : named[0]);
  if (!pick) {
    throw new UsageError(
      `no failed layer${name ? ` ${name}` : ''} of ${projectDir} is kept in the store ${store.root}: vmlb build keeps a failed layer's overlay until the layer is built again (or vmlb sweep --failed)`,
    );
  }
  const layers = await projectLayers(pick.project, false);
  const spec = layers.find((l) => l.name === pick.name);
  const parent = pick.parent ? await store.getManifest(pick.parent) : null;
  if (pick.parent && !parent) throw new UsageError(`${pick.name}: the failed overlay's parent layer ${short(pick.parent)} is no longer in the store (evicted); build the project again`);
  // A build-layer leaves the partition table as it was: its parent's says where the root is.
  const fromParent = pick.kind === 'build-layer' && parent ? { root: parent.root, partitions: parent.partitions } : {};
  return {
    state: { image: pick.overlay, label: `${pick.name} (failed, ${short(pick.key)})`, key: pick.key, spec, ...fromParent },
    keys: parent ? [parent.key] : [],
    mnt: spec ? `${spec.name}'s folder (the failing script's)` : 'an empty folder',
  };
}

interface SessionOptions {
  project: string;
  projectGiven: boolean;
  store?: string;
  before?: string;
  failed?: boolean;
  keep?: string;
  compare?: string;
  backend: BackendPreference;
  sandbox?: boolean;
  json?: boolean;
}

/** Resolves, sweeps, opens the session, and says what it kept. Returns the session's result. */
async function session(ref: string | undefined, command: string[] | undefined, o: SessionOptions, who: 'shell' | 'run'): Promise<{ r: LayerShellResult; resolved: Resolved }> {
  needsRoot(who);
  const store = storeFrom(o);
  await store.init();
  const projectDir = path.resolve(o.project);
  if (o.keep && existsSync(o.keep)) throw new UsageError(`--keep ${o.keep}: the file exists; name a new file`);
  const resolved = await resolveState({ ref, before: o.before, failed: o.failed, projectDir, projectGiven: o.projectGiven, store });
  const compare = o.compare === undefined ? undefined : await resolveOrUsage(o.compare, projectDir, store);
  // As vmlb build decides it (--no-sandbox, VMLB_SANDBOX=0, VMLB_SANDBOX_DENY).
  const sandbox = await layerSandbox({ enabled: sandboxFrom(o), deny: sandboxDenyFromEnv() }, store);
  const signal = interruptSignal();
  // What a killed run left (attachments, half-built blobs, killed sessions' folders), as vmlb build sweeps it.
  const swept = await startupSweep(store);
  if (swept) process.stderr.write(`vmlb: ${swept}\n`);
  const terminal = command === undefined && process.stdin.isTTY === true && process.stdout.isTTY === true;
  const name = resolved.state.spec?.name ?? resolved.state.label;
  if (who === 'shell' && !o.json) {
    const cmp = compare ? `, ${compare.label} read-only at /compare` : '';
    const keep = o.keep ? `; --keep: what you change is kept in ${o.keep}` : '; what you change goes with it (--keep FILE keeps it)';
    process.stderr.write(`vmlb shell: ${resolved.state.label} on a throw-away overlay, ${resolved.mnt} read-only at /mnt${cmp}${sandbox ? '' : ' (no sandbox: as root of this host)'}; exit to leave${keep}\n`);
  }
  const release = resolved.keys.length ? await store.markActive(resolved.keys, `vmlb ${who} ${name}`) : async () => {};
  try {
    const r = await runInLayer({
      state: resolved.state,
      compare: compare && { image: compare.file, label: compare.label },
      command,
      terminal,
      keep: o.keep,
      sandbox,
      store,
      backend: o.backend,
      // An interactive shell gets this terminal's TERM and a prompt that says where it is (debian_chroot: Debian's bashrc shows it).
      env: terminal ? { TERM: process.env.TERM || 'xterm', PS1: `(vmlb ${name}) \\w # `, debian_chroot: `vmlb ${name}` } : undefined,
      signal,
    });
    if (r.kept && !o.json) process.stderr.write(`vmlb ${who}: kept what you changed in ${r.kept.file} (${formatBytes(r.kept.bytes)}; a qcow2 overlay whose backing file is ${r.kept.backing})\n`);
    return { r, resolved };
  } finally {
    await release();
    await FuseDaemon.shutdown();
  }
}

function statusOf(r: LayerShellResult): number {
  if (r.exitCode !== undefined) return r.exitCode;
  return r.signal ? 128 + (signalNumber(r.signal) ?? 1) : 1;
}

function signalNumber(sig: string): number | undefined {
  return (os.constants.signals as Record<string, number>)[sig];
}

function jsonResult(who: string, resolved: Resolved, r: LayerShellResult): string {
  const s = resolved.state;
  return JSON.stringify({ command: who, image: s.image, label: s.label, key: s.key ?? null, layer: s.spec?.name ?? null, exitCode: statusOf(r), seconds: r.seconds, kept: r.kept ?? null }) + '\n';
}

export function registerShellCommands(program: Command): void {
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
    .action(
      action(async (ref: string | undefined, o, cmd: Command) => {
        if (ref !== undefined && o.before !== undefined) throw new UsageError('shell: give LAYER or --before LAYER, not both');
        if (o.failed && o.before !== undefined) throw new UsageError('shell: --failed and --before do not go together');
        const projectGiven = cmd.getOptionValueSource('project') === 'cli';
        const { r, resolved } = await session(ref, undefined, { ...o, projectGiven }, 'shell');
        if (o.json) process.stdout.write(jsonResult('shell', resolved, r));
        process.exitCode = statusOf(r);
      }),
    );

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
    .action(
      action(async (words: string[], o, cmd: Command) => {
        let ref: string | undefined;
        let command = words;
        if (o.before === undefined && (!o.failed || (words.length > 1 && LAYER_DIR_PATTERN.test(words[0]!)))) {
          ref = words[0];
          command = words.slice(1);
        }
        if (command.length === 0) throw new UsageError('run: say what to run: vmlb run LAYER -- CMD [ARGS...]');
        const projectGiven = cmd.getOptionValueSource('project') === 'cli';
        const { r } = await session(ref, command, { ...o, projectGiven }, 'run');
        process.exitCode = statusOf(r);
      }),
    );
}

/** `vmlb sweep --failed`: removes every failed layer's kept overlay; the line to print. */
export async function sweepFailedLine(store: LocalStore): Promise<string> {
  const gone = await sweepFailedLayers(store);
  if (gone.length === 0) return 'no failed layer overlays kept';
  const bytes = gone.reduce((s, f) => s + f.bytes, 0);
  return `removed ${gone.length} failed layer overlay${gone.length === 1 ? '' : 's'} (${formatBytes(bytes)}): ${gone.map((f) => `${f.name} (${short(f.key)})`).join(', ')}`;
}

/** The words main.ts adds to a failed layer's line when its overlay was kept. */
export function failedOverlayHint(e: LayerFailedError): string {
  return e.keptOverlay ? `; its half-built overlay is kept: vmlb shell --failed opens it` : '';
}

/**
 * `vmlb build --shell-on-failure`: after a layer failed, on a terminal, a shell in its kept
 * overlay at once. The build's exit status stays its own (main.ts rethrows).
 */
export async function shellOnFailure(e: LayerFailedError, o: { projectDir: string; store?: string; backend?: BackendPreference; sandbox?: boolean }): Promise<void> {
  if (!e.keptOverlay) return;
  if (!(process.stdin.isTTY && process.stdout.isTTY)) {
    process.stderr.write('vmlb: --shell-on-failure: not on a terminal; vmlb shell --failed opens the failed layer later\n');
    return;
  }
  try {
    await session(e.layer, undefined, { project: o.projectDir, projectGiven: true, store: o.store, failed: true, backend: o.backend ?? 'auto', sandbox: o.sandbox }, 'shell');
  } catch (err) {
    if (err instanceof AbortedError) process.exitCode = EXIT_INTERRUPTED;
    process.stderr.write(`vmlb: --shell-on-failure: ${(err as Error).message}\n`);
  }
}

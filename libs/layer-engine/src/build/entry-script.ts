import { randomBytes } from 'node:crypto';
import { chown, rm } from 'node:fs/promises';
import path from 'node:path';
import { AbortedError, LayerFailedError, VmlbError } from '../errors.js';
import { runDir } from '../disk/run-dirs.js';
import { diskSizeOf, failedLogPath, type LayerBuildContext, type LayerSandbox } from './layer-build-context.js';
import type { LegacyRun } from './legacy-modify-disk.js';
import { runScript, type ExtraMount, type MountSource, type RunScriptResult } from './script-runner.js';
import { denyRoutes, pickUidBase, sandboxResolvConf, type SandboxRun } from './sandbox.js';
import { layerWriteBound, lostWritesError } from '../store/store-space.js';
import type { LayerKind } from '../types.js';

/** A fresh mount point for a run's root filesystem (removed after the run). */
export function scratchMount(): string {
  return path.join(runDir(), 'mnt', randomBytes(6).toString('hex'));
}

/**
 * Runs the layer's entry script (see script-runner.ts) with what every kind shares — the
 * layer folder, its # timeout, the log, the abort signal — on a scratch mount point, and
 * turns its outcome into success or the error that names the layer.
 */
export async function runEntryScript(
  ctx: LayerBuildContext,
  log: string,
  o: {
    mode: 'chroot' | 'host';
    root?: MountSource;
    mounts?: ExtraMount[];
    env: Record<string, string>;
    mountPoint?: string;
    /** Sandboxed create-disk and modify-disk: what they get of the host. */
    devices?: string[];
    readOnlyFiles?: string[];
    partitionServer?: Record<string, string>;
    /** Host folders the sandbox gets writable at the same path (made the sandbox root's first). */
    writableDirs?: string[];
    /** Links in the sandbox's /dev (to nodes the run makes in /dev/vmlb later). */
    deviceLinks?: { path: string; target: string }[];
    /** A modify-disk of the original's contract: see legacyModifyDisk. */
    legacy?: LegacyRun;
  },
): Promise<void> {
  ctx.onStep?.(`running ${ctx.spec.kind}${ctx.sandbox ? '' : ' (no sandbox)'}`);
  const mount = o.mountPoint ?? scratchMount();
  const sandbox = ctx.sandbox ? await sandboxRunFor(ctx.sandbox, ctx.spec.hints.network !== 'none', o) : undefined;
  if (sandbox) for (const d of o.writableDirs ?? []) await chown(d, sandbox.uidBase, sandbox.uidBase);
  try {
    const r = await runScript({
      args: o.legacy ? [o.legacy.source, o.legacy.target, o.legacy.device] : undefined,
      legacy: o.legacy,
      sandbox,
      mode: o.mode,
      layerDir: ctx.spec.dir,
      script: ctx.spec.kind,
      rootMount: mount,
      root: o.root,
      mounts: o.mounts,
      env: o.env,
      timeoutMs: ctx.spec.hints.timeoutMs,
      signal: ctx.signal,
      logFile: log,
      logMax: ctx.logMax,
      outputLimits: ctx.outputLimits,
      onOutput: ctx.onOutput,
    });
    await checkResult(ctx, r);
  } finally {
    await rm(mount, { recursive: true, force: true });
  }
}

/** One run's sandbox: a fresh uid range, the network (or none) with the build's deny routes. */
export async function sandboxRunFor(
  sb: LayerSandbox,
  network: boolean,
  o: {
    devices?: string[];
    readOnlyFiles?: string[];
    partitionServer?: Record<string, string>;
    writableDirs?: string[];
    deviceLinks?: { path: string; target: string }[];
  } = {},
): Promise<SandboxRun> {
  const routes = network ? await denyRoutes(sb.deny) : [];
  return {
    uidBase: pickUidBase(),
    network,
    routes,
    resolvConf: await sandboxResolvConf(network, routes),
    devices: o.devices ?? [],
    readOnlyFiles: o.readOnlyFiles ?? [],
    writableDirs: o.writableDirs ?? [],
    deviceLinks: o.deviceLinks ?? [],
    partitionServer: o.partitionServer,
  };
}

/** The run's outcome as the error that names the layer, if it failed (lost writes first). */
async function checkResult(ctx: LayerBuildContext, r: RunScriptResult): Promise<void> {
  if (r.aborted) throw new AbortedError(`interrupted while building ${ctx.spec.name}`);
  if (r.setupError) throw new VmlbError('LAYER_SETUP', `${ctx.spec.name}: ${r.setupError}`);
  // Lost writes first: a script that then failed on a read-only filesystem failed because of them.
  if (r.writeError) throw await lostWritesError(ctx.store, ctx.spec.name, `its filesystem: ${r.writeError}`, layerWriteBound(diskSizeOf(ctx) ?? 0));
  if (r.timedOut || r.exitCode !== 0 || r.signal) {
    throw new LayerFailedError({
      layer: ctx.spec.name,
      exitCode: r.exitCode,
      timedOut: r.timedOut,
      signal: r.timedOut ? undefined : r.signal,
      logTail: r.logTail,
      logPath: failedLogPath(ctx.store, ctx.key),
      hint: r.timedOut || r.signal ? undefined : usageHint(ctx.spec.kind, r),
    });
  }
}

/** What each script kind gets here instead of arguments (said when a script printed its usage). */
const CONTRACTS: Partial<Record<LayerKind, string>> = {
  'create-disk': 'a create-disk gets no arguments here: its blank disk\'s root filesystem is mounted at $VMLB_ROOT (the disk is $VMLB_DEVICE, the image $VMLB_IMAGE)',
  'build-layer': 'a build-layer gets no arguments here: it runs inside the image\'s root filesystem, its folder at /mnt',
  'modify-disk':
    'a modify-disk gets no arguments here: the disk is $VMLB_DEVICE (grown first by # disk-size SIZE) and vmlb-partition N names its partitions; ' +
    'a script of the original tool\'s "source target device" contract runs as it is on an nbd host once it says # args source target device, and vmlb migrate rewrites it',
};

/**
 * A script that failed within about two seconds (the sandbox's start included) after printing
 * a usage line was most likely written for other arguments than the none it was given: say
 * what its kind gets here. Null otherwise.
 */
export function usageHint(kind: LayerKind, r: Pick<RunScriptResult, 'seconds' | 'logTail'>): string | undefined {
  if (r.seconds > 2 || !/^\s*usage:/im.test(r.logTail)) return undefined;
  const contract = CONTRACTS[kind];
  return contract ? `it printed a usage line: ${contract}` : undefined;
}

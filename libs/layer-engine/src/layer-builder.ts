import { randomBytes } from 'node:crypto';
import { chown, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AbortedError, LayerFailedError, VmlbError } from './errors.js';
import { exec, HOST_PATH } from './exec.js';
import type { AttachedDisk, DiskBackend } from './disk-backend.js';
import { pathExists, runDir } from './attach-state.js';
import { reserveNbdDevice } from './attach-nbd.js';
import { importBaseImage } from './base-import.js';
import type { LayerManifest, LocalStore } from './local-store.js';
import { hostBindReason } from './layer-project.js';
import { readPartitionTable, rootPartition, GPT_LINUX_ROOT_X86_64 } from './partition-table.js';
import { convert, createLayerOverlay, resize } from './qemu-img.js';
import { ENGINE_BIN_DIR, runScript, type ExtraMount, type MountSource, type RunScriptResult } from './script-runner.js';
import { cacheMountDir, cacheMountsDir, denyRoutes, pickUidBase, sandboxResolvConf, SANDBOX_DEVICE_DIR, SANDBOX_STAGE_PATHS, type SandboxRun } from './sandbox.js';
import { DEFAULT_DISK_SIZE } from './hints.js';
import { formatBytes } from './sizes.js';
import type { OutputLimits } from './output-limits.js';
import { ensureRoom, isNoSpace, layerWriteBound, lostWritesError } from './store-space.js';
import { dropFailedOf, keepFailedOverlay } from './failed-layers.js';
import type { LayerInputs, LayerKind, LayerSpec, PartitionTable } from './types.js';

export const ENGINE_VERSION = '0.1.0';

export interface LayerBuildContext {
  store: LocalStore;
  backend: DiskBackend;
  spec: LayerSpec;
  key: string;
  inputs: LayerInputs;
  cacheable: boolean;
  /** The parent layer's manifest (null for the first layer). */
  parent: LayerManifest | null;
  signal?: AbortSignal;
  /** What of the script's output onOutput gets (see OutputLimiter). @default ENGINE_OUTPUT_LIMITS */
  outputLimits?: OutputLimits;
  onOutput?: (chunk: string) => void;
  onStep?: (step: string) => void;
  /** How scripts are confined (see sandbox.ts); unset: unsandboxed, as the host's root. */
  sandbox?: LayerSandbox;
  /**
   * Keep a failed script's half-built overlay for `vmlb shell --failed` (failed-layers.ts),
   * and drop those of earlier failures of the layer first. Local builds do; workers do not.
   */
  keepFailed?: boolean;
}

/** The sandbox as one build applies it to each layer. */
export interface LayerSandbox {
  /** Addresses no layer may reach (besides the host's own and link-local ones). */
  deny: readonly string[];
  /** Where this build's `# cache-mount` folders are kept (per store, or per team on a worker). */
  cacheDir: string;
  /**
   * The project is someone else's (a fleet worker's job): a `# chroot-bind-mount` may only
   * bind a folder of the project, read-only. @default false (local builds bind what they name)
   */
  projectBindsOnly?: boolean;
}

/** Host variables a script may rely on for network access; passed through when set. */
const PASSTHROUGH_ENV = ['http_proxy', 'https_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY'];
/** A build-layer's PATH (and `vmlb shell`'s). */
export const CHROOT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** The first partition of a disk made by create-disk starts at 1 MiB, as fdisk would put it. */
const FIRST_PARTITION_START = 1 << 20;

function scriptEnv(ctx: LayerBuildContext, extra: Record<string, string>): Record<string, string> {
  return layerEnv(ctx.spec.name, ctx.key, extra);
}

/** A layer script's whole environment (`vmlb shell` and `vmlb run` give the same). */
export function layerEnv(name: string, key: string, extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {
    HOME: '/root',
    LANG: 'C.UTF-8',
    TERM: 'dumb',
    DEBIAN_FRONTEND: 'noninteractive',
    VMLB_LAYER: name,
    VMLB_KEY: key,
  };
  for (const k of PASSTHROUGH_ENV) {
    const v = process.env[k];
    if (v) env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Builds one layer into a temporary blob beside its parent and publishes it in the store.
 * On any failure the temporary blob is removed and nothing is published; the script's log
 * is kept as `<key>.failed.log` for the user to read.
 */
export async function buildLayer(ctx: LayerBuildContext): Promise<LayerManifest> {
  const { store, spec, key } = ctx;
  const started = performance.now();
  // Room for the most this layer can write, before anything runs (see store-space.ts).
  const size = diskSizeOf(ctx);
  const bound = size === undefined ? undefined : layerWriteBound(size);
  if (size !== undefined) {
    const evicted = await ensureRoom(store, spec.name, bound!, `a layer on this ${formatBytes(size)} disk`);
    if (evicted) ctx.onStep?.(evicted);
  }
  if (ctx.keepFailed) await dropFailedOf(store, spec.dir);
  const tmp = store.tempBlobPath(key);
  const tmpLog = tmp.replace(/\.qcow2$/, '.log');
  let published = false;
  let failed: LayerFailedError | undefined;
  try {
    await writeFile(tmpLog, '');
    const result = await buildBlob(ctx, tmp, tmpLog);
    const manifest = await store.publish(
      tmp,
      {
        key,
        parent: ctx.parent?.key ?? null,
        name: spec.name,
        kind: spec.kind,
        cacheable: ctx.cacheable,
        share: !spec.hints.noshare,
        virtualSize: result.virtualSize,
        partitions: result.partitions,
        root: result.root,
        inputs: ctx.inputs,
        builtBy: { host: os.hostname(), user: os.userInfo().username, tool: `vmlb ${ENGINE_VERSION}`, backend: ctx.backend.name },
        builtAt: new Date().toISOString(),
        seconds: Math.round((performance.now() - started)) / 1000,
      },
      tmpLog,
    );
    published = true;
    await rm(failedLogPath(store, key), { force: true });
    return manifest;
  } catch (e) {
    // A full filesystem, wherever it struck (the log, qemu-img, the publish): one line that says so.
    if (isNoSpace(e) && !(e instanceof VmlbError && e.code === 'NO_SPACE')) {
      throw await lostWritesError(store, spec.name, (e as Error).message.split('\n')[0]!, bound ?? 0);
    }
    if (e instanceof LayerFailedError) failed = e;
    throw e;
  } finally {
    if (!published && failed && ctx.keepFailed) {
      const kept = await keepFailedOverlay(store, tmp, {
        key,
        name: spec.name,
        kind: spec.kind,
        project: path.dirname(spec.dir),
        layerDir: spec.dir,
        parent: ctx.parent?.key ?? null,
        log: failedLogPath(store, key),
        exitCode: failed.exitCode,
        timedOut: failed.timedOut,
      }).catch(() => undefined);
      if (kept) failed.keptOverlay = kept.overlay;
    }
    if (!published) {
      await rm(tmp, { force: true });
      await rename(tmpLog, failedLogPath(store, key)).catch(() => rm(tmpLog, { force: true }));
    }
  }
}

/** The size of the disk a layer writes, when known before it runs (a base-image's is known once imported). */
function diskSizeOf(ctx: LayerBuildContext): number | undefined {
  switch (ctx.spec.kind) {
    case 'create-disk':
      return ctx.spec.hints.diskSize ?? DEFAULT_DISK_SIZE;
    case 'build-layer':
      return ctx.parent?.virtualSize;
    case 'modify-disk':
      return ctx.parent ? Math.max(ctx.parent.virtualSize, ctx.spec.hints.diskSize ?? 0) : undefined;
    case 'base-image':
      return undefined;
  }
}

export function failedLogPath(store: LocalStore, key: string): string {
  return path.join(store.layersDir, `${key}.failed.log`);
}

interface BlobResult {
  virtualSize: number;
  partitions: PartitionTable;
  root: { number: number; start: number; size: number };
}

async function buildBlob(ctx: LayerBuildContext, tmp: string, log: string): Promise<BlobResult> {
  const { spec } = ctx;
  switch (spec.kind) {
    case 'base-image': {
      if (!spec.baseImage) throw new VmlbError('INTERNAL', `${spec.name}: base-image layer without a source`);
      await importBaseImage(spec.name, spec.baseImage, tmp, { signal: ctx.signal, onStep: ctx.onStep });
      return withDisk(ctx, tmp, async (disk) => {
        const partitions = await disk.partitionTable();
        return { virtualSize: disk.size, partitions, root: rootPartition(partitions, disk.size) };
      });
    }
    case 'create-disk':
      return createDisk(ctx, tmp, log);
    case 'build-layer':
      return buildInChroot(ctx, tmp, log);
    case 'modify-disk':
      return modifyDisk(ctx, tmp, log);
  }
}

/**
 * Attaches a disk for `fn` and releases it after. Writes the disk's server could not make (its
 * filesystem full, an I/O error) fail the layer, whatever `fn` made of them: the kernel's
 * filesystem on the disk carries on without them, so the blob cannot be trusted.
 */
async function withDisk<T>(ctx: LayerBuildContext, image: string, fn: (disk: AttachedDisk) => Promise<T>): Promise<T> {
  ctx.onStep?.(`attaching disk (${ctx.backend.name})`);
  const disk = await ctx.backend.attach(image, { purpose: ctx.spec.name, signal: ctx.signal });
  let result: T;
  try {
    result = await fn(disk);
  } catch (e) {
    await disk.release();
    throw (await lostWrites(ctx, disk, e)) ?? e;
  }
  await disk.release();
  const lost = await lostWrites(ctx, disk, undefined);
  if (lost) throw lost;
  return result;
}

/** The error for writes the disk's server refused while it was attached, if any (an interruption stays one). */
async function lostWrites(ctx: LayerBuildContext, disk: AttachedDisk, cause: unknown): Promise<VmlbError | undefined> {
  const n = disk.lostWrites?.() ?? 0;
  if (n === 0 || cause instanceof AbortedError) return undefined;
  return lostWritesError(ctx.store, ctx.spec.name, `${n} write${n === 1 ? '' : 's'} to ${path.basename(disk.image)} failed`, layerWriteBound(disk.size));
}

function scratchMount(): string {
  return path.join(runDir(), 'mnt', randomBytes(6).toString('hex'));
}

/**
 * Runs the layer's entry script (see script-runner.ts) with what every kind shares — the
 * layer folder, its # timeout, the log, the abort signal — on a scratch mount point, and
 * turns its outcome into success or the error that names the layer.
 */
async function runEntryScript(
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

async function createDisk(ctx: LayerBuildContext, tmp: string, log: string): Promise<BlobResult> {
  const size = ctx.spec.hints.diskSize ?? DEFAULT_DISK_SIZE;
  const start = FIRST_PARTITION_START;
  // GPT keeps a backup header in the last 33 sectors; stay clear of it (and align to 1 MiB).
  const partSize = Math.floor((size - start - 34 * 512) / (1 << 20)) * (1 << 20);
  if (partSize < 8 << 20) throw new VmlbError('DISK_TOO_SMALL', `${ctx.spec.name}: # disk-size must be at least 10M`);
  // Partition and format a sparse raw file without attaching anything, then make it qcow2.
  ctx.onStep?.('creating a blank GPT/ext4 disk');
  const raw = `${tmp}.raw`;
  let partitions: PartitionTable;
  try {
    await exec(['truncate', '-s', String(size), raw]);
    await exec(['sfdisk', '--quiet', raw], {
      input: `label: gpt\nstart=${start / 512}, size=${partSize / 512}, type=${GPT_LINUX_ROOT_X86_64}, name="root"\n`,
    });
    partitions = await readPartitionTable(raw);
    await exec(['mke2fs', '-q', '-F', '-t', 'ext4', '-L', 'root', '-E', `offset=${start}`, raw, `${partSize / 1024}k`]);
    await convert(raw, tmp, { srcFormat: 'raw', signal: ctx.signal });
  } finally {
    await rm(raw, { force: true });
  }
  const root = rootPartition(partitions, size);
  await withDisk(ctx, tmp, async (disk) => {
    const dev = await disk.rangeDevice(root);
    const mount = scratchMount();
    await runEntryScript(ctx, log, {
      mode: 'host',
      mountPoint: mount,
      root: { source: dev, options: 'defaults' },
      env: scriptEnv(ctx, {
        PATH: hostScriptPath(ctx),
        VMLB_ROOT: ctx.sandbox ? SANDBOX_STAGE_PATHS.root : mount,
        VMLB_DEVICE: dev,
        VMLB_IMAGE: tmp,
        VMLB_LAYER_DIR: ctx.spec.dir,
        ...(ctx.sandbox ? { VMLB_HOST_REQUESTS: SANDBOX_DEVICE_DIR } : {}),
      }),
      devices: [dev],
      readOnlyFiles: [tmp],
    });
  });
  return { virtualSize: size, partitions, root };
}

async function buildInChroot(ctx: LayerBuildContext, tmp: string, log: string): Promise<BlobResult> {
  const parent = requireParent(ctx);
  await createLayerOverlay(tmp, parent.blob.file, parent.virtualSize, { signal: ctx.signal });
  await withDisk(ctx, tmp, async (disk) => {
    const root = await disk.mountSource(parent.root);
    const mounts = await chrootMounts({ spec: ctx.spec, store: ctx.store, sandbox: ctx.sandbox, disk, partitions: parent.partitions });
    await runEntryScript(ctx, log, { mode: 'chroot', root, mounts, env: scriptEnv(ctx, { PATH: CHROOT_PATH }) });
  });
  // A build-layer works inside the root filesystem: the partition table stays as it was.
  return { virtualSize: parent.virtualSize, partitions: parent.partitions, root: parent.root };
}

/**
 * A build-layer's mounts inside the image, from its hints: `# chroot-mount` partitions of the
 * disk, `# chroot-bind-mount` host paths, `# cache-mount` folders (`vmlb shell` makes the same).
 */
export async function chrootMounts(o: {
  spec: LayerSpec;
  store: LocalStore;
  sandbox?: LayerSandbox;
  disk: AttachedDisk;
  partitions: PartitionTable;
}): Promise<ExtraMount[]> {
  const { spec, disk } = o;
  const { hints } = spec;
  const mounts: ExtraMount[] = [];
  for (const pm of hints.partitionMounts) {
    const part = o.partitions.partitions.find((p) => p.number === pm.partition);
    if (!part) {
      throw new VmlbError('NO_SUCH_PARTITION', `${spec.name}: # chroot-mount ${pm.partition} ${pm.target}: the disk has no partition ${pm.partition}`);
    }
    mounts.push({ type: 'part', from: await disk.mountSource(part), target: pm.target });
  }
  for (const bm of hints.bindMounts) {
    const why = o.sandbox?.projectBindsOnly ? hostBindReason(path.dirname(spec.dir), spec.dir, bm.source) : null;
    if (why) throw new VmlbError('PROJECT_INVALID', `${spec.name}: # chroot-bind-mount ${bm.source} ${bm.target}: a submitted project names no host path (${why})`);
    mounts.push({ type: o.sandbox?.projectBindsOnly ? 'bind-ro' : 'bind', source: path.resolve(spec.dir, bm.source), target: bm.target });
  }
  for (const cm of hints.cacheMounts ?? []) {
    const source = cacheMountDir(o.sandbox?.cacheDir ?? cacheMountsDir(o.store), cm.target);
    await mkdir(source, { recursive: true });
    mounts.push({ type: 'cache', source, target: cm.target });
  }
  return mounts;
}

async function modifyDisk(ctx: LayerBuildContext, tmp: string, log: string): Promise<BlobResult> {
  if (ctx.spec.hints.legacyArgs) return legacyModifyDisk(ctx, tmp, log);
  const parent = requireParent(ctx);
  const want = ctx.spec.hints.diskSize;
  if (want !== undefined && want < parent.virtualSize) {
    throw new VmlbError(
      'DISK_SHRINK',
      `${ctx.spec.name}: # disk-size ${want} bytes is smaller than the disk (${parent.virtualSize} bytes); shrinking a disk is not supported`,
    );
  }
  await createLayerOverlay(tmp, parent.blob.file, parent.virtualSize, { signal: ctx.signal });
  if (want !== undefined && want > parent.virtualSize) {
    ctx.onStep?.(`growing the disk to ${formatBytes(want)}`);
    await resize(tmp, want, { signal: ctx.signal });
  }
  return withDisk(ctx, tmp, async (disk) => {
    const device = await disk.wholeDevice();
    await runEntryScript(ctx, log, {
      mode: 'host',
      env: scriptEnv(ctx, {
        PATH: hostScriptPath(ctx),
        VMLB_DEVICE: device,
        VMLB_IMAGE: tmp,
        VMLB_DISK_SIZE: String(disk.size),
        VMLB_LAYER_DIR: ctx.spec.dir,
        // Sandboxed, vmlb-partition asks the run for each partition's device (see vmlb-run-layer).
        ...(ctx.sandbox ? { VMLB_HOST_REQUESTS: SANDBOX_DEVICE_DIR } : disk.helperEnv),
      }),
      devices: [device, ...(await partitionNodesOf(device))],
      readOnlyFiles: [tmp],
      partitionServer: disk.helperEnv,
    });
    // The script may have changed the partition table (growpart): read it as it is now.
    const partitions = await disk.partitionTable();
    return { virtualSize: disk.size, partitions, root: rootPartition(partitions, disk.size) };
  });
}

/** What the runner needs for a modify-disk of the original's contract (see legacyModifyDisk). */
export interface LegacyRun {
  /** The parent's blob, the script's first argument. */
  source: string;
  /** Where the script is to create its overlay, the second (in a folder the sandbox may write). */
  target: string;
  /** The reserved, unconnected /dev/nbdN, the third. */
  device: string;
  /** Where the run keeps the overlay once the script connects it (the engine's, out of the script's reach). */
  image: string;
}

/** A modify-disk of the original's contract on a host whose disks are not attached with nbd: one line, and the way out. */
export function legacyNeedsNbd(layer: string, backend: string): VmlbError {
  return new VmlbError(
    'NEEDS_NBD',
    `${layer}: "# args source target device" is the original tool's modify-disk contract, which needs the nbd backend (this host attaches disks with ${backend}); \`vmlb migrate\` rewrites it for any host`,
  );
}

/** How many partition nodes of its device a modify-disk of the original's contract can name (/dev/nbdNp1 …). */
const LEGACY_PARTITION_LINKS = 16;

/**
 * A modify-disk of the original tool's contract (`# args source target device`): called as
 * `modify-disk SOURCE TARGET DEVICE` — the parent's blob, the path of the overlay to create,
 * a free /dev/nbdN reserved for it — it creates the overlay itself (`qemu-img create -b
 * SOURCE`; bin/legacy/qemu-img adds the `-F` today's qemu-img wants), connects it (`qemu-nbd
 * --connect=DEVICE TARGET`), changes the disk and disconnects it.
 *
 * Sandboxed, the connect is the run's (bin/sandbox/qemu-nbd asks vmlb-run-layer): it takes
 * the target out of the script's folder into the engine's temporary blob before anything
 * opens it as the host's root, and connects it only if it is a qcow2 backed by SOURCE with no
 * external data file; the device's partition nodes then appear as /dev/nbdNpM (links into
 * /dev/vmlb). Unsandboxed (`--no-sandbox`) the script's own qemu-nbd connects the target
 * where it is. Either way the engine then gives the overlay the store's relative backing
 * name and compat 1.1, and reads its partition table. Only on the nbd backend: elsewhere it
 * is refused in one line (legacyNeedsNbd).
 */
async function legacyModifyDisk(ctx: LayerBuildContext, tmp: string, log: string): Promise<BlobResult> {
  const parent = requireParent(ctx);
  if (ctx.backend.name !== 'nbd') throw legacyNeedsNbd(ctx.spec.name, ctx.backend.name);
  const chain: string[] = [];
  for (let m: LayerManifest | null = parent; m; m = m.parent ? await ctx.store.getManifest(m.parent) : null) {
    chain.push(path.join(ctx.store.layersDir, m.blob.file));
  }
  const source = chain[0]!;
  const out = `${tmp}.d`;
  const target = path.join(out, 'target.qcow2');
  await mkdir(out, { mode: 0o700 });
  try {
    const nbd = await reserveNbdDevice(ctx.spec.name, ctx.signal);
    try {
      const name = path.basename(nbd.device);
      await runEntryScript(ctx, log, {
        mode: 'host',
        env: scriptEnv(ctx, {
          PATH: hostScriptPath(ctx, true),
          VMLB_LAYER_DIR: ctx.spec.dir,
          ...(ctx.sandbox ? { VMLB_HOST_REQUESTS: SANDBOX_DEVICE_DIR } : {}),
        }),
        devices: [nbd.device],
        deviceLinks: Array.from({ length: LEGACY_PARTITION_LINKS }, (_, i) => ({
          path: `/dev/${name}p${i + 1}`,
          target: `${SANDBOX_DEVICE_DIR}/${name}p${i + 1}`,
        })),
        readOnlyFiles: chain,
        writableDirs: [out],
        legacy: { source, target, device: nbd.device, image: tmp },
      });
    } finally {
      await nbd.release();
    }
    // Unsandboxed, the script's own qemu-nbd served the target where it made it.
    if (!ctx.sandbox && !(await pathExists(tmp)) && (await pathExists(target))) await rename(target, tmp);
  } finally {
    // (The run's copy of the target in the making, had it been killed while it took it.)
    await Promise.all([rm(out, { recursive: true, force: true }), rm(`${tmp}.in`, { force: true })]);
  }
  if (!(await pathExists(tmp))) {
    throw new VmlbError(
      'LEGACY_NO_TARGET',
      `${ctx.spec.name}: the script (# args source target device) exited 0 without connecting its target (qemu-nbd --connect=DEVICE TARGET): there is no overlay to keep`,
    );
  }
  ctx.onStep?.('taking the script\'s overlay');
  await exec(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', parent.blob.file, '-F', 'qcow2', tmp], { signal: ctx.signal });
  await exec(['qemu-img', 'amend', '-f', 'qcow2', '-o', 'compat=1.1', tmp], { signal: ctx.signal });
  await chown(tmp, 0, 0);
  return withDisk(ctx, tmp, async (disk) => {
    if (disk.size < parent.virtualSize) {
      throw new VmlbError('DISK_SHRINK', `${ctx.spec.name}: its overlay is ${disk.size} bytes, smaller than the disk (${parent.virtualSize} bytes); shrinking a disk is not supported`);
    }
    const partitions = await disk.partitionTable();
    return { virtualSize: disk.size, partitions, root: rootPartition(partitions, disk.size) };
  });
}

/**
 * A create-disk's or modify-disk's PATH: the host's, after the engine's helpers (vmlb-partition)
 * and, sandboxed, the shims that ask the engine for what needs the host's root (bin/sandbox/);
 * a modify-disk of the original's contract also gets bin/legacy/ (qemu-img as its scripts use it).
 */
function hostScriptPath(ctx: LayerBuildContext, legacy = false): string {
  const bin = ENGINE_BIN_DIR.replace(/\/+$/, '');
  // (bin/sandbox first: its shims find the real tool by dropping the first PATH entry.)
  return `${ctx.sandbox ? `${bin}/sandbox:` : ''}${legacy ? `${bin}/legacy:` : ''}${bin}:${HOST_PATH}`;
}

/**
 * The kernel's partition nodes of a whole-disk device (/dev/nbd0p1, …; a loop device made by
 * the engine has none): tools such as growpart look for them by name, so the sandbox gets them.
 */
async function partitionNodesOf(device: string): Promise<string[]> {
  const name = path.basename(device);
  const names = await readdir(path.dirname(device)).catch(() => [] as string[]);
  return names.filter((n) => n.startsWith(`${name}p`) && /^\d+$/.test(n.slice(name.length + 1))).map((n) => path.join(path.dirname(device), n));
}

function requireParent(ctx: LayerBuildContext): LayerManifest {
  if (!ctx.parent) throw new VmlbError('INTERNAL', `${ctx.spec.name}: a ${ctx.spec.kind} layer needs a parent`);
  return ctx.parent;
}

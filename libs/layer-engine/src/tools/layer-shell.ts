import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { AbortedError, VmlbError } from '../errors.js';
import { exec } from '../host/exec.js';
import { runDir } from '../disk/run-dirs.js';
import { chooseBackend, type BackendPreference } from '../disk/backends.js';
import type { AttachedDisk } from '../disk/disk-backend.js';
import { chrootMounts } from '../build/build-layer.js';
import { sandboxRunFor } from '../build/entry-script.js';
import type { LayerSandbox } from '../build/layer-build-context.js';
import { CHROOT_PATH, layerEnv } from '../build/layer-env.js';
import type { LocalStore } from '../store/local-store.js';
import { pidAlive } from '../store/pid-alive.js';
import { rootPartition } from '../host/partition-table.js';
import { createOverlay, imageInfo } from '../host/qemu-img.js';
import { runAttached } from '../build/run-attached.js';
import type { ExtraMount } from '../build/script-runner.js';
import type { LayerSpec, PartitionTable } from '../types.js';

/**
 * `vmlb shell` and `vmlb run`: a command in an image's root filesystem exactly as a
 * build-layer script runs there — the same runner, sandbox, environment and mounts (the
 * layer's folder read-only at /mnt, its `# chroot-mount`, `# chroot-bind-mount` and
 * `# cache-mount` hints) — on a throw-away overlay: a new qcow2 on the state's file in a
 * scratch folder of the run dir, removed after (a killed run's folder is removed by
 * removeShellOrphans in the start-up sweep, with what it attached).
 */
export interface ShellState {
  /** The file the throw-away overlay goes on: a layer's blob, an image file, a failed layer's overlay. */
  image: string;
  /** Short words for messages, e.g. `02_motd (5c1e2f…)`. */
  label: string;
  key?: string;
  /** The root partition and the table, when a manifest says them; else read from the disk. */
  root?: { number: number; start: number; size: number };
  partitions?: PartitionTable;
  /** The layer whose folder is at /mnt and whose hints give the mounts; none: an empty /mnt. */
  spec?: LayerSpec;
}

export interface LayerShellOptions {
  state: ShellState;
  /** Another image, mounted read-only at /compare (`vmlb shell A --compare B`). */
  compare?: { image: string; label: string };
  /** What to run; unset: the image's /bin/bash, else /bin/sh. */
  command?: string[];
  /** An interactive session on this terminal (see runAttached). */
  terminal: boolean;
  /** Keep what the session changed: a qcow2 at this path whose backing file is `state.image` (absolute path). */
  keep?: string;
  /** The layer sandbox (null: unconfined, as `vmlb build --no-sandbox`). */
  sandbox: LayerSandbox | null;
  store: LocalStore;
  backend?: BackendPreference;
  /** Variables added to the layer's environment (TERM, a prompt). */
  env?: Record<string, string>;
  /** Host variables the session gets as a layer script does (see proxyEnv). @default {} */
  passEnv?: Record<string, string>;
  signal?: AbortSignal;
}

export interface LayerShellResult {
  exitCode: number | undefined;
  signal: string | undefined;
  seconds: number;
  /** With `keep`: the file written, its backing file and its size on disk. */
  kept?: { file: string; backing: string; bytes: number };
}

/** The shell a session gets when no command is given: the image's /bin/bash, else /bin/sh. */
export const DEFAULT_SHELL = ['/bin/sh', '-c', 'if [ -x /bin/bash ]; then exec /bin/bash "$@"; fi; exec /bin/sh "$@"', 'sh'];

function shellDir(): string {
  return path.join(runDir(), 'shell');
}

/** Scratch folders (`<pid>-…`) of sessions whose process is gone (killed): their overlays and mount points. */
export async function removeShellOrphans(): Promise<number> {
  let n = 0;
  for (const name of await readdir(shellDir()).catch(() => [] as string[])) {
    const pid = Number(/^(\d+)-/.exec(name)?.[1]);
    if (pid && !pidAlive(pid)) {
      await rm(path.join(shellDir(), name), { recursive: true, force: true }).catch(() => undefined);
      n++;
    }
  }
  return n;
}

/** A throw-away overlay on `image` at `overlay`, attached; with the format of `image` (the overlay's backing format). */
async function attachOverlay(image: string, overlay: string, o: { purpose: string; backend?: BackendPreference; signal?: AbortSignal }): Promise<{ disk: AttachedDisk; format: string }> {
  const info = await imageInfo(image, { signal: o.signal }).catch((e: unknown) => {
    throw new VmlbError('IMAGE_UNREADABLE', `${image}: cannot read the image (${(e as Error).message.split('\n')[0]}); is its backing chain still in the store?`, { cause: e });
  });
  await createOverlay(overlay, path.resolve(image), { signal: o.signal, backingFormat: info.format });
  const backend = await chooseBackend(o.backend ?? 'auto');
  return { disk: await backend.attach(overlay, { purpose: o.purpose, signal: o.signal }), format: info.format };
}

export async function runInLayer(o: LayerShellOptions): Promise<LayerShellResult> {
  const { state } = o;
  const scratch = path.join(shellDir(), `${process.pid}-${randomBytes(6).toString('hex')}`);
  await mkdir(scratch, { recursive: true, mode: 0o700 });
  const disks: AttachedDisk[] = [];
  try {
    const overlay = path.join(scratch, 'overlay.qcow2');
    const { disk, format } = await attachOverlay(state.image, overlay, { purpose: `shell ${state.label}`, backend: o.backend, signal: o.signal });
    disks.push(disk);
    const table = state.partitions ?? (await disk.partitionTable());
    const root = state.root ?? rootPartition(table, disk.size);
    const mounts: ExtraMount[] = state.spec ? await chrootMounts({ spec: state.spec, store: o.store, sandbox: o.sandbox ?? undefined, disk, partitions: table }) : [];
    if (o.compare) {
      const { disk: other } = await attachOverlay(o.compare.image, path.join(scratch, 'compare.qcow2'), { purpose: `shell --compare ${o.compare.label}`, backend: o.backend, signal: o.signal });
      disks.push(other);
      const src = await other.mountSource(rootPartition(await other.partitionTable(), other.size));
      // Read-only, and no journal replay: what it shows is the image as it is.
      mounts.push({ type: 'part', from: { source: src.source, options: `${src.options},ro,noload` }, target: '/compare' });
    }
    let layerDir = state.spec?.dir;
    if (!layerDir) {
      layerDir = path.join(scratch, 'mnt');
      await mkdir(layerDir, { mode: 0o755 });
    }
    const network = state.spec?.hints.network !== 'none';
    const r = await runAttached({
      mode: 'chroot',
      layerDir,
      script: state.spec?.kind ?? 'build-layer',
      rootMount: path.join(scratch, 'root'),
      root: await disk.mountSource(root),
      mounts,
      env: layerEnv(state.spec?.name ?? '', state.key ?? '', { PATH: CHROOT_PATH, ...(o.compare ? { VMLB_COMPARE: '/compare' } : {}), ...o.env }, o.passEnv),
      sandbox: o.sandbox ? await sandboxRunFor(o.sandbox, network) : undefined,
      command: o.command ?? DEFAULT_SHELL,
      terminal: o.terminal,
      signal: o.signal,
    });
    if (r.aborted) throw new AbortedError(`interrupted in ${state.label}`);
    if (r.setupError && /did not start/.test(r.setupError)) {
      throw new VmlbError('COMMAND_NOT_STARTED', `${state.label}: could not start ${(o.command ?? DEFAULT_SHELL)[0]} in the image (bwrap's message is above)`);
    }
    if (r.setupError) throw new VmlbError('SHELL_SETUP', `${state.label}: ${r.setupError}`);
    for (const d of disks.splice(0).reverse()) await d.release();
    let kept: LayerShellResult['kept'];
    if (o.keep) {
      if (r.writeError || (disk.lostWrites?.() ?? 0) > 0) {
        throw new VmlbError('NO_SPACE', `${state.label}: writes to the throw-away overlay were lost (${r.writeError ?? 'the disk server refused some'}); nothing was kept`);
      }
      const backing = path.resolve(state.image);
      await mkdir(path.dirname(path.resolve(o.keep)), { recursive: true });
      // Only what the session changed: the clusters allocated in the overlay, over the same backing file.
      await exec(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'qcow2', '-o', 'compat=1.1', '-B', backing, '-F', format, overlay, path.resolve(o.keep)]);
      const st = await stat(o.keep);
      kept = { file: path.resolve(o.keep), backing, bytes: st.blocks * 512 };
    }
    return { exitCode: r.exitCode, signal: r.signal, seconds: r.seconds, kept };
  } finally {
    for (const d of disks.reverse()) await d.release().catch(() => undefined);
    await rm(scratch, { recursive: true, force: true });
  }
}

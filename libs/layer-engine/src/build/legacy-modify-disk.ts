import { chown, mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { VmlbError } from '../errors.js';
import { exec } from '../host/exec.js';
import { pathExists } from '../host/path-exists.js';
import { reserveNbdDevice } from '../disk/nbd-devices.js';
import { runEntryScript } from './entry-script.js';
import { requireParent, type BlobResult, type LayerBuildContext } from './layer-build-context.js';
import { withDisk } from './layer-disk.js';
import { hostScriptPath, scriptEnv } from './layer-env.js';
import type { LayerManifest } from '../store/layer-manifest.js';
import { rootPartition } from '../host/partition-table.js';
import { SANDBOX_DEVICE_DIR } from './sandbox.js';

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
export async function legacyModifyDisk(ctx: LayerBuildContext, tmp: string, log: string): Promise<BlobResult> {
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
          PATH: hostScriptPath(!!ctx.sandbox, true),
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

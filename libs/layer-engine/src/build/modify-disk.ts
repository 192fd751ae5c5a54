import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { VmlbError } from '../errors.js';
import { runEntryScript } from './entry-script.js';
import { requireParent, type BlobResult, type LayerBuildContext } from './layer-build-context.js';
import { withDisk } from './layer-disk.js';
import { hostScriptPath, scriptEnv } from './layer-env.js';
import { legacyModifyDisk } from './legacy-modify-disk.js';
import { rootPartition } from '../host/partition-table.js';
import { createLayerOverlay, resize } from '../host/qemu-img.js';
import { SANDBOX_DEVICE_DIR } from './sandbox.js';
import { formatBytes } from '../sizes.js';

/**
 * A modify-disk: an overlay on the parent, grown to # disk-size first, the script given the
 * whole disk as $VMLB_DEVICE; its partition table is read again after it. One of the original
 * tool's contract (`# args source target device`) is legacyModifyDisk's.
 */
export async function modifyDisk(ctx: LayerBuildContext, tmp: string, log: string): Promise<BlobResult> {
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
        PATH: hostScriptPath(!!ctx.sandbox),
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

/**
 * The kernel's partition nodes of a whole-disk device (/dev/nbd0p1, …; a loop device made by
 * the engine has none): tools such as growpart look for them by name, so the sandbox gets them.
 */
async function partitionNodesOf(device: string): Promise<string[]> {
  const name = path.basename(device);
  const names = await readdir(path.dirname(device)).catch(() => [] as string[]);
  return names.filter((n) => n.startsWith(`${name}p`) && /^\d+$/.test(n.slice(name.length + 1))).map((n) => path.join(path.dirname(device), n));
}

import { rm } from 'node:fs/promises';
import { VmlbError } from '../errors.js';
import { exec } from '../host/exec.js';
import { runEntryScript, scratchMount } from './entry-script.js';
import { DEFAULT_DISK_SIZE } from '../project/hints.js';
import type { BlobResult, LayerBuildContext } from './layer-build-context.js';
import { withDisk } from './layer-disk.js';
import { hostScriptPath, scriptEnv } from './layer-env.js';
import { readPartitionTable, rootPartition, GPT_LINUX_ROOT_X86_64 } from '../host/partition-table.js';
import { convert } from '../host/qemu-img.js';
import { SANDBOX_DEVICE_DIR, SANDBOX_STAGE_PATHS } from './sandbox.js';
import type { PartitionTable } from '../types.js';

/** The first partition of a disk made by create-disk starts at 1 MiB, as fdisk would put it. */
const FIRST_PARTITION_START = 1 << 20;

/**
 * A create-disk: a blank disk of # disk-size with one GPT partition formatted ext4, its root
 * filesystem mounted for the script at $VMLB_ROOT.
 */
export async function createDisk(ctx: LayerBuildContext, tmp: string, log: string): Promise<BlobResult> {
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
        PATH: hostScriptPath(!!ctx.sandbox),
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

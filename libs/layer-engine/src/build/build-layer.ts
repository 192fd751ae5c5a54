import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { VmlbError } from '../errors.js';
import type { AttachedDisk } from '../disk/disk-backend.js';
import { runEntryScript } from './entry-script.js';
import { requireParent, type BlobResult, type LayerBuildContext, type LayerSandbox } from './layer-build-context.js';
import { withDisk } from './layer-disk.js';
import { CHROOT_PATH, scriptEnv } from './layer-env.js';
import { hostBindReason } from '../project/host-paths.js';
import type { LocalStore } from '../store/local-store.js';
import { createLayerOverlay } from '../host/qemu-img.js';
import { cacheMountDir, cacheMountsDir } from './sandbox.js';
import type { ExtraMount } from './script-runner.js';
import type { LayerSpec, PartitionTable } from '../types.js';

/** A build-layer: an overlay on the parent, the script run inside its root filesystem (chroot). */
export async function buildInChroot(ctx: LayerBuildContext, tmp: string, log: string): Promise<BlobResult> {
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

import os from 'node:os';
import path from 'node:path';
import { rename, rm, writeFile } from 'node:fs/promises';
import { LayerFailedError, VmlbError } from '../errors.js';
import { importBaseImage } from './base-import.js';
import { buildInChroot } from './build-layer.js';
import { createDisk } from './create-disk.js';
import { dropFailedOf, keepFailedOverlay } from '../tools/failed-layers.js';
import { diskSizeOf, failedLogPath, type BlobResult, type LayerBuildContext } from './layer-build-context.js';
import { withDisk } from './layer-disk.js';
import type { LayerManifest } from '../store/layer-manifest.js';
import { modifyDisk } from './modify-disk.js';
import { rootPartition } from '../host/partition-table.js';
import { formatBytes } from '../sizes.js';
import { ensureRoom, isNoSpace, layerWriteBound, lostWritesError } from '../store/store-space.js';

export const ENGINE_VERSION = '0.1.0';

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

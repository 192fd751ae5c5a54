import path from 'node:path';
import { AbortedError, type VmlbError } from '../errors.js';
import type { AttachedDisk } from '../disk/disk-backend.js';
import type { LayerBuildContext } from './layer-build-context.js';
import { releaseOnFailure } from '../disk/release-on-failure.js';
import { layerWriteBound, lostWritesError } from '../store/store-space.js';

/**
 * Attaches a disk for `fn` and releases it after. Writes the disk's server could not make (its
 * filesystem full, an I/O error) fail the layer, whatever `fn` made of them: the kernel's
 * filesystem on the disk carries on without them, so the blob cannot be trusted. When `fn`
 * fails, its error is what is thrown, a failed release only noted in it (releaseOnFailure).
 */
export async function withDisk<T>(ctx: LayerBuildContext, image: string, fn: (disk: AttachedDisk) => Promise<T>): Promise<T> {
  ctx.onStep?.(`attaching disk (${ctx.backend.name})`);
  const disk = await ctx.backend.attach(image, { purpose: ctx.spec.name, signal: ctx.signal });
  let result: T;
  try {
    result = await fn(disk);
  } catch (e) {
    await releaseOnFailure(e, () => disk.release());
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

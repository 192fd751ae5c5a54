import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { VmlbError } from '../errors.js';
import type { BuildEvent } from './events.js';
import type { LocalStore } from '../store/local-store.js';
import { convert, createOverlay, isPristineOverlayOn } from '../host/qemu-img.js';
import { formatBytes } from '../sizes.js';
import { freeBytes, isNoSpace } from '../store/store-space.js';

/**
 * The output: a thin overlay on the chain's top (milliseconds; backing by absolute path so
 * it works from anywhere, and writes to it never reach a cached layer), or a flattened copy.
 * Written to a temporary name and renamed, so a failure never leaves half an image.
 */
export async function writeOutput(
  store: LocalStore,
  top: string,
  output: string,
  o: { flatten: boolean; compat?: '0.10' | '1.1'; signal?: AbortSignal; emit: (e: BuildEvent) => void },
): Promise<number> {
  await mkdir(path.dirname(output), { recursive: true });
  const tmp = `${output}.tmp-${process.pid}`;
  try {
    if (o.flatten) {
      await convert(store.blobPath(top), tmp, { compat: o.compat, signal: o.signal });
    } else if (await isPristineOverlayOn(output, store.blobPath(top))) {
      // Already what this build would write (a no-op rebuild): keep it, saving a qemu-img.
      return (await stat(output)).size;
    } else {
      await createOverlay(tmp, store.blobPath(top), { signal: o.signal });
    }
    await rename(tmp, output);
  } catch (e) {
    if (!isNoSpace(e)) throw e;
    await rm(tmp, { force: true });
    const free = await freeBytes(path.dirname(output)).catch(() => Number.NaN);
    throw new VmlbError('NO_SPACE', `writing the output ${output}: no space left on its filesystem (${formatBytes(free)} free${o.flatten ? '; a flattened image can need up to its disk size' : ''}); the layers are built and cached`);
  } finally {
    await rm(tmp, { force: true });
  }
  return (await stat(output)).size;
}

/**
 * Pins the output's chain so eviction keeps it, and drops the uncacheable layers (`# nocache`
 * and after) of the chain the output referenced before: no other build can ever use them.
 */
export async function retireOldChain(store: LocalStore, output: string, chain: string[]): Promise<void> {
  const old = await store.readPin(output);
  if (chain.length) await store.pin(output, chain);
  else await store.unpin(output);
  if (!old) return;
  const now = new Set(chain);
  const stale: string[] = [];
  for (const k of old.chain) {
    if (now.has(k)) continue;
    const m = await store.getManifest(k);
    if (m && !m.cacheable) stale.push(k);
  }
  if (stale.length) await store.remove(stale);
}

import type { Stats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { sampleHash } from './file-digest.js';

/** What checkBlob found. */
export type BlobCheck =
  | { ok: true; how: 'seal' | 'full' }
  | { ok: false; reason: string };

/**
 * A blob's seal (`seals/<key>.json`): what its file looked like when its bytes were last
 * checked whole. A hit checks the seal instead of hashing the blob: a stat and 64 KiB + 64 ×
 * 4 KiB read, the same cost for 10 MiB as for 10 GiB.
 */
export interface Seal {
  sha256: string;
  size: number;
  dev: number;
  ino: number;
  mtimeMs: number;
  ctimeMs: number;
  /** sha256 of the blob's first 64 KiB and 64 pages spread over it (sampleHash). */
  sample: string;
  at: string;
}

/** The seal of a blob whose bytes were just checked whole against `sha256`. */
export async function takeSeal(file: string, sha256: string): Promise<Seal> {
  const st = await stat(file, { bigint: false });
  return { sha256, size: st.size, dev: st.dev, ino: st.ino, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, sample: await sampleHash(file, st.size), at: new Date().toISOString() };
}

/** The seal in `sealFile`, or null when there is none (or it cannot be read). */
export function readSeal(sealFile: string): Promise<Seal | null> {
  return readFile(sealFile, 'utf8').then((t) => JSON.parse(t) as Seal, () => null);
}

/**
 * Whether the blob `file` (whose stat is `st`) is still what `seal` saw, for the bytes
 * `sha256`: same file (device, inode), untouched (size, times) and the same sampled bytes.
 */
export async function sealHolds(seal: Seal | null, file: string, st: Stats, sha256: string): Promise<boolean> {
  return (
    !!seal &&
    seal.sha256 === sha256 &&
    seal.size === st.size &&
    seal.dev === st.dev &&
    seal.ino === st.ino &&
    seal.mtimeMs === st.mtimeMs &&
    seal.ctimeMs === st.ctimeMs &&
    seal.sample === (await sampleHash(file, st.size))
  );
}

import { StoreError } from '../errors.js';
import { ZSTD_LEVELS } from './zstd-stream.js';

/**
 * How the shared store compresses layer blobs (SharedStore.push, pullOne). A push compresses
 * the blob while it streams (`zstd -1 -T0`, Debian's `zstd` program in a child process:
 * zstd-stream.ts) and uploads the compressed stream's parts as they fill; the sha256 checked
 * on the way is still that of the blob's own bytes. The manifest keeps the blob's
 * (uncompressed qcow2's) sha256 and size — what the local store keeps and a pull verifies —
 * and gains `transfer: { file: '<key>.qcow2.zst', encoding: 'zstd', size }`. A pull decompresses while it streams and hashes the decompressed bytes: a
 * corrupt object is refused ("is corrupt", SharedBlobMismatchError) whether zstd rejects the
 * stream or it decompresses to other bytes, and nothing of it is kept. A pull cut short resumes
 * with a ranged GET of the compressed object from the byte it stopped at, fed on into the same
 * running decompressor (its state is the stream so far); only a changed object starts again. A
 * manifest without `transfer` (written before, or with VMLB_SHARED_COMPRESSION=none) is pulled
 * from `layers/<key>.qcow2` as before, so an old store, and a chain mixing both, keep working.
 * A vmlb from before this cannot read a compressed layer (it finds no `layers/<key>.qcow2`
 * and says the blob is missing): upgrade the readers first, or push with
 * VMLB_SHARED_COMPRESSION=none until every reader is upgraded. Images (`images/<top>.qcow2`,
 * putFile/getFile, presigned URLs a browser or curl downloads) stay as they are.
 *
 * Measured here (2 cores, the Debian example's 01_base: a 642 MiB qcow2; the machine shared
 * with other work, load average 8–22, so single runs vary ±40%; medians of 3 interleaved runs):
 *   size on the wire: zstd -1 249 MiB (39%), -3 238 MiB (37%), -6 229 MiB (36%); gzip -1
 *     (zlib) 263 MiB (41%); qemu-img convert -c zstd 255 MiB, zlib 259 MiB (stored bytes
 *     change); 02_packages (171 MiB) 56 MiB (33%) with zstd -1; 05_config (1.7 MiB) 0.12 MiB.
 *   compressing alone: zstd -1 -T2 1.7–3 s, -3 3–4.8 s, -6 12–13 s; gzip -1 11.7 s;
 *     qemu-img convert -c zstd 5.1–7.3 s, zlib 25 s (before the upload can start).
 *   push + pull, s3rver (its CPU is its limit): raw 24.9 s (push 16.0, pull 8.9); zstd -1
 *     16.5 s (10.5 + 6.1, 0.66× raw); zstd -3 16.7 s; one run each at load 12–13: zstd -6
 *     28.4 s, gzip -1 32.8 s, qcow2 -c zstd 20.5 s (10.0 s of it the convert).
 *   push + pull, radosgw (memstore, fast on loopback): raw 16.3 s, zstd -1 17.3 s, zstd -3
 *     17.9 s: a tie within the noise. On loopback the bytes cost little; between hosts they
 *     dominate (642 MiB raw is ≥ 5.6 s on a 1 Gbit/s link alone, 249 MiB 2.2 s).
 *   a small layer (05_config): the same either way (0.1–0.2 s; a zstd process starts in ms).
 *   qcow2-internal compression also changes the stored blob (its sha256 is then that of the
 *     compressed qcow2, and every layer must be converted before it is published) and slows
 *     what is built on it: reading the whole base 2.06 s vs 1.03 s, `02_packages` built on the
 *     compressed base 34.8 s vs 28.2 s. Not used.
 *   parts in flight (s3rver, load 15–22, one run each): raw 2/3/4: 31.1/30.2/31.7 s, zstd -1
 *     29.7/24.1/40.1 s: no gain above the noise on 2 cores; kept at 2.
 * zstd -1 is the fastest end to end that keeps the contract; -3 saves 4% more bytes for more
 * compression CPU (3–4.8 s vs 1.7–3 s here), which a busy 2-core worker pays while it builds.
 */

/** The level pushes use unless told (see the module comment for the measurements). */
export const DEFAULT_ZSTD_LEVEL = 1;

/** `none` → null; `zstd` / `zstd:N` → the level. */
export function parseCompression(spec: string, from = 'compression'): { zstd: number } | null {
  const m = /^zstd(?::(\d+))?$/.exec(spec.trim());
  if (spec.trim() === 'none') return null;
  const level = m ? Number(m[1] ?? DEFAULT_ZSTD_LEVEL) : NaN;
  if (!(level >= ZSTD_LEVELS.min && level <= ZSTD_LEVELS.max)) {
    throw new StoreError(`${from} "${spec}" is not none, zstd or zstd:LEVEL (LEVEL ${ZSTD_LEVELS.min}–${ZSTD_LEVELS.max})`);
  }
  return { zstd: level };
}

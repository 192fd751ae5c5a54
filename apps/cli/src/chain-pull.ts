/**
 * `vmlb pull` and `vmlb submit`'s side of a fleet build: a build's result is its chain of
 * layers in the shared store, so the client fetches the layers its local store lacks (each
 * blob streamed from the scheduler into the store, its sha256 checked against the shared
 * manifest on the way, as shared hits are), then writes the image as `vmlb build` does — a
 * thin overlay on the local chain in milliseconds, or with `--flatten` one standalone file.
 *
 * A local layer with the same key but other bytes (built here, on another parent copy) is
 * replaced, with the layers built on it: the fleet's overlay is only valid on its own parent.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BuildChain, BuildChainLayer } from '@vmlb/fleet';
import { convert, createOverlay, startZstd, VmlbError, type LayerManifest, type LocalStore } from '@vmlb/layer-engine';

/** A layer of the scheduler's chain answer (GET /v1/builds/:id/chain). */
export type ChainLayer = BuildChainLayer;

export interface ChainPullResult {
  /** Keys of the layers now local, root first (up to the first one the shared store lacks). */
  keys: string[];
  /** The layers downloaded now, and their bytes. */
  pulled: Array<{ name: string; key: string; bytes: number }>;
  /** Layers already local (hits of the local store). */
  local: number;
}

export type Fetcher = (route: string, init?: { signal?: AbortSignal }) => Promise<Response>;

/** A blob downloaded into the store's temporary name, hashed on the way. */
async function download(fetcher: Fetcher, l: ChainLayer, m: LayerManifest, tmp: string, signal?: AbortSignal): Promise<void> {
  const res = await fetcher(l.blob!, { signal });
  if (!res.ok || !res.body) throw new VmlbError('FLEET_ERROR', `pulling layer ${l.name} (${l.key}): the scheduler answered ${res.status}: ${(await res.text().catch(() => '')).slice(0, 300)}`, { retryable: res.status >= 500 });
  const h = createHash('sha256');
  let size = 0;
  const hashing = new Transform({
    transform(chunk: Buffer, _enc, done) {
      h.update(chunk);
      size += chunk.length;
      done(null, chunk);
    },
  });
  const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
  const encoding = res.headers.get('x-vmlb-encoding');
  if (encoding && encoding !== 'zstd') throw new VmlbError('FLEET_ERROR', `pulling layer ${l.name} (${l.key}): the blob comes as "${encoding}", which this vmlb cannot read: upgrade vmlb`);
  if (encoding === 'zstd') {
    // Stored compressed: the engine's zstd stream decompresses it on the way; the sha256 is the blob's.
    const z = startZstd({ decompress: true });
    try {
      await Promise.all([pipeline(body, z.stdin, { signal }), pipeline(z.stdout, hashing, createWriteStream(tmp), { signal }), z.done]);
    } catch (e) {
      z.kill();
      if (signal?.aborted) throw e;
      const why = await z.done.then(() => null, (x: Error) => x.message);
      throw why ? new VmlbError('SHARED_CORRUPT', `layer ${l.name} (${l.key}) arrived undecodable (${why}); nothing of it was kept (try again)`, { retryable: true }) : e;
    }
  } else {
    await pipeline(body, hashing, createWriteStream(tmp), { signal });
  }
  const sha256 = h.digest('hex');
  if (sha256 !== m.blob.sha256 || size !== m.blob.size) {
    throw new VmlbError(
      'SHARED_CORRUPT',
      `layer ${l.name} (${l.key}) arrived corrupt: sha256 ${sha256}, ${size} bytes; its manifest says ${m.blob.sha256}, ${m.blob.size} bytes; nothing of it was kept (try again)`,
      { retryable: true },
    );
  }
}

/**
 * Makes build `id`'s chain local, parent first: the layers `GET /v1/builds/:id/chain` names that
 * the local store lacks (or has other bytes of) are downloaded. `upTo` stops after that layer
 * index (a build still running: what is there so far). Layers the shared store does not have
 * (yet) end the walk.
 */
export async function pullChain(fetcher: Fetcher, id: string, store: LocalStore, o: { upTo?: number; signal?: AbortSignal; onPulled?: (l: ChainLayer, bytes: number) => void } = {}): Promise<ChainPullResult> {
  await store.init();
  const res = await fetcher(`/v1/builds/${id}/chain`, { signal: o.signal });
  if (!res.ok) throw new VmlbError(res.status === 404 ? 'NO_SUCH_BUILD' : 'FLEET_ERROR', `the chain of build ${id}: the scheduler answered ${res.status}: ${(await res.text().catch(() => '')).slice(0, 300)}`, { retryable: res.status >= 500 });
  const chain = (await res.json()) as BuildChain;
  const out: ChainPullResult = { keys: [], pulled: [], local: 0 };
  let parent: LayerManifest | null = null;
  for (const l of chain.layers) {
    if (o.upTo !== undefined && l.index > o.upTo) break;
    const m = l.manifest;
    if (!m || !l.blob) break;
    let have = await store.trustedManifest(l.key, 'seal', () => {});
    if (have && have.blob.sha256 !== m.blob.sha256) {
      // Same key, other bytes: the fleet's copy is the one its children were written on.
      await store.remove([l.key]);
      have = null;
    }
    if (!have) {
      if (m.parentSha256 && parent && m.parentSha256 !== parent.blob.sha256) {
        throw new VmlbError('FLEET_ERROR', `layer ${l.name} (${l.key}) was built on other parent bytes than the shared store's parent: the build's chain is inconsistent; build it again`);
      }
      const tmp = store.tempBlobPath(l.key);
      try {
        await download(fetcher, l, m, tmp, o.signal);
        // The local manifest is the shared one without how the shared store keeps the blob.
        const { transfer: _t, ...local } = m as LayerManifest & { transfer?: unknown };
        have = await store.publishComplete(tmp, local);
      } finally {
        await rm(tmp, { force: true });
      }
      out.pulled.push({ name: l.name, key: l.key, bytes: m.blob.size });
      o.onPulled?.(l, m.blob.size);
    } else out.local++;
    out.keys.push(l.key);
    parent = have;
  }
  return out;
}

/**
 * Writes the image of a local chain ending at `top`: a thin overlay on it (pinned, so eviction
 * keeps the chain while the file exists) or, flattened, one standalone qcow2.
 */
export async function writeChainImage(store: LocalStore, chain: string[], output: string, o: { flatten?: boolean; signal?: AbortSignal } = {}): Promise<number> {
  const top = chain[chain.length - 1];
  if (!top) throw new VmlbError('FLEET_ERROR', 'the build has no layers to make an image of');
  await mkdir(path.dirname(output), { recursive: true });
  const tmp = `${output}.tmp-${process.pid}`;
  try {
    if (o.flatten) await convert(store.blobPath(top), tmp, { signal: o.signal });
    else await createOverlay(tmp, store.blobPath(top), { signal: o.signal });
    await rename(tmp, output);
  } finally {
    await rm(tmp, { force: true });
  }
  if (o.flatten) await store.unpin(output);
  else await store.pin(output, chain);
  return (await stat(output)).size;
}

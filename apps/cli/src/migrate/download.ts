/** A download of the base image, to hash it. */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { compressionMagic } from './compression.js';

export type Download =
  | { result: 'hashed'; sha256: string; md5: string; bytes: number }
  | { result: 'compressed'; format: string }
  | { result: 'unreachable'; why: string };

/**
 * Downloads a URL to hash it (sha256 and md5), keeping nothing; stops at once when its first
 * bytes show a compressed file, and gives up after `stallMs` without data.
 */
export async function hashUrl(url: string, opts: { stallMs?: number } = {}): Promise<Download> {
  const stallMs = opts.stallMs ?? 30_000;
  const ac = new AbortController();
  let timer = setTimeout(() => ac.abort(), stallMs);
  const poke = () => {
    clearTimeout(timer);
    timer = setTimeout(() => ac.abort(), stallMs);
  };
  try {
    let res: Response;
    try {
      res = await fetch(url, { signal: ac.signal, redirect: 'follow' });
    } catch (e) {
      const err = e as Error & { cause?: Error };
      const why = ac.signal.aborted ? `no answer in ${Math.round(stallMs / 1000)} s` : (err.cause?.message ?? err.message);
      return { result: 'unreachable', why };
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel().catch(() => {});
      return { result: 'unreachable', why: `HTTP ${res.status}` };
    }
    const sha = createHash('sha256');
    const md5 = createHash('md5');
    let bytes = 0;
    try {
      for await (const chunk of Readable.fromWeb(res.body as import('node:stream/web').ReadableStream)) {
        const c = chunk as Buffer;
        if (bytes === 0) {
          const format = compressionMagic(c);
          if (format) {
            ac.abort();
            return { result: 'compressed', format };
          }
        }
        poke();
        sha.update(c);
        md5.update(c);
        bytes += c.length;
      }
    } catch (e) {
      return { result: 'unreachable', why: ac.signal.aborted ? `the download stalled (no data for ${Math.round(stallMs / 1000)} s)` : (e as Error).message };
    }
    return { result: 'hashed', sha256: sha.digest('hex'), md5: md5.digest('hex'), bytes };
  } finally {
    clearTimeout(timer);
  }
}

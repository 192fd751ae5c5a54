import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { VmlbError } from '../errors.js';
import { convert, imageInfo } from '../host/qemu-img.js';
import type { BaseImageSource } from '../types.js';

/**
 * Imports a `base-image` layer: fetches the image (a host path or an http(s) URL), checks
 * its sha256 against the one the project pins, and writes it as a standalone qcow2 blob.
 * The key of a base-image layer covers the file that names the image and its sha256, so a
 * new image means a new sha256 line, hence a new key.
 */
export async function importBaseImage(
  layer: string,
  src: BaseImageSource,
  dest: string,
  opts: { signal?: AbortSignal; onStep?: (s: string) => void } = {},
): Promise<void> {
  const isUrl = /^https?:\/\//i.test(src.location);
  let local = src.location;
  const download = `${dest}.download`;
  try {
    const hash = createHash('sha256');
    if (isUrl) {
      opts.onStep?.(`downloading ${src.location}`);
      let res: Response;
      try {
        res = await fetch(src.location, { signal: opts.signal, redirect: 'follow' });
      } catch (e) {
        throw new VmlbError('BASE_IMAGE_FETCH', `${layer}/base-image: cannot download ${src.location}: ${(e as Error).message}`, { retryable: true, cause: e });
      }
      if (!res.ok || !res.body) {
        throw new VmlbError('BASE_IMAGE_FETCH', `${layer}/base-image: downloading ${src.location} gave HTTP ${res.status}`, { retryable: res.status >= 500 });
      }
      const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
      body.on('data', (c: Buffer) => hash.update(c));
      await pipeline(body, createWriteStream(download), { signal: opts.signal });
      local = download;
    } else {
      opts.onStep?.('checking sha256');
      try {
        for await (const c of createReadStream(local, { highWaterMark: 1 << 20, signal: opts.signal })) hash.update(c as Buffer);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
          throw new VmlbError('BASE_IMAGE_MISSING', `${layer}/base-image: the image ${local} does not exist`);
        }
        throw e;
      }
    }
    const actual = hash.digest('hex');
    if (actual !== src.sha256.toLowerCase()) {
      throw new VmlbError(
        'BASE_IMAGE_SHA256',
        `${layer}/base-image: ${src.location} has sha256 ${actual}, but the layer pins ${src.sha256}; ` +
          'update the sha256 line if the new image is intended',
      );
    }
    const info = await imageInfo(local, { signal: opts.signal });
    if (info.backingFile) {
      throw new VmlbError('BASE_IMAGE_BACKING', `${layer}/base-image: ${src.location} is an overlay (backing file ${info.backingFile}); give a standalone image`);
    }
    if (info.format !== 'qcow2' && info.format !== 'raw') {
      throw new VmlbError('BASE_IMAGE_FORMAT', `${layer}/base-image: ${src.location} is ${info.format}; qcow2 or raw images are supported`);
    }
    opts.onStep?.(`importing ${info.format} image`);
    await convert(local, dest, { srcFormat: info.format, signal: opts.signal });
  } finally {
    await rm(download, { force: true });
  }
}

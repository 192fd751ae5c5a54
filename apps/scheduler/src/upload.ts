import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { formatBytes } from '@vmlb/layer-engine';
import { HttpError } from './http-error.js';

/** An uploaded project, streamed to a temporary file: its sha256 names it in the store. */
export interface Upload {
  file: string;
  sha256: string;
  bytes: number;
  /** Removes the temporary file; safe to call twice. */
  discard(): Promise<void>;
}

/** The content types a project upload may come as (the first is the one to name in a refusal). */
export const UPLOAD_TYPES = ['application/gzip', 'application/x-gzip', 'application/octet-stream', 'application/x-tar+gzip'];

/** Whether a request's body is an upload the content-type parser received (api-server.ts). */
export function isUpload(v: unknown): v is Upload {
  return !!v && typeof v === 'object' && typeof (v as Upload).discard === 'function' && typeof (v as Upload).sha256 === 'string';
}

export const tooLarge = (maxBytes: number) =>
  new HttpError(413, 'UPLOAD_TOO_LARGE', `the project is larger than the scheduler accepts (${formatBytes(maxBytes)}, VMLB_MAX_UPLOAD): leave big files out of it, or fetch them in a layer script`, {
    maxBytes,
  });

export const stalled = (idleMs: number) =>
  new HttpError(408, 'UPLOAD_STALLED', `the upload sent nothing for ${Math.round(idleMs / 1000)} s (VMLB_UPLOAD_IDLE): dropped; nothing was stored`, { idleMs });

/**
 * Streams `body` into a new file in `dir`, hashing it on the way, and stops with a 413 as soon
 * as it passes `maxBytes` (a Content-Length above the cap is refused before reading at all),
 * or with a 408 when nothing arrives for `idleMs`.
 */
export async function receiveUpload(body: Readable, dir: string, maxBytes: number, contentLength?: string, idleMs = 30_000): Promise<Upload> {
  if (contentLength !== undefined && Number(contentLength) > maxBytes) {
    body.resume();
    throw tooLarge(maxBytes);
  }
  const file = path.join(dir, `upload-${process.pid}-${randomBytes(6).toString('hex')}.tar.gz`);
  const hash = createHash('sha256');
  let bytes = 0;
  // A stalled upload is cut off from the file (the request itself left alone: its connection
  // must still carry the 408 back).
  let idle: NodeJS.Timeout | undefined;
  const watch = () => {
    clearTimeout(idle);
    idle = setTimeout(() => {
      body.unpipe(counter);
      body.pause();
      counter.destroy(stalled(idleMs));
    }, idleMs);
  };
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      watch();
      bytes += chunk.length;
      if (bytes > maxBytes) return cb(tooLarge(maxBytes));
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  const discard = () => rm(file, { force: true });
  try {
    watch();
    body.on('error', (e) => counter.destroy(e));
    body.on('aborted', () => counter.destroy(new Error('the client went away')));
    body.pipe(counter);
    await pipeline(counter, createWriteStream(file, { mode: 0o600 }));
  } catch (e) {
    await discard();
    // The rest of the body is not wanted: it is read and dropped (the request timeout bounds
    // that), so that the connection carries the answer (413, 408) back.
    body.unpipe(counter);
    body.resume();
    if (e instanceof HttpError) throw e;
    throw new HttpError(400, 'UPLOAD_INCOMPLETE', `the upload did not arrive whole: ${(e as Error).message}`);
  } finally {
    clearTimeout(idle);
  }
  if (bytes === 0) {
    await discard();
    throw new HttpError(400, 'EMPTY_UPLOAD', 'the request has no body: send the project as a .tar.gz (vmlb submit does)');
  }
  return { file, sha256: hash.digest('hex'), bytes, discard };
}

import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { StoreError } from '../errors.js';

/**
 * zstd through Debian's `zstd` program (package `zstd`), one child process per stream: it runs
 * on its own threads (`-T0`: one per core), out of the Node event loop, and Node 20 has no zstd
 * of its own (the npm bindings that stream need a native build or a prebuilt download).
 * A stream it writes is a standard zstd frame with a content checksum (`zstd -d` checks it).
 */

/** The compression levels the shared store accepts (`zstd -1` … `zstd -19`). */
export const ZSTD_LEVELS = { min: 1, max: 19 } as const;

export interface ZstdProcess {
  /** Bytes in (to compress, or the compressed stream to decompress). */
  readonly stdin: Writable;
  /** Bytes out. */
  readonly stdout: Readable;
  /**
   * Resolves when the program exited 0; rejects with one line (its own message included) when
   * it failed or could not start. Never left unhandled.
   */
  readonly done: Promise<void>;
  /** Whether it has exited (or could not start). */
  readonly exited: () => boolean;
  /** Ends it now (SIGKILL); its `done` then rejects. */
  kill(): void;
}

/** `zstd -LEVEL` (compress) or `zstd -d` (decompress), stdin to stdout. */
export function startZstd(mode: { compress: number; streamSize?: number } | { decompress: true }): ZstdProcess {
  const args =
    'compress' in mode
      ? ['-q', '-c', `-${mode.compress}`, '-T0', ...(mode.streamSize !== undefined ? [`--stream-size=${mode.streamSize}`] : [])]
      : ['-q', '-d', '-c'];
  const what = 'compress' in mode ? `zstd -${mode.compress}` : 'zstd -d';
  const child: ChildProcessByStdio<Writable, Readable, Readable> = spawn('zstd', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  let exited = false;
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => {
    if (stderr.length < 4096) stderr += d;
  });
  // A write after the program died fails with EPIPE: its exit status says what happened.
  child.stdin.on('error', () => undefined);
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', (e: NodeJS.ErrnoException) => {
      exited = true;
      reject(
        e.code === 'ENOENT'
          ? new StoreError('the zstd program is not installed (Debian: apt-get install zstd): the shared store compresses layers with it')
          : new StoreError(`${what} could not start: ${e.message}`),
      );
    });
    child.once('close', (code, signal) => {
      exited = true;
      if (code === 0) return resolve();
      const said = stderr.trim().split('\n').filter(Boolean).pop()?.replace(/^zstd: (\/\*stdin\*\\: )?/, '') ?? '';
      reject(new StoreError(`${what} failed (${signal ? `killed by ${signal}` : `exit status ${code}`})${said ? `: ${said}` : ''}`));
    });
  });
  done.catch(() => undefined);
  return {
    stdin: child.stdin,
    stdout: child.stdout,
    done,
    exited: () => exited,
    kill() {
      if (!exited) child.kill('SIGKILL');
    },
  };
}

/**
 * Writes `chunk` to the program's stdin, waiting while its pipe is full; resolves false (and
 * writes nothing more) once the program has exited.
 */
export async function writeTo(z: ZstdProcess, chunk: Buffer): Promise<boolean> {
  if (z.exited()) return false;
  if (z.stdin.write(chunk)) return true;
  return new Promise<boolean>((resolve) => {
    const onDrain = () => finish(true);
    const onGone = () => finish(false);
    const finish = (v: boolean) => {
      z.stdin.off('drain', onDrain);
      z.stdin.off('close', onGone);
      resolve(v);
    };
    z.stdin.once('drain', onDrain);
    z.stdin.once('close', onGone);
    void z.done.then(onGone, onGone);
  });
}

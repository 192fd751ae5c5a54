import { mkdir, mkdtemp, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createGzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { extractArchive, inspectArchive, symlinkEscape } from './project-archive.js';

describe('symlinkEscape', () => {
  const none = new Map<string, string>();
  it('lets a link stay inside the project', () => {
    expect(symlinkEscape('01_a/link', 'script', none)).toBeNull();
    expect(symlinkEscape('01_a/sub/link', '../script', none)).toBeNull();
    expect(symlinkEscape('01_a/link', '../02_b/file', none)).toBeNull();
  });
  it('refuses one that climbs out', () => {
    expect(symlinkEscape('01_a/link', '../../etc/passwd', none)).toMatch(/outside the project/);
    expect(symlinkEscape('link', '..', none)).toMatch(/outside the project/);
  });
  it('follows the archive\'s other symlinks as the kernel would', () => {
    // a -> . makes a/a/a/.. look deeper than it is.
    const links = new Map([['01_a/a', '.']]);
    expect(symlinkEscape('01_a/x', 'a/a/a/../../../..', links)).toMatch(/outside the project/);
    expect(symlinkEscape('01_a/x', 'a/a/a/..', links)).toBeNull();
    expect(symlinkEscape('01_a/y', 'abs/z', new Map([['01_a/abs', '/etc']]))).toMatch(/outside/);
  });
  it('refuses a loop', () => {
    const links = new Map([['p', 'q'], ['q', 'p']]);
    expect(symlinkEscape('x', 'p', links)).toMatch(/loop/);
  });
});

describe('inspectArchive and extractArchive', () => {
  const make = async (entries: Array<{ name: string; type?: 'file' | 'symlink' | 'directory'; content?: Buffer | string; mode?: number; linkname?: string }>) => {
    const pack = tar.pack();
    const gz = createGzip();
    const chunks: Buffer[] = [];
    gz.on('data', (c: Buffer) => chunks.push(c));
    const ended = new Promise((r) => gz.on('end', r));
    pack.pipe(gz);
    for (const e of entries) {
      await new Promise<void>((resolve, reject) => {
        const cb = (err?: Error | null) => (err ? reject(err) : resolve());
        if (e.type === 'symlink') pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname! }, cb);
        else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory' }, cb);
        else pack.entry({ name: e.name, mode: e.mode ?? 0o644 }, e.content ?? '', cb);
      });
    }
    pack.finalize();
    await ended;
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-archive-test-'));
    const file = path.join(dir, 'p.tar.gz');
    await writeFile(file, Buffer.concat(chunks));
    return { dir, file };
  };

  it('refuses a gzip bomb by the bytes it would extract to', async () => {
    const { dir, file } = await make([{ name: '01_a/zeros', content: Buffer.alloc(4 * 1024 * 1024) }]);
    try {
      expect((await stat(file)).size).toBeLessThan(64 * 1024);
      await expect(inspectArchive(file, { maxExtractedBytes: 1024 * 1024 })).rejects.toMatchObject({ status: 400, code: 'ARCHIVE_TOO_LARGE', details: { entry: '01_a/zeros' } });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('extracts files with their executable bit, folders and inside symlinks, and nothing else', async () => {
    const { dir, file } = await make([
      { name: './01_a/', type: 'directory' },
      { name: './01_a/build-layer', content: '#!/bin/sh\n', mode: 0o4755 },
      { name: '01_a/data.txt', content: 'data' },
      { name: '01_a/link', type: 'symlink', linkname: 'data.txt' },
    ]);
    try {
      const listing = await inspectArchive(file);
      expect(listing.entries.map((e) => e.name)).toEqual(['01_a', '01_a/build-layer', '01_a/data.txt', '01_a/link']);
      const out = path.join(dir, 'out');
      await mkdir(out);
      await extractArchive(file, out, listing);
      expect((await stat(path.join(out, '01_a/build-layer'))).mode & 0o7777).toBe(0o755);
      expect((await stat(path.join(out, '01_a/data.txt'))).mode & 0o7777).toBe(0o644);
      expect(await readlink(path.join(out, '01_a/link'))).toBe('data.txt');
      expect(await readFile(path.join(out, '01_a/link'), 'utf8')).toBe('data');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

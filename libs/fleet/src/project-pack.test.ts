import { execFileSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { packProject } from './project-pack.js';

async function entries(archive: Buffer): Promise<Array<{ name: string; type?: string; mode?: number; mtime?: Date; linkname?: string | null }>> {
  const extract = tar.extract();
  Readable.from([archive]).pipe(createGunzip()).pipe(extract as unknown as NodeJS.WritableStream);
  const out = [];
  for await (const e of extract) {
    const { name, type, mode, mtime, linkname } = e.header;
    out.push({ name, type, mode, mtime, linkname });
    e.resume();
  }
  return out;
}

describe('packProject', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-pack-'));
    await mkdir(path.join(dir, '01_base/files'), { recursive: true });
    await writeFile(path.join(dir, '01_base/build-layer'), '#!/bin/sh\n');
    await chmod(path.join(dir, '01_base/build-layer'), 0o755);
    await writeFile(path.join(dir, '01_base/.env'), 'A=1\n');
    await writeFile(path.join(dir, '01_base/files/motd'), 'hello\n');
    await symlink('motd', path.join(dir, '01_base/files/issue'));
    await mkdir(path.join(dir, '.git'));
    await writeFile(path.join(dir, '.git/HEAD'), 'ref\n');
    await mkdir(path.join(dir, 'build'));
    await writeFile(path.join(dir, 'build/image.qcow2'), 'not sent');
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('packs the layers sorted, dot-files inside them included, without build/ or top-level dot-entries', async () => {
    const got = await entries(await packProject(dir));
    expect(got.map((e) => `${e.type} ${e.name}`)).toEqual([
      'directory 01_base',
      'file 01_base/.env',
      'file 01_base/build-layer',
      'directory 01_base/files',
      'symlink 01_base/files/issue',
      'file 01_base/files/motd',
    ]);
    expect(got.find((e) => e.name === '01_base/build-layer')?.mode).toBe(0o755);
    expect(got.find((e) => e.name === '01_base/.env')?.mode).toBe(0o644);
    expect(got.find((e) => e.name === '01_base/files/issue')?.linkname).toBe('motd');
    expect(got.every((e) => e.mtime?.getTime() === 0)).toBe(true);
  });

  it('packs the same project to the same bytes', async () => {
    expect((await packProject(dir)).equals(await packProject(dir))).toBe(true);
  });

  it('refuses what cannot be sent (a FIFO)', async () => {
    execFileSync('mkfifo', [path.join(dir, '01_base/pipe')]);
    await expect(packProject(dir)).rejects.toMatchObject({ code: 'FLEET_USAGE', message: expect.stringContaining('01_base/pipe: not a file, folder or symlink') });
  });
});

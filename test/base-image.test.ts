/** `base-image` layers: imported from a file or an http URL, sha256 checked. */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BUSYBOX_BASE, buildJson, builtNames, layerLog, leftovers, sandbox, sha256sum, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
let baseFile: string;
let baseSha: string;
let server: http.Server;
let url: string;

beforeAll(async () => {
  sb = await sandbox('base-image');
  const seed = await writeProject(path.join(sb.dir, 'seed'), {
    '01_base': BUSYBOX_BASE,
    '02_mark': { kind: 'build-layer', script: 'echo seeded > /etc/seed-mark' },
  });
  baseFile = path.join(sb.dir, 'cloud.qcow2');
  const r = await buildJson(sb, seed, ['--flatten', '-o', baseFile]);
  expect(r.exitCode, r.stderr).toBe(0);
  baseSha = await sha256sum(baseFile);
  server = http.createServer(async (req, res) => {
    if (req.url !== '/images/cloud.qcow2') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-length': String((await stat(baseFile)).size) });
    createReadStream(baseFile).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/images/cloud.qcow2`;
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  server?.close();
  await sb?.cleanup();
});

const onTop = { kind: 'build-layer' as const, script: 'cat /etc/seed-mark; echo on-top > /etc/on-top' };

describe('base-image', () => {
  it('imports an image from a relative file path and builds on it', async () => {
    const p = await writeProject(path.join(sb.dir, 'from-file'), {
      '01_cloud': { kind: 'base-image', script: `# a flattened build of the seed project\nsource: ../../cloud.qcow2\nsha256: ${baseSha}` },
      '02_top': onTop,
    });
    const r = await buildJson(sb, p);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(builtNames(r)).toEqual(['01_cloud', '02_top']);
    const log = layerLog(r, '02_top');
    expect(log).toContain('seeded');
    const chain = (await execa('qemu-img', ['info', '-U', '--backing-chain', path.join(p, 'build/image.qcow2')])).stdout;
    expect(chain).toContain('format: qcow2');
  });

  it('imports an image from an http URL', async () => {
    const p = await writeProject(path.join(sb.dir, 'from-url'), {
      '01_cloud': { kind: 'base-image', script: `url: ${url}\nsha256: ${baseSha}` },
      '02_top': onTop,
    });
    const r = await buildJson(sb, p);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(builtNames(r)).toEqual(['01_cloud', '02_top']);
  });

  it('refuses an image whose sha256 differs, naming the layer and both sums', async () => {
    const wrong = 'f'.repeat(64);
    const p = await writeProject(path.join(sb.dir, 'wrong-sha'), {
      '01_cloud': { kind: 'base-image', script: `source: ${baseFile}\nsha256: ${wrong}` },
      '02_top': onTop,
    });
    const r = await vmlb(sb, ['build', p]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('01_cloud/base-image');
    expect(r.stderr).toContain(baseSha);
    expect(r.stderr).toContain(wrong);
  });

  it('says which file is missing and which URL failed', async () => {
    const p = await writeProject(path.join(sb.dir, 'missing'), {
      '01_cloud': { kind: 'base-image', script: `source: ${path.join(sb.dir, 'nope.qcow2')}\nsha256: ${baseSha}` },
    });
    const r = await vmlb(sb, ['build', p]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('nope.qcow2');
    const p404 = await writeProject(path.join(sb.dir, 'http404'), {
      '01_cloud': { kind: 'base-image', script: `url: ${url}.missing\nsha256: ${baseSha}` },
    });
    const r404 = await vmlb(sb, ['build', p404]);
    expect(r404.exitCode).toBe(1);
    expect(r404.stderr).toContain('HTTP 404');
  });
});

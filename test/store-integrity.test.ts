/**
 * The local store under bad luck: a cached blob whose bytes changed, a store whose filesystem
 * fills up, debris no layer owns. Real builds, a real small filesystem on a loop device.
 */
import { createHash } from 'node:crypto';
import { execa } from 'execa';
import { LocalStore } from '../libs/layer-engine/src/store/local-store.js';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile, copyFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BUSYBOX_BASE, VMLB, buildJson, builtNames, cachedNames, findEvent, leftovers, readImageFiles, sandbox, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
beforeAll(async () => {
  sb = await sandbox('integrity');
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await sb?.cleanup();
});

const PAYLOAD_LAYER = {
  kind: 'build-layer' as const,
  script: `set -eu
mkdir -p /opt
# 3 MiB of known bytes: a flip anywhere in the layer's data shows in the image.
i=0; while [ $i -lt 3072 ]; do printf '%01023d\\n' $i; i=$((i+1)); done > /opt/blob.bin
sha256sum /opt/blob.bin | cut -d' ' -f1 > /opt/blob.sha`,
};

/** Writes `bytes` into `file` at `offset` in place, as a stray writer (or a bad disk seen through the filesystem) would. */
async function flip(file: string, offset: number, bytes = 'CORRUPTED-BYTES!'): Promise<void> {
  await execa('dd', [`of=${file}`, 'bs=1', `seek=${offset}`, 'conv=notrunc', 'status=none'], { input: bytes });
}

/** The payload layer's file in an image is the bytes it hashed when it was built. */
async function expectIntactPayload(image: string): Promise<void> {
  const files = await readImageFiles(sb, image, 1, ['/opt/blob.bin', '/opt/blob.sha']);
  expect(files['/opt/blob.bin']!.length).toBe((3 << 20) - 1);
  expect(createHash('sha256').update(files['/opt/blob.bin']! + '\n').digest('hex')).toBe(files['/opt/blob.sha']!.trim());
}

async function layerBlob(store: string, key: string): Promise<string> {
  return path.join(store, 'layers', `${key}.qcow2`);
}

describe('a corrupted layer in the local store', () => {
  it('is found on the next hit, removed with what was built on it and built again: the image has the right bytes', async () => {
    const p = await writeProject(path.join(sb.dir, 'corrupt'), { '01_base': BUSYBOX_BASE, '02_payload': PAYLOAD_LAYER, '03_top': { kind: 'build-layer', script: 'echo top > /top' } });
    const first = await buildJson(sb, p);
    expect(first.exitCode, first.stderr).toBe(0);
    const keys = findEvent(first, 'plan')!.layers.map((l) => l.key);
    const payload = await layerBlob(sb.store, keys[1]!);
    const size = (await stat(payload)).size;
    // In the middle of the layer's data, not its header.
    await flip(payload, Math.floor(size / 2));

    const second = await buildJson(sb, p);
    expect(second.exitCode, second.stderr).toBe(0);
    const notice = second.events.find((e) => e.type === 'notice' && /is corrupt in the local store/.test(e.message));
    expect(notice && 'message' in notice ? notice.message : '').toMatch(/layer 02_payload \([0-9a-f]{12}\) is corrupt in the local store: its blob's sha256 is [0-9a-f]{64}, its manifest says [0-9a-f]{64}; removed it and the 1 layer built on it, building it again/);
    expect(cachedNames(second)).toEqual(['01_base']);
    expect(builtNames(second)).toEqual(['02_payload', '03_top']);
    await expectIntactPayload(path.join(p, 'build/image.qcow2'));

    // The third build trusts the layers again at the cost of their seals.
    const third = await buildJson(sb, p);
    expect(third.exitCode, third.stderr).toBe(0);
    expect(cachedNames(third)).toEqual(['01_base', '02_payload', '03_top']);
  });

  it('--flatten hashes every cached blob whole first: a corrupt one is rebuilt, never flattened into the image', async () => {
    const p = await writeProject(path.join(sb.dir, 'corrupt-flat'), { '01_base': BUSYBOX_BASE, '02_payload': { ...PAYLOAD_LAYER, script: PAYLOAD_LAYER.script + '\necho flat > /flat' } });
    const first = await buildJson(sb, p);
    expect(first.exitCode, first.stderr).toBe(0);
    const keys = findEvent(first, 'plan')!.layers.map((l) => l.key);
    const payload = await layerBlob(sb.store, keys[1]!);
    // The seal is taken again over the changed bytes, as if they had changed under the
    // filesystem after sealing (bit rot: no write, no new times): a plain hit trusts the seal,
    // a flatten hashes the blob whole and finds it.
    await flip(payload, Math.floor((await stat(payload)).size / 3));
    const store = new LocalStore(sb.store);
    await store.seal(keys[1]!, (await store.getManifest(keys[1]!))!);
    const seal = JSON.parse(await readFile(path.join(sb.store, 'seals', `${keys[1]}.json`), 'utf8')) as { sha256: string; ctimeMs: number };
    expect([seal.sha256, seal.ctimeMs]).toEqual([(await store.getManifest(keys[1]!))!.blob.sha256, (await stat(payload)).ctimeMs]);
    const sealed = await buildJson(sb, p);
    expect(cachedNames(sealed)).toEqual(['01_base', '02_payload']);

    const flat = await buildJson(sb, p, ['--flatten', '-o', path.join(sb.dir, 'flat.qcow2')]);
    expect(flat.exitCode, flat.stderr).toBe(0);
    expect(builtNames(flat)).toEqual(['02_payload']);
    await expectIntactPayload(path.join(sb.dir, 'flat.qcow2'));
  });

  it('vmlb verify checks every blob whole: --dry-run reports, a real run removes the corrupt layer and its descendants, exit 1', async () => {
    const p = await writeProject(path.join(sb.dir, 'verify'), { '01_base': BUSYBOX_BASE, '02_payload': { ...PAYLOAD_LAYER, script: PAYLOAD_LAYER.script + '\necho v > /v' } });
    const first = await buildJson(sb, p);
    expect(first.exitCode, first.stderr).toBe(0);
    const keys = findEvent(first, 'plan')!.layers.map((l) => l.key);
    const clean = await vmlb(sb, ['verify', '--json']);
    expect(clean.exitCode, clean.stderr).toBe(0);
    expect(JSON.parse(clean.stdout)).toMatchObject({ corrupt: [] });

    await flip(await layerBlob(sb.store, keys[0]!), 3 << 20);
    const dry = await vmlb(sb, ['verify', '--dry-run']);
    expect(dry.exitCode).toBe(1);
    expect(dry.stdout).toMatch(new RegExp(`${keys[0]!.slice(0, 12)}  01_base: its blob's sha256 is [0-9a-f]{64}, its manifest says [0-9a-f]{64}$`, 'm'));
    await stat(path.join(sb.store, 'layers', `${keys[1]}.json`));
    const real = await vmlb(sb, ['verify', '--json']);
    expect(real.exitCode).toBe(1);
    const r = JSON.parse(real.stdout) as { corrupt: Array<{ key: string; removed: string[] }> };
    const c = r.corrupt.find((x) => x.key === keys[0]);
    expect(c?.removed.sort()).toEqual(expect.arrayContaining([keys[0], keys[1]]));
    await expect(stat(path.join(sb.store, 'layers', `${keys[1]}.json`))).rejects.toThrow();
    const again = await buildJson(sb, p);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(builtNames(again)).toEqual(['01_base', '02_payload']);
  });
});

/** A small ext4 filesystem on a loop device, outside the test's sandbox folder (whose mounts count as leftovers). */
async function smallFilesystem(mib: number): Promise<{ dir: string; release(): Promise<void> }> {
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmlb-smallfs-'));
  const img = path.join(base, 'fs.img');
  const dir = path.join(base, 'mnt');
  await mkdir(dir);
  await execa('truncate', ['-s', `${mib}M`, img]);
  await execa('mkfs.ext4', ['-q', '-m', '0', img]);
  await execa('mount', ['-o', 'loop', img, dir]);
  return {
    dir,
    async release() {
      await execa('umount', [dir], { reject: false });
      await rm(base, { recursive: true, force: true });
    },
  };
}

describe('a full store filesystem', () => {
  const base = (size: string) => ({ ...BUSYBOX_BASE, script: BUSYBOX_BASE.script.replace('# disk-size 64M', `# disk-size ${size}`) });

  it('a layer whose disk cannot fit is refused before it runs, naming the layer, the filesystem, what is free and needed', async () => {
    const fs = await smallFilesystem(300);
    try {
      const store = path.join(fs.dir, 'store');
      const p = await writeProject(path.join(sb.dir, 'nospace-early'), { '01_base': base('1G'), '02_big': { kind: 'build-layer', script: 'dd if=/dev/urandom of=/big.bin bs=1M count=400' } });
      const r = await vmlb(sb, ['build', p, '--plain'], { VMLB_STORE: store });
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toMatch(
        new RegExp(`^vmlb: 01_base: no space left on the store's filesystem \\(${store}\\): \\d+ MiB free, and a layer on this 1 GiB disk can write up to 1(\\.0)? GiB; nothing was built`),
      );
      expect(r.stderr.split('\n')).toHaveLength(1);
      expect(await readdir(path.join(store, 'layers'))).toEqual([]);
    } finally {
      await fs.release();
    }
  });

  it('filling up while a layer runs: one clear line, nothing published or leaked, and the next build works once there is room', async () => {
    const fs = await smallFilesystem(300);
    try {
      const store = path.join(fs.dir, 'store');
      const gate = path.join(sb.dir, 'nospace-late', 'gate');
      const p = await writeProject(path.join(sb.dir, 'nospace-late'), {
        '01_base': base('200M'),
        // Waits for the test to fill the store's filesystem behind the engine's back, then writes.
        '02_big': { kind: 'build-layer', script: `# chroot-bind-mount ../gate /gate\nset -eu\necho waiting\nwhile [ ! -e /gate/go ]; do sleep 0.1; done\ndd if=/dev/urandom of=/big.bin bs=1M count=120\necho wrote` },
      });
      await mkdir(gate, { recursive: true });
      const run = execa(process.execPath, [VMLB, 'build', p, '--plain'], {
        env: { ...sb.env, VMLB_STORE: store, CI: '1' },
        reject: false,
        all: true,
      });
      let seen = '';
      run.all!.on('data', (d: Buffer) => (seen += d.toString()));
      for (let i = 0; i < 300 && !seen.includes('waiting'); i++) await new Promise((r) => setTimeout(r, 100));
      expect(seen).toContain('waiting');
      const filler = path.join(fs.dir, 'filler');
      const { stdout: avail } = await execa('df', ['--output=avail', '-B1', fs.dir]);
      await execa('fallocate', ['-l', String(Number(avail.split('\n')[1]) - (20 << 20)), filler]);
      await writeFile(path.join(gate, 'go'), '');
      const r = await run;
      expect(r.exitCode).toBe(1);
      const last = String(r.stderr).split('\n');
      expect(last).toHaveLength(1);
      expect(last[0]).toMatch(new RegExp(`^vmlb: 02_big: no space left on the store's filesystem \\(${store}, .* free\\): the layer's disk lost writes \\(.*\\); a layer on this disk can write up to 204 MiB; nothing was published$`));
      const names = await readdir(path.join(store, 'layers'));
      // Only the base is published; the failed layer left its log and nothing else.
      expect(names.filter((n) => n.endsWith('.json'))).toHaveLength(1);
      expect(names.filter((n) => /^[0-9a-f]{64}\.qcow2$/.test(n))).toHaveLength(1);
      expect(names.filter((n) => n.startsWith('.tmp-'))).toEqual([]);
      expect(names.filter((n) => n.endsWith('.failed.log'))).toHaveLength(1);
      const st = await vmlb(sb, ['store'], { VMLB_STORE: store });
      expect(st.stdout).toMatch(/: 1 layers, [\d.]+ MiB$/);
      expect(await leftovers(sb)).toEqual([]);

      await rm(filler);
      const again = await vmlb(sb, ['build', p, '--json'], { VMLB_STORE: store });
      expect(again.exitCode, again.stderr).toBe(0);
      expect(builtNames(again)).toEqual(['02_big']);
    } finally {
      await fs.release();
    }
  });

  it('an output that does not fit: one line naming it, no partial file, the layers stay cached', async () => {
    const fs = await smallFilesystem(20);
    try {
      const p = await writeProject(path.join(sb.dir, 'nospace-output'), { '01_base': BUSYBOX_BASE, '02_payload': { ...PAYLOAD_LAYER, script: PAYLOAD_LAYER.script + '\nhead -c 30000000 /dev/urandom > /opt/noise' } });
      const out = path.join(fs.dir, 'image.qcow2');
      const r = await vmlb(sb, ['build', p, '--plain', '--flatten', '-o', out]);
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^vmlb: writing the output ${out}: no space left on its filesystem \\([\\d.]+ MiB free; a flattened image can need up to its disk size\\); the layers are built and cached$`));
      expect(await readdir(fs.dir)).toEqual(['lost+found']);
      const again = await buildJson(sb, p);
      expect(again.exitCode, again.stderr).toBe(0);
      expect(builtNames(again)).toEqual([]);
    } finally {
      await fs.release();
    }
  });

  it('files no layer owns (a publish cut short, a half-written manifest) are counted by vmlb store and removed by sweep', async () => {
    const p = await writeProject(path.join(sb.dir, 'orphans'), { '01_base': BUSYBOX_BASE });
    const b = await buildJson(sb, p);
    expect(b.exitCode, b.stderr).toBe(0);
    const key = findEvent(b, 'plan')!.layers[0]!.key;
    const fake = 'f'.repeat(64);
    await copyFile(path.join(sb.store, 'layers', `${key}.qcow2`), path.join(sb.store, 'layers', `${fake}.qcow2`));
    // A manifest being written by a process that is gone (pid 2^22 + 1 does not exist).
    await writeFile(path.join(sb.store, 'layers', `${fake}.json.4194305.abcd.tmp`), '{');
    const layers = (JSON.parse((await vmlb(sb, ['store', '--json'])).stdout) as { layers: number }).layers;
    const before = await vmlb(sb, ['store']);
    expect(before.stdout).toMatch(new RegExp(`: ${layers} layers, .*; 2 files no layer owns, [\\d.]+ MiB \\(vmlb sweep removes them\\)$`));
    const sw = await vmlb(sb, ['sweep']);
    expect(sw.exitCode, sw.stderr).toBe(0);
    expect(sw.stdout).toMatch(/removed 2 files no layer owns \([\d.]+ MiB\)/);
    const after = await vmlb(sb, ['store', '--json']);
    expect(JSON.parse(after.stdout)).toMatchObject({ layers, orphans: { files: 0, bytes: 0 } });
    await stat(path.join(sb.store, 'layers', `${key}.qcow2`));
  });
});

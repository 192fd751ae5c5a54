import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isBackedBy, loopLogFor, loopsOn, type LoopDevice } from './loops-and-mounts.js';

const EXPORT = '/run/vmlb/fuse/fuse-4242-0a1b2c3d.raw';
const MiB = 1 << 20;

const loop = (n: number, backFile: string, offset = 0, sizeLimit = 0): LoopDevice => ({ name: `/dev/loop${n}`, backFile, offset, sizeLimit });

let dir: string;
let loopLog: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-loops-'));
  loopLog = path.join(dir, 'fuse-4242-0a1b2c3d.loops');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The lines vmlb-partition appends for each loop device it sets up. */
const logged = (...lines: string[]) => writeFile(loopLog, lines.map((l) => `${l}\n`).join(''));

describe('isBackedBy', () => {
  it('matches the back-file, also once it was unlinked, and nothing else', () => {
    expect([EXPORT, `${EXPORT} (deleted)`, `${EXPORT}.old`, '/'].map((f) => isBackedBy(loop(0, f), EXPORT))).toEqual([true, true, false, false]);
  });
});

describe('loopLogFor', () => {
  it('is the file beside an export file or nbd lock, ending in .loops', () => {
    expect(loopLogFor(EXPORT)).toBe('/run/vmlb/fuse/fuse-4242-0a1b2c3d.loops');
    expect(loopLogFor('/run/vmlb/nbd/nbd3.lock')).toBe('/run/vmlb/nbd/nbd3.loops');
  });
});

describe('loopsOn', () => {
  it("finds the loops on the export file, not another program's", async () => {
    const loops = [loop(0, EXPORT), loop(1, `${EXPORT} (deleted)`), loop(2, '/home/me/disk.img'), loop(3, '/run/vmlb/fuse/fuse-1-ffffffff.raw')];
    expect(await loopsOn(EXPORT, undefined, { loops })).toEqual(['/dev/loop0', '/dev/loop1']);
    expect(await loopsOn(EXPORT, loopLog, { loops })).toEqual(['/dev/loop0', '/dev/loop1']); // no log written
  });

  it('finds a logged loop of a gone mount namespace by its offset and size limit', async () => {
    // A loop the layer's partition helper made: the kernel names a FUSE export "/" once its
    // namespace is gone, and any program's loop in such a namespace looks the same.
    await logged(`/dev/loop5 ${MiB} ${9 * MiB}`, `/dev/loop6 ${MiB} ${9 * MiB}`, 'garbage', '/dev/loop9 0 0');
    const loops = [loop(5, '/', MiB, 9 * MiB), loop(6, '/', 2 * MiB, 9 * MiB), loop(7, '/', MiB, 9 * MiB)];
    expect(await loopsOn(EXPORT, loopLog, { loops })).toEqual(['/dev/loop5']);
  });

  it('finds a logged loop on an nbd device by the tail of its path', async () => {
    await logged(`/dev/loop5 ${MiB} 0`, `/dev/loop6 ${MiB} 0`, `/dev/loop7 ${MiB} 0`);
    const loops = [loop(5, '/nbd3', MiB), loop(6, '/nbd1', MiB), loop(7, '/dev/nbd3', MiB)];
    expect(await loopsOn('/dev/nbd3', loopLog, { loops })).toEqual(['/dev/loop7', '/dev/loop5']);
  });

  it('with onlyUnreachable, leaves the loops that name the path: it may be another program’s now', async () => {
    await logged(`/dev/loop5 ${MiB} 0`, `/dev/loop7 ${MiB} 0`);
    const loops = [loop(5, '/nbd3', MiB), loop(7, '/dev/nbd3', MiB), loop(8, '/dev/nbd3')];
    expect(await loopsOn('/dev/nbd3', loopLog, { loops, onlyUnreachable: true })).toEqual(['/dev/loop5']);
  });
});

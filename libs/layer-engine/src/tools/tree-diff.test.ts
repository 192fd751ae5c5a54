import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { pathFilter } from './path-filter.js';
import { compareTrees, formatChange, walkTree, type TreeEntry } from './tree-diff.js';

/** An entry as walkTree gives it; by default a root-owned 644 file of 4 bytes, one inode. */
const entry = (over: Partial<TreeEntry> = {}): TreeEntry => ({ type: 'file', mode: 0o644, uid: 0, gid: 0, size: 4, ino: 1n, mtimeNs: 1n, ctimeNs: 1n, ...over });
const tree = (entries: Record<string, TreeEntry>) => new Map(Object.entries(entries));

/** Roots nothing can be read from: a comparison that hashes a file there fails. */
const NO_ROOTS = { rootA: '/nonexistent/a', rootB: '/nonexistent/b' };

const made: string[] = [];
afterEach(async () => {
  await Promise.all(made.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function dirWith(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-tree-diff-'));
  made.push(dir);
  for (const [rel, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await writeFile(path.join(dir, rel), text);
  }
  return dir;
}

describe('compareTrees', () => {
  it('lists added, removed and modified paths sorted by path, each aspect once in a fixed order', async () => {
    const a = tree({ '/': entry({ type: 'dir', size: 0 }), '/gone': entry(), '/etc/motd': entry(), '/same': entry() });
    const b = tree({
      '/': entry({ type: 'dir', size: 0 }),
      '/etc/motd': entry({ size: 5, mode: 0o600, uid: 1000, gid: 1000 }),
      '/new': entry({ size: 9 }),
      '/same': entry(),
    });
    const changes = await compareTrees(a, b, NO_ROOTS);
    expect(changes.map(formatChange)).toEqual(['M /etc/motd (content, mode 644→600, owner 0:0→1000:1000)', 'D /gone', 'A /new']);
    expect(changes[1]).toEqual({ path: '/gone', change: 'removed', aspects: [], before: { type: 'file', mode: '644', uid: 0, gid: 0, size: 4 } });
    expect(changes[2]).toEqual({ path: '/new', change: 'added', aspects: [], after: { type: 'file', mode: '644', uid: 0, gid: 0, size: 9 } });
  });

  it('reports a change of type, not of mode, when a file became a folder', async () => {
    const changes = await compareTrees(tree({ '/x': entry() }), tree({ '/x': entry({ type: 'dir', mode: 0o755, size: 0, uid: 1 }) }), NO_ROOTS);
    expect(changes.map(formatChange)).toEqual(['M /x (type file→dir, owner 0:0→1:0)']);
  });

  it("compares a symlink's target, never its mode, and a device's numbers", async () => {
    const a = tree({ '/l': entry({ type: 'symlink', mode: 0o777, target: '/a' }), '/m': entry({ type: 'symlink', mode: 0o777, target: '/a' }), '/dev/x': entry({ type: 'char', rdev: 259 }) });
    const b = tree({ '/l': entry({ type: 'symlink', mode: 0o755, target: '/b' }), '/m': entry({ type: 'symlink', mode: 0o755, target: '/a' }), '/dev/x': entry({ type: 'char', rdev: 260 }) });
    expect((await compareTrees(a, b, NO_ROOTS)).map(formatChange)).toEqual(['M /dev/x (device numbers)', 'M /l (target /a→/b)']);
  });

  it('does not read a file that is plainly the same inode, nor an empty one', async () => {
    const a = tree({ '/same': entry(), '/empty': entry({ size: 0, ino: 7n }) });
    const b = tree({ '/same': entry(), '/empty': entry({ size: 0, ino: 8n }) });
    expect(await compareTrees(a, b, NO_ROOTS)).toEqual([]);
  });

  it('hashes files of one size on other inodes, and plainly same inodes with checksum', async () => {
    const rootA = await dirWith({ '/eq': 'same', '/ne': 'aaaa', '/kept': 'aaaa' });
    const rootB = await dirWith({ '/eq': 'same', '/ne': 'bbbb', '/kept': 'bbbb' });
    const a = tree({ '/eq': entry({ ino: 1n }), '/ne': entry({ ino: 2n }), '/kept': entry({ ino: 3n }) });
    const b = tree({ '/eq': entry({ ino: 11n }), '/ne': entry({ ino: 12n }), '/kept': entry({ ino: 3n }) });
    expect((await compareTrees(a, b, { rootA, rootB })).map(formatChange)).toEqual(['M /ne (content)']);
    expect((await compareTrees(a, b, { rootA, rootB, checksum: true })).map(formatChange)).toEqual(['M /kept (content)', 'M /ne (content)']);
  });

  it('reports only the paths the filter keeps', async () => {
    const a = tree({ '/etc/a': entry(), '/var/log/x': entry(), '/etc/b.pyc': entry() });
    const b = tree({ '/etc/a': entry({ size: 1 }), '/etc/new': entry() });
    const filter = pathFilter({ include: ['/etc'], exclude: ['*.pyc'] });
    expect((await compareTrees(a, b, { ...NO_ROOTS, filter })).map(formatChange)).toEqual(['M /etc/a (content)', 'A /etc/new']);
  });

  it('compares two trees walkTree read from disk', async () => {
    const rootA = await dirWith({ 'etc/hostname': 'a\n', 'etc/motd': 'hi\n' });
    const rootB = await dirWith({ 'etc/hostname': 'b\n', 'etc/issue': 'x\n' });
    await symlink('hostname', path.join(rootB, 'etc/name'));
    const changes = await compareTrees(await walkTree(rootA), await walkTree(rootB), { rootA, rootB });
    expect(changes.map(formatChange)).toEqual(['M /etc/hostname (content)', 'A /etc/issue', 'D /etc/motd', 'A /etc/name']);
  });
});

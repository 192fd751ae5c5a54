/**
 * `vmlb diff A B`: the files added, removed and changed between two images (layers, keys or
 * files). Each image is attached read-only (a throw-away overlay), and its root filesystem is
 * mounted read-only (`ro,noload` for ext*: no journal replay) inside a private mount
 * namespace held by one small shell process; this process reads both trees through
 * /proc/PID/root of that process. The mounts exist in no other namespace and vanish with the
 * holder — which has a parent-death signal — so even a SIGKILL leaves no mount behind.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { BackendPreference } from '../disk/backends.js';
import { VmlbError, tail } from '../errors.js';
import { settled, spawnChild, stopChild } from '../host/exec.js';
import { withReadOnlyImage, type ReadOnlyImage } from './image-access.js';
import { pathFilter } from './path-filter.js';
import { runDir } from '../disk/run-dirs.js';
import { compareTrees, walkTree, type TreeChange } from './tree-diff.js';

export interface ImageDiffOptions {
  include?: string[];
  exclude?: string[];
  /** Hash every same-size file pair, even ones that look like the same inode. @default false */
  checksum?: boolean;
  backend?: BackendPreference;
  signal?: AbortSignal;
}

export interface DiffResult {
  changes: TreeChange[];
  added: number;
  removed: number;
  modified: number;
  seconds: number;
}

const HOLDER = `set -u
mount_ro() { mount -o ro,noload "$1" "$2" 2>/dev/null || mount -o ro "$1" "$2"; }
mount_ro "$1" "$3" || { echo "cannot mount $1" >&2; exit 1; }
mount_ro "$2" "$4" || { echo "cannot mount $2" >&2; exit 1; }
echo ready
read -r _
umount "$3" "$4"
`;

/**
 * Mounts two block devices read-only in a private mount namespace and calls `fn` with the
 * paths through which this process sees them. The namespace (and its mounts) ends when `fn`
 * is done, or when this process dies.
 */
async function withMountedPair<T>(devA: string, devB: string, signal: AbortSignal | undefined, fn: (a: string, b: string) => Promise<T>): Promise<T> {
  const dir = path.join(runDir(), 'inspect', `diff-${process.pid}-${randomBytes(4).toString('hex')}`);
  const [ma, mb] = [path.join(dir, 'a'), path.join(dir, 'b')];
  await mkdir(ma, { recursive: true });
  await mkdir(mb, { recursive: true });
  const argv = ['setpriv', '--pdeathsig', 'KILL', '--', 'unshare', '--mount', '--propagation', 'private', '--', '/bin/sh', '-c', HOLDER, 'vmlb-diff-holder', devA, devB, ma, mb];
  const child = spawnChild(argv, {
    describe: `${argv.slice(0, 10).join(' ')} … ${devA} ${devB}`,
    stdin: 'pipe',
    detached: false,
    signal,
    // execa's own default: an abort SIGTERMs the holder and SIGKILLs it 5 s later.
    killGraceMs: 5000,
  });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = settled(child);
  try {
    const ready = await new Promise<boolean>((resolve) => {
      let out = '';
      child.stdout?.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('ready\n')) resolve(true);
      });
      void exited.then(() => resolve(false));
    });
    if (!ready) throw new VmlbError('DIFF_MOUNT', `cannot mount the images' root filesystems read-only: ${tail(stderr, 5) || 'the mount helper exited'}`);
    const root = `/proc/${child.pid}/root`;
    return await fn(path.join(root, ma), path.join(root, mb));
  } finally {
    // End of its stdin tells the holder to unmount and exit.
    await stopChild(child, { exited, ask: [() => child.stdin?.end()], graceMs: 5000 });
    await rm(dir, { recursive: true, force: true });
  }
}

export async function diffImages(imageA: string, imageB: string, o: ImageDiffOptions = {}): Promise<DiffResult> {
  const started = performance.now();
  const filter = pathFilter({ include: o.include, exclude: o.exclude });
  const attach = (image: string, fn: (img: ReadOnlyImage) => Promise<TreeChange[]>) =>
    withReadOnlyImage(image, { purpose: 'diff', backend: o.backend, signal: o.signal }, fn);
  const changes = await attach(imageA, (a) =>
    attach(imageB, async (b) => {
      const [devA, devB] = await Promise.all([a.disk.rangeDevice(a.root), b.disk.rangeDevice(b.root)]);
      return withMountedPair(devA, devB, o.signal, async (rootA, rootB) => {
        const [ta, tb] = await Promise.all([walkTree(rootA, filter), walkTree(rootB, filter)]);
        return compareTrees(ta, tb, { rootA, rootB, filter, checksum: o.checksum });
      });
    }),
  );
  const count = (k: TreeChange['change']) => changes.filter((c) => c.change === k).length;
  return { changes, added: count('added'), removed: count('removed'), modified: count('modified'), seconds: (performance.now() - started) / 1000 };
}

/**
 * How `vmlb test-boot` boots an image: through the image's own boot loader when it has one,
 * else directly with the kernel and initramfs found in the image's /boot (qemu -kernel/-initrd),
 * which is what a disk made by create-disk + mmdebstrap needs (it has no boot loader).
 */
import { open, stat } from 'node:fs/promises';
import path from 'node:path';
import type { BackendPreference } from '../disk/backends.js';
import { VmlbError } from '../errors.js';
import { exec } from '../host/exec.js';
import { withReadOnlyImage } from './image-access.js';
import { imageInfo } from '../host/qemu-img.js';

/** GPT "BIOS boot" partition: where GRUB keeps its core image on a GPT disk. */
const GPT_BIOS_BOOT = '21686148-6449-6E6F-744E-656564454649';

export type BootMode = { mode: 'disk'; why: string } | { mode: 'kernel'; why: string; kernel: string; initrd?: string; version: string; rootPartition: number };

/**
 * Whether the disk can boot by itself under SeaBIOS: boot code in its MBR (GRUB, syslinux…).
 * Reads the first sector through qemu-img (any format, any backing chain), without attaching.
 */
export async function biosBootLoader(image: string, o: { signal?: AbortSignal; scratch: string } ): Promise<string | null> {
  const info = await imageInfo(image, { signal: o.signal });
  const out = path.join(o.scratch, 'sector0');
  await exec(['qemu-img', 'dd', '-U', '-f', info.format, '-O', 'raw', 'bs=512', 'count=1', `if=${image}`, `of=${out}`], { signal: o.signal });
  const fh = await open(out, 'r');
  try {
    const mbr = Buffer.alloc(512);
    await fh.read(mbr, 0, 512, 0);
    // Bytes 0–439 are boot code; a protective MBR written by sfdisk leaves them zero.
    const code = mbr.subarray(0, 440);
    if (mbr.readUInt16LE(510) === 0xaa55 && code.some((b) => b !== 0)) return 'boot code in the MBR';
    return null;
  } finally {
    await fh.close();
  }
}

interface BootEntry {
  name: string;
  mode: number;
  size: number;
}

/** Parses `debugfs -R 'ls -p DIR'`: lines `/inode/mode/uid/gid/name/size/`. */
export function parseDebugfsLs(text: string): BootEntry[] {
  const out: BootEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split('/');
    if (f.length < 7 || !/^\d+$/.test(f[1] ?? '')) continue;
    const name = f.slice(5, f.length - 2).join('/');
    if (name === '.' || name === '..') continue;
    out.push({ name, mode: parseInt(f[2] ?? '0', 8), size: Number(f[f.length - 2] || 0) });
  }
  return out;
}

/** Orders kernel versions as dpkg would for the usual ones: 6.1.0-37-cloud-amd64 > 6.1.0-9-cloud-amd64. */
export function compareKernelVersions(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/** The newest kernel in a /boot listing and its initramfs (regular files only: the symlinks point at them). */
export function pickKernel(entries: BootEntry[]): { kernel: string; initrd?: string; version: string } | null {
  const regular = entries.filter((e) => (e.mode & 0o170000) === 0o100000);
  const kernels = regular
    .filter((e) => e.name.startsWith('vmlinuz-') && e.size > 0)
    .map((e) => e.name.slice('vmlinuz-'.length))
    .sort(compareKernelVersions);
  const version = kernels.at(-1);
  if (!version) return null;
  const initrd = regular.find((e) => e.name === `initrd.img-${version}` || e.name === `initramfs-${version}.img`);
  return { kernel: `vmlinuz-${version}`, initrd: initrd?.name, version };
}

/**
 * Copies the newest kernel and its initramfs out of the image's /boot (on its root
 * filesystem, ext2/3/4) into `dir`, reading a throw-away overlay with debugfs: nothing is
 * mounted and the image is not changed.
 */
export async function extractKernel(
  image: string,
  dir: string,
  o: { backend?: BackendPreference; signal?: AbortSignal } = {},
): Promise<{ kernel: string; initrd?: string; version: string; rootPartition: number }> {
  return withReadOnlyImage(image, { purpose: 'test-boot: reading /boot', backend: o.backend, signal: o.signal }, async ({ disk, root }) => {
    const dev = await disk.rangeDevice(root);
    const ls = await exec(['debugfs', '-R', 'ls -p /boot', dev], { reject: false, signal: o.signal });
    if (/Bad magic number|Filesystem not open|Couldn't find valid filesystem superblock/i.test(ls.stderr)) {
      throw new VmlbError('NO_KERNEL', `${image}: the root filesystem (partition ${root.number}) is not ext2/3/4, so its kernel cannot be read; give --kernel and --initrd`);
    }
    const picked = pickKernel(parseDebugfsLs(ls.stdout));
    if (!picked) {
      throw new VmlbError(
        'NO_KERNEL',
        `${image} has no boot loader and no kernel in /boot of its root filesystem (partition ${root.number}): install one (e.g. linux-image-cloud-amd64) or give --kernel`,
      );
    }
    const copy = async (name: string) => {
      const out = path.join(dir, name);
      await exec(['debugfs', '-R', `dump /boot/${name} ${out}`, dev], { signal: o.signal });
      const st = await stat(out).catch(() => null);
      if (!st || st.size === 0) throw new VmlbError('NO_KERNEL', `${image}: could not read /boot/${name}`);
      return out;
    };
    const kernel = await copy(picked.kernel);
    const initrd = picked.initrd ? await copy(picked.initrd) : undefined;
    return { kernel, initrd, version: picked.version, rootPartition: root.number };
  });
}

/**
 * Decides how to boot: `disk` when the image has a BIOS boot loader (or when asked), else a
 * direct kernel boot from its own /boot. `--kernel` given by the user wins.
 */
export async function chooseBootMode(
  image: string,
  o: { boot: 'auto' | 'disk' | 'kernel'; scratch: string; backend?: BackendPreference; signal?: AbortSignal },
): Promise<BootMode> {
  if (o.boot === 'disk') return { mode: 'disk', why: 'asked for (--boot disk)' };
  if (o.boot === 'auto') {
    const loader = await biosBootLoader(image, o);
    if (loader) return { mode: 'disk', why: `the image has a boot loader (${loader})` };
  }
  const k = await extractKernel(image, o.scratch, o);
  const why = o.boot === 'kernel' ? 'asked for (--boot kernel)' : 'the image has no boot loader';
  return { mode: 'kernel', why: `${why}: kernel ${k.version} from its /boot`, ...k };
}

import { open, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { StoreError } from '../errors.js';
import { exec } from './exec.js';

/** Thin, typed wrappers over the qemu-img calls the engine makes, and QEMU's option syntax. */

/** A value for a QEMU `key=value,...` option string (qemu-storage-daemon, qemu-system): commas are doubled. */
export function qemuOptValue(s: string): string {
  return s.replaceAll(',', ',,');
}

export interface ImageInfo {
  format: string;
  virtualSize: number;
  actualSize: number;
  backingFile: string | null;
  compat?: string;
}

export async function imageInfo(path: string, opts: { signal?: AbortSignal } = {}): Promise<ImageInfo> {
  // -U: read without taking the image lock, so a blob that a running VM or another build holds
  // open can still be inspected.
  const { stdout } = await exec(['qemu-img', 'info', '-U', '--output=json', path], opts);
  const j = JSON.parse(stdout) as {
    format: string;
    'virtual-size': number;
    'actual-size'?: number;
    'backing-filename'?: string;
    'format-specific'?: { data?: { compat?: string } };
  };
  return {
    format: j.format,
    virtualSize: j['virtual-size'],
    actualSize: j['actual-size'] ?? 0,
    backingFile: j['backing-filename'] ?? null,
    compat: j['format-specific']?.data?.compat,
  };
}

/**
 * A qcow2 overlay over `backing`. `backing` is written into the header as given: pass a bare
 * file name to get a relative backing path (resolved from the overlay's folder), or an
 * absolute path for an overlay that lives elsewhere (build/image.qcow2).
 */
export async function createOverlay(
  path: string,
  backing: string,
  opts: { size?: number; compat?: string; signal?: AbortSignal; backingFormat?: string } = {},
): Promise<void> {
  const o = ['-o', `compat=${opts.compat ?? '1.1'}`];
  const argv = ['qemu-img', 'create', '-q', '-f', 'qcow2', ...o, '-b', backing, '-F', opts.backingFormat ?? 'qcow2', path];
  if (opts.size !== undefined) argv.push(String(opts.size));
  await exec(argv, { signal: opts.signal });
}

export async function createBlank(path: string, size: number, opts: { signal?: AbortSignal } = {}): Promise<void> {
  await exec(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=1.1', path, String(size)], opts);
}

export async function resize(path: string, size: number, opts: { signal?: AbortSignal } = {}): Promise<void> {
  await exec(['qemu-img', 'resize', '-q', path, String(size)], opts);
}

/** Write `src` (any format, whole chain) as one standalone file. */
export async function convert(
  src: string,
  dest: string,
  opts: { srcFormat?: string; compat?: string; signal?: AbortSignal } = {},
): Promise<void> {
  const argv = ['qemu-img', 'convert', '-U'];
  if (opts.srcFormat) argv.push('-f', opts.srcFormat);
  argv.push('-O', 'qcow2', '-o', `compat=${opts.compat ?? '1.1'}`, src, dest);
  await exec(argv, { signal: opts.signal });
}

/** `qemu-img check`: true when the image has no errors (leaked clusters are not errors). */
export async function check(path: string): Promise<{ ok: boolean; output: string }> {
  const r = await exec(['qemu-img', 'check', '-U', path], { reject: false });
  return { ok: r.exitCode === 0, output: r.stdout + r.stderr };
}

/** `qemu-img compare`: true when both images read the same guest-visible content. */
export async function compare(a: string, b: string): Promise<{ identical: boolean; output: string }> {
  const r = await exec(['qemu-img', 'compare', '-U', a, b], { reject: false });
  return { identical: r.exitCode === 0, output: r.stdout + r.stderr };
}

/** The placeholder backing name of overlay templates: as long as `<64 hex>.qcow2`. */
const TEMPLATE_BACKING = `${'0'.repeat(64)}.qcow2`;
const templates = new Map<string, Promise<Buffer>>();

/**
 * createOverlay for the engine's hot path: an empty overlay whose backing file is a layer
 * blob named `<key>.qcow2` beside it. qemu-img makes one template per folder and virtual
 * size (with a placeholder backing name of the same length); each overlay is that template
 * with the name written over the placeholder, which saves a qemu-img process per layer
 * (40–60 ms on a small host). Any other backing name goes through qemu-img.
 */
export async function createLayerOverlay(file: string, backingName: string, virtualSize: number, opts: { signal?: AbortSignal } = {}): Promise<void> {
  if (backingName.length !== TEMPLATE_BACKING.length || path.basename(backingName) !== backingName) {
    return createOverlay(file, backingName, { signal: opts.signal });
  }
  const dir = path.dirname(file);
  const id = `${dir}\0${virtualSize}`;
  let tpl = templates.get(id);
  if (!tpl) {
    tpl = loadTemplate(dir, virtualSize, opts.signal);
    templates.set(id, tpl);
    tpl.catch(() => templates.delete(id));
  }
  const bytes = Buffer.from(await tpl);
  const offset = Number(bytes.readBigUInt64BE(8));
  bytes.write(backingName, offset, 'latin1');
  await writeFile(file, bytes, { flag: 'wx' });
}

async function loadTemplate(dir: string, virtualSize: number, signal?: AbortSignal): Promise<Buffer> {
  const file = path.join(dir, `.overlay-template-${virtualSize}.qcow2`);
  let bytes: Buffer | undefined;
  try {
    bytes = await readFile(file);
  } catch {
    const tmp = `${file}.${process.pid}.tmp`;
    await exec(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=1.1', '-u', '-b', TEMPLATE_BACKING, '-F', 'qcow2', tmp, String(virtualSize)], { signal });
    await rename(tmp, file);
    bytes = await readFile(file);
  }
  // The header says where the backing name is: check it is the placeholder, so a template
  // from another qemu version that lays things out differently is caught, not patched.
  const magic = bytes.readUInt32BE(0);
  const offset = Number(bytes.readBigUInt64BE(8));
  const length = bytes.readUInt32BE(16);
  const size = Number(bytes.readBigUInt64BE(24));
  if (magic !== 0x514649fb || length !== TEMPLATE_BACKING.length || size !== virtualSize || bytes.toString('latin1', offset, offset + length) !== TEMPLATE_BACKING) {
    throw new StoreError(`${file} is not an overlay template this engine made; remove it`);
  }
  return bytes;
}

/**
 * True when `file` is a qcow2 overlay on exactly `backing` with nothing written to it: no
 * data cluster mapped (an all-zero L1 table) and no dirty or corrupt flag. Such an output
 * can be kept as it is by a rebuild that ends on the same layer; anything else (a user
 * booted it, another chain, another format) is not, and gets rewritten.
 */
export async function isPristineOverlayOn(file: string, backing: string): Promise<boolean> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch {
    return false;
  }
  try {
    const head = Buffer.alloc(4096);
    await fh.read(head, 0, head.length, 0);
    if (head.readUInt32BE(0) !== 0x514649fb || head.readUInt32BE(4) < 3) return false;
    const nameOffset = Number(head.readBigUInt64BE(8));
    const nameLength = head.readUInt32BE(16);
    if (nameOffset + nameLength > head.length || head.toString('utf8', nameOffset, nameOffset + nameLength) !== backing) return false;
    if (head.readBigUInt64BE(72) !== 0n) return false; // incompatible features: dirty, corrupt, …
    const l1Size = head.readUInt32BE(36);
    const l1Offset = Number(head.readBigUInt64BE(40));
    if (l1Size > 1 << 20) return false;
    const l1 = Buffer.alloc(l1Size * 8);
    await fh.read(l1, 0, l1.length, l1Offset);
    for (let i = 0; i < l1.length; i += 8) if (l1.readBigUInt64BE(i) !== 0n) return false;
    return true;
  } finally {
    await fh.close();
  }
}

import type { Dirent } from 'node:fs';
import { chmod, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { VmlbError } from '../errors.js';
import { DEFAULT_DISK_SIZE } from './hints.js';
import { LAYER_DIR_PATTERN } from './layer-project.js';
import { formatBytes } from '../sizes.js';

export type ScaffoldKind = 'build-layer' | 'modify-disk' | 'create-disk';

export interface ScaffoldOptions {
  /** @default 'create-disk' in a project with no layer yet, else 'build-layer' */
  kind?: ScaffoldKind;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * Make the project's next layer folder, `NN_name`, numbered one past the highest layer (padded
 * to the widest number already used, at least two digits) with an executable entry script
 * that runs as is. The hints that apply are named in prose, so none of them is active.
 */
export async function scaffoldLayer(projectDir: string, name: string, opts: ScaffoldOptions = {}): Promise<{ dir: string; script: string }> {
  if (!NAME.test(name)) {
    throw new VmlbError(
      'INVALID_LAYER_NAME',
      `cannot make a layer named "${name}": a name starts with a letter or digit and holds only letters, digits, '.', '_' and '-'`,
    );
  }
  const root = path.resolve(projectDir);
  let entries: Dirent[];
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch (e) {
    throw new VmlbError('PROJECT_NOT_FOUND', `cannot read the project folder ${root}: ${(e as Error).message}`, { cause: e });
  }

  // Numbered like loadProject sees the project: folders (or links to folders) only.
  const layers = (
    await Promise.all(
      entries.map(async (d) => {
        const m = LAYER_DIR_PATTERN.exec(d.name);
        if (!m || !(d.isDirectory() || (d.isSymbolicLink() && (await isDir(path.join(root, d.name)))))) return [];
        return [{ entry: d.name, digits: m[1]!, name: m[2]! }];
      }),
    )
  ).flat();
  const same = layers.find((l) => l.name === name);
  if (same) throw new VmlbError('LAYER_EXISTS', `a layer named ${name} already exists: ${same.entry}`);

  const kind = opts.kind ?? (layers.length === 0 ? 'create-disk' : 'build-layer');
  if (kind === 'create-disk' && layers.length > 0) {
    const first = [...layers].sort((a, b) => Number(a.digits) - Number(b.digits))[0]!;
    throw new VmlbError('LAYER_NOT_FIRST', `a create-disk layer must be the first layer, and this project already starts with ${first.entry}`);
  }

  const highest = layers.reduce((max, l) => Math.max(max, Number(l.digits)), 0);
  const width = layers.reduce((w, l) => Math.max(w, l.digits.length), 2);
  const folder = `${String(highest + 1).padStart(width, '0')}_${name}`;
  const dir = path.join(root, folder);
  const script = path.join(dir, kind);

  try {
    await mkdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new VmlbError('LAYER_EXISTS', `${folder} already exists in ${root}`);
    throw new VmlbError('SCAFFOLD_FAILED', `cannot make ${dir}: ${(e as Error).message}`, { cause: e });
  }
  try {
    await writeFile(script, scriptText(kind, name), { flag: 'wx' });
    // The umask would strip bits from a mode given to writeFile.
    await chmod(script, 0o755);
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw new VmlbError('SCAFFOLD_FAILED', `cannot write ${script}: ${(e as Error).message}`, { cause: e });
  }
  return { dir, script };
}

// Each hint list is one line starting with "Hints", so that no line reads as a hint itself.
const ABOUT: Record<ScaffoldKind, string[]> = {
  'create-disk': [
    'create-disk: runs on the host with a blank disk (GPT, one ext4 root partition)',
    'mounted at $VMLB_ROOT; fill it, e.g. mmdebstrap ... "$VMLB_ROOT".',
    `Hints (one per comment line): disk-size SIZE (default ${formatBytes(DEFAULT_DISK_SIZE)}), timeout DURATION, nocache, noshare`,
  ],
  'build-layer': [
    'build-layer: runs in a chroot of the image, cwd /mnt (this folder, read-only).',
    'Hints (one per comment line): timeout DURATION, nocache, noshare, chroot-bind-mount SRC TARGET, chroot-mount PARTITION TARGET',
  ],
  'modify-disk': [
    'modify-disk: runs on the host with the disk as $VMLB_DEVICE and the overlay as',
    '$VMLB_IMAGE; `vmlb-partition N` prints a block device for partition N.',
    'Hints (one per comment line): disk-size SIZE (grows the disk first), timeout DURATION, nocache, noshare',
  ],
};

function scriptText(kind: ScaffoldKind, name: string): string {
  return [
    '#!/bin/sh',
    ...ABOUT[kind].map((l) => `# ${l}`),
    'set -eu',
    '',
    `echo "hello from ${name}"`,
    '',
  ].join('\n');
}

async function isDir(abs: string): Promise<boolean> {
  return stat(abs).then(
    (st) => st.isDirectory(),
    () => false,
  );
}

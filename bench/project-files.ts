/** Image projects for the benchmarks, written from a few lines: layer folders and their scripts. */
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BUSYBOX_BASE } from '../test/helpers/vmlb.js';

export type LayerDef = {
  kind: 'create-disk' | 'build-layer' | 'modify-disk';
  /** The script's body; a shebang is added when missing. */
  script: string;
};

/** A busybox root filesystem on a blank disk of `diskSize`: test/helpers/vmlb.ts BUSYBOX_BASE. */
export function busyboxBase(diskSize: string): LayerDef {
  if (!BUSYBOX_BASE.script.includes('# disk-size 64M')) throw new Error('BUSYBOX_BASE no longer has its # disk-size 64M line');
  return { kind: 'create-disk', script: BUSYBOX_BASE.script.replace('# disk-size 64M', `# disk-size ${diskSize}`) };
}

/** Layer folder names NN_name, numbered from 01 in the order given. */
export function numbered(names: string[]): string[] {
  return names.map((n, i) => `${String(i + 1).padStart(2, '0')}_${n}`);
}

export async function writeLayer(project: string, name: string, def: LayerDef): Promise<void> {
  const dir = path.join(project, name);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, def.kind);
  const body = def.script.startsWith('#!') ? def.script : `#!/bin/sh\n${def.script}`;
  await writeFile(file, body.endsWith('\n') ? body : body + '\n');
  await chmod(file, 0o755);
}

export async function writeProject(dir: string, layers: Array<[string, LayerDef]>): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const [name, def] of layers) await writeLayer(dir, name, def);
  return dir;
}

/** A busybox base and `count` build-layer layers whose script is `true`. */
export function trivialLayers(count: number, baseSize = '64M'): Array<[string, LayerDef]> {
  const names = numbered(['base', ...Array.from({ length: count }, (_, i) => `l${i + 1}`)]);
  return names.map((n, i) => [n, i === 0 ? busyboxBase(baseSize) : { kind: 'build-layer', script: 'true' }]);
}

/** The `true` layer whose comment changes its key (and so every key after it). */
export function trueLayer(tag: string): LayerDef {
  return { kind: 'build-layer', script: `# ${tag}\ntrue` };
}

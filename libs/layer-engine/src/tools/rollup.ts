/**
 * `vmlb rollup NN_name`: folds the chain up to NN_name into a new base, so that the layers
 * after it build on a chain of one overlay instead of NN. The project is rewritten:
 *
 *   rolled/NN_name.qcow2          the flattened chain (qemu-img convert), standalone
 *   rolled/NN_name.layers/…       the layer folders it was made of, moved out of the way
 *   NN_name/base-image            source: ../rolled/NN_name.qcow2 and its sha256
 *
 * The new NN_name keeps the number of the last layer it replaces, so the layers after it keep
 * theirs. Its key is the base-image file's (the image's sha256), like any imported image:
 * commit rolled/NN_name.qcow2 (git-lfs) or upload it and point `source:` at its URL to share
 * it, or keep it out of git (`rolled/*.qcow2` in .gitignore) to keep it local.
 */
import { appendFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { build, type BuildOptions } from '../build/build.js';
import { VmlbError } from '../errors.js';
import { loadProject } from '../project/layer-project.js';
import { sha256File } from '../store/file-digest.js';
import type { LocalStore } from '../store/local-store.js';
import { convert } from '../host/qemu-img.js';

export const ROLLED_DIR = 'rolled';

export interface RollupOptions {
  projectDir: string;
  /** The last layer folded into the new base. */
  layer: string;
  store: LocalStore;
  backend?: BuildOptions['backend'];
  /** Add `rolled/*.qcow2` to the project's .gitignore. */
  keepLocal?: boolean;
  signal?: AbortSignal;
  /** Events of the build that makes sure the chain up to `layer` is in the store. */
  onEvent?: BuildOptions['onEvent'];
  /** What that build's layer scripts get (see BuildOptions). @default BuildOptions' defaults */
  layerRun?: Pick<BuildOptions, 'logMax' | 'passEnv'>;
}

export interface RollupResult {
  layer: string;
  /** The layer folders folded in, in order. */
  rolled: string[];
  /** The key of the chain's top that was flattened. */
  fromKey: string;
  image: string;
  sha256: string;
  bytes: number;
  baseImageFile: string;
  movedTo: string;
  /** Overlays in the chain up to `layer` before (one per layer), and after (the base alone). */
  chainBefore: number;
  chainAfter: number;
  /** The layer after `layer`: what it cost to build on the long chain, the last time. */
  next?: { name: string; secondsBefore?: number };
  seconds: number;
}

export async function rollup(o: RollupOptions): Promise<RollupResult> {
  const started = performance.now();
  const project = await loadProject(o.projectDir);
  const i = project.layers.findIndex((l) => l.name === o.layer);
  if (i < 0) throw new VmlbError('NO_SUCH_LAYER', `${o.layer}: the project has no such layer; its layers are ${project.layers.map((l) => l.name).join(', ')}`);
  const upTo = project.layers.slice(0, i + 1);
  if (i === 0 && upTo[0]!.kind === 'base-image') {
    throw new VmlbError('ROLLUP_NOTHING', `${o.layer} is a base-image already: there is no chain to fold`);
  }
  const nocache = upTo.find((l) => l.hints.nocache);
  if (nocache) {
    throw new VmlbError('ROLLUP_NOCACHE', `${nocache.name} is # nocache: it changes on every build, so it cannot be folded into a base; roll up a layer before it`);
  }
  const rolledDir = path.join(project.dir, ROLLED_DIR);
  const image = path.join(rolledDir, `${o.layer}.qcow2`);
  const movedTo = path.join(rolledDir, `${o.layer}.layers`);
  if (await stat(movedTo).then(() => true, () => false)) {
    throw new VmlbError('ROLLUP_EXISTS', `${path.relative(project.dir, movedTo)} exists already: a rollup to ${o.layer} was made before; move it away first`);
  }
  const next = project.layers[i + 1];
  let secondsBefore: number | undefined;
  if (next) {
    const key = await o.store.lastBuiltKey(project.dir, next.name);
    secondsBefore = key ? (await o.store.getManifest(key))?.seconds : undefined;
  }

  // The chain up to the layer, built if it is not in the store yet (a no-op when it is).
  await mkdir(rolledDir, { recursive: true });
  const scratchOut = path.join(rolledDir, `.${o.layer}.build-${process.pid}.qcow2`);
  let top: string;
  try {
    const r = await build({ projectDir: project.dir, store: o.store, backend: o.backend, last: o.layer, output: scratchOut, signal: o.signal, onEvent: o.onEvent, ...o.layerRun });
    top = r.chain.at(-1)!;
  } finally {
    await rm(scratchOut, { force: true });
  }

  const tmp = `${image}.tmp-${process.pid}`;
  try {
    await convert(o.store.blobPath(top), tmp, { signal: o.signal });
    await rename(tmp, image);
  } finally {
    await rm(tmp, { force: true });
  }
  const [sha256, st] = await Promise.all([sha256File(image), stat(image)]);

  // Move the folded layers out, then put the base in the last one's place.
  await mkdir(movedTo, { recursive: true });
  for (const l of upTo) await rename(l.dir, path.join(movedTo, l.name));
  const baseDir = path.join(project.dir, o.layer);
  await mkdir(baseDir);
  const baseImageFile = path.join(baseDir, 'base-image');
  const names = upTo.map((l) => l.name);
  // No date or host here: the file is the layer's key, and the same rollup must give the same key.
  await writeFile(
    baseImageFile,
    [
      `# vmlb rollup: ${names.length === 1 ? names[0] : `${names[0]} … ${names.at(-1)}`} (${names.length} layer${names.length === 1 ? '' : 's'}, chain top ${top.slice(0, 12)}) flattened;`,
      `# the layer folders it was made of are in ../${ROLLED_DIR}/${o.layer}.layers/`,
      `source: ../${ROLLED_DIR}/${o.layer}.qcow2`,
      `sha256: ${sha256}`,
      '',
    ].join('\n'),
  );
  if (o.keepLocal) await ignoreRolledImages(project.dir);
  return {
    layer: o.layer,
    rolled: names,
    fromKey: top,
    image,
    sha256,
    bytes: st.size,
    baseImageFile,
    movedTo,
    chainBefore: upTo.length,
    chainAfter: 1,
    next: next ? { name: next.name, secondsBefore } : undefined,
    seconds: (performance.now() - started) / 1000,
  };
}

/** Adds `rolled/*.qcow2` to the project's .gitignore (once). */
async function ignoreRolledImages(projectDir: string): Promise<void> {
  const file = path.join(projectDir, '.gitignore');
  const line = `${ROLLED_DIR}/*.qcow2`;
  const text = await readFile(file, 'utf8').catch(() => '');
  if (text.split('\n').some((l) => l.trim() === line)) return;
  await appendFile(file, `${text && !text.endsWith('\n') ? '\n' : ''}# vmlb rollup images: large, kept on this machine\n${line}\n`);
}

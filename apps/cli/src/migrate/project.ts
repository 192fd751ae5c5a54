/**
 * `vmlb migrate`: turns an image project of the original vm-layer-builder (scons + qemu-nbd)
 * into this tool's form, and says what it did and what it could not.
 *
 * - a modify-disk of the original's grow-the-disk pattern (`modify-disk SOURCE TARGET DEVICE`:
 *   qemu-img create of SIZE on SOURCE, qemu-nbd, growpart, e2fsck, resize2fs) becomes
 *   `# disk-size SIZE` + growpart/e2fsck/resize2fs on `$VMLB_DEVICE` and `vmlb-partition N`;
 *   any other modify-disk is left alone, naming its first line that does not fit;
 * - the base image the SConstruct downloads (a URL, an md5) becomes a `00_base/base-image` layer,
 *   its sha256 computed from a download, or a `sha256: TODO` line that vmlb build refuses;
 * - a hint line followed by prose becomes the bare hint, the prose a comment line after it;
 * - the rest of the original's files (SConstruct, site_scons/, bin/…, build/) is left alone
 *   and listed with what vmlb offers instead.
 *
 * Each of those has its file in this folder: modify-disk.ts (its steps in modify-disk-steps.ts),
 * base-image.ts (sconstruct.ts, download.ts), hints.ts, original-files.ts; layer-scripts.ts runs
 * the first and the third over the layers, copy-out.ts makes --out's copy. The reading and
 * rewriting of scripts and of the SConstruct are pure functions (unit-tested beside them);
 * migrateProject does the files and the download.
 */
import type { Dirent } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { LAYER_DIR_PATTERN, OUTPUT_DIR, ProjectError, VmlbError, loadProject } from '@vmlb/layer-engine';
import { migrateBaseImage } from './base-image.js';
import { copyToOut } from './copy-out.js';
import { isDir, readIfFile } from './files.js';
import { migrateLayerScripts } from './layer-scripts.js';
import { Migration, type MigrateOptions } from './migration.js';
import { listLeftAlone } from './original-files.js';
import type { MigrateReport } from './report.js';
import { readSConstruct } from './sconstruct.js';
import { usage } from './usage-error.js';

/** Migrate an original project in place or into `out`; see the module's comment. */
export async function migrateProject(o: MigrateOptions): Promise<MigrateReport> {
  const project = path.resolve(o.dir);
  let top: Dirent[];
  try {
    if (!(await stat(project)).isDirectory()) throw usage(`${project} is not a folder: name the project of the original vm-layer-builder to migrate`);
    top = await readdir(project, { withFileTypes: true });
  } catch (e) {
    if (e instanceof VmlbError) throw e;
    throw usage(`cannot read the project folder ${project}: ${(e as Error).message}`);
  }
  const layerNames = (
    await Promise.all(top.map(async (d) => (LAYER_DIR_PATTERN.test(d.name) && (await isDir(path.join(project, d.name))) ? [d.name] : [])))
  ).flat();
  if (layerNames.length === 0) {
    throw usage(`${project} has no layer folders (NN_name, e.g. 10_update): it is not an image project of the original vm-layer-builder, nor of vmlb`);
  }

  const m = new Migration(o, project);
  const scons = await readIfFile(path.join(project, 'SConstruct'));
  const base = scons === null ? null : readSConstruct(scons);
  const notCopied = new Set([OUTPUT_DIR, ...(base?.cacheDir ? [base.cacheDir.replace(/\/+$/, '')] : [])]);

  // --out: a copy of the project (without the original's output and cache) is what is migrated.
  if (o.out !== undefined) await copyToOut(m, path.resolve(o.out), top, notCopied);

  const layers = layerNames
    .map((name) => ({ name, number: Number(LAYER_DIR_PATTERN.exec(name)![1]) }))
    .sort((a, b) => a.number - b.number || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  // 1. modify-disk scripts, and 3. hints, layer by layer.
  const kinds = await migrateLayerScripts(m, layers);
  // 2. The base image.
  await migrateBaseImage(m, layers, kinds, base);
  // 4. The original's own files, and anything else: left alone, and listed.
  await listLeftAlone(m, top, notCopied, layerNames, base);

  // Whatever else vmlb build would refuse (a script that is not executable, a bad hint, a name
  // out of pattern): named as loadProject names it, unless already said above.
  try {
    await loadProject(m.target);
  } catch (e) {
    if (!(e instanceof ProjectError)) throw e;
    const said = new Set(m.report.todo.map((t) => t.where));
    for (const p of e.problems) {
      if (said.has(p.where)) continue;
      if (/^the first layer must be a base-image or a create-disk/.test(p.problem) && m.report.todo.length > 0) continue;
      m.todo(p.where, `vmlb build refuses it: ${p.problem}`);
    }
  }
  return m.report;
}

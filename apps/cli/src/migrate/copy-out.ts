/** `vmlb migrate --out DIR`: the project copied into a new or empty folder, which is then what is migrated. */
import type { Dirent } from 'node:fs';
import { cp, mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Migration } from './migration.js';
import { usage } from './usage-error.js';

/** Copies the project's top-level entries `top` into `out`, all but the folders in `notCopied` (the original's output and cache). */
export async function copyToOut(m: Migration, out: string, top: Dirent[], notCopied: Set<string>): Promise<void> {
  const project = m.report.project;
  if (out === project || out.startsWith(project + path.sep)) throw usage(`--out ${out} is inside the project ${project}: name a folder outside it`);
  if (project.startsWith(out + path.sep)) throw usage(`--out ${out} holds the project ${project}: name a new or empty folder`);
  const existing = await readdir(out).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    if (e.code === 'ENOTDIR') throw usage(`--out ${out} is a file: name a new or empty folder`);
    throw e;
  });
  if (existing && existing.length > 0) throw usage(`--out ${out} exists and is not empty: name a new or empty folder`);
  await mkdir(out, { recursive: true });
  const skipped: string[] = [];
  for (const d of top) {
    if (notCopied.has(d.name) && d.isDirectory()) {
      skipped.push(`${d.name}/`);
      continue;
    }
    await cp(path.join(project, d.name), path.join(out, d.name), { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
  }
  m.report.target = out;
  m.report.changed = true;
  m.done('.', `copied the project to ${out}${skipped.length ? ` (all but ${skipped.join(' and ')}: the original's output and cache)` : ''}`);
}

import { readdirSync, readFileSync, statSync, type Dirent } from 'node:fs';
import path from 'node:path';
import { ProjectError, type ProjectProblem } from '../errors.js';
import { parseBaseImage } from './base-image-file.js';
import { compare, errText, limiter, scanFolder, type FolderScan, type Limiter } from './folder-scan.js';
import { parseHints } from './hints.js';
import { LAYER_KINDS, type ImageProject, type LayerKind, type LayerSpec } from '../types.js';

/** `NN_name`: two or more digits, an underscore, a name. */
export const LAYER_DIR_PATTERN = /^(\d{2,})_([A-Za-z0-9][A-Za-z0-9._-]*)$/;

/** The output folder `vmlb build` writes into the project; never a layer. */
export const OUTPUT_DIR = 'build';

/** How many big files are hashed at once across the whole project. */
const IO_PARALLELISM = 8;

const SCRIPT_KINDS = new Set<LayerKind>(['create-disk', 'build-layer', 'modify-disk']);

const NAME_RULE = 'layer folders are NN_name — two or more digits, an underscore, a name (letters, digits, . _ -)';

/**
 * Read an image project: its layer folders, each one's entry script, hints and files, sorted
 * by layer number. A project with anything wrong is refused as a whole: one ProjectError lists
 * every problem found, each naming the folder (relative to the project) it is about.
 */
export async function loadProject(dir: string): Promise<ImageProject> {
  const projectDir = path.resolve(dir);
  const problems: ProjectProblem[] = [];
  const report = (where: string, problem: string) => problems.push({ where, problem });

  let entries: Dirent[];
  try {
    entries = readdirSync(projectDir, { withFileTypes: true });
  } catch (e) {
    throw new ProjectError(projectDir, [{ where: '.', problem: `cannot read the project folder: ${errText(e)}` }]);
  }

  const candidates: { name: string; number: number }[] = [];
  let malformed = 0;
  for (const entry of entries) {
    const name = entry.name;
    if (name.startsWith('.') || name === OUTPUT_DIR) continue;
    if (!isDirectory(path.join(projectDir, name), entry)) continue;
    const m = LAYER_DIR_PATTERN.exec(name);
    if (m) candidates.push({ name, number: Number(m[1]) });
    else if (/^\d/.test(name)) {
      malformed++;
      report(name, `name out of pattern: ${NAME_RULE}, e.g. 03_packages`);
    }
  }

  if (candidates.length === 0 && malformed === 0) {
    report('.', 'no layer folders: a project holds folders named NN_name (e.g. 01_base), built in numeric order; `vmlb new-layer NAME` makes one');
  }

  candidates.sort((a, b) => a.number - b.number || compare(a.name, b.name));
  const byNumber = new Map<number, string[]>();
  for (const c of candidates) byNumber.set(c.number, [...(byNumber.get(c.number) ?? []), c.name]);
  for (const [number, names] of byNumber) {
    if (names.length > 1) {
      report(names[0]!, `layer number ${number} is used by ${names.join(' and ')}; give each layer its own number`);
    }
  }

  const limit = limiter(IO_PARALLELISM);
  const specs = await Promise.all(candidates.map((c) => readLayer(projectDir, c.name, c.number, limit, report)));

  // The first layer makes the disk; no later one may.
  specs.forEach((spec, index) => {
    // Layers sharing the first number are already reported as duplicates; which one is first is moot.
    if (!spec || (index > 0 && spec.number === candidates[0]!.number)) return;
    const first = index === 0;
    if (first && !(spec.kind === 'base-image' || spec.kind === 'create-disk')) {
      report(spec.name, `the first layer must be a base-image or a create-disk (found ${spec.kind}: there is no disk yet for it to work on)`);
    }
    if (!first && (spec.kind === 'base-image' || spec.kind === 'create-disk')) {
      report(spec.name, `a ${spec.kind} must be the first layer (it makes the disk), but ${candidates[0]!.name} comes before it`);
    }
  });

  if (problems.length > 0) {
    problems.sort((a, b) => compare(a.where, b.where));
    throw new ProjectError(projectDir, problems);
  }
  return { dir: projectDir, layers: specs as LayerSpec[] };
}

/** Read one layer folder; problems go to `report`, and null comes back when there is no usable entry. */
async function readLayer(
  projectDir: string,
  name: string,
  number: number,
  limit: Limiter,
  report: (where: string, problem: string) => void,
): Promise<LayerSpec | null> {
  const dir = path.join(projectDir, name);
  // The scan reads the entry's content on its way, so the entry costs no extra system calls.
  const scan = scanFolder(dir, name, limit, report, (rel) => (LAYER_KINDS as readonly string[]).includes(rel));
  const spec = scan.top ? readEntry(scan, dir, name, number, report) : null;
  const files = await scan.files;
  if (spec) spec.files = files;
  return spec;
}

function readEntry(
  scan: FolderScan,
  dir: string,
  name: string,
  number: number,
  report: (where: string, problem: string) => void,
): LayerSpec | null {
  const top = scan.top ?? [];
  const entries = top.filter((e) => (LAYER_KINDS as readonly string[]).includes(e.name));
  if (entries.length === 0) {
    const near = top.map((e) => e.name).filter((n) => LAYER_KINDS.some((k) => n.startsWith(`${k}.`)));
    const hint = near.length > 0 ? ` (found ${near.join(', ')}: the entry has no extension)` : '';
    report(name, `no entry script: a layer folder holds exactly one of ${LAYER_KINDS.join(', ')}${hint}`);
    return null;
  }
  if (entries.length > 1) {
    report(name, `more than one entry script (${entries.map((e) => e.name).join(', ')}): a layer folder holds exactly one`);
    return null;
  }

  const dirent = entries[0]!;
  const kind = dirent.name as LayerKind;
  const entry = path.join(dir, kind);
  const rel = `${name}/${kind}`;
  if (!dirent.isFile()) {
    const what = dirent.isSymbolicLink() ? 'a symlink' : dirent.isDirectory() ? 'a folder' : 'not a regular file';
    report(rel, `${kind} is ${what}: the entry ${kind === 'base-image' ? 'file' : 'script'} must be a regular file`);
    return null;
  }

  let executable: boolean;
  let text: string;
  try {
    const kept = scan.kept.get(kind);
    if (kept) {
      executable = kept.executable;
      text = kept.content.toString('utf8');
    } else {
      // Not kept by the scan: too big to read inline, or it could not be read (then this throws).
      executable = (statSync(entry).mode & 0o100) !== 0;
      text = readFileSync(entry, 'utf8');
    }
  } catch (e) {
    report(rel, `cannot read ${kind}: ${errText(e)}`);
    return null;
  }
  if (SCRIPT_KINDS.has(kind) && !executable) report(rel, `not executable: chmod +x ${rel}`);

  const { hints, problems } = parseHints(text, kind);
  for (const p of problems) report(rel, p);
  const spec: LayerSpec = { name, number, dir, kind, entry, hints, files: [] };
  if (kind === 'base-image') {
    const parsed = parseBaseImage(text, dir);
    for (const p of parsed.problems) report(rel, p);
    if (parsed.source) spec.baseImage = parsed.source;
  }
  return spec;
}

function isDirectory(abs: string, entry: Dirent): boolean {
  if (entry.isDirectory()) return true;
  if (!entry.isSymbolicLink()) return false;
  // A symlinked layer folder (shared between projects) counts as a folder; its files are read through it.
  try {
    return statSync(abs).isDirectory();
  } catch {
    return false;
  }
}

import { createHash } from 'node:crypto';
import {
  closeSync,
  constants,
  fstatSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  statSync,
  type Dirent,
} from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { ProjectError, type ProjectProblem } from './errors.js';
import { parseHints } from './hints.js';
import { LAYER_KINDS, type BaseImageSource, type ImageProject, type LayerFile, type LayerKind, type LayerSpec } from './types.js';

/** `NN_name`: two or more digits, an underscore, a name. */
export const LAYER_DIR_PATTERN = /^(\d{2,})_([A-Za-z0-9][A-Za-z0-9._-]*)$/;

/** The output folder `vmlb build` writes into the project; never a layer. */
export const OUTPUT_DIR = 'build';

/** How many big files are hashed at once across the whole project. */
const IO_PARALLELISM = 8;

/**
 * Files up to this size are read and hashed inline with synchronous calls; bigger ones are
 * streamed through the thread pool, IO_PARALLELISM at once. A round trip through libuv's pool
 * costs ~0.1 ms per call, several times what reading a small file costs: a 20-layer project
 * of small files loads in ~3 ms this way, against ~25 ms with an async call per step.
 */
const SMALL_FILE = 64 * 1024;

/** Big files are hashed in chunks of this size. */
const CHUNK = 1024 * 1024;

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

const BASE_IMAGE_KEYS: Record<string, 'source' | 'sha256'> = { source: 'source', url: 'source', path: 'source', sha256: 'sha256' };

/**
 * A `base-image` file: `source: PATH_OR_URL` (or `url:`, `path:`) and `sha256: HEX`, each once;
 * `#` comments and blank lines are ignored. A relative path is resolved against the layer
 * folder; an http(s) URL is kept as written. `sha256: TODO …` (what `vmlb migrate` writes
 * when it cannot fetch the image to hash it) is refused, saying what to put there.
 */
export function parseBaseImage(text: string, layerDir: string): { source?: BaseImageSource; problems: string[] } {
  const problems: string[] = [];
  const found: Partial<Record<'source' | 'sha256', { value: string; line: number; as: string }>> = {};
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^([A-Za-z0-9_-]+)\s*:\s*(.*)$/.exec(line);
    if (!m) {
      problems.push(`line ${i + 1}: expected "field: value" (source: PATH_OR_URL or sha256: HEX), found "${line}"`);
      return;
    }
    const as = m[1]!.toLowerCase();
    const field = BASE_IMAGE_KEYS[as];
    if (!field) {
      problems.push(`line ${i + 1}: unknown field "${m[1]}:"; a base-image file has source: (or url:, path:) and sha256:`);
      return;
    }
    const value = unquote(m[2]!.trim());
    const previous = found[field];
    if (previous) {
      problems.push(`line ${i + 1}: ${as}: given twice (first as ${previous.as}: on line ${previous.line}); keep one`);
      return;
    }
    found[field] = { value, line: i + 1, as };
  });

  const src = found.source;
  const sum = found.sha256;
  let location: string | undefined;
  if (!src) problems.push('source: is missing; add "source: PATH_OR_URL" (a path relative to this folder, or an http(s) URL)');
  else if (src.value === '') problems.push(`line ${src.line}: ${src.as}: is empty; expected a path or an http(s) URL`);
  else if (/^https?:\/\//i.test(src.value)) location = src.value;
  else if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(src.value)) {
    problems.push(`line ${src.line}: ${src.as}: "${src.value}" is neither a path nor an http(s) URL`);
  } else location = path.resolve(layerDir, src.value);

  let sha256: string | undefined;
  if (!sum) problems.push('sha256: is missing; add "sha256: HEX" (64 hex digits, as printed by sha256sum)');
  else if (/^TODO\b/i.test(sum.value)) {
    const of = src && src.value !== '' ? ` of ${src.value}` : ' of the image source: names';
    problems.push(`line ${sum.line}: sha256: is still a TODO; replace the line with "sha256: HEX", the 64 hex digits sha256sum prints${of}`);
  } else if (!/^[0-9a-fA-F]{64}$/.test(sum.value)) {
    problems.push(`line ${sum.line}: sha256: expected 64 hex digits (as printed by sha256sum), found "${sum.value}"`);
  } else sha256 = sum.value.toLowerCase();

  return location !== undefined && sha256 !== undefined ? { source: { location, sha256 }, problems } : { problems };
}

interface FolderScan {
  /** The folder's top-level entries; null when it could not be read (already reported). */
  top: Dirent[] | null;
  /** Content and executable bit of the small regular files the caller asked to keep. */
  kept: Map<string, { executable: boolean; content: Buffer }>;
  /** Every file, sorted by path; settles when the big files are hashed. */
  files: Promise<LayerFile[]>;
}

/**
 * Every file under a layer folder, recursively, sorted by path (plain string order), with
 * '/'-separated paths relative to the folder. Regular files are hashed by content, symlinks by
 * their target text (never followed). Folders are not listed themselves, so an empty folder
 * does not count towards the key: git does not keep empty folders either, and a key must not
 * differ between a checkout and the tree it came from. Fifos, sockets and devices are problems.
 *
 * The walk and the small files are synchronous (see SMALL_FILE); only big files are awaited.
 */
function scanFolder(
  dir: string,
  layerName: string,
  limit: Limiter,
  report: (where: string, problem: string) => void,
  keep: (relPath: string) => boolean,
): FolderScan {
  const out: LayerFile[] = [];
  const big: Promise<void>[] = [];
  const kept: FolderScan['kept'] = new Map();
  let top: Dirent[] | null = null;

  const walk = (rel: string): void => {
    let entries: Dirent[];
    try {
      entries = readdirSync(rel === '' ? dir : path.join(dir, rel), { withFileTypes: true });
    } catch (e) {
      if (rel === '') report(layerName, `cannot read the layer folder: ${errText(e)}`);
      else report(`${layerName}/${rel}`, `cannot read folder: ${errText(e)}`);
      return;
    }
    if (rel === '') top = entries;
    for (const entry of entries) {
      const relPath = rel === '' ? entry.name : `${rel}/${entry.name}`;
      const abs = path.join(dir, relPath);
      const where = `${layerName}/${relPath}`;
      const fail = (e: unknown) => report(where, `cannot read: ${errText(e)}`);
      const vanished = () => report(where, 'changed into something other than a file while being read; try again');
      try {
        if (entry.isDirectory()) walk(relPath);
        else if (entry.isSymbolicLink()) {
          out.push({ path: relPath, type: 'symlink', executable: false, digest: sha256(readlinkSync(abs, { encoding: 'buffer' })) });
        } else if (entry.isFile()) {
          const small = readSmallFile(abs);
          if (small === null) vanished();
          else if (small.content) {
            out.push({ path: relPath, type: 'file', executable: small.executable, digest: sha256(small.content) });
            if (keep(relPath)) kept.set(relPath, { executable: small.executable, content: small.content });
          } else {
            const { executable } = small;
            big.push(
              limit(() => hashFile(abs)).then((digest) => {
                if (digest) out.push({ path: relPath, type: 'file', executable, digest });
                else vanished();
              }, fail),
            );
          }
        } else {
          report(where, `is a ${specialType(entry)}: a layer folder may hold only files, symlinks and folders`);
        }
      } catch (e) {
        fail(e);
      }
    }
  };
  walk('');
  const files = Promise.all(big).then(() => out.sort((a, b) => compare(a.path, b.path)));
  return { top, kept, files };
}

/**
 * A regular file's owner-executable bit and, when it is small, its content, from one open
 * descriptor (so the mode and the content are of the same file); null when it is not a
 * regular file (any more).
 */
function readSmallFile(abs: string): { executable: boolean; content: Buffer | null } | null {
  // O_NOFOLLOW and O_NONBLOCK: should the file have been swapped for a link or a fifo since the
  // folder was listed, fail or come back at once instead of following it or hanging.
  const fd = openSync(abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return null;
    const executable = (st.mode & 0o100) !== 0;
    if (st.size > SMALL_FILE) return { executable, content: null };
    // Ask for one byte more than fstat said, to notice a file that grew since (it is streamed
    // instead). One read usually returns the whole file; a short one is continued.
    const buf = Buffer.allocUnsafe(st.size + 1);
    let n = readSync(fd, buf, 0, buf.length, 0);
    for (let r = n; r > 0 && n < st.size; n += r) r = readSync(fd, buf, n, buf.length - n, n);
    return { executable, content: n <= st.size ? buf.subarray(0, n) : null };
  } finally {
    closeSync(fd);
  }
}

/** sha256 of a regular file's content, streamed; null when it is no longer a regular file. */
async function hashFile(abs: string): Promise<string | null> {
  const handle = await open(abs, 'r');
  try {
    if (!(await handle.stat()).isFile()) return null;
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      const { bytesRead } = await handle.read(buf, 0, CHUNK, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
    }
    return hash.digest('hex');
  } finally {
    await handle.close();
  }
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

type Limiter = <T>(task: () => Promise<T>) => Promise<T>;

/** Run at most `n` tasks at once; a finishing task hands its slot straight to the next waiter. */
function limiter(n: number): Limiter {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async (task) => {
    if (running < n) running++;
    else await new Promise<void>((resolve) => waiting.push(resolve));
    try {
      return await task();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else running--;
    }
  };
}

function specialType(entry: Dirent): string {
  if (entry.isFIFO()) return 'fifo';
  if (entry.isSocket()) return 'socket';
  if (entry.isBlockDevice()) return 'block device';
  if (entry.isCharacterDevice()) return 'character device';
  return 'special file';
}

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Plain code-unit order, the same on every host and locale. */
function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function unquote(v: string): string {
  return v.length >= 2 && (v[0] === '"' || v[0] === "'") && v.at(-1) === v[0] ? v.slice(1, -1) : v;
}

function errText(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err.code ? `${err.code} (${err.message})` : String(err?.message ?? e);
}

/**
 * What a project may not do when it comes from someone else (a fleet submission): name a host
 * path. A `# chroot-bind-mount` whose source is absolute or leads out of the project is one
 * problem each, naming the layer, the line's hint and what to use instead. Locally, host binds
 * are the user's own business and allowed.
 */
export function hostPathProblems(project: ImageProject): ProjectProblem[] {
  const problems: ProjectProblem[] = [];
  for (const layer of project.layers) {
    for (const b of layer.hints.bindMounts) {
      const why = hostBindReason(project.dir, layer.dir, b.source);
      if (why) {
        problems.push({
          where: layer.name,
          problem: `# chroot-bind-mount ${b.source} ${b.target}: a submitted project names no host path (${why}); bind a folder of the project, or keep a folder across builds with # cache-mount ${b.target}`,
        });
      }
    }
  }
  return problems;
}

/** Why a `# chroot-bind-mount` source names a host path (absolute, or out of the project), or null. */
export function hostBindReason(projectDir: string, layerDir: string, source: string): string | null {
  if (path.isAbsolute(source)) return 'the source is absolute';
  const resolved = path.resolve(layerDir, source);
  return resolved === projectDir || resolved.startsWith(projectDir + path.sep) ? null : 'the source leads out of the project';
}

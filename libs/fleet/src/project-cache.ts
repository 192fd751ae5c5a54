import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, stat, utimes } from 'node:fs/promises';
import path from 'node:path';
import { StoreError, exec, type SharedStore } from '@vmlb/layer-engine';
import { storePaths } from './names.js';

/**
 * Projects as the scheduler stored them (`projects/<sha256>.tar.gz`), fetched once per worker
 * and kept by hash in a cache folder, then extracted for each job into a folder of its own
 * (a host script may write to its layer folder: no job sees another's changes).
 */

const SHA_RE = /^[0-9a-f]{64}$/;

/** The project's .tar.gz in `cacheDir`, fetched from the shared store unless it is there. */
export async function fetchProject(shared: SharedStore, cacheDir: string, sha256: string, o: { signal?: AbortSignal } = {}): Promise<string> {
  if (!SHA_RE.test(sha256)) throw new StoreError(`"${sha256}" is not a project hash`);
  await mkdir(cacheDir, { recursive: true });
  const file = path.join(cacheDir, `${sha256}.tar.gz`);
  try {
    await stat(file);
    const now = new Date();
    await utimes(file, now, now);
    return file;
  } catch {
    /* not cached yet */
  }
  const got = await shared.getFile(storePaths.project(sha256), file, { signal: o.signal });
  if (!got) throw new StoreError(`the project ${sha256} is not in the shared store ${shared.url} (${storePaths.project(sha256)})`);
  if (got.sha256 !== sha256) {
    await rm(file, { force: true });
    // Retryable: a second download may be whole.
    throw new StoreError(`the project ${storePaths.project(sha256)} in ${shared.url} does not match its name (its sha256 is ${got.sha256})`, { retryable: true });
  }
  return file;
}

/**
 * Extracts a project tarball into a new folder under `parent` and returns it. The scheduler
 * has checked every entry when it accepted the upload (no absolute paths, no `..`, no device
 * nodes); owners are not kept.
 */
export async function extractProject(tarball: string, parent: string, o: { signal?: AbortSignal } = {}): Promise<string> {
  const dir = path.join(parent, `project-${randomBytes(6).toString('hex')}`);
  await mkdir(dir, { recursive: true });
  try {
    await exec(['tar', '-xzf', tarball, '-C', dir, '--no-same-owner'], { signal: o.signal });
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
  return dir;
}

/** Removes cached projects not used for `maxAgeMs`; returns how many. */
export async function pruneProjects(cacheDir: string, maxAgeMs: number): Promise<number> {
  let n = 0;
  const cutoff = Date.now() - maxAgeMs;
  for (const f of await readdir(cacheDir).catch(() => [] as string[])) {
    const file = path.join(cacheDir, f);
    const st = await stat(file).catch(() => null);
    if (st && st.mtimeMs < cutoff) {
      await rm(file, { recursive: true, force: true });
      n++;
    }
  }
  return n;
}

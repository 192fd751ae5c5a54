import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { readLockOwner } from '../disk/lock-files.js';
import { isRunning } from '../host/process-identity.js';
import { activeKeys } from './active-builds.js';
import { KEY_PATTERN } from './layer-manifest.js';
import { pidAlive } from './pid-alive.js';

/**
 * What a killed or failed run leaves in a store: half-built blobs, and files no layer owns.
 * A blob being built sits in layers/ as `.tmp-<key>.<pid>.<rand>.qcow2` (LocalStore.tempBlobPath).
 */
const TMP_RE = /^\.tmp-([0-9a-f]{64})\.(\d+)\.([0-9a-f]+)\.qcow2(\.raw)?$/;
/** A manifest or seal being written (writeJsonAtomic) by process $2. */
const JSON_TMP_RE = /^(.+)\.json\.(\d+)\.[0-9a-f]+\.tmp$/;

/**
 * The lock a publish holds (`claims/<key>.publish`): while the blob has its name and no
 * manifest yet, it says the blob is not debris.
 */
export function publishLockPath(root: string, key: string): string {
  return path.join(root, 'claims', `${key}.publish`);
}

/** Removes temporary blobs whose building process is gone (a killed run's debris). */
export async function sweepTemp(layersDir: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(layersDir).catch(() => [] as string[])) {
    const m = TMP_RE.exec(f);
    if (m && !pidAlive(Number(m[2]))) {
      await rm(path.join(layersDir, f), { force: true });
      await rm(path.join(layersDir, f.replace(/\.qcow2$/, '.log')), { force: true });
      n++;
    }
  }
  return n;
}

/**
 * Debris no layer owns: a blob or log without a manifest (a publish that crashed or ran out
 * of space between its steps), a seal without a manifest, a manifest half written by a
 * process that is gone. A blob without a manifest counts only when no process is
 * publishing it (its publish lock) and no local build in progress names its key.
 */
export async function findOrphans(root: string, layersDir: string): Promise<Array<{ file: string; bytes: number }>> {
  const out: Array<{ file: string; bytes: number }> = [];
  const names = await readdir(layersDir).catch(() => [] as string[]);
  const have = new Set(names.filter((n) => n.endsWith('.json') && KEY_PATTERN.test(n.slice(0, -5))).map((n) => n.slice(0, -5)));
  const active = await activeKeys(root);
  const add = async (file: string) => {
    const st = await stat(file).catch(() => null);
    if (st) out.push({ file, bytes: st.size });
  };
  const publishing = async (key: string) => {
    const owner = await readLockOwner(publishLockPath(root, key));
    return owner !== null && (await isRunning(owner));
  };
  // A layer's files (layers/: blob, log; seals/: its seal) and the temp manifests beside them.
  const seals = path.join(root, 'seals');
  const dirs: Array<[string, string[], RegExp]> = [
    [layersDir, names, /^([0-9a-f]{64})\.(qcow2|log)$/],
    [seals, await readdir(seals).catch(() => [] as string[]), /^([0-9a-f]{64})\.json$/],
  ];
  for (const [dir, files, owned] of dirs) {
    for (const n of files) {
      const m = owned.exec(n);
      if (m && !have.has(m[1]!) && !active.has(m[1]!) && !(await publishing(m[1]!))) await add(path.join(dir, n));
      const t = JSON_TMP_RE.exec(n);
      if (t && !pidAlive(Number(t[2]))) await add(path.join(dir, n));
    }
  }
  return out;
}

import { existsSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describeSweep, isRunning, sweep, type ProcessIdentity } from '@vmlb/layer-engine';
import { say } from './dev-fleet-parts.js';

/**
 * The fleet's folder (VMLB_FLEET_DIR, or a temporary one): which launcher uses it, and the
 * clean-up of temporary folders whose launcher was killed before it could remove them.
 */

/** The file in the fleet's folder that names the launcher using it. */
export const LAUNCHER_FILE = 'launcher.json';
/** A temporary fleet folder's name starts so, in the OS temp dir. */
export const TEMP_PREFIX = 'vmlb-fleet-';

/** The launcher a fleet folder names, or null when it names none. */
export async function readLauncher(dir: string): Promise<ProcessIdentity | null> {
  try {
    const j = JSON.parse(await readFile(path.join(dir, LAUNCHER_FILE), 'utf8')) as ProcessIdentity;
    return typeof j.pid === 'number' && typeof j.startTime === 'string' ? j : null;
  } catch {
    return null;
  }
}

/** Mount points at or under dir. */
async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m === dir || m.startsWith(`${dir}/`));
}

/**
 * The state of a fleet whose launcher was killed (SIGKILL) in a temporary folder: what its
 * workers left attached is swept (the engine's start-up sweep, for each worker's run folder),
 * then the folder is removed. Folders of launchers that still run, and those that name none, are
 * left alone.
 */
export async function sweepKilledFleets(): Promise<void> {
  const tmp = os.tmpdir();
  let names: string[];
  try {
    names = (await readdir(tmp)).filter((n) => n.startsWith(TEMP_PREFIX));
  } catch {
    return;
  }
  for (const name of names) {
    const dir = path.join(tmp, name);
    const owner = await readLauncher(dir);
    if (!owner || (await isRunning(owner))) continue;
    const notes: string[] = [];
    const problems: string[] = [];
    const prevRunDir = process.env.VMLB_RUN_DIR;
    try {
      for (const w of (await readdir(dir)).filter((n) => /^worker-\d+$/.test(n))) {
        const runDir = path.join(dir, w, 'run');
        if (!existsSync(runDir)) continue;
        process.env.VMLB_RUN_DIR = runDir;
        const report = await sweep();
        const line = describeSweep(report);
        if (line) notes.push(`${w}: ${line}`);
        problems.push(...report.errors);
      }
    } catch (e) {
      problems.push((e as Error).message);
    } finally {
      if (prevRunDir === undefined) delete process.env.VMLB_RUN_DIR;
      else process.env.VMLB_RUN_DIR = prevRunDir;
    }
    const mounted = await mountsUnder(dir);
    if (problems.length || mounted.length) {
      say(`left the state of a killed fleet in ${dir}: ${[...problems, ...mounted.map((m) => `${m} is still mounted`)].join('; ')}`);
      continue;
    }
    await rm(dir, { recursive: true, force: true });
    say(`removed the state of a killed fleet (launcher pid ${owner.pid}) in ${dir}${notes.length ? `; ${notes.join('; ')}` : ''}`);
  }
}

import { readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { writeJsonAtomic } from './atomic-json.js';
import { sha256Text } from './file-digest.js';

/**
 * A store's pins (`pins/<id>.json`): an output (build/image.qcow2) and the chain it is an
 * overlay on, which eviction must not remove while the output exists.
 */
export interface StorePin {
  output: string;
  chain: string[];
  at: string;
}

function pinFile(root: string, output: string): string {
  return path.join(root, 'pins', `${sha256Text(path.resolve(output)).slice(0, 24)}.json`);
}

export async function readPin(root: string, output: string): Promise<StorePin | undefined> {
  try {
    return JSON.parse(await readFile(pinFile(root, output), 'utf8')) as StorePin;
  } catch {
    return undefined;
  }
}

export async function writePin(root: string, output: string, chain: string[]): Promise<void> {
  await writeJsonAtomic(pinFile(root, output), { output: path.resolve(output), chain, at: new Date().toISOString() } satisfies StorePin);
}

export async function removePin(root: string, output: string): Promise<void> {
  await rm(pinFile(root, output), { force: true });
}

/** Chains that outputs still on disk reference; pins whose output is gone are dropped. */
export async function pinnedKeys(root: string): Promise<Set<string>> {
  const keep = new Set<string>();
  const dir = path.join(root, 'pins');
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    if (!f.endsWith('.json')) continue;
    try {
      const p = JSON.parse(await readFile(path.join(dir, f), 'utf8')) as StorePin;
      await stat(p.output);
      for (const k of p.chain) keep.add(k);
    } catch {
      await rm(path.join(dir, f), { force: true });
    }
  }
  return keep;
}

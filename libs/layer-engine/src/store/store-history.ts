import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeJsonAtomic } from './atomic-json.js';
import { sha256Text } from './file-digest.js';
import { KEY_PATTERN } from './layer-manifest.js';
import type { LayerInputs } from '../types.js';

/**
 * A store's history (`history/<project>/<layer name>.json`, project = a hash of its path): the
 * inputs and key of the last build of each layer name, so `explain` can say what changed and
 * `diff 03_users …` can name a layer by its folder.
 */
function historyFile(root: string, projectDir: string, layerName: string): string {
  return path.join(root, 'history', sha256Text(path.resolve(projectDir)).slice(0, 16), `${layerName}.json`);
}

async function readHistory(root: string, projectDir: string, layerName: string): Promise<{ inputs?: LayerInputs; key?: unknown } | undefined> {
  try {
    return JSON.parse(await readFile(historyFile(root, projectDir, layerName), 'utf8')) as { inputs?: LayerInputs; key?: unknown };
  } catch {
    return undefined;
  }
}

export async function lastInputs(root: string, projectDir: string, layerName: string): Promise<LayerInputs | undefined> {
  return (await readHistory(root, projectDir, layerName))?.inputs;
}

/** The key of the last build of a layer name in a project, if any. */
export async function lastBuiltKey(root: string, projectDir: string, layerName: string): Promise<string | undefined> {
  const key = (await readHistory(root, projectDir, layerName))?.key;
  return typeof key === 'string' && KEY_PATTERN.test(key) ? key : undefined;
}

export async function recordInputs(root: string, projectDir: string, layerName: string, key: string, inputs: LayerInputs): Promise<void> {
  const file = historyFile(root, projectDir, layerName);
  await mkdir(path.dirname(file), { recursive: true });
  await writeJsonAtomic(file, { project: path.resolve(projectDir), layer: layerName, key, inputs, at: new Date().toISOString() });
}

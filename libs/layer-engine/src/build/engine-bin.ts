import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/**
 * The engine's own helper scripts (vmlb-run-layer, vmlb-partition): `bin/` beside `src/` or
 * `dist/`; from a bundle (the CLI is bundled for a fast start) found through the package.
 */
export const ENGINE_BIN_DIR = findBinDir();

function findBinDir(): string {
  const beside = fileURLToPath(new URL('../../bin/', import.meta.url));
  if (existsSync(path.join(beside, 'vmlb-run-layer'))) return beside;
  const pkg = createRequire(import.meta.url).resolve('@vmlb/layer-engine/package.json');
  return path.join(path.dirname(pkg), 'bin') + path.sep;
}

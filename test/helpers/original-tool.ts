/**
 * Layer scripts written for the original vm-layer-builder (scons + qemu-nbd), as its users
 * wrote them: test/original-tool.test.ts migrates and builds them, test/nbd-vm runs the
 * modify-disk as it is on the nbd backend.
 */
import { readFileSync } from 'node:fs';

/**
 * The original's modify-disk: makes the overlay itself, attaches it with qemu-nbd and grows
 * partition 1 — vmlb migrate's own fixture, with an overlay of 128M (not 30G) to stay quick.
 */
export const GROW = readFileSync(new URL('../../apps/cli/src/migrate/fixtures/original-modify-disk.sh', import.meta.url), 'utf8').replace(' 30G\n', ' 128M\n');

export const COPY = `#!/bin/sh
# nocache (this hint tells vm-layer-builder to not cache the layer)
cp -a /mnt/files/. /
`;

/** A script with the hint that runs it to the original's contract: `# args source target device` after its shebang. */
export function withArgsHint(script: string): string {
  const [shebang, ...rest] = script.split('\n');
  return [shebang, '# args source target device', ...rest].join('\n');
}

import { VmlbError } from '@vmlb/layer-engine';

/** Commands that attach disks and make namespaces say in one line that they need root, before anything is touched. */
export function needsRoot(command: string): void {
  if (process.getuid?.() !== 0) {
    throw new VmlbError(
      'NEEDS_ROOT',
      `${command} needs root: it attaches disks (loop devices, FUSE, mounts) and makes namespaces for the layer sandbox; run it as root (e.g. sudo vmlb ${command} …)`,
    );
  }
}

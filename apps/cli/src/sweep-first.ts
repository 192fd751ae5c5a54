import { describeSweep, sweep } from '@vmlb/layer-engine';

/** What a killed run left attached (loop devices, FUSE exports, mounts) is released before a command attaches its own. */
export async function sweepFirst(): Promise<void> {
  const line = describeSweep(await sweep());
  if (line) process.stderr.write(`vmlb: cleaned up after an interrupted run: ${line}\n`);
}

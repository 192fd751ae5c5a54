import { readFile, rm } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { exec } from '../host/exec.js';
import { debug } from '../debug.js';

/** How long the kernel may take to auto-clear a loop device after its last unmount. */
const AUTOCLEAR_WAIT_MS = 5000;

/** A sysfs file's text, or null when it is not there (the device is gone). */
async function readSys(file: string): Promise<string | null> {
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch {
    return null;
  }
}

/**
 * The run's root (and `# chroot-mount`) filesystems were mounted through mount(8)'s own loop
 * devices, which the kernel auto-clears after the namespace's unmount, asynchronously. Wait
 * for that (usually a few ms) so that nothing the run made is left when the disk is released;
 * a device that lingers past the wait, still backed by the run's (now unnameable) file, is
 * detached here. Loop devices the engine made itself (not auto-clear) are its own business.
 */
export async function waitForAutoclearLoops(listFile: string): Promise<void> {
  const text = await readSys(listFile);
  await rm(listFile, { force: true });
  if (!text) return;
  const devices = text.split(/\s+/).filter((d) => /^\/dev\/loop\d+$/.test(d));
  const deadline = performance.now() + AUTOCLEAR_WAIT_MS;
  for (const dev of devices) {
    const sys = `/sys/block/${path.basename(dev)}/loop`;
    if ((await readSys(`${sys}/autoclear`)) !== '1') continue;
    for (;;) {
      const back = await readSys(`${sys}/backing_file`);
      // Gone, or already reused by someone else for another file: either way not ours now.
      if (back === null || (back !== '/' && !back.startsWith('/ ') && !back.includes('/fuse/'))) break;
      if (performance.now() > deadline) {
        debug(`${dev} was not auto-cleared in ${AUTOCLEAR_WAIT_MS} ms; detaching it`);
        await exec(['losetup', '--detach', dev], { reject: false });
        break;
      }
      await sleep(2);
    }
  }
}

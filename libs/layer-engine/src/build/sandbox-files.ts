import { mkdir, rm, writeFile } from 'node:fs/promises';
import { VmlbError } from '../errors.js';
import { SANDBOX_MOUNT_HELPER, SANDBOX_STAGE, sandboxArgs } from './sandbox.js';
import { ENGINE_BIN_DIR } from './engine-bin.js';
import type { RunBase } from './script-runner.js';

/** A sandboxed run's scratch files beside its mount point; vmlb-run-layer names them the same way. */
export function runScratch(rootMount: string) {
  return {
    status: `${rootMount}.bwrap-status`,
    netLog: `${rootMount}.net.log`,
    args: `${rootMount}.sandbox`,
    routes: `${rootMount}.routes`,
    resolv: `${rootMount}.resolv`,
    /** The original contract's qemu-nbd (see "The original's qemu-nbd" in vmlb-run-layer). */
    nbdLog: `${rootMount}.nbd.log`,
    requestOut: `${rootMount}.request.out`,
  };
}

/** The stage's mount point exists (made once per process). */
let stageReady: Promise<void> | undefined;

/** Writes what vmlb-run-layer's sandbox reads (bwrap's arguments, routes, resolv.conf); returns its variables. */
export async function writeSandboxFiles(o: RunBase, scratch: ReturnType<typeof runScratch>): Promise<Record<string, string>> {
  const sb = o.sandbox!;
  const args = await sandboxArgs({
    mode: o.mode,
    layerDir: o.layerDir,
    hostRoot: o.mode === 'host' && o.root !== undefined,
    engineBinDir: ENGINE_BIN_DIR.replace(/\/+$/, ''),
    readOnlyFiles: sb.readOnlyFiles,
    writableDirs: sb.writableDirs,
    devices: sb.devices,
    deviceLinks: sb.deviceLinks,
    env: o.env,
    newSession: o.newSession,
  });
  stageReady ??= mkdir(SANDBOX_STAGE, { recursive: true, mode: 0o755 }).then(() => undefined);
  await stageReady;
  for (const f of [...sb.readOnlyFiles, ...sb.devices, ...(sb.writableDirs ?? [])]) {
    if (/\s/.test(f)) throw new VmlbError('BAD_MOUNT', `a path given to the sandbox may not contain white space: ${f}`);
  }
  for (const a of args) if (a.includes('\0')) throw new VmlbError('BAD_ENV', `the layer's environment cannot hold a NUL byte (${a.slice(0, 40)}…)`);
  await Promise.all([
    writeFile(scratch.args, args.map((a) => `${a}\0`).join('')),
    writeFile(scratch.routes, sb.routes.map((r) => `${r}\n`).join('')),
    sb.resolvConf === null ? rm(scratch.resolv, { force: true }) : writeFile(scratch.resolv, sb.resolvConf),
  ]);
  return {
    VMLB_SANDBOX: '1',
    VMLB_SANDBOX_UID: String(sb.uidBase),
    VMLB_SANDBOX_NET: sb.network ? 'on' : 'none',
    VMLB_SANDBOX_ROUTES: scratch.routes,
    VMLB_SANDBOX_ARGS: scratch.args,
    VMLB_SANDBOX_RESOLV: sb.resolvConf === null ? '/etc/resolv.conf' : scratch.resolv,
    VMLB_SANDBOX_DEVICES: sb.devices.join(' '),
    VMLB_SANDBOX_FILES: sb.readOnlyFiles.join(' '),
    VMLB_SANDBOX_DIRS: (sb.writableDirs ?? []).join(' '),
    VMLB_SANDBOX_STAGE: SANDBOX_STAGE,
    VMLB_ENGINE_BIN: ENGINE_BIN_DIR,
    VMLB_SANDBOX_MOUNT: SANDBOX_MOUNT_HELPER,
  };
}

import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { VmlbError, formatBytes, layerSandbox, proxyEnv, runInLayer, startupSweep, type BackendPreference, type LayerFailedError, type LayerShellResult } from '@vmlb/layer-engine';
import { interruptSignal, sandboxDenyFromEnv, sandboxFrom, storeFrom } from './cli-options.js';
import { CommandExit, EXIT_NOT_STARTED, UsageError } from './command-exit.js';
import { resolveImageArg } from './image-arg.js';
import { needsRoot } from './needs-root.js';
import { resolveState, type Resolved } from './session-state.js';

/**
 * A session of `vmlb shell` or `vmlb run`: a shell or a command in a layer's root filesystem as
 * its build-layer script saw it (the engine's runInLayer: same runner, sandbox, environment and
 * mounts, on a throw-away overlay), or in a failed layer's kept overlay (`--failed`, `vmlb build
 * --shell-on-failure`). Its command's exit status becomes vmlb's.
 */

export interface SessionOptions {
  project: string;
  projectGiven: boolean;
  store?: string;
  before?: string;
  failed?: boolean;
  keep?: string;
  compare?: string;
  backend: BackendPreference;
  sandbox?: boolean;
  json?: boolean;
}

/** Resolves, sweeps, opens the session, and says what it kept. Returns the session's result. */
export async function session(ref: string | undefined, command: string[] | undefined, o: SessionOptions, who: 'shell' | 'run'): Promise<{ r: LayerShellResult; resolved: Resolved }> {
  needsRoot(who);
  const store = storeFrom(o);
  await store.init();
  const projectDir = path.resolve(o.project);
  if (o.keep && existsSync(o.keep)) throw new UsageError(`--keep ${o.keep}: the file exists; name a new file`);
  const resolved = await resolveState({ ref, before: o.before, failed: o.failed, projectDir, projectGiven: o.projectGiven, store });
  const compare = o.compare === undefined ? undefined : await resolveImageArg(o.compare, { projectDir, store });
  // As vmlb build decides it (--no-sandbox, VMLB_SANDBOX=0, VMLB_SANDBOX_DENY).
  const sandbox = await layerSandbox({ enabled: sandboxFrom(o), deny: sandboxDenyFromEnv() }, store);
  const signal = interruptSignal();
  // What a killed run left (attachments, half-built blobs, killed sessions' folders), as vmlb build sweeps it.
  const swept = await startupSweep(store);
  if (swept) process.stderr.write(`vmlb: ${swept}\n`);
  const terminal = command === undefined && process.stdin.isTTY === true && process.stdout.isTTY === true;
  const name = resolved.state.spec?.name ?? resolved.state.label;
  if (who === 'shell' && !o.json) {
    const cmp = compare ? `, ${compare.label} read-only at /compare` : '';
    const keep = o.keep ? `; --keep: what you change is kept in ${o.keep}` : '; what you change goes with it (--keep FILE keeps it)';
    process.stderr.write(`vmlb shell: ${resolved.state.label} on a throw-away overlay, ${resolved.mnt} read-only at /mnt${cmp}${sandbox ? '' : ' (no sandbox: as root of this host)'}; exit to leave${keep}\n`);
  }
  const release = resolved.keys.length ? await store.markActive(resolved.keys, `vmlb ${who} ${name}`) : async () => {};
  try {
    const r = await runInLayer({
      state: resolved.state,
      compare: compare && { image: compare.file, label: compare.label },
      command,
      terminal,
      keep: o.keep,
      sandbox,
      store,
      backend: o.backend,
      // An interactive shell gets this terminal's TERM and a prompt that says where it is (debian_chroot: Debian's bashrc shows it).
      env: terminal ? { TERM: process.env.TERM || 'xterm', PS1: `(vmlb ${name}) \\w # `, debian_chroot: `vmlb ${name}` } : undefined,
      passEnv: proxyEnv(process.env),
      signal,
    }).catch((e: unknown) => {
      // A command that is not in the image (or cannot be run): the shell's status for it.
      if (e instanceof VmlbError && e.code === 'COMMAND_NOT_STARTED') throw new CommandExit(EXIT_NOT_STARTED, e.message);
      throw e;
    });
    if (r.kept && !o.json) process.stderr.write(`vmlb ${who}: kept what you changed in ${r.kept.file} (${formatBytes(r.kept.bytes)}; a qcow2 overlay whose backing file is ${r.kept.backing})\n`);
    return { r, resolved };
  } finally {
    await release();
  }
}

function statusOf(r: LayerShellResult): number {
  if (r.exitCode !== undefined) return r.exitCode;
  return r.signal ? 128 + (signalNumber(r.signal) ?? 1) : 1;
}

function signalNumber(sig: string): number | undefined {
  return (os.constants.signals as Record<string, number>)[sig];
}

export function jsonResult(who: string, resolved: Resolved, r: LayerShellResult): string {
  const s = resolved.state;
  return JSON.stringify({ command: who, image: s.image, label: s.label, key: s.key ?? null, layer: s.spec?.name ?? null, exitCode: statusOf(r), seconds: r.seconds, kept: r.kept ?? null }) + '\n';
}

/** Ends the command with the session's status: its command's, or a shell's for a signal (128 + N). */
export function exitWithStatus(r: LayerShellResult): void {
  const status = statusOf(r);
  if (status !== 0) throw new CommandExit(status);
}

/** The words main.ts adds to a failed layer's line when its overlay was kept. */
export function failedOverlayHint(e: LayerFailedError): string {
  return e.keptOverlay ? `; its half-built overlay is kept: vmlb shell --failed opens it` : '';
}

/**
 * `vmlb build --shell-on-failure`: after a layer failed, on a terminal, a shell in its kept
 * overlay at once. The build's exit status stays its own (main.ts rethrows).
 */
export async function shellOnFailure(e: LayerFailedError, o: { projectDir: string; store?: string; backend?: BackendPreference; sandbox?: boolean }): Promise<void> {
  if (!e.keptOverlay) return;
  if (!(process.stdin.isTTY && process.stdout.isTTY)) {
    process.stderr.write('vmlb: --shell-on-failure: not on a terminal; vmlb shell --failed opens the failed layer later\n');
    return;
  }
  try {
    await session(e.layer, undefined, { project: o.projectDir, projectGiven: true, store: o.store, failed: true, backend: o.backend ?? 'auto', sandbox: o.sandbox }, 'shell');
  } catch (err) {
    process.stderr.write(`vmlb: --shell-on-failure: ${(err as Error).message}\n`);
  }
}

import { existsSync } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import { createRequire } from 'node:module';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { baseEnv, exec, spawnChild, HOST_PATH } from './exec.js';
import { VmlbError, tail } from './errors.js';
import { debug } from './debug.js';
import { CappedLogFile, ENGINE_OUTPUT_LIMITS, OutputLimiter, logMaxFromEnv, type OutputLimits } from './output-limits.js';
import { formatBytes } from './sizes.js';
import { SANDBOX_MOUNT_HELPER, SANDBOX_STAGE, sandboxArgs, type SandboxRun } from './sandbox.js';

/**
 * The engine's own helper scripts (vmlb-run-layer, vmlb-partition): `bin/` beside `src/` or
 * `dist/`; from a bundle (the CLI is bundled for a fast start) found through the package.
 */
export const ENGINE_BIN_DIR = findBinDir();

function findBinDir(): string {
  const beside = fileURLToPath(new URL('../bin/', import.meta.url));
  if (existsSync(path.join(beside, 'vmlb-run-layer'))) return beside;
  const pkg = createRequire(import.meta.url).resolve('@vmlb/layer-engine/package.json');
  return path.join(path.dirname(pkg), 'bin') + path.sep;
}

/** A mount(8) source and its options, e.g. an export file with `loop,offset=…,sizelimit=…`. */
export interface MountSource {
  source: string;
  options: string;
}

/** bind: a host path (bind-ro: read-only); cache: a kept `# cache-mount` folder; part: a partition of the disk. */
export type ExtraMount = { type: 'bind' | 'bind-ro' | 'cache'; source: string; target: string } | { type: 'part'; from: MountSource; target: string };

/** What a run of the layer runner needs, whatever it runs (see RunScriptOptions, RunAttachedOptions). */
export type RunBase = Pick<RunScriptOptions, 'mode' | 'layerDir' | 'script' | 'rootMount' | 'root' | 'mounts' | 'env' | 'sandbox' | 'args' | 'legacy'> & {
  /** bwrap's --new-session (no controlling terminal: nothing to push input into). @default true */
  newSession?: boolean;
};

export interface RunScriptOptions {
  /** chroot: build-layer, in the image's root; host: create-disk and modify-disk. */
  mode: 'chroot' | 'host';
  layerDir: string;
  /** The entry script's file name in layerDir. */
  script: string;
  /** Mount point for the root filesystem (a scratch folder; the mount is private to the run). */
  rootMount: string;
  /** The root filesystem; mounted at rootMount when given. */
  root?: MountSource;
  mounts?: ExtraMount[];
  /** The script's whole environment (it gets nothing else from the engine's). */
  env: Record<string, string>;
  timeoutMs?: number;
  signal?: AbortSignal;
  /** The script's output goes here, at most `logMax` bytes of it (the tail: see CappedLogFile). */
  logFile: string;
  /** @default VMLB_LOG_MAX, else 64 MiB */
  logMax?: number;
  /** What of the output onOutput gets (see OutputLimiter). @default ENGINE_OUTPUT_LIMITS */
  outputLimits?: OutputLimits;
  onOutput?: (chunk: string) => void;
  /** Run sandboxed (see sandbox.ts); unset: as the host's root (`--no-sandbox`). */
  sandbox?: SandboxRun;
  /** The script's arguments (words without white space); this tool's contracts give none. */
  args?: string[];
  /** A modify-disk of the original's contract: what the run serves its qemu-nbd requests with (see legacyModifyDisk). */
  legacy?: { device: string; target: string; image: string; source: string };
}

export interface RunScriptResult {
  exitCode: number | undefined;
  signal: string | undefined;
  timedOut: boolean;
  aborted: boolean;
  /** Set when the engine could not set the run up (a mount failed): not the script's fault. */
  setupError?: string;
  /** The layer's filesystem reported lost writes (syncfs failed after the script): nothing it wrote can be trusted. */
  writeError?: string;
  logTail: string;
  seconds: number;
}

/**
 * Runs a layer script in its own pid and mount namespaces (see bin/vmlb-run-layer), streaming
 * its output to the log file and the caller. A timeout or an abort SIGKILLs the namespace's
 * first process, which takes every process of the run and every mount it made with it.
 */
export async function runScript(o: RunScriptOptions): Promise<RunScriptResult> {
  const started = performance.now();
  const logMax = o.logMax ?? logMaxFromEnv();
  const { env, scriptEnv, statusFile, scratch } = await prepareRun(o);

  const log = await CappedLogFile.open(o.logFile, logMax);
  const limiter = new OutputLimiter(o.outputLimits ?? ENGINE_OUTPUT_LIMITS);
  let recent = '';
  // Back-pressure: while the log's disk is behind, the script's pipes are not read (it blocks on them).
  const pipes: NodeJS.ReadableStream[] = [];
  let paused = false;
  const onData = (decoder: StringDecoder) => (buf: Buffer) => {
    if (!log.write(buf) && !paused) {
      paused = true;
      for (const p of pipes) p.pause();
      log.onDrain(() => {
        paused = false;
        for (const p of pipes) p.resume();
      });
    }
    const s = decoder.write(buf);
    recent = (recent + s).slice(-16_384);
    const shown = limiter.feed(s);
    if (shown) o.onOutput?.(shown);
  };

  const child = spawnChild(runnerArgv(o, scriptEnv), { env: runnerEnv(o, env) });
  for (const p of [child.stdout, child.stderr]) {
    if (!p) continue;
    pipes.push(p);
    p.on('data', onData(new StringDecoder('utf8')));
  }

  // The namespace's first process is unshare's child; unshare --kill-child passes SIGKILL on.
  const { exitCode, signal, timedOut, aborted } = await awaitRunner(child, () => killGroup(child), o);
  const rest = limiter.end();
  if (rest) o.onOutput?.(rest);
  let logError: VmlbError | undefined;
  try {
    const cut = await log.close();
    if (cut.cutBytes > 0) o.onOutput?.(`… the layer's log keeps its last ${formatBytes(log.max)}: ${formatBytes(cut.cutBytes)} (${cut.cutLines} line${cut.cutLines === 1 ? '' : 's'}) before them were cut (VMLB_LOG_MAX)\n`);
  } catch (e) {
    logError = new VmlbError('LOG_WRITE', `could not write the layer's log ${o.logFile}: ${(e as Error).message}`, { cause: e });
  }
  const { setupError, writeError } = await finishRun(o.rootMount, statusFile, scratch);
  if (logError) throw logError;
  const seconds = (performance.now() - started) / 1000;
  debug(`script ${o.layerDir}/${o.script}: exit ${exitCode} signal ${signal} in ${seconds.toFixed(3)}s`);
  return { exitCode, signal, timedOut, aborted, setupError, writeError, logTail: tail(recent, 20), seconds };
}

/** What runScript and runAttached share before the run: the runner's variables, the script's environment, the sandbox's files. */
async function prepareRun(o: RunBase) {
  await mkdir(o.rootMount, { recursive: true });
  const statusFile = `${o.rootMount}.status`;
  await rm(statusFile, { force: true });
  const scratch = runScratch(o.rootMount);
  const env: Record<string, string> = {
    VMLB_MODE: o.mode,
    VMLB_LAYER_DIR: o.layerDir,
    VMLB_SCRIPT: o.script,
    VMLB_ROOT: o.rootMount,
    VMLB_STATUS_FILE: statusFile,
  };
  const scriptEnv = Object.entries(o.env).map(([k, v]) => `${k}=${v}`);
  if (o.root) {
    env.VMLB_ROOT_SRC = o.root.source;
    env.VMLB_ROOT_OPTS = o.root.options;
  }
  if (o.args?.length) {
    for (const a of o.args) if (a === '' || /\s/.test(a)) throw new VmlbError('BAD_MOUNT', `a script argument may not be empty or contain white space: "${a}"`);
    env.VMLB_SCRIPT_ARGS = o.args.join(' ');
  }
  if (o.legacy) {
    for (const f of Object.values(o.legacy)) if (/\s/.test(f)) throw new VmlbError('BAD_MOUNT', `a path given to the run may not contain white space: ${f}`);
    Object.assign(env, {
      VMLB_LEGACY_NBD: o.legacy.device,
      VMLB_LEGACY_OUT: path.dirname(o.legacy.target),
      VMLB_LEGACY_IMAGE: o.legacy.image,
      VMLB_LEGACY_SOURCE: o.legacy.source,
    });
  }
  if (o.mounts?.length) {
    const lines = o.mounts.map((m) => (m.type === 'part' ? ['part', m.from.source, m.from.options, m.target] : [m.type, m.source, '-', m.target]));
    for (const l of lines) {
      if (l.some((f) => /\s/.test(f))) throw new VmlbError('BAD_MOUNT', `mount paths may not contain white space: ${l[1]} ${l[3]}`);
    }
    env.VMLB_MOUNTS = lines.map((l) => l.join(' ')).join('\n');
  }
  if (o.sandbox) Object.assign(env, await writeSandboxFiles(o, scratch));
  return { env, scriptEnv, statusFile, scratch };
}

/** The runner's command line: pid 1 of its own pid namespace in a private mount namespace (see bin/vmlb-run-layer). */
function runnerArgv(o: RunBase, scriptEnv: string[]): string[] {
  return [
    'setpriv', '--pdeathsig', 'KILL', '--',
    // Sandboxed, the run names its helpers' namespaces by /proc/PID: a /proc of its own pid namespace.
    'unshare', '--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', ...(o.sandbox ? ['--mount-proc'] : []), '--',
    '/bin/sh', path.join(ENGINE_BIN_DIR, 'vmlb-run-layer'), ...scriptEnv,
  ];
}

function runnerEnv(o: RunBase, env: Record<string, string>): Record<string, string> {
  return { ...env, ...(o.sandbox?.partitionServer ?? {}), PATH: `${ENGINE_BIN_DIR}:${HOST_PATH}` };
}

/** What the runner said of its set-up and of the filesystem's writes, and its scratch files removed. */
async function finishRun(rootMount: string, statusFile: string, scratch: ReturnType<typeof runScratch>): Promise<{ setupError?: string; writeError?: string }> {
  let setupError: string | undefined;
  let writeError: string | undefined;
  try {
    const status = (await readFile(statusFile, 'utf8')).trim();
    if (status.startsWith('setup: ')) setupError = status.slice(7);
    if (status.startsWith('io: ')) writeError = status.slice(4);
  } catch {
    /* no status: the set-up went fine */
  }
  await rm(statusFile, { force: true });
  await rm(`${rootMount}.fstab`, { force: true });
  await waitForAutoclearLoops(`${rootMount}.loops`);
  // The sandbox's scratch files (its staged mounts went with the run's mount namespace).
  await Promise.all(Object.values(scratch).map((f) => rm(f, { recursive: true, force: true })));
  return { setupError, writeError };
}

export interface RunAttachedOptions extends RunBase {
  /** What runs in the image instead of the entry script (argv; the first word is looked up on the layer's PATH). */
  command: string[];
  /**
   * An interactive session: the run gets a terminal of its own (a pseudo-terminal that
   * script(1) relays to this one, so that whatever the sandbox pushes into its terminal's
   * input stays there) as its controlling terminal, for job control and Ctrl-C. Otherwise
   * the command gets this process's stdin, stdout and stderr as they are, in a session of
   * its own (no terminal to push input into).
   */
  terminal: boolean;
  signal?: AbortSignal;
}

export interface RunAttachedResult {
  exitCode: number | undefined;
  signal: string | undefined;
  aborted: boolean;
  setupError?: string;
  writeError?: string;
  seconds: number;
}

/**
 * runScript's sibling for `vmlb shell` and `vmlb run`: the same runner, mounts, environment
 * and sandbox as a layer script, but `command` instead of the entry script, with this
 * process's stdio (nothing captured, nothing logged). An abort SIGKILLs the run.
 */
export async function runAttached(o: RunAttachedOptions): Promise<RunAttachedResult> {
  const started = performance.now();
  const { env, scriptEnv, statusFile, scratch } = await prepareRun({ ...o, newSession: !o.terminal });
  env.VMLB_COMMAND = o.command.map(shellQuote).join(' ');
  env.VMLB_KEEP_STDERR = '1';
  const runner = runnerArgv(o, scriptEnv);
  const common = { env: { ...baseEnv(runnerEnv(o, env)), SHELL: '/bin/sh' }, extendEnv: false, reject: false, stdio: 'inherit' as const };
  // With a terminal: script(1) makes the pty and the run's session on it (and relays the
  // window size); the runner dies with script, script with this process.
  const child = o.terminal
    ? execa('setpriv', ['--pdeathsig', 'KILL', '--', 'script', '--quiet', '--return', '--command', `exec ${runner.map(shellQuote).join(' ')}`, '/dev/null'], common)
    : execa(runner[0]!, runner.slice(1), { ...common, detached: true });
  // script(1) takes the run with it; a detached runner is killed by its group.
  const { exitCode, signal, aborted } = await awaitRunner(child, () => (o.terminal ? child.kill('SIGKILL') : killGroup(child)), o);
  const { setupError, writeError } = await finishRun(o.rootMount, statusFile, scratch);
  const seconds = (performance.now() - started) / 1000;
  debug(`command ${o.command.join(' ')} in ${o.layerDir}: exit ${exitCode} signal ${signal} in ${seconds.toFixed(3)}s`);
  return { exitCode, signal, aborted, setupError, writeError, seconds };
}

/** SIGKILL to a detached child's process group (the child alone when that fails). */
function killGroup(child: ResultPromise): void {
  try {
    if (child.pid) process.kill(-child.pid, 'SIGKILL');
    else child.kill('SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

/**
 * Waits for a runner (runScript's, runAttached's): on abort, or once `timeoutMs` has passed,
 * `kill` stops it; either way it is reaped and its status returned.
 */
async function awaitRunner(
  child: ResultPromise,
  kill: () => void,
  o: { signal?: AbortSignal; timeoutMs?: number },
): Promise<{ exitCode: number | undefined; signal: string | undefined; timedOut: boolean; aborted: boolean }> {
  let timedOut = false;
  let aborted = false;
  const timer = o.timeoutMs
    ? setTimeout(() => {
        timedOut = true;
        kill();
      }, o.timeoutMs)
    : undefined;
  const onAbort = () => {
    aborted = true;
    kill();
  };
  if (o.signal?.aborted) onAbort();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const r = await child;
    return { exitCode: typeof r.exitCode === 'number' ? r.exitCode : undefined, signal: r.signal ?? undefined, timedOut, aborted };
  } catch (e) {
    const r = e as { exitCode?: number; signal?: string };
    return { exitCode: r.exitCode, signal: r.signal, timedOut, aborted };
  } finally {
    if (timer) clearTimeout(timer);
    o.signal?.removeEventListener('abort', onAbort);
  }
}

/** A word for sh: single-quoted unless it is plainly safe. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, "'\\''")}'`;
}

/** A sandboxed run's scratch files beside its mount point; vmlb-run-layer names them the same way. */
function runScratch(rootMount: string) {
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
async function writeSandboxFiles(o: RunBase, scratch: ReturnType<typeof runScratch>): Promise<Record<string, string>> {
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

/** How long the kernel may take to auto-clear a loop device after its last unmount. */
const AUTOCLEAR_WAIT_MS = 5000;

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
async function waitForAutoclearLoops(listFile: string): Promise<void> {
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

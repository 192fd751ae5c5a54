import { StringDecoder } from 'node:string_decoder';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { spawnChild, HOST_PATH } from '../host/exec.js';
import { VmlbError, tail } from '../errors.js';
import { debug } from '../debug.js';
import { ENGINE_BIN_DIR } from './engine-bin.js';
import { waitForAutoclearLoops } from './loop-autoclear.js';
import { CappedLogFile, ENGINE_OUTPUT_LIMITS, LOG_MAX_DEFAULT, OutputLimiter, type OutputLimits } from './output-limits.js';
import { awaitRunner, killGroup } from './runner-process.js';
import { runScratch, writeSandboxFiles } from './sandbox-files.js';
import { formatBytes } from '../sizes.js';
import type { SandboxRun } from './sandbox.js';

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
  /** @default LOG_MAX_DEFAULT (64 MiB; the apps pass VMLB_LOG_MAX, see logMaxFromEnv) */
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
  const logMax = o.logMax ?? LOG_MAX_DEFAULT;
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
export async function prepareRun(o: RunBase) {
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
export function runnerArgv(o: RunBase, scriptEnv: string[]): string[] {
  return [
    'setpriv', '--pdeathsig', 'KILL', '--',
    // Sandboxed, the run names its helpers' namespaces by /proc/PID: a /proc of its own pid namespace.
    'unshare', '--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', ...(o.sandbox ? ['--mount-proc'] : []), '--',
    '/bin/sh', path.join(ENGINE_BIN_DIR, 'vmlb-run-layer'), ...scriptEnv,
  ];
}

/** The runner's own variables (the script's are passed as arguments), with the sandbox's partition server. */
export function runnerEnv(o: RunBase, env: Record<string, string>): Record<string, string> {
  return { ...env, ...(o.sandbox?.partitionServer ?? {}), PATH: `${ENGINE_BIN_DIR}:${HOST_PATH}` };
}

/** What the runner said of its set-up and of the filesystem's writes, and its scratch files removed. */
export async function finishRun(rootMount: string, statusFile: string, scratch: ReturnType<typeof runScratch>): Promise<{ setupError?: string; writeError?: string }> {
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

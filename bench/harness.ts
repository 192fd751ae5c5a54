/**
 * What every benchmark shares: child processes that can be stopped on Ctrl-C, a temporary
 * store and run dir per benchmark (released and removed whatever happens, then checked for
 * anything left attached), image projects written from a few lines, `vmlb build --json` run
 * and parsed, medians, and the result rows.
 *
 * Nothing here asserts a time: a benchmark fails only when something it runs fails, or when
 * a build did not build (or hit) what the benchmark meant to measure.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BUSYBOX_BASE } from '../test/helpers/vmlb.js';

export const REPO = fileURLToPath(new URL('../', import.meta.url));
export const BENCH_DIR = fileURLToPath(new URL('./', import.meta.url));
export const VMLB = path.join(REPO, 'apps/cli/bin/vmlb.js');
/** Where the temporary stores go: disk-backed by default (the 1 GiB layers need room). */
export const TMP_ROOT = process.env.VMLB_BENCH_TMP || '/var/tmp';

/** One line of the table. */
export interface Row {
  benchmark: string;
  what: string;
  result: string;
  target: string;
  ratio: string;
}

export interface BenchOptions {
  quick: boolean;
}

export function progress(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

// ---------------------------------------------------------------------------------------
// Child processes and interruption

export class Interrupted extends Error {
  constructor() {
    super('interrupted');
  }
}

let interruptedBy: NodeJS.Signals | null = null;
/** Children running now, each with the signal that asks it to stop and clean up. */
const live = new Map<ChildProcess, NodeJS.Signals>();

export function interrupted(): boolean {
  return interruptedBy !== null;
}

export function checkInterrupted(): void {
  if (interruptedBy) throw new Interrupted();
}

/**
 * Ctrl-C / SIGTERM: ask the running child to stop (vmlb releases what it attached on SIGINT;
 * the shell helpers trap it), let the benchmark's cleanup run, and run nothing more. Children
 * have their own process group, so the terminal's Ctrl-C reaches them only through here.
 */
export function installSignalHandlers(): void {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (interruptedBy) {
        progress('still cleaning up (temp dirs are removed once the running child has exited)');
        return;
      }
      interruptedBy = sig;
      progress(`${sig}: stopping the running benchmark and cleaning up…`);
      for (const [child, stop] of live) child.kill(stop);
    });
  }
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall milliseconds from spawning to the process's exit. */
  ms: number;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** The signal that asks this child to stop and clean up. @default SIGTERM */
  stopSignal?: NodeJS.Signals;
  /** Throw when the exit status is not 0. @default true */
  check?: boolean;
  /** Run even after an interrupt (the leftover checks and the cleanup). @default false */
  always?: boolean;
  /** How to name the command in an error. @default the argv */
  label?: string;
}

export class CommandFailed extends Error {}

function lastLines(s: string, n: number): string {
  return s.trimEnd().split('\n').slice(-n).join('\n');
}

/** Runs a command to its end and times it; stdin closed, output captured. */
export async function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  if (!opts.always) checkInterrupted();
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error('run: empty command');
  const r = await new Promise<RunResult>((resolve, reject) => {
    const started = performance.now();
    let exitedAt: number | undefined;
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    live.set(child, opts.stopSignal ?? 'SIGTERM');
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      live.delete(child);
      reject(e);
    });
    // The wall time is the process's: what a shell waiting for it would see.
    child.on('exit', () => {
      exitedAt = performance.now();
    });
    child.on('close', (code, signal) => {
      live.delete(child);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        ms: (exitedAt ?? performance.now()) - started,
      });
    });
  });
  if (interruptedBy && !opts.always) throw new Interrupted();
  if ((opts.check ?? true) && r.code !== 0) {
    const how = r.code === null ? `was killed by ${r.signal}` : `exited with status ${r.code}`;
    const detail = lastLines(r.stderr || r.stdout, 15);
    throw new CommandFailed(`${opts.label ?? argv.join(' ')} ${how}${detail ? `:\n${detail}` : ''}`);
  }
  return r;
}

// ---------------------------------------------------------------------------------------
// Sandboxes: one temp store and run dir per benchmark

export interface Sandbox {
  name: string;
  dir: string;
  store: string;
  runDir: string;
  env: Record<string, string>;
}

/** Warning rows found by the leftover checks, drained by run.ts after each benchmark. */
export const warnings: Row[] = [];

interface LoopDevice {
  name: string;
  back: string;
}

async function loopDevices(): Promise<LoopDevice[]> {
  const r = await run(['losetup', '--json', '--list'], { check: false, always: true });
  if (!r.stdout.trim()) return [];
  const j = JSON.parse(r.stdout) as { loopdevices: Array<{ name: string; 'back-file': string | null }> };
  return j.loopdevices.map((l) => ({ name: l.name, back: l['back-file'] ?? '' }));
}

/**
 * A loop device made inside a mount namespace that is gone shows "/" as its backing file (the
 * kernel cannot name the path any more): debris, but it does not say whose. Those that were
 * there before the benchmark are not its own.
 */
function anonymous(l: LoopDevice): boolean {
  return l.back === '/' || l.back.startsWith('/ (deleted)');
}

interface Leftover {
  kind: 'loop' | 'mount' | 'process';
  /** Ours for sure (names the temp dir): released by the cleanup. */
  ours: boolean;
  id: string;
  text: string;
  fstype?: string;
}

function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

async function leftovers(sb: Sandbox, anonymousBefore: Set<string>): Promise<Leftover[]> {
  const found: Leftover[] = [];
  for (const l of await loopDevices()) {
    if (l.back.startsWith(sb.dir + '/')) found.push({ kind: 'loop', ours: true, id: l.name, text: `loop device ${l.name} on ${l.back}` });
    else if (anonymous(l) && !anonymousBefore.has(l.name)) {
      found.push({ kind: 'loop', ours: false, id: l.name, text: `loop device ${l.name} with back-file "${l.back}" (made in a mount namespace that is gone; possibly another program's)` });
    }
  }
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  for (const line of mountinfo.split('\n')) {
    const fields = line.split(' ');
    const point = unescapeMountPath(fields[4] ?? '');
    if (point !== sb.dir && !point.startsWith(sb.dir + '/')) continue;
    const fstype = line.split(' - ')[1]?.split(' ')[0] ?? '?';
    found.push({ kind: 'mount', ours: true, id: point, fstype, text: `${fstype} mount at ${point}` });
  }
  const ps = await run(['ps', '-eo', 'pid=,args='], { check: false, always: true });
  for (const line of ps.stdout.split('\n')) {
    const m = /^\s*(\d+)\s+(.*)$/.exec(line);
    if (!m || !m[2]!.includes(sb.dir)) continue;
    if (Number(m[1]) === process.pid) continue;
    found.push({ kind: 'process', ours: true, id: m[1]!, text: `process ${m[1]}: ${m[2]!.slice(0, 200)}` });
  }
  return found;
}

/** Best-effort release of what names the temp dir, so that it can be removed. */
async function release(found: Leftover[]): Promise<void> {
  const mine = found.filter((f) => f.ours);
  const quiet = { check: false, always: true } as const;
  // Deepest mounts first; FUSE exports after their loop devices and daemons.
  const mounts = mine.filter((f) => f.kind === 'mount').reverse();
  for (const m of mounts.filter((f) => f.fstype !== 'fuse')) await run(['umount', '-l', m.id], quiet);
  for (const l of mine.filter((f) => f.kind === 'loop')) await run(['losetup', '-d', l.id], quiet);
  for (const p of mine.filter((f) => f.kind === 'process')) {
    try {
      process.kill(Number(p.id), 'SIGTERM');
    } catch {
      /* gone already */
    }
  }
  if (mine.some((f) => f.kind === 'process')) await new Promise((r) => setTimeout(r, 1000));
  for (const p of mine.filter((f) => f.kind === 'process')) {
    try {
      process.kill(Number(p.id), 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const m of mounts.filter((f) => f.fstype === 'fuse')) await run(['umount', '-l', m.id], quiet);
}

/**
 * Runs fn with a fresh temp dir holding a store and a run dir; afterwards checks that nothing
 * is left attached (a warning row if something is), releases it, and removes the dir — on
 * success, failure and interruption alike.
 */
export async function withSandbox<T>(name: string, fn: (sb: Sandbox) => Promise<T>): Promise<T> {
  const anonymousBefore = new Set((await loopDevices()).filter(anonymous).map((l) => l.name));
  const dir = await mkdtemp(path.join(TMP_ROOT, `vmlb-bench-${name}-`));
  const sb: Sandbox = {
    name,
    dir,
    store: path.join(dir, 'store'),
    runDir: path.join(dir, 'run'),
    env: { VMLB_STORE: path.join(dir, 'store'), VMLB_RUN_DIR: path.join(dir, 'run') },
  };
  await mkdir(sb.runDir, { recursive: true });
  progress(`${name}: temp dir ${dir}`);
  try {
    return await fn(sb);
  } finally {
    // Runs after an interrupt too (run(..., { always: true }) inside).
    const found = await leftovers(sb, anonymousBefore);
    if (found.length > 0) {
      progress(`${name}: LEFT ATTACHED:\n  ${found.map((f) => f.text).join('\n  ')}`);
      warnings.push({
        benchmark: `⚠ ${name}: left attached`,
        what: 'loop devices, mounts or processes naming the temp dir (or new loop devices on "/") after the benchmark',
        result: found.map((f) => f.text).join('; '),
        target: 'nothing',
        ratio: '',
      });
      await release(found);
    }
    await rm(dir, { recursive: true, force: true }).catch((e: unknown) => {
      progress(`${name}: could not remove ${dir}: ${(e as Error).message}`);
    });
  }
}

// ---------------------------------------------------------------------------------------
// Image projects

export type LayerDef = {
  kind: 'create-disk' | 'build-layer' | 'modify-disk';
  /** The script's body; a shebang is added when missing. */
  script: string;
};

/** A busybox root filesystem on a blank disk of `diskSize`: test/helpers/vmlb.ts BUSYBOX_BASE. */
export function busyboxBase(diskSize: string): LayerDef {
  if (!BUSYBOX_BASE.script.includes('# disk-size 64M')) throw new Error('BUSYBOX_BASE no longer has its # disk-size 64M line');
  return { kind: 'create-disk', script: BUSYBOX_BASE.script.replace('# disk-size 64M', `# disk-size ${diskSize}`) };
}

/** Layer folder names NN_name, numbered from 01 in the order given. */
export function numbered(names: string[]): string[] {
  return names.map((n, i) => `${String(i + 1).padStart(2, '0')}_${n}`);
}

export async function writeLayer(project: string, name: string, def: LayerDef): Promise<void> {
  const dir = path.join(project, name);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, def.kind);
  const body = def.script.startsWith('#!') ? def.script : `#!/bin/sh\n${def.script}`;
  await writeFile(file, body.endsWith('\n') ? body : body + '\n');
  await chmod(file, 0o755);
}

export async function writeProject(dir: string, layers: Array<[string, LayerDef]>): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const [name, def] of layers) await writeLayer(dir, name, def);
  return dir;
}

/** A busybox base and `count` build-layer layers whose script is `true`. */
export function trivialLayers(count: number, baseSize = '64M'): Array<[string, LayerDef]> {
  const names = numbered(['base', ...Array.from({ length: count }, (_, i) => `l${i + 1}`)]);
  return names.map((n, i) => [n, i === 0 ? busyboxBase(baseSize) : { kind: 'build-layer', script: 'true' }]);
}

// ---------------------------------------------------------------------------------------
// vmlb

export type BuildEvent = Record<string, unknown> & { type: string };

export interface VmlbRun {
  ms: number;
  events: BuildEvent[];
  stdout: string;
}

export async function vmlb(sb: Sandbox, args: string[]): Promise<VmlbRun> {
  const r = await run([process.execPath, VMLB, ...args], {
    env: { ...process.env, ...sb.env, CI: '1' },
    stopSignal: 'SIGINT',
    label: `vmlb ${args.join(' ')}`,
  });
  const events = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as BuildEvent);
  return { ms: r.ms, events, stdout: r.stdout };
}

/** `vmlb build DIR --json ...`, checking it built `expectBuilt` layers (what we mean to time). */
export async function build(sb: Sandbox, project: string, expectBuilt: number, extra: string[] = []): Promise<VmlbRun> {
  const r = await vmlb(sb, ['build', project, '--json', ...extra]);
  const done = r.events.find((e) => e.type === 'done');
  if (!done) throw new Error(`vmlb build ${project}: no "done" event`);
  if (done.built !== expectBuilt) {
    throw new Error(`vmlb build ${project} ${extra.join(' ')}: built ${String(done.built)} layers, the benchmark expected ${expectBuilt}`);
  }
  return r;
}

export function eventsOf(r: VmlbRun, type: string): BuildEvent[] {
  return r.events.filter((e) => e.type === type);
}

export function doneEvent(r: VmlbRun): BuildEvent {
  const d = r.events.find((e) => e.type === 'done');
  if (!d) throw new Error('no "done" event');
  return d;
}

/** The keys of the chain, in order (from the plan event). */
export function chainKeys(r: VmlbRun): string[] {
  const plan = r.events.find((e) => e.type === 'plan');
  const layers = (plan?.layers ?? []) as Array<{ key: string }>;
  return layers.map((l) => l.key);
}

export function blobPath(sb: Sandbox, key: string): string {
  return path.join(sb.store, 'layers', `${key}.qcow2`);
}

export async function manifest(sb: Sandbox, key: string): Promise<{ root: { start: number; size: number } } & Record<string, unknown>> {
  return JSON.parse(await readFile(path.join(sb.store, 'layers', `${key}.json`), 'utf8')) as never;
}

/** `sync`, so that write-back of an earlier run does not land in the next timed one. */
export async function sync(): Promise<void> {
  await run(['sync']);
}

// ---------------------------------------------------------------------------------------
// Numbers

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function secs(x: number): string {
  return x < 10 ? `${x.toFixed(2)} s` : `${x.toFixed(1)} s`;
}

export function ratio(a: number, b: number): string {
  return `${(a / b).toFixed(2)}×`;
}

/**
 * The median with its unit, and the range when there is more than one value:
 * summary([0.51, 0.49, 0.55], 2, 's') → "0.51 s (0.49–0.55)".
 */
export function summary(xs: number[], digits: number, unit: string): string {
  const f = (x: number) => x.toFixed(digits);
  const m = `${f(median(xs))} ${unit}`;
  return xs.length < 2 ? m : `${m} (${f(Math.min(...xs))}–${f(Math.max(...xs))})`;
}

/** "n=5" etc. for the what-is-measured column. */
export function times(n: number): string {
  return n === 1 ? 'one run' : `median of ${n}`;
}

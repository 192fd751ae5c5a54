/**
 * The integration harness: runs the real `vmlb` CLI (the built apps/cli) against temporary
 * projects, a temporary store and a temporary run dir, and checks that nothing it attached
 * outlives it.
 */
import { execa, type ResultPromise } from 'execa';
import { chmod, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BuildEvent } from '../../libs/layer-engine/src/build/events.js';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));
export const VMLB = path.join(REPO, 'apps/cli/bin/vmlb.js');

export interface Sandbox {
  dir: string;
  store: string;
  runDir: string;
  env: Record<string, string>;
  /** When it was made (Date.now()): sandbox helpers started since are this test file's. */
  createdAt: number;
  cleanup(): Promise<void>;
}

/** A fresh store and run dir; a test file usually shares one so the base layer is built once. */
export async function sandbox(name: string): Promise<Sandbox> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `vmlb-${name}-`));
  const store = path.join(dir, 'store');
  const runDir = path.join(dir, 'run');
  await mkdir(runDir, { recursive: true });
  return {
    dir,
    store,
    runDir,
    env: { VMLB_STORE: store, VMLB_RUN_DIR: runDir },
    createdAt: Date.now(),
    async cleanup() {
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A copy of examples/NAME in `dir` (without its build/ output), to build without touching the repository. */
export async function copyExample(name: string, dir: string): Promise<string> {
  await cp(path.join(REPO, 'examples', name), dir, { recursive: true, filter: (src) => path.basename(src) !== 'build' });
  return dir;
}

export type LayerDef = {
  /** The entry script's name. */
  kind: 'create-disk' | 'build-layer' | 'modify-disk' | 'base-image';
  /** The script's body (a shebang is added when missing) or the base-image file's text. */
  script: string;
  files?: Record<string, string>;
};

/** A busybox root filesystem on a small disk: the base of most test projects. */
export const BUSYBOX_BASE: LayerDef = {
  kind: 'create-disk',
  script: `# disk-size 64M
set -eu
cd "$VMLB_ROOT"
mkdir -p bin etc proc sys dev tmp mnt root
cp "$(command -v busybox)" bin/busybox
for a in $(bin/busybox --list); do [ -e "bin/$a" ] || ln -s busybox "bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > etc/passwd
: > etc/resolv.conf
echo base ready`,
};

export async function writeProject(dir: string, layers: Record<string, LayerDef>): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const [name, def] of Object.entries(layers)) {
    const ldir = path.join(dir, name);
    await rm(ldir, { recursive: true, force: true });
    await mkdir(ldir, { recursive: true });
    const file = path.join(ldir, def.kind);
    const body = def.kind === 'base-image' || def.script.startsWith('#!') ? def.script : `#!/bin/sh\n${def.script}`;
    await writeFile(file, body.endsWith('\n') ? body : body + '\n');
    if (def.kind !== 'base-image') await chmod(file, 0o755);
    for (const [rel, content] of Object.entries(def.files ?? {})) {
      await mkdir(path.dirname(path.join(ldir, rel)), { recursive: true });
      await writeFile(path.join(ldir, rel), content);
    }
  }
  return dir;
}

export interface VmlbRun {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  events: BuildEvent[];
}

export type EventOf<T extends BuildEvent['type']> = Extract<BuildEvent, { type: T }>;

/** The first event of a type, typed. */
export function findEvent<T extends BuildEvent['type']>(run: VmlbRun, type: T): EventOf<T> | undefined {
  return run.events.find((e): e is EventOf<T> => e.type === type);
}

/** Every layer's key, from the build's plan. */
export function planKeys(run: VmlbRun): string[] {
  const plan = findEvent(run, 'plan');
  if (!plan) throw new Error(`no plan event:\n${run.stdout}\n${run.stderr}`);
  return plan.layers.map((l) => l.key);
}

/** The output a layer's script printed, from its layer-log events. */
export function layerLog(run: VmlbRun, name: string): string {
  return run.events
    .filter((e): e is EventOf<'layer-log'> => e.type === 'layer-log' && e.name === name)
    .map((e) => e.chunk)
    .join('');
}

export function spawnVmlb(sb: Sandbox, args: string[], extraEnv: Record<string, string> = {}): ResultPromise {
  return execa(process.execPath, [VMLB, ...args], {
    env: { ...sb.env, ...extraEnv, CI: '1' },
    reject: false,
    stdin: 'ignore',
  });
}

export async function vmlb(sb: Sandbox, args: string[], extraEnv: Record<string, string> = {}): Promise<VmlbRun> {
  const r = await spawnVmlb(sb, args, extraEnv);
  const stdout = String(r.stdout);
  const events = args[0] === 'build' && args.includes('--json')
    ? stdout
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as BuildEvent)
    : [];
  return { exitCode: r.exitCode, stdout, stderr: String(r.stderr), events };
}

/** Builds with --json and returns the events, asserting nothing about the outcome. */
export async function buildJson(sb: Sandbox, project: string, extra: string[] = []): Promise<VmlbRun> {
  return vmlb(sb, ['build', project, '--json', ...extra]);
}

export function builtNames(run: VmlbRun): string[] {
  return run.events.filter((e) => e.type === 'layer-done').map((e) => e.name);
}
export function cachedNames(run: VmlbRun): string[] {
  return run.events.filter((e) => e.type === 'layer-cached').map((e) => e.name);
}

/**
 * What the engine could have left attached that refers to this sandbox: loop devices whose
 * backing file is inside it, mounts inside it (FUSE exports, chroot mounts), and
 * qemu-storage-daemon / qemu-nbd processes or scripts whose command line names it.
 */
export async function leftovers(sb: Sandbox): Promise<string[]> {
  // The kernel auto-clears mount's loop devices asynchronously: give a moment to those.
  for (let i = 0; i < 20; i++) {
    const found = await leftoversNow(sb);
    if (found.length === 0) return found;
    await new Promise((r) => setTimeout(r, 100));
  }
  return leftoversNow(sb);
}

async function leftoversNow(sb: Sandbox): Promise<string[]> {
  const found: string[] = [];
  const loops = await execa('losetup', ['--json', '--list'], { reject: false });
  if (loops.stdout) {
    const j = JSON.parse(String(loops.stdout)) as { loopdevices: Array<{ name: string; 'back-file': string | null }> };
    for (const l of j.loopdevices) {
      const back = l['back-file'] ?? '';
      // A loop device made inside a mount namespace that is gone shows its backing file as
      // "/" (the kernel cannot name the path any more): engine debris all the same.
      if (back.includes(sb.dir) || back === '/' || back.startsWith('/ (deleted)')) found.push(`loop ${l.name} -> ${back}`);
    }
  }
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  for (const line of mountinfo.split('\n')) if (line.includes(sb.dir)) found.push(`mount ${line}`);
  const ps = await execa('ps', ['-eo', 'pid,ppid,etimes,comm,args'], { reject: false });
  const lived = (Date.now() - sb.createdAt) / 1000;
  const rows = String(ps.stdout).split('\n').slice(1).map((line) => {
    const [, pid, ppid, etimes, comm] = /^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S+)/.exec(line) ?? [];
    return { line: line.trim(), pid: Number(pid), ppid: Number(ppid), etimes: Number(etimes), comm };
  });
  const parent = new Map(rows.map((r) => [r.pid, r.ppid]));
  const vitests = new Set(rows.filter((r) => /\bvitest\b/.test(r.line)).map((r) => r.pid));
  for (const r of rows) {
    if (r.line.includes(sb.dir) && !r.line.includes('vitest') && !/\bps -eo\b/.test(r.line)) found.push(`process ${r.line}`);
    // The sandbox's helpers name no path of the test: any started since the sandbox was made,
    // below this test file's process or orphaned — not those below another test file's process
    // (the other lane's, vitest.config.ts, or another vitest run's).
    if (r.comm && ['bwrap', 'slirp4netns'].includes(r.comm) && r.etimes <= lived + 1 && !belowOtherTestFile(r.pid, parent, vitests)) found.push(`process ${r.line}`);
  }
  return found;
}

/** Whether pid runs below a vitest process other than this test file's own. */
function belowOtherTestFile(pid: number, parent: Map<number, number>, vitests: Set<number>): boolean {
  for (let p = pid, hops = 0; p > 1 && hops < 64; p = parent.get(p) ?? 0, hops++) {
    if (p === process.pid) return false;
    if (vitests.has(p)) return true;
  }
  return false;
}

export async function sha256sum(file: string): Promise<string> {
  const r = await execa('sha256sum', [file]);
  return String(r.stdout).split(' ')[0]!;
}

/**
 * Reads files from partition `partition` of an image without mounting or changing it: the
 * engine's fuse backend attaches a throw-away overlay on it, and debugfs reads the partition.
 */
export async function readImageFiles(sb: Sandbox, image: string, partition: number, files: string[]): Promise<Record<string, string>> {
  const { fuseBackend } = await import('../../libs/layer-engine/src/disk/attach-fuse.js');
  const { FuseDaemon } = await import('../../libs/layer-engine/src/disk/fuse-daemon.js');
  const scratch = path.join(sb.dir, `inspect-${process.pid}-${Date.now()}.qcow2`);
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.resolve(image), '-F', 'qcow2', scratch]);
  const prev = process.env.VMLB_RUN_DIR;
  process.env.VMLB_RUN_DIR = sb.runDir;
  const disk = await fuseBackend.attach(scratch, { purpose: 'test inspection' });
  try {
    const table = await disk.partitionTable();
    const part = table.partitions.find((p) => p.number === partition);
    if (!part) throw new Error(`${image} has no partition ${partition}`);
    const dev = await disk.rangeDevice(part);
    const out: Record<string, string> = {};
    for (const f of files) {
      const r = await execa('debugfs', ['-R', `cat ${f}`, dev], { reject: false });
      out[f] = String(r.stdout);
    }
    return out;
  } finally {
    await disk.release();
    await FuseDaemon.shutdown();
    if (prev === undefined) delete process.env.VMLB_RUN_DIR;
    else process.env.VMLB_RUN_DIR = prev;
    await rm(scratch, { force: true });
  }
}

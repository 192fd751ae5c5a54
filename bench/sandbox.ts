/**
 * Sandboxes: one temp store and run dir per benchmark, released and removed whatever happens,
 * then checked for anything left attached (loop devices, mounts, processes naming it).
 */
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { TMP_ROOT, progress, type Row } from './harness.js';
import { run } from './run-command.js';

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
